"""What a trial records in Optuna's storage, and how everything else reads it back.

One module names every key, so the sweeper (which writes), and the report, W&B, export and
samplers (which read) cannot drift apart. It sits below both `search` and `track`, so neither
has to import the other to know what a trial holds.

- The metrics `trial.run` returned are ONE user attribute (`metrics`, a dict): one storage
  write instead of one per metric. Studies written before that stored every metric as its own
  user attribute; `metrics()` reads both.
- Constraints are Optuna 5's own (`Trial.set_constraint`, stored as system attributes), which
  every sampler, `Study.best_trials` and optuna-dashboard honour. Studies written before that
  kept a list under the user attribute `constraints`; `constraint_values()` reads both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

BASELINE = "baseline"  # True on the baseline trial (trial 0 of a new study)
CONFIG = "config"  # the job's resolved config (no hydra node): what `vitsweep-export` rebuilds
METRICS = "metrics"  # everything `trial.run` returned, one dict
FAIL_REASON = "fail_reason"  # why a trial is FAIL ("stale: ..." for a lost worker)
SKIP_REASON = "skip_reason"  # why a claimed trial was given back PRUNED
RETRY_OF = "vitsweep:retry_of"  # a re-queued stale trial points at the trial it repeats
OVERRIDES = "overrides"  # the override lines a sampled trial was launched with (its identity)
DUPLICATE_OF = "duplicate_of"  # a trial whose overrides a COMPLETE trial already ran: not run again
LEGACY_CONSTRAINTS = "constraints"  # pre-Optuna-5-API constraint list (user attribute)
STALE_PREFIX = "stale"

# Study attributes.
STUDY_STORAGE = "storage"  # the masked storage URL
STUDY_STOPPED = "stopped"  # why stop_when ended the study

# User attributes that are bookkeeping, never metrics (studies that stored metrics flat).
BOOKKEEPING = frozenset(
    {
        BASELINE,
        CONFIG,
        METRICS,
        FAIL_REASON,
        SKIP_REASON,
        RETRY_OF,
        OVERRIDES,
        DUPLICATE_OF,
        LEGACY_CONSTRAINTS,
    }
)


@dataclass
class Outcome:
    metrics: dict[str, Any] | None = None
    config: dict[str, Any] | None = None  # the job's resolved config, for the trial's W&B run
    error: str | None = None


def metrics(trial: FrozenTrial) -> dict[str, Any]:
    """The trial's stored metrics (empty for a trial that never completed)."""
    stored = trial.user_attrs.get(METRICS)
    if isinstance(stored, Mapping):
        return dict(stored)
    return {k: v for k, v in trial.user_attrs.items() if k not in BOOKKEEPING}


def metric(trial: FrozenTrial, name: str) -> Any:
    return metrics(trial).get(name)


def is_baseline(trial: FrozenTrial) -> bool:
    return bool(trial.user_attrs.get(BASELINE, False))


def fail_reason(trial: FrozenTrial) -> str | None:
    reason = trial.user_attrs.get(FAIL_REASON)
    return None if reason is None else str(reason)


def duplicate_of(trial: FrozenTrial) -> int | None:
    """The trial whose measurement this one repeats (same configuration), or None."""
    n = trial.user_attrs.get(DUPLICATE_OF)
    return None if n is None else int(n)


def is_stale_failure(trial: FrozenTrial) -> bool:
    """Failed because its worker was lost (not because of the candidate itself)."""
    return trial.state == TrialState.FAIL and str(fail_reason(trial) or "").startswith(STALE_PREFIX)


def constraint_values(trial: FrozenTrial) -> list[float]:
    """The trial's constraint values (Optuna's convention: <= 0 is feasible)."""
    values = [float(v) for v in trial.constraints.values()]
    if not values:
        values = [float(v) for v in trial.user_attrs.get(LEGACY_CONSTRAINTS, ())]
    return values


def is_feasible(trial: FrozenTrial) -> bool:
    return all(v <= 0 for v in constraint_values(trial))
