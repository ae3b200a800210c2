"""The study as plain rows, its Pareto front (Optuna's), and the headline ratios vs the baseline.

Computed once as data (like optuna's `_ParetoFrontInfo`), rendered by the report, the CSVs and
W&B alike; tests assert on this data, never on pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
import optuna
from optuna.study._multi_objective import _get_pareto_front_trials_by_trials
from optuna.trial import FrozenTrial, TrialState

from vitsweep import record
from vitsweep.hypervolume import history
from vitsweep.stats import TEST_FLAGS_KEY, paired_difference, unpack_flags

# Which split picks the front and which one reports it (DESIGN: select on val, report on test).
SELECTED_ON, REPORTED_ON = "val", "test"


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
    # The objectives the hypervolume is computed over: all of them, except energy when every
    # complete trial's energy is an estimate (watts / throughput: a copy of throughput).
    hv_objectives: list[str] = field(default_factory=list)
    energy_derived: bool = False  # every complete trial's energy is `estimate`


# What the ratio headline compares: a study without them (any app but vitsweep's) has none.
HEADLINE_METRICS = ("accuracy", "throughput")


def _row(t: FrozenTrial, front: set[int], columns: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"number": t.number, "state": t.state.name}
    for key, value in sorted(t.params.items()):
        row[f"param:{key}"] = value
    metrics = record.metrics(t)
    for name in columns:
        row[name] = metrics.get(name)
    for key, value in sorted(metrics.items()):
        # The per-image test flags are kept out of the CSVs: the headline uses them.
        if key not in row and key != TEST_FLAGS_KEY and not isinstance(value, dict | list):
            row[key] = value
    row["baseline"] = record.is_baseline(t)
    row["feasible"] = record.is_feasible(t) if t.state == TrialState.COMPLETE else None
    row["is_pareto"] = t.number in front
    row["fail_reason"] = record.fail_reason(t)
    row["duplicate_of"] = record.duplicate_of(t)
    return row


def _ratio(a: Any, b: Any) -> float | None:
    try:
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        return None
    return a / b if b and math.isfinite(a) and math.isfinite(b) else None


def _pts(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def test_flags(t: FrozenTrial) -> np.ndarray | None:
    """The trial's per-image test-split correctness, or None if it did not record them."""
    text, n = record.metric(t, TEST_FLAGS_KEY), record.metric(t, "test_accuracy_n")
    if not isinstance(text, str) or not isinstance(n, int):
        return None
    return unpack_flags(text, n)


def headline_row(
    trial: dict[str, Any],
    base: dict[str, Any],
    flags: np.ndarray | None = None,
    base_flags: np.ndarray | None = None,
) -> dict[str, Any]:
    """The paper's claim made measurable: how much faster and smaller than the baseline, and how
    much accuracy it costs on held-out test images (paired with the baseline on the same images,
    exact McNemar 95% interval); the val delta is what selected the front, shown for contrast."""
    acc, base_acc = trial.get("accuracy"), base.get("accuracy")
    row: dict[str, Any] = {
        "number": trial["number"],
        "throughput_x": _ratio(trial.get("throughput"), base.get("throughput")),
        "params_x": _ratio(base.get("params"), trial.get("params")),
        "flops_x": _ratio(base.get("flops"), trial.get("flops")),
        "bytes_x": _ratio(base.get("model_bytes"), trial.get("model_bytes")),  # what ships
        "energy_x": _ratio(base.get("energy"), trial.get("energy")),
        "energy_source": trial.get("energy_source"),
        "selected_on": SELECTED_ON,
        "accuracy": acc,
        "accuracy_delta_pts": (
            100.0 * (float(acc) - float(base_acc))
            if acc is not None and base_acc is not None
            else None
        ),
        "reported_on": REPORTED_ON,
        "test_accuracy": trial.get("test_accuracy"),
        "test_accuracy_lo": trial.get("test_accuracy_lo"),
        "test_accuracy_hi": trial.get("test_accuracy_hi"),
        "test_delta_pts": None,
        "test_delta_lo_pts": None,
        "test_delta_hi_pts": None,
        "test_n": None,
        "test_better": None,  # test images this trial gets right and the baseline wrong
        "test_worse": None,  # ... and the reverse
        "mcnemar_p": None,
    }
    if flags is not None and base_flags is not None and flags.shape == base_flags.shape:
        p = paired_difference(flags, base_flags)
        row.update(
            test_delta_pts=_pts(p.diff),
            test_delta_lo_pts=_pts(p.lo),
            test_delta_hi_pts=_pts(p.hi),
            test_n=p.n,
            test_better=p.a_only,
            test_worse=p.b_only,
            mcnemar_p=p.p_value,
        )
    return row


