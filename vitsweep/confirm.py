"""The confirmation pass: the front's members measured again, the way a release is signed off.

The sweep picks its front on the validation split from one throughput measurement per trial.
`confirm` rebuilds each front member (and the baseline) from its stored config and measures,
on the held-out test split, its accuracy with a 95% Wilson interval and its paired difference
to the baseline (exact McNemar), and its throughput with `repeat_factor` times the repeats and
time, as a ratio to the baseline timed again just before and after it. With `retrain=K` the K
front architectures best on validation are also trained standalone from scratch with the same
recipe, token merging and precision, and their test accuracy is set beside the inherited one
(paired on the same images): what weight sharing bought. With `finetune=K` the K best are
also trained alone from their inherited weights, as AutoFormer fine-tunes its chosen subnets.

Pure Python like `trial.run`: no Hydra, Optuna or W&B (app.py and track/ do those).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from vitsweep import isolated, trial
from vitsweep.measure.accuracy import accuracy_summary, paired_difference
from vitsweep.runctx import RunContext
from vitsweep.spec import ArchSpec, TrialSpec
from vitsweep.trial import Built

A = TypeVar("A")
T = TypeVar("T")


@dataclass(frozen=True)
class Member:
    """One trial to confirm: its number, how to rebuild it, and what the sweep recorded."""

    number: int
    spec: TrialSpec
    recorded: dict[str, Any]  # the trial's user attrs (accuracy, test_accuracy_lo, ...)
    baseline: bool = False


def _pts(x: float) -> float:
    return 100.0 * x


def _more_repeats(spec: TrialSpec, factor: int) -> TrialSpec:
    m = spec.measure
    longer = dataclasses.replace(
        m,
        min_repeats=m.min_repeats * factor,
        max_repeats=m.max_repeats * factor,
        time_cap_s=m.time_cap_s * factor,
    )
    return dataclasses.replace(spec, measure=longer)


@dataclass
class _Ready:
    """A member's model as the trial runs it, kept to be timed (again)."""

    model: nn.Module
    ctx: RunContext
    sample: tuple[int, int, int]
    spec: TrialSpec
    cost_model: nn.Module
    reference: float | None  # the machine's host-speed reference, as the trial had it
    model_bytes: int  # as built: a predicted trial's were priced

    def measure_all(self, beside: Callable[[], float] | None = None) -> dict[str, Any]:
        from vitsweep import measure

        m = self.spec.measure
        cost = measure.measure_all(
            self.model, self.ctx, self.sample, m, self.cost_model, self.reference, beside
        )
        return {**cost, "precision_exec": self.ctx.precision_exec, "model_bytes": self.model_bytes}


def _ready(spec: TrialSpec) -> tuple[Built, _Ready]:
    """The model `spec` builds, run as the trial ran it (`trial.ready`: compiled per
    `measure.compile`)."""
    from vitsweep.measure import host_reference
    from vitsweep.runtime import cost_model

    built, run_model, ctx, _ = trial.ready(spec)
    sample = built.splits.sample_shape
    reference = host_reference(spec.root, spec.measure, ctx.device)
    size = trial.stored_bytes(built.model)
    return built, _Ready(run_model, ctx, sample, spec, cost_model(built.model), reference, size)


def _flagged(spec: TrialSpec) -> tuple[np.ndarray, _Ready]:
    """Test-split correctness flags of the model `spec` builds, and that model."""
    from vitsweep.precision import accuracy_model

    built, ready = _ready(spec)
    judged = accuracy_model(built.model, ready.model)  # as the trial judged it
    return trial.correct_flags(judged, ready.ctx, built.splits.test, spec.measure), ready


def _test_flags(spec: TrialSpec) -> np.ndarray:
    return _flagged(spec)[0]


def _measured(job: tuple[TrialSpec, TrialSpec | None]) -> tuple[np.ndarray, dict[str, Any], float]:
    """(test flags, costs, the baseline's throughput beside it) of one member, in one process.

    The baseline is timed again just before and after the member's throughput (as a
    `measure.beside=baseline` trial times it), and the ratio is taken against those: on a
    shared 2-core VM a whole process ran 20-35% slower or faster than another minutes apart,
    while back-to-back timings agreed within about 5%. The baseline's own job (no baseline
    beside) reads its throughput once.
    """
    spec, baseline = job
    flags, ready = _flagged(spec)
    if baseline is None:
        cost = ready.measure_all()
        return flags, cost, cost["throughput"]
    cost = ready.measure_all(beside=trial.timer(baseline))
    return flags, cost, cost["baseline_throughput_beside"]


