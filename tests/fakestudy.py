"""A real Optuna study (SQLite, the real study loop, report and W&B code) whose trial jobs are a
function of their overrides: the front changes in a known order, in about a second."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna

from vitsweep.config import recorder
from vitsweep.search.loop import Outcome
from vitsweep.search.space import parse_space
from vitsweep.search.spec import SamplerSpec, SweeperSpec
from vitsweep.search.study import SweepContext, open_study, run_study
from vitsweep.spec import TrackingSpec, TrialSpec

NAME = "front"
BASELINE = {"accuracy": 0.5, "throughput": 100.0, "energy": 1.0, "model_bytes": 4000.0}
# token.r -> metrics: every candidate beats the baseline; r=8 is dominated by r=2; r=0 and r=2
# trade accuracy for throughput; r=4 widens the front.
CANDIDATES = {
    0: {"accuracy": 0.85, "throughput": 200.0, "energy": 0.5, "model_bytes": 1000.0},
    2: {"accuracy": 0.80, "throughput": 400.0, "energy": 0.5, "model_bytes": 1000.0},
    4: {"accuracy": 0.70, "throughput": 900.0, "energy": 0.4, "model_bytes": 800.0},
    8: {"accuracy": 0.60, "throughput": 300.0, "energy": 0.5, "model_bytes": 500.0},
}
FIRST_LAUNCH = (8, 2, 0)  # trials 1, 2, 3 after the baseline (trial 0): front {2, 3} at the end


def make_ctx(
    root: Path,
    n_trials: int,
    wandb: bool = True,
    sampler: SamplerSpec | None = None,
    constraints: tuple[str, ...] = (),
) -> SweepContext:
    sweeper = SweeperSpec(
        study_name=NAME,
        n_trials=n_trials,
        params={"token.r": "choice(0,2,4,8)"},
        sampler=sampler or SamplerSpec(name="random", seed=0),
        constraints=constraints,
    )
    tracking = TrackingSpec(mode="offline", project="vitsweep-test")
    return SweepContext(
        sweeper=sweeper,
        base=TrialSpec(),
        tracking=tracking if wandb else dataclasses.replace(tracking, backend="none"),
        root=root,
        storage_url=f"sqlite:///{root / 'vitsweep.db'}",
        space=parse_space(sweeper.params),
        base_config={"experiment": "test"},
    )


def launch(batch: list[list[str]]) -> list[Outcome]:
    out = []
    for overrides in batch:
        r = next((int(o.split("=")[1]) for o in overrides if o.startswith("token.r=")), None)
        metrics = BASELINE if r is None else CANDIDATES[r]
        out.append(Outcome(metrics={**metrics, "energy_source": "estimate"}, config={"r": r}))
    return out


def enqueue(ctx: SweepContext, *rs: int) -> None:
    """Fix the order of candidates, so the front changes in a known way."""
    study = open_study(ctx)
    for r in rs:
        study.enqueue_trial({"token.r": r})


def run(ctx: SweepContext, *rs: int) -> optuna.Study:
    """Enqueue `rs`, run the study to its budget as the sweeper does, return it from storage."""
    enqueue(ctx, *rs)
    run_study(ctx, launch, recorder(ctx))
    return optuna.load_study(study_name=NAME, storage=ctx.storage_url)
