"""The study loop against a real SQLite storage, with a launcher that returns what jobs return."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from vitsweep.errors import mask_url
from vitsweep.search.loop import Outcome, StudyLoop
from vitsweep.search.space import parse_space
from vitsweep.search.spec import SweeperSpec
from vitsweep.search.storage import create_or_load, open_storage
from vitsweep.spec import ArchSpec, SpaceSpec, TrialSpec

OBJECTIVES = {"accuracy": "maximize", "throughput": "maximize", "energy": "minimize"}


def _metrics(x: float) -> dict:
    return {"accuracy": 1 - abs(x - 3) / 10, "throughput": 100.0 * x, "energy": 0.1 * x}


def test_nan_and_raising_trials_fail_with_reasons_and_the_study_finishes(tmp_path: Path) -> None:
    spec = SweeperSpec(
        study_name="s",
        n_trials=5,
        max_failure_rate=0.6,
        enqueue_baseline=False,
        params={"x": "interval(1.0, 6.0)"},  # no two trials alike: every one is launched
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
        3: "objective 'throughput' missing from the trial's metrics (it returned accuracy)",
    }
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 5
    assert all(o[-1] == f"trial_number={i}" for i, o in enumerate(calls))


def test_storage_url_password_is_masked() -> None:
    url = "postgresql://vit:s3cr3t-pw@127.0.0.1:5433/study"
    assert mask_url(url) == "postgresql://vit:***@127.0.0.1:5433/study"
    assert "s3cr3t" not in mask_url(f"cannot reach {url} now")


# Depth 1 or 2, 1 or 2 heads a layer: 2 configurations of depth 1 and 4 of depth 2.
TWO_LAYERS = SpaceSpec(embed_dim=(16,), depth=(1, 2), mlp_ratio=(1.0,), num_heads=(1, 2),
                       head_dim=8)  # fmt: skip


def _two_layer_loop(
    tmp_path: Path, spec: SweeperSpec
) -> tuple[optuna.Study, StudyLoop, list[list[str]]]:
    from vitsweep.search.space import SearchSpace
    from vitsweep.vit_space import conditional

    base = TrialSpec(
        arch=ArchSpec(kind="supernet", embed_dim=16, depth=2, head_dim=8, space=TWO_LAYERS)
    )
    storage = open_storage(f"sqlite:///{tmp_path / 'db.sqlite'}")
    study, _ = create_or_load(
        storage, "s", list(OBJECTIVES.values()), optuna.samplers.RandomSampler(seed=3)
    )
    launched: list[list[str]] = []

    def launch(batch: list[list[str]]) -> list[Outcome]:
        launched.extend(batch)
        # A measurement that differs run to run: a twin must copy it, not get a new one.
        return [Outcome(metrics=_metrics(1 + len(launched) / 10), config={"o": o}) for o in batch]

    loop = StudyLoop(spec, study, SearchSpace({}, {}, conditional), base, launch, prefix=("p=1",))
    return study, loop, launched


def test_a_configuration_that_already_ran_is_told_again_not_launched_nor_counted(
    tmp_path: Path,
) -> None:
    """Trials of depth 1 that differ only in layer 2's params are one configuration (the
    fixed-length encoding samples every layer): the second is never launched, gets its twin's
    values, points at it, stays off the front, and costs none of the budget: a budget of 6
    buys all 6 configurations the space holds."""
    from vitsweep import record
    from vitsweep.track.pareto import study_table
    from vitsweep.track.report import write_report

    spec = SweeperSpec(study_name="s", n_trials=6, max_repeats=100, enqueue_baseline=False)
    study, loop, launched = _two_layer_loop(tmp_path, spec)
    loop.run()
    trials = study.get_trials()
    assert all(t.state == TrialState.COMPLETE for t in trials)
    configs = [o[:-1] for o in launched]
    assert len(configs) == len({tuple(c) for c in configs}) == 6  # 2 of depth 1 + 4 of depth 2
    twins = {t.number: t for t in trials}
    dupes = [t for t in trials if record.duplicate_of(t) is not None]
    assert (
        dupes
        and len(trials) == 6 + len(dupes)
        and sorted(loop.ran) == [t.number for t in trials if record.duplicate_of(t) is None]
    )
    for t in dupes:
        twin = twins[record.duplicate_of(t)]
        assert record.duplicate_of(twin) is None and twin.number < t.number
        assert t.user_attrs[record.OVERRIDES] == twin.user_attrs[record.OVERRIDES]
        assert t.user_attrs[record.OVERRIDES][0] == "p=1"
        assert t.values == twin.values and record.metrics(t) == record.metrics(twin)
        assert t.user_attrs[record.CONFIG] == twin.user_attrs[record.CONFIG]
        if t.params["arch.depth"] == 1:  # the sampler's params may differ, past the depth only
            assert t.params["arch.num_heads.0"] == twin.params["arch.num_heads.0"]
        else:
            assert t.params == twin.params
    assert any(t.params != twins[record.duplicate_of(t)].params for t in dupes)
    table = study_table(study, OBJECTIVES)
    assert table.pareto and not set(table.pareto) & {t.number for t in dupes}
    out = write_report(table, tmp_path / "report", "s", {})
    results = yaml.safe_load((out / "results.yaml").read_text())
    assert results["n_duplicates"] == len(dupes) and results["n_candidates"] == 6
    with open(out / "trials.csv") as f:
        rows = {int(r["number"]): r for r in csv.DictReader(f)}
    assert all(rows[t.number]["duplicate_of"] == str(record.duplicate_of(t)) for t in dupes)
    assert all(rows[t.number]["duplicate_of"] == "" for t in trials if t not in dupes)


def test_a_sampler_that_proposes_only_repeats_ends_the_study(tmp_path: Path) -> None:
    """A budget larger than the space: once all 6 configurations ran, every proposal repeats
    one, and `max_repeats` of them in a row end the study with the reason stored."""
    from vitsweep import record
    from vitsweep.search.loop import repeats_in_a_row

    spec = SweeperSpec(study_name="s", n_trials=10, max_repeats=4, enqueue_baseline=False)
    study, loop, launched = _two_layer_loop(tmp_path, spec)
    loop.run()
    trials = study.get_trials()
    assert len(launched) == 6  # every configuration of the space, once
    assert repeats_in_a_row(trials) == 4
    assert record.duplicate_of(trials[-5]) is None  # the four repeats came after a new one
    assert "max_repeats=4" in study.user_attrs[record.STUDY_STOPPED]