def _call(fn: Callable[[A], T], arg: A, isolate: bool) -> T:
    """`fn(arg)` in a clean child process when `measure.isolate`, else here. Why: the sweep
    times each trial in a fresh process, so the confirmation must too, or a difference between
    the two could be the process (one that has built and compiled every member before), not
    the candidate. What is left between them is the host's drift (`measure.drift`)."""
    return isolated.in_child(fn, arg) if isolate else fn(arg)


def _against_sweep(
    row: dict[str, Any], rec: dict[str, Any], base: dict[str, Any]
) -> dict[str, Any]:
    """The confirmed throughput in the units the sweep recorded it in, and sweep over confirmed.

    A `measure.beside=baseline` trial recorded its ratio to the baseline timed beside it times
    the baseline trial's throughput (`throughput_x_beside`): the confirmed ratio, timed the
    same way, is put in those units. Any other trial recorded what the clock read (at the
    host probe's reference speed under `host_probe=scale`), compared with the same here.
    """
    swept, unit = rec.get("throughput"), base.get("throughput")
    if rec.get("throughput_x_beside") is not None and unit:
        confirmed = row["throughput_x"] * float(unit)
    else:
        confirmed = row["throughput"]
    ratio = float(swept) / confirmed if swept and confirmed else None
    return {"throughput_sweep_units": confirmed, "sweep_over_confirmed": ratio}


def standalone(spec: TrialSpec) -> TrialSpec:
    """The same subnet shape as a plain ViT trained from scratch (same recipe, ToMe, precision)."""
    a = spec.arch
    arch = ArchSpec(
        kind="vit",
        img_size=a.img_size,
        patch_size=a.patch_size,
        embed_dim=a.embed_dim,
        depth=a.depth,
        num_heads=a.num_heads,
        mlp_ratio=a.mlp_ratio,
        head_dim=a.head_dim,
    )
    return dataclasses.replace(spec, arch=arch)


def finetuned(spec: TrialSpec) -> TrialSpec:
    """The same subnet trained alone from its inherited weights (same recipe, ToMe, precision)."""
    return dataclasses.replace(spec, arch=dataclasses.replace(spec.arch, finetune=True))


