"""The study loop against a real SQLite storage, with a launcher that returns what jobs return."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
from optuna.trial import TrialState

from vitsweep.errors import mask_url
from vitsweep.search.loop import Outcome, StudyLoop
from vitsweep.search.space import parse_space
from vitsweep.search.spec import SweeperSpec
from vitsweep.search.storage import create_or_load, open_storage
from vitsweep.spec import TrialSpec


def _metrics(x: float) -> dict:
    return {"accuracy": 1 - abs(x - 3) / 10, "throughput": 100.0 * x, "energy": 0.1 * x}


def test_nan_and_raising_trials_fail_with_reasons_and_the_study_finishes(tmp_path: Path) -> None:
    spec = SweeperSpec(
        study_name="s",
        n_trials=5,
        max_failure_rate=0.6,
        enqueue_baseline=False,
        params={"x": "choice(1,2,3,4,5,6)"},
    )
    storage = open_storage(f"sqlite:///{tmp_path / 'db.sqlite'}")
    study, created = create_or_load(
        storage, "s", ["maximize", "maximize", "minimize"], optuna.samplers.RandomSampler(seed=1)
    )
    assert created
    calls = []

    def launch(batch: list[list[str]]) -> list[Outcome]:
        out = []
        for overrides in batch:
            calls.append(overrides)
            x = float(overrides[0].split("=")[1])
            n = len(calls)
            if n == 2:
                out.append(Outcome(error="RuntimeError: boom in the job"))
            elif n == 3:
                out.append(Outcome(metrics={**_metrics(x), "energy": math.nan}))
            elif n == 4:
                out.append(Outcome(metrics={"accuracy": 0.5}))
            else:
                out.append(Outcome(metrics=_metrics(x)))
        return out

    StudyLoop(spec, study, parse_space(spec.params), TrialSpec(), launch).run()
    trials = study.get_trials()
    reasons = {
        t.number: t.user_attrs.get("fail_reason") for t in trials if t.state == TrialState.FAIL
    }
    assert reasons == {
        1: "RuntimeError: boom in the job",
        2: "objective 'energy' is nan",
        3: "objective 'throughput' missing from the trial's metrics",
    }
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 5
    assert all(o[-1] == f"trial_number={i}" for i, o in enumerate(calls))


def test_storage_url_password_is_masked() -> None:
    url = "postgresql://vit:s3cr3t-pw@127.0.0.1:5433/study"
    assert mask_url(url) == "postgresql://vit:***@127.0.0.1:5433/study"
    assert "s3cr3t" not in mask_url(f"cannot reach {url} now")
