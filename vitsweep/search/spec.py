"""Plain description of a study: what the sweeper's config becomes after the doorway."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from vitsweep.spec import ConfigError

DEFAULT_OBJECTIVES = {"accuracy": "maximize", "throughput": "maximize", "energy": "minimize"}


@dataclass(frozen=True)
class Constraint:
    """`<metric> >= <bound>` or `<metric> <= <bound>`, stored on each trial with Optuna 5's
    `Trial.set_constraint` so that every sampler, `best_trials` and the dashboard see it."""

    metric: str
    op: str  # ">=" or "<="
    bound: float

    @classmethod
    def parse(cls, text: str) -> Constraint:
        """Any metric name the app returns: which names exist is the app's to say (the doorway
        checks them against the ViT metrics when the app is vitsweep's own)."""
        for op in (">=", "<="):
            if op in text:
                metric, bound = (s.strip() for s in text.split(op, 1))
                if not metric or any(c.isspace() for c in metric):
                    break
                try:
                    value = float(bound)
                except ValueError:
                    break
                if math.isfinite(value):
                    return cls(metric, op, value)
                break
        raise ConfigError(
            f"hydra.sweeper.constraints: {text!r}: expected '<metric> >= <number>' or "
            "'<metric> <= <number>' with a finite number"
        )

    @property
    def key(self) -> str:
        return f"{self.metric}{self.op}{self.bound:g}"

    def violation(self, metrics: dict[str, Any]) -> float:
        """Optuna's convention: <= 0 is feasible. A metric the trial did not produce (or NaN)
        cannot show the constraint is met: infinitely infeasible."""
        try:
            value = float(metrics[self.metric])
        except (KeyError, TypeError, ValueError):
            return math.inf
        if math.isnan(value):
            return math.inf
        return self.bound - value if self.op == ">=" else value - self.bound


@dataclass(frozen=True)
class SamplerSpec:
    name: Literal["tpe", "nsga2", "random", "gp", "grid", "cmaes", "qmc"] = "tpe"
    seed: int | None = 0
    n_startup_trials: int = 8  # tpe/gp: random trials before the model kicks in
    population_size: int = 16  # nsga2
    # hydra-optuna-sweeper's form (`_target_` + kwargs): the Optuna class is built with exactly
    # these kwargs (Optuna's defaults for the rest) instead of our tuned ones above.
    kwargs: dict[str, Any] | None = None


@dataclass(frozen=True)
class StopSpec:
    """End the study early once the front stops moving (Optuna cannot prune multi-objective
    trials; this is the study-level answer)."""

    enabled: bool = False
    patience: int = 10  # complete trials to look back over
    min_improvement: float = 0.01  # relative hypervolume gain below which the study stops

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ConfigError(f"hydra.sweeper.stop_when.patience={self.patience}: must be >= 1")
        if not self.min_improvement >= 0:
            raise ConfigError(
                f"hydra.sweeper.stop_when.min_improvement={self.min_improvement}: must be >= 0"
            )


@dataclass(frozen=True)
class SweeperSpec:
    study_name: str = "vitsweep"
    storage: str | None = None  # any Optuna URL; None: sqlite:///<paths.root>/vitsweep.db
    n_trials: int = 20  # the study's budget of measured candidates, across launches and workers
    max_repeats: int = 20  # proposals in a row that repeat a measured config: the study ends
    objectives: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_OBJECTIVES))
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    params: dict[str, str] = field(default_factory=dict)  # Hydra sweep grammar per key
    # Dotted path of a SpaceHook; None: the flat params only. The default is vitsweep's own app's
    # (a name, never imported here); the sweeper's config for other apps sets null.
    space_hook: str | None = "vitsweep.vit_space.conditional"
    constraints: tuple[str, ...] = ()  # e.g. "accuracy >= 0.8"
    max_failure_rate: float = 0.5  # failed trials allowed, as a fraction of n_trials
    enqueue_baseline: bool = True
    baseline: dict[str, Any] = field(default_factory=dict)  # overrides of trial 0
    heartbeat_interval: int = 5  # seconds between heartbeats of a running trial
    grace_period: int = 20  # seconds without heartbeat before a RUNNING trial is stale
    on_stale: Literal["retry", "fail"] = "retry"  # a dead worker's trial: run again or drop
    n_jobs: int = 1  # trials handed to the launcher at once (joblib/submitit run them in parallel)
    stop_when: StopSpec = field(default_factory=StopSpec)  # off by default

    def __post_init__(self) -> None:
        for name, direction in self.objectives.items():
            if direction not in ("maximize", "minimize"):
                raise ConfigError(
                    f"hydra.sweeper.objectives.{name}={direction}: valid: maximize, minimize"
                )
        if not self.objectives:
            raise ConfigError("hydra.sweeper.objectives: name at least one metric")
        if self.sampler.name == "cmaes" and len(self.objectives) > 1:
            given = (
                "hydra/sweeper/sampler"
                if self.sampler.kwargs is not None
                else "hydra.sweeper.sampler.name"
            )
            raise ConfigError(
                f"{given}=cmaes: CMA-ES optimizes one objective, this study "
                f"has {len(self.objectives)}; valid: tpe, nsga2, random, gp, grid, qmc"
            )
        if self.n_trials < 1:
            raise ConfigError(f"hydra.sweeper.n_trials={self.n_trials}: must be >= 1")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise ConfigError(
                f"hydra.sweeper.max_failure_rate={self.max_failure_rate}: must be in [0, 1]"
            )
        if self.heartbeat_interval < 1 or self.grace_period <= self.heartbeat_interval:
            raise ConfigError(
                f"hydra.sweeper.grace_period={self.grace_period}: must exceed "
                f"heartbeat_interval={self.heartbeat_interval} (both >= 1 s)"
            )
        if self.max_repeats < 1:
            raise ConfigError(f"hydra.sweeper.max_repeats={self.max_repeats}: must be >= 1")
        if self.n_jobs < 1:
            raise ConfigError(f"hydra.sweeper.n_jobs={self.n_jobs}: must be >= 1")
        self.parsed_constraints  # noqa: B018  (a malformed one fails at launch, before any trial)

    @property
    def parsed_constraints(self) -> list[Constraint]:
        return [Constraint.parse(text) for text in self.constraints]
