"""The study as plain rows, its Pareto front (Optuna's), and the headline ratios vs the baseline.

Computed once as data (like optuna's `_ParetoFrontInfo`), rendered by the report, the CSVs and
W&B alike; tests assert on this data, never on pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from vitsweep.spec import METRIC_NAMES
from vitsweep.track.hypervolume import history


@dataclass
class StudyTable:
    objectives: dict[str, str]  # name -> maximize|minimize
    rows: list[dict[str, Any]]  # one per trial: number, state, params, metrics, is_pareto
    pareto: list[int]  # trial numbers on the front (feasible, non-dominated, COMPLETE)
    baseline: int | None  # the baseline trial's number
    headline: list[dict[str, Any]]  # each front trial vs the baseline
    hypervolume: list[float]  # baseline-normalized, after each complete trial (completion order)
    hv_trials: list[int] = field(default_factory=list)  # the trial completed at each hv point


def _row(t: FrozenTrial, objectives: dict[str, str], front: set[int]) -> dict[str, Any]:
    row: dict[str, Any] = {"number": t.number, "state": t.state.name}
    for key, value in sorted(t.params.items()):
        row[f"param:{key}"] = value
    for name in METRIC_NAMES:
        row[name] = t.user_attrs.get(name)
    for key, value in sorted(t.user_attrs.items()):
        if key not in row and key not in ("constraints",) and not isinstance(value, dict | list):
            row[key] = value
    row["baseline"] = bool(t.user_attrs.get("baseline", False))
    row["is_pareto"] = t.number in front
    row["fail_reason"] = t.user_attrs.get("fail_reason")
    return row


def _ratio(a: Any, b: Any) -> float | None:
    try:
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        return None
    return a / b if b and math.isfinite(a) and math.isfinite(b) else None


def headline_row(trial: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The paper's claim made measurable: how much faster and smaller than the baseline."""
    return {
        "number": trial["number"],
        "throughput_x": _ratio(trial["throughput"], base["throughput"]),
        "params_x": _ratio(base["params"], trial["params"]),
        "flops_x": _ratio(base["flops"], trial["flops"]),
        "energy_x": _ratio(base["energy"], trial["energy"]),
        "energy_source": trial["energy_source"],
        "accuracy_delta_pts": (
            100.0 * (float(trial["accuracy"]) - float(base["accuracy"]))
            if trial["accuracy"] is not None and base["accuracy"] is not None
            else None
        ),
        "accuracy": trial["accuracy"],
    }


def study_table(study: optuna.Study, objectives: dict[str, str]) -> StudyTable:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    front = {t.number for t in study.best_trials} if complete else set()
    rows = [_row(t, objectives, front) for t in trials]
    base = next((r for r in rows if r["baseline"] and r["state"] == "COMPLETE"), None)
    pareto = sorted(front)
    headline: list[dict[str, Any]] = []
    hv: list[float] = []
    hv_trials: list[int] = []
    if base is not None:
        by_number = {r["number"]: r for r in rows}
        headline = [headline_row(by_number[n], base) for n in pareto]
        names, directions = list(objectives), list(objectives.values())
        order = sorted(complete, key=lambda t: (t.datetime_complete, t.number))
        hv = history([tuple(t.values) for t in order], tuple(base[n] for n in names), directions)
        hv_trials = [t.number for t in order]
    return StudyTable(
        objectives=dict(objectives),
        rows=rows,
        pareto=pareto,
        baseline=base["number"] if base else None,
        headline=headline,
        hypervolume=hv,
        hv_trials=hv_trials,
    )
