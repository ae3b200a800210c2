"""The study end to end through the real console script, Optuna storage and W&B files."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from tests.conftest import BIN, cli_env, run_cli
from vitsweep import record
from vitsweep.track.wandb_files import read_runs

SMOKE = ("-m", "experiment=smoke")


def load_study(workdir: Path, name: str = "smoke") -> optuna.Study:
    url = f"sqlite:///{workdir / 'multirun' / 'vitsweep.db'}"
    return optuna.load_study(study_name=name, storage=url)


def brute_force_front(points: list[tuple[float, ...]], signs: list[float]) -> set[tuple]:
    """Non-dominated points, written out the slow way (larger is better after `signs`)."""
    flipped = [tuple(s * v for s, v in zip(signs, p, strict=True)) for p in points]
    front = set()
    for i, p in enumerate(flipped):
        dominated = any(
            all(q[k] >= p[k] for k in range(len(p))) and any(q[k] > p[k] for k in range(len(p)))
            for j, q in enumerate(flipped)
            if j != i
        )
        if not dominated:
            front.add(points[i])
    return front


def measured(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """What the budget counts: COMPLETE trials that are not a repeat of a measured config."""
    return [
        t for t in trials if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs
    ]


@pytest.mark.slow
def test_smoke_sweep_resumes_to_the_budget_and_logs_every_trial(workdir: Path) -> None:
    run_cli("vitsweep", *SMOKE, "hydra.sweeper.n_trials=4", cwd=workdir)
    assert len(measured(load_study(workdir).get_trials())) == 4

    # Same command, bigger budget: resumes, runs only the 2 missing candidates.
    proc = run_cli("vitsweep", *SMOKE, "hydra.sweeper.n_trials=6", cwd=workdir)
    assert "resumed" in proc.stderr + proc.stdout
    assert "bought 6 distinct candidates" in proc.stderr + proc.stdout
    # measure=quick estimates energy: said once the study is open (the note is asked for then)
    assert (proc.stderr + proc.stdout).count("energy: no meter on this machine") == 1
    study = load_study(workdir)
    trials = study.get_trials()
    assert [t.number for t in trials] == list(range(len(trials)))
    assert len(measured(trials)) == 6  # repeats of a measured config are told, not counted
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert trials[0].user_attrs["baseline"] is True and trials[0].params == {}
    assert all(not t.user_attrs.get("baseline") for t in trials[1:])

    # W&B offline files, read back from disk: one run per trial, named by the Optuna number.
    runs = [r for r in read_runs(workdir / "multirun" / "smoke" / "wandb") if r.job_type == "trial"]
    assert sorted(r.name for r in runs) == sorted(f"trial-{i}" for i in range(len(trials)))
    # Optuna's front, less the trials that repeat a configuration (told their twin's values,
    # not run): the twin stands for both.
    twins = {t.number: t.user_attrs.get("duplicate_of") for t in trials}
    front = {t.number for t in study.best_trials if twins[t.number] is None}
    for run in runs:
        t = trials[int(run.name.removeprefix("trial-"))]
        assert ("pareto" in run.tags) == (t.number in front), (t.number, run.tags, front)
        if twins[t.number] is not None:
            assert run.tags == ["duplicate"] and run.summary["duplicate_of"] == twins[t.number]
            assert t.values == trials[twins[t.number]].values
        assert run.group == "smoke"
        assert run.config["trial_number"] == t.number
        assert run.config["versions"]["optuna"] == optuna.__version__
        assert run.summary["accuracy"] == pytest.approx(t.values[0])
        assert run.summary["throughput"] == pytest.approx(t.values[1])
        assert run.summary["energy_source"] == "estimate"
    summaries = [
        r for r in read_runs(workdir / "multirun" / "smoke" / "wandb") if r.job_type == "summary"
    ]
    assert len(summaries) == 1  # one summary run per study, reopened by each launch
    assert summaries[0].summary["n_pareto"] == len(front)
    hv = [h["hypervolume"] for h in summaries[0].history if "hypervolume" in h]
    assert len(hv) == len(trials) and hv[-1] == pytest.approx(study.user_attrs["hypervolume"])

    # pareto.csv is exactly the non-dominated set of the trials' values.
    report = workdir / "multirun" / "smoke" / "report"
    with (report / "pareto.csv").open() as f:
        front_rows = list(csv.DictReader(f))
    names = ["accuracy", "throughput", "energy"]
    got = {tuple(float(r[n]) for n in names) for r in front_rows}
    want = brute_force_front([tuple(t.values) for t in trials], [1.0, 1.0, -1.0])
    assert {tuple(round(v, 9) for v in p) for p in got} == {
        tuple(round(v, 9) for v in p) for p in want
    }
    with (report / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["number"]) for r in rows] == list(range(len(trials)))
    assert {"state", "param:arch.depth", "accuracy", "flops", "model_bytes"} <= set(rows[0])
    assert (report / "pareto.png").stat().st_size > 10_000
    assert (report / "results.yaml").exists()


@pytest.mark.slow
def test_a_raising_trial_is_failed_with_its_reason_and_the_sweep_goes_on(workdir: Path) -> None:
    run_cli(
        "vitsweep",
        *SMOKE,
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.max_failure_rate=1.0",
        "hydra.sweeper.sampler.name=random",  # seeded: draws batch_size=0 within the budget
        "hydra.sweeper.sampler.seed=2",
        "measure.batch_size=choice(0,16)",
        cwd=workdir,
    )
    trials = load_study(workdir).get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(measured(trials)) == 4
    assert failed, "seeded sampler should have tried batch_size=0"
    for t in failed:
        assert t.params["measure.batch_size"] == 0
        assert "measure.batch_size=0" in t.user_attrs["fail_reason"]


@pytest.mark.slow
def test_failure_budget_stops_the_study_with_a_clear_error(workdir: Path) -> None:
    proc = run_cli(
        "vitsweep",
        *SMOKE,
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.max_failure_rate=0",
        "measure.batch_size=choice(0)",
        cwd=workdir,
        check=False,
    )
    assert proc.returncode != 0
    assert "exceed hydra.sweeper.max_failure_rate=0.0" in proc.stderr
    trials = load_study(workdir).get_trials()
    assert trials[0].state == TrialState.COMPLETE  # the baseline ran; the first failure stopped it
    assert [t.state for t in trials[1:]] == [TrialState.FAIL]


@pytest.mark.slow
def test_killed_sweep_relaunch_completes_budget_without_loss_or_double_count(workdir: Path) -> None:
    args = [str(BIN / "vitsweep"), *SMOKE, "hydra.sweeper.n_trials=4"]
    proc = subprocess.Popen(
        args,
        cwd=workdir,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # The first candidate's job directory appears once its params are drawn and its job has
    # started: kill the sweep then. (Polling storage for a RUNNING trial raced fast trials.)
    killed = None
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
        if list(workdir.glob("multirun/smoke/*/trial-1")):
            time.sleep(0.3)
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    running = load_study(workdir).get_trials(states=(TrialState.RUNNING,))
    killed = running[0] if running and len(running[0].params) == 3 else None
    assert killed is not None, "never caught a trial mid-run"

    run_cli("vitsweep", *SMOKE, "hydra.sweeper.n_trials=4", cwd=workdir)
    trials = load_study(workdir).get_trials()
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(numbers)))  # unique, no gaps
    assert len(measured(trials)) == 4
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    dead = trials[killed.number]
    assert dead.state == TrialState.FAIL and dead.user_attrs["fail_reason"].startswith("stale")
    retries = [t for t in trials if t.user_attrs.get(record.RETRY_OF) == killed.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == dead.params  # the same candidate, run once more, counted once
    assert all(math.isfinite(v) for t in trials if t.values for v in t.values)


@pytest.mark.slow
def test_a_supernet_space_narrowed_on_the_command_line_leaves_a_plain_baseline_alone(
    workdir: Path,
) -> None:
    """`arch.space.*` narrows the supernet's space; a baseline of `arch=vit` has no space, and
    Hydra refuses to override a key that is not there. The baseline runs without those
    overrides (and the launch says so); every other trial gets them all."""
    from tests.conftest import TINY_SUPERNET_SPACE

    proc = run_cli(
        "vitsweep", *SMOKE, *TINY_SUPERNET_SPACE, "train.epochs=1", "tracking=none",
        "+hydra.sweeper.baseline.arch=vit", "hydra.sweeper.n_trials=3", cwd=workdir,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert "left out the overrides of arch.space.head_dim, arch.space.embed_dim" in out
    trials = load_study(workdir).get_trials()
    assert all(t.state == TrialState.COMPLETE for t in trials)
    base = trials[0]
    assert base.user_attrs["baseline"] is True
    assert record.metrics(base)["params"] > 0
    assert len(measured(trials)) == 3
    for t in trials[1:]:
        if "duplicate_of" not in t.user_attrs:
            assert set(TINY_SUPERNET_SPACE) <= set(t.user_attrs["overrides"])
