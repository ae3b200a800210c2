"""The study as plain rows, its Pareto front (Optuna's), and the headline ratios vs the baseline.

Computed once as data (like optuna's `_ParetoFrontInfo`), rendered by the report, the CSVs and
W&B alike; tests assert on this data, never on pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.study._multi_objective import _get_pareto_front_trials_by_trials
from optuna.trial import FrozenTrial, TrialState

from vitsweep import record
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
    baseline_note: str | None = None  # why there is no baseline to compare with, if there is none


def _row(t: FrozenTrial, front: set[int]) -> dict[str, Any]:
    row: dict[str, Any] = {"number": t.number, "state": t.state.name}
    for key, value in sorted(t.params.items()):
        row[f"param:{key}"] = value
    metrics = record.metrics(t)
    for name in METRIC_NAMES:
        row[name] = metrics.get(name)
    for key, value in sorted(metrics.items()):
        if key not in row and not isinstance(value, dict | list):
            row[key] = value
    row["baseline"] = record.is_baseline(t)
    row["feasible"] = record.is_feasible(t) if t.state == TrialState.COMPLETE else None
    row["is_pareto"] = t.number in front
    row["fail_reason"] = record.fail_reason(t)
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


def front_trials(study: optuna.Study, trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The feasible, non-dominated COMPLETE trials (Optuna's own dominance). Feasibility reads
    both Optuna 5 constraints and the user attribute of studies written before them, which is
    why this does not simply return `study.best_trials` (equal for new studies)."""
    feasible = [t for t in trials if t.state == TrialState.COMPLETE and record.is_feasible(t)]
    return _get_pareto_front_trials_by_trials(feasible, study.directions)


def study_table(study: optuna.Study, objectives: dict[str, str]) -> StudyTable:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    front = {t.number for t in front_trials(study, trials)}
    rows = [_row(t, front) for t in trials]
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
        # An infeasible trial adds no volume: it holds its place in the history (x = complete
        # trials) at the volume of the feasible trials before it.
        hv = history(
            [tuple(t.values) if record.is_feasible(t) else None for t in order],
            tuple(base[n] for n in names),
            directions,
        )
        hv_trials = [t.number for t in order]
    return StudyTable(
        objectives=dict(objectives),
        rows=rows,
        pareto=pareto,
        baseline=base["number"] if base else None,
        headline=headline,
        hypervolume=hv,
        hv_trials=hv_trials,
        baseline_note=None if base is not None else _baseline_note(trials),
    )


def _baseline_note(trials: list[FrozenTrial]) -> str:
    """Why the headline is empty: the user sees this instead of a silent blank table."""
    tried = [t for t in trials if record.is_baseline(t)]
    if not tried:
        return "no baseline trial in this study (hydra.sweeper.enqueue_baseline=false)"
    last = tried[-1]
    if last.state == TrialState.FAIL:
        return f"baseline trial {last.number} FAILED: {record.fail_reason(last) or 'no reason'}"
    return f"baseline trial {last.number} is {last.state.name}: no ratios until it completes"