def confirm(
    members: list[Member], retrain: int = 0, repeat_factor: int = 3, finetune: int = 0
) -> list[dict[str, Any]]:
    """One row per member (baseline first): confirmed test accuracy and throughput beside the
    sweep's, paired test difference to the baseline, and for the `retrain` (`finetune`) front
    members best on validation (supernet subnets only) the accuracy of the same architecture
    trained alone from scratch (from its inherited weights) beside the inherited one.
    """
    if repeat_factor < 1:
        raise ValueError(f"repeats={repeat_factor}: must be >= 1")
    base = next((m for m in members if m.baseline), None)
    if base is None:
        raise ValueError("confirm: the study has no complete baseline trial to compare with")
    ordered = [base] + [m for m in members if not m.baseline]
    supernet = [m for m in ordered if m.spec.arch.kind == "supernet" and not m.baseline]
    best = sorted(supernet, key=lambda m: -float(m.recorded.get("accuracy") or 0.0))
    retrain_numbers = {m.number for m in best[:retrain]}
    finetune_numbers = {m.number for m in best[:finetune]}
    variants = {
        "standalone": (standalone, retrain_numbers),
        "finetuned": (finetuned, finetune_numbers),
    }

    flags: dict[int, np.ndarray] = {}
    rows: list[dict[str, Any]] = []
    isolate = base.spec.measure.isolate
    if isolate:  # every float model any member needs, trained before anything is timed
        more = [
            make(m.spec) for make, which in variants.values() for m in best if m.number in which
        ]
        isolated.trained(*(_more_repeats(m.spec, repeat_factor) for m in ordered), *more)
    base_spec = _more_repeats(base.spec, repeat_factor)
    # minutes of work (int8 members compile, retrained ones train): say where it is
    bar = tqdm(ordered, desc="confirm", unit="trial", file=sys.stderr)
    for m in bar:
        bar.set_postfix(
            trial=m.number,
            retrain=m.number in retrain_numbers,
            finetune=m.number in finetune_numbers,
        )
        spec = _more_repeats(m.spec, repeat_factor)
        f, cost, beside = _call(_measured, (spec, None if m.baseline else base_spec), isolate)
        flags[m.number] = f
        rec = m.recorded
        acc = accuracy_summary(f, "test_accuracy")
        lo, hi = rec.get("test_accuracy_lo"), rec.get("test_accuracy_hi")
        row: dict[str, Any] = {
            "number": m.number,
            "baseline": m.baseline,
            "sweep_test_accuracy": rec.get("test_accuracy"),
            "sweep_test_accuracy_lo": lo,
            "sweep_test_accuracy_hi": hi,
            **acc,
            "inside_sweep_interval": (
                None if lo is None or hi is None else bool(lo <= acc["test_accuracy"] <= hi)
            ),
            "sweep_throughput": rec.get("throughput"),
            "sweep_predicted": rec.get("predicted"),  # measure.mode=predicted: priced, not timed
            "throughput": cost["throughput"],
            "throughput_cv": cost.get("throughput_cv"),
            "throughput_repeats": cost.get("repeats"),
            "throughput_raw": cost.get("throughput_raw"),
            "host_speed": cost.get("host_speed"),
            "sweep_precision_exec": rec.get("precision_exec"),
            "precision_exec": cost["precision_exec"],
            "sweep_model_bytes": rec.get("model_bytes"),
            "model_bytes": cost["model_bytes"],
        }
        p = paired_difference(f, flags[base.number])
        row.update(
            test_delta_pts=_pts(p.diff),
            test_delta_lo_pts=_pts(p.lo),
            test_delta_hi_pts=_pts(p.hi),
            baseline_throughput_beside=beside,
            throughput_x=cost["throughput"] / beside,
        )
        row.update(_against_sweep(row, rec, base.recorded))
        for name, (make, which) in variants.items():
            if m.number not in which:
                continue
            alone = _call(_test_flags, make(m.spec), isolate)
            gain = paired_difference(f, alone)
            row.update(
                accuracy_summary(alone, f"{name}_test_accuracy"),
                **{
                    f"inherited_minus_{name}_pts": _pts(gain.diff),
                    f"inherited_minus_{name}_lo_pts": _pts(gain.lo),
                    f"inherited_minus_{name}_hi_pts": _pts(gain.hi),
                },
            )
        rows.append(row)
        swept = row["sweep_over_confirmed"]
        tqdm.write(
            f"trial {m.number}: test {acc['test_accuracy']:.4f} "
            f"({row['test_delta_pts']:+.2f} pts vs baseline), {cost['throughput']:.0f} img/s = "
            f"{row['throughput_x']:.2f}x the baseline beside it"
            + ("" if swept is None else f"; sweep/confirmed {swept:.2f}"),
            file=sys.stderr,
        )
    return rows


# What the confirmation measures again of each objective; the rest are taken from the sweep
CONFIRMED = {
    "accuracy": "test_accuracy",
    "throughput": "throughput_x",
    "model_bytes": "model_bytes",
}


def confirmed_hypervolume(
    rows: list[dict[str, Any]],
    recorded: dict[int, dict[str, Any]],
    directions: dict[str, str],
) -> dict[str, Any]:
    """The front's hypervolume (`vitsweep.hypervolume`: baseline-normalized) from what the
    confirmation measured: test accuracy, throughput as the ratio to the baseline beside it,
    bytes as built. What two studies' fronts are compared by (a predicted study's against a
    measured one's): the sweep's own hypervolume rests on val accuracy and on one reading per
    trial, a predicted study's on predictions. Objectives not measured again (`directions`
    should hold only those the study's hypervolume counts) come from the sweep, named in
    `confirmed_hypervolume_from_sweep`."""
    from vitsweep.hypervolume import hypervolume

    def value(row: dict[str, Any], name: str) -> float:
        key = CONFIRMED.get(name)
        return float(row[key] if key is not None else recorded[row["number"]][name])

    names = list(directions)
    base = next(r for r in rows if r["baseline"])
    points = [tuple(value(r, n) for n in names) for r in rows if not r["baseline"]]
    return {
        "confirmed_hypervolume": hypervolume(
            points, tuple(value(base, n) for n in names), [directions[n] for n in names]
        ),
        "confirmed_hypervolume_objectives": names,
        "confirmed_hypervolume_from_sweep": [n for n in names if n not in CONFIRMED],
    }
