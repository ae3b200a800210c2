"""Any task function's return value as a trial's result, so the sweeper serves any Hydra app.

- a number: the one objective;
- a tuple or list: the objectives, in order (hydra-optuna-sweeper's multi-objective form);
- a mapping: named metrics; objectives and constraints name its keys.

What cannot be a result fails the trial with the reason, and the study goes on.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from vitsweep.record import Outcome


def _plain(value: Any) -> Any:
    """JSON-able for Optuna's storage: numpy/torch scalars become Python numbers."""
    if isinstance(value, bool | str) or value is None:
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 1) == 0:
        return _plain(item())
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


def outcome_of(value: Any, objectives: Sequence[str]) -> Outcome:
    """The trial's metrics from what the task returned; `objectives` name the values of a
    number or a sequence, in order."""
    names = list(objectives)
    if isinstance(value, Mapping):
        return Outcome(metrics={str(k): _plain(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        if len(value) != len(names):
            return Outcome(
                error=f"the task returned {len(value)} values for {len(names)} objectives "
                f"({', '.join(names)}): one per hydra.sweeper.direction"
            )
        return Outcome(metrics={n: _plain(v) for n, v in zip(names, value, strict=True)})
    plain = _plain(value)
    if isinstance(plain, int | float) and not isinstance(plain, bool):
        if len(names) != 1:
            return Outcome(
                error=f"the task returned one value for {len(names)} objectives "
                f"({', '.join(names)}): return a tuple or a dict"
            )
        return Outcome(metrics={names[0]: plain})
    return Outcome(
        error=f"the task returned {type(value).__name__} {value!r:.60}: return a float, a "
        "tuple (one value per objective) or a dict of named metrics"
    )