def front_trials(study: optuna.Study, trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The feasible, non-dominated COMPLETE trials (Optuna's own dominance). Feasibility reads
    both Optuna 5 constraints and the user attribute of studies written before them, and a
    trial that repeats another's configuration (`duplicate_of`) stands beside its twin, not on
    the front twice; which is why this does not simply return `study.best_trials`."""
    feasible = [
        t
        for t in trials
        if t.state == TrialState.COMPLETE
        and record.is_feasible(t)
        and record.duplicate_of(t) is None
    ]
    return _get_pareto_front_trials_by_trials(feasible, study.directions)


def study_table(
    study: optuna.Study, objectives: dict[str, str], columns: Sequence[str] = ()
) -> StudyTable:
    """`columns`: metrics every row carries, in this order (None where a trial lacks one): the
    app's metric list. After them come the objectives, then whatever else any trial returned,
    so every row has the same keys whatever the app is. A study that stored its objectives
    (`metric_names`, as every sweep does) is read by them, whatever `objectives` a later
    command composed (vitsweep-confirm without the sweep's `+hydra.sweeper.objectives...`)."""
    if study.metric_names is not None and len(study.metric_names) == len(study.directions):
        stored = [d.name.lower() for d in study.directions]
        objectives = dict(zip(study.metric_names, stored, strict=True))
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    front = {t.number for t in front_trials(study, trials)}
    names = list(dict.fromkeys([*columns, *objectives]))
    returned = {
        k for t in complete for k, v in record.metrics(t).items() if not isinstance(v, dict | list)
    }
    returned = sorted(returned - set(names))
    names += [k for k in returned if k != TEST_FLAGS_KEY]
    rows = [_row(t, front, names) for t in trials]
    base = next((r for r in rows if r["baseline"] and r["state"] == "COMPLETE"), None)
    pareto = sorted(front)
    headline: list[dict[str, Any]] = []
    hv: list[float] = []
    hv_trials: list[int] = []
    derived = bool(complete) and all(
        record.metric(t, "energy_source") == "estimate" for t in complete
    )
    names = hv_names(objectives, derived)
    comparable = base is not None and all(base.get(m) is not None for m in HEADLINE_METRICS)
    if base is not None:
        by_number = {r["number"]: r for r in rows}
        by_trial = {t.number: t for t in trials}
        base_flags = test_flags(by_trial[base["number"]])
        headline = [
            headline_row(by_number[n], base, test_flags(by_trial[n]), base_flags)
            for n in (pareto if comparable else [])
        ]
        index = [list(objectives).index(n) for n in names]
        directions = [objectives[n] for n in names]
        order = sorted(complete, key=lambda t: (t.datetime_complete, t.number))
        # An infeasible trial adds no volume: it holds its place in the history (x = complete
        # trials) at the volume of the feasible trials before it.
        hv = history(
            [tuple(t.values[i] for i in index) if record.is_feasible(t) else None for t in order],
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
        hv_objectives=names,
        energy_derived=derived,
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


def hv_names(objectives: dict[str, str], energy_derived: bool) -> list[str]:
    """The objectives the hypervolume counts: energy is left out when it is an estimate and
    throughput is also an objective (it would count throughput twice); the front is the same."""
    names = list(objectives)
    if energy_derived and "energy" in names and "throughput" in names:
        names.remove("energy")
    return names


# Each front member's accuracies with their 95% Wilson intervals and image counts.
INTERVAL_KEYS = (
    "accuracy_lo",
    "accuracy_hi",
    "accuracy_n",
    "test_accuracy",
    "test_accuracy_lo",
    "test_accuracy_hi",
    "test_accuracy_n",
)


def notes(table: StudyTable) -> list[str]:
    """What a reader must know to read the numbers: splits, intervals, what energy is (the
    first only for a study whose trials report accuracies, i.e. vitsweep's own)."""
    accuracies = any(r.get("test_accuracy") is not None for r in table.rows)
    out = (
        []
        if not accuracies
        else [
            f"The front is selected on the {SELECTED_ON} split; the headline reports the held-out "
            f"{REPORTED_ON} split, paired with the baseline on the same images (exact McNemar 95% "
            "interval); every accuracy has a 95% Wilson interval (_lo, _hi) over _n images."
        ]
    )
    if table.energy_derived:
        out.append(
            "Energy is an estimate (configured watts / throughput), a copy of the throughput "
            "objective, not a measurement; the hypervolume is computed over "
            f"{', '.join(table.hv_objectives)} (energy left out)."
        )
    elif table.hv_objectives:
        out.append(f"The hypervolume is computed over {', '.join(table.hv_objectives)}.")
    beside = [
        r["number"]
        for r in table.rows
        if r.get("throughput_x_beside") is not None and r["duplicate_of"] is None
    ]  # a repeat is told its twin's metrics: it timed nothing
    if beside:
        out.append(
            f"{len(beside)} measured trials timed the baseline (trial {table.baseline}) just "
            "before and after their own throughput (measure.beside=baseline): their throughput "
            "is that ratio (throughput_x_beside) times the baseline trial's images/s, so no "
            "ratio rests on two readings minutes apart; throughput_raw is what the clock read."
        )
    predicted = [r for r in table.rows if r.get("predicted") and r["duplicate_of"] is None]
    if predicted:
        guessed = sum("accuracy" in str(r["predicted"]).split(",") for r in predicted)
        out.append(
            f"{len(predicted)} trials were priced, not timed (measure.mode=predicted): their "
            "throughput, latency and energy come from this machine's cost table"
            + (
                f"; {guessed} of them also had their val accuracy predicted (a GP fitted on "
                "the supernet's evaluated subnets, `accuracy_fitted_on`)"
                if guessed
                else ""
            )
            + " (`predicted` on each front member). None evaluated the test split: run "
            "vitsweep-confirm to measure the front."
        )
    return out


def panel_pairs(table: StudyTable) -> list[tuple[str, str]]:
    """The (x, y) objective pairs worth a panel, in the PNG and in report.html alike. A derived
    objective (energy while it is an estimate: watts / throughput) gets none: its panels would
    repeat throughput's. One objective: the objective against the trial number."""
    names = [n for n in table.objectives if n in table.hv_objectives] or list(table.objectives)
    if len(names) == 1:
        return [("number", names[0])]
    return list(combinations(names, 2))


def headline_sentence(table: StudyTable) -> str | None:
    """The report's first line: the front member with the largest throughput gain against the
    baseline, its size gain and what it costs in test accuracy with the 95% interval. None for
    a study without a ratio headline (no baseline, or not vitsweep's metrics)."""
    rows = [h for h in table.headline if h["number"] != table.baseline and h["throughput_x"]]
    if not rows:
        return None
    best = max(rows, key=lambda h: h["throughput_x"])
    parts = [
        f"Trial {best['number']} runs {best['throughput_x']:.1f}x the throughput of the "
        f"baseline (trial {table.baseline})"
    ]
    if best.get("params_x"):
        parts.append(f" with {best['params_x']:.1f}x fewer params")
    if best.get("test_delta_pts") is not None:
        parts.append(
            f", at {best['test_delta_pts']:+.1f} points of test accuracy (95% interval "
            f"{best['test_delta_lo_pts']:+.1f} to {best['test_delta_hi_pts']:+.1f}, "
            f"{best['test_n']:,} images)"
        )
    elif best.get("accuracy_delta_pts") is not None:
        parts.append(f", at {best['accuracy_delta_pts']:+.1f} points of val accuracy")
    return "".join(parts) + "."
