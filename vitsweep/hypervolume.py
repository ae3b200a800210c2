"""Hypervolume of a study's front, normalized by the baseline trial.

Normalization (documented in the README): every objective becomes its ratio to the baseline
trial's value, so the baseline sits at 1 on every axis; maximized ratios are negated so that
all axes are minimized. Reference point: ratio 0 for maximized objectives and ratio 2 for
minimized ones (a candidate must beat zero accuracy/throughput and twice the baseline's
energy to add volume). The baseline alone therefore has hypervolume 1 for two objectives
(1 x (2-1)) and 1 for three (1 x 1 x 1). Optuna's WFG implementation computes the volume.
"""

from __future__ import annotations

import math

import numpy as np
from optuna._hypervolume import compute_hypervolume  # Optuna's own WFG hypervolume

REF_MAX, REF_MIN = 0.0, 2.0


def normalized_losses(
    values: list[tuple[float, ...]], baseline: tuple[float, ...], directions: list[str]
) -> np.ndarray:
    rows = []
    for v in values:
        row = []
        for x, b, d in zip(v, baseline, directions, strict=True):
            ratio = x / b if b else math.inf
            row.append(-ratio if d == "maximize" else ratio)
        rows.append(row)
    return np.asarray(rows, dtype=float).reshape(len(rows), len(directions))


def reference_point(directions: list[str]) -> np.ndarray:
    return np.asarray([-REF_MAX if d == "maximize" else REF_MIN for d in directions], dtype=float)


def hypervolume(
    values: list[tuple[float, ...]], baseline: tuple[float, ...], directions: list[str]
) -> float:
    """Volume dominated by `values` (baseline-normalized) up to the reference point."""
    if not values:
        return 0.0
    losses = normalized_losses(values, baseline, directions)
    ref = reference_point(directions)
    inside = losses[np.all(losses < ref, axis=1)]
    if len(inside) == 0:
        return 0.0
    return float(compute_hypervolume(inside, ref))


def history(
    values: list[tuple[float, ...] | None], baseline: tuple[float, ...], directions: list[str]
) -> list[float]:
    """Hypervolume after each of `values` in order (the trials' completion order); None marks a
    trial that adds no volume (infeasible). Incremental: a point that the front so far
    dominates (or that lies outside the reference box) leaves the volume as it was, so WFG runs
    only when the front changes, on the front alone, not on every prefix of the study."""
    ref = reference_point(directions)
    front = np.empty((0, len(directions)))
    out: list[float] = []
    current = 0.0
    for v in values:
        if v is not None:
            point = normalized_losses([v], baseline, directions)[0]
            inside = bool(np.all(point < ref))
            dominated = bool(np.any(np.all(front <= point, axis=1))) if len(front) else False
            if inside and not dominated:
                keep = ~np.all(point <= front, axis=1) if len(front) else np.zeros(0, bool)
                front = np.vstack([front[keep], point])
                current = float(compute_hypervolume(front, ref))
        out.append(current)
    return out


def plateaued(hv: list[float], patience: int, min_improvement: float) -> bool:
    """True when the last `patience` trials raised the hypervolume by less than
    `min_improvement` (relative to its value `patience` trials ago)."""
    if len(hv) <= patience:
        return False
    before, now = hv[-1 - patience], hv[-1]
    if before <= 0:
        return False
    return (now - before) / before < min_improvement
