"""`vitsweep-export`: the export round-trip reproduces the trial's accuracy, exactly.

One tiny study through the real console scripts (a supernet small enough to train in seconds):
trial 0 is the baseline, a supernet subnet with ToMe r=4 at mixed precision; trial 1 runs int8,
trial 2 bf16, trial 3 transform-quantized at 3 bits and fine-tuned (launches of the same
study, one precision each, so that every precision is there whatever the sampler draws).
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tests.conftest import TINY_SUPERNET_SPACE, run_cli
from vitsweep import data, record
from vitsweep import trial as trial_mod
from vitsweep.export import (
    MODEL_FILE,
    PROGRAM_FILE,
    TORCHSCRIPT_FILE,
    export_spec,
    export_trial,
    load_export,
    load_torchscript,
)
from vitsweep.precision.mixed import format_bits

pytestmark = pytest.mark.slow

# Locates the study, as for vitsweep-report.
STUDY = ("experiment=smoke", "tracking=none")
TINY_SUPERNET = (
    *TINY_SUPERNET_SPACE,
    "train.epochs=10",  # ~35% on digits: an accuracy that a wrong model would not hit
    "precision.budget_ratio=0.3",  # the smallest feasible for this model is ~0.26
    "+hydra.sweeper.baseline.precision=mixed",
)
PRECISION = {0: "mixed", 1: "int8", 2: "bf16", 3: "tq"}


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("export")
    sweep = ("-m", *STUDY, *TINY_SUPERNET)
    run_cli("vitsweep", *sweep, "precision=int8", "hydra.sweeper.n_trials=2", cwd=workdir)
    run_cli("vitsweep", *sweep, "precision=bf16", "hydra.sweeper.n_trials=3", cwd=workdir)
    tq = ("precision=tq", "precision.rate=3.0", "precision.finetune_steps=2")
    run_cli("vitsweep", *sweep, *tq, "hydra.sweeper.n_trials=4", cwd=workdir)
    return workdir


def load_study(workdir: Path) -> optuna.Study:
    url = f"sqlite:///{workdir / 'multirun' / 'vitsweep.db'}"
    return optuna.load_study(study_name="smoke", storage=url)


@pytest.mark.parametrize("number", sorted(PRECISION))
def test_the_export_round_trip_reproduces_accuracy(study_dir: Path, number: int, one_thread):
    stored = load_study(study_dir).trials[number]
    assert stored.state == TrialState.COMPLETE
    proc = run_cli("vitsweep-export", *STUDY, f"trial={number}", cwd=study_dir)
    out = study_dir / "multirun" / "smoke" / "export" / f"trial-{number}"
    assert f"export: {out}" in proc.stdout
    assert "accuracy: stored" in proc.stdout and "DIFFERS" not in proc.stdout

    # The trial is the one asked for: supernet subnet, tokens merged, the precision forced.
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["trial_number"] == number and "hydra" not in config
    assert config["arch"]["kind"] == "supernet" and config["token"]["r"] > 0
    assert config["precision"]["mode"] == PRECISION[number]

    # Load in this process, measure again on the trial's own val split: the very same number.
    model, ctx = load_export(out)
    spec = export_spec(out)
    splits = data.load(spec.data)
    assert ctx.precision_exec.startswith(PRECISION[number])
    if PRECISION[number] == "mixed":  # the plan the trial recorded, not one planned again
        assert format_bits(model.vitsweep_mixed_plan) == record.metric(stored, "mixed_bits")
    stored_accuracy = record.metric(stored, "accuracy")
    assert trial_mod.accuracy(model, ctx, splits.val, spec.measure) == stored_accuracy
    assert json.loads((out / "metrics.json").read_text()) == record.metrics(stored)
    assert (out / MODEL_FILE).stat().st_size < 4 * record.metric(stored, "model_bytes") + 65536

    # PT2E int8 (int8, mixed on x86) ships the trial's torch.export program, which reproduced
    # above (load_export loads it); the other precisions ship TorchScript too, reproducing too.
    if (out / PROGRAM_FILE).is_file():
        assert PRECISION[number] in ("int8", "mixed")
        stored_bytes = record.metric(stored, "model_bytes")
        assert (out / PROGRAM_FILE).stat().st_size < 4 * stored_bytes + 2**20
        assert not (out / TORCHSCRIPT_FILE).exists()
        return
    assert (out / TORCHSCRIPT_FILE).is_file()
    ts, ts_ctx = load_torchscript(out)
    assert trial_mod.accuracy(ts, ts_ctx, splits.val, spec.measure) == stored_accuracy


def test_an_export_that_does_not_reproduce_stays_partial(study_dir: Path, one_thread) -> None:
    """The check is real: a stored accuracy the rebuilt model cannot hit fails the export."""
    number = 1
    first = study_dir / "multirun" / "smoke" / "export" / f"trial-{number}"
    if not (first / MODEL_FILE).is_file():
        run_cli("vitsweep-export", *STUDY, f"trial={number}", cwd=study_dir)
    spec = export_spec(first)
    metrics = record.metrics(load_study(study_dir).trials[number])
    wrong = {**metrics, "accuracy": metrics["accuracy"] + 0.5}
    out = study_dir / "elsewhere" / "trial-1"
    result = export_trial(
        spec,
        config={"note": "test"},
        metrics=wrong,
        study="smoke",
        number=number,
        out_dir=out,
    )
    assert not result.ok and not out.exists()
    assert result.path == out.with_name("trial-1.partial") and (result.path / MODEL_FILE).is_file()
    failed = [c for c in result.checks if not c.ok]
    assert [c.name for c in failed] == ["accuracy"]


def test_metrics_leave_out_exactly_the_bookkeeping_attributes() -> None:
    bookkeeping = {"baseline": True, "config": {"a": 1}, "vitsweep:retry_of": 3}
    bookkeeping |= {"constraints": [0.1], "fail_reason": "x", "skip_reason": "y"}
    wanted = {"accuracy": 0.5, "threads": 1}
    # Studies written before metrics became one attribute stored them flat, beside bookkeeping.
    legacy = optuna.trial.create_trial(value=0.5, user_attrs={**bookkeeping, **wanted})
    now = optuna.trial.create_trial(value=0.5, user_attrs={**bookkeeping, "metrics": wanted})
    assert record.metrics(legacy) == wanted == record.metrics(now)


@pytest.mark.parametrize(
    ("arg", "said"),
    [
        (None, "trial: missing"),
        ("trial=first", "trial=first: not a trial number"),
        ("trial=99", "trial=99: no such trial"),
        ("trial=4", "trial=4: is FAIL, not COMPLETE"),
    ],
)
def test_bad_trial_is_one_line_exit_2_and_writes_nothing(
    study_dir: Path, arg: str | None, said: str
) -> None:
    study = load_study(study_dir)
    if len(study.trials) == 4:  # a failed trial 4, as a crashed job leaves it
        study.tell(study.ask(), state=TrialState.FAIL)
    proc = run_cli("vitsweep-export", *STUDY, *([arg] if arg else []), cwd=study_dir, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and said in lines[0], proc.stderr
    assert "complete trials of study 'smoke': 0-3" in lines[0]
    assert not (study_dir / "multirun" / "smoke" / "export" / "trial-4").exists()
    assert not (study_dir / "multirun" / "smoke" / "export" / "trial-99").exists()
