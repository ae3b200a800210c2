"""Hypervolume (baseline-normalized, Optuna's WFG) and the early-stop rule."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from vitsweep.hypervolume import (
    history,
    hypervolume,
    normalized_losses,
    plateaued,
    reference_point,
)

DIRS = ["maximize", "maximize", "minimize"]


def union_volume(points: np.ndarray, ref: np.ndarray) -> float:
    """Volume of the union of boxes [p, ref] by coordinate compression: the slow, obvious way."""
    axes = [sorted({*points[:, k], ref[k]}) for k in range(points.shape[1])]
    total = 0.0
    for cell in itertools.product(*(range(len(a) - 1) for a in axes)):
        lo = np.array([axes[k][i] for k, i in enumerate(cell)])
        hi = np.array([axes[k][i + 1] for k, i in enumerate(cell)])
        if any(np.all(p <= lo) for p in points):
            total += float(np.prod(hi - lo))
    return total


def test_hypervolume_of_a_hand_built_3_objective_set_matches_direct_computation() -> None:
    baseline = (0.9, 100.0, 0.5)
    values = [
        (0.9, 100.0, 0.5),
        (0.85, 400.0, 0.2),
        (0.88, 250.0, 0.3),
        (0.7, 900.0, 0.1),
        (0.6, 80.0, 0.9),
    ]
    losses = normalized_losses(values, baseline, DIRS)
    ref = reference_point(DIRS)
    inside = losses[np.all(losses < ref, axis=1)]
    assert hypervolume(values, baseline, DIRS) == pytest.approx(union_volume(inside, ref))
    # The baseline alone spans 1 x 1 x (2 - 1).
    assert hypervolume([baseline], baseline, DIRS) == pytest.approx(1.0)


def test_dominated_points_add_no_volume() -> None:
    baseline = (0.9, 100.0, 0.5)
    front = [(0.9, 100.0, 0.5), (0.85, 400.0, 0.2)]
    worse = [*front, (0.8, 300.0, 0.3)]
    assert hypervolume(worse, baseline, DIRS) == pytest.approx(hypervolume(front, baseline, DIRS))


def test_stop_rule_fires_on_a_plateau_and_not_on_improvement() -> None:
    plateau = [1.0, 1.5, 2.0, 2.01, 2.01, 2.012, 2.012]
    improving = [1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2]
    assert plateaued(plateau, patience=4, min_improvement=0.01)
    assert not plateaued(improving, patience=4, min_improvement=0.01)
    assert not plateaued(plateau[:4], patience=4, min_improvement=0.01)  # too few trials yet


def test_history_is_the_volume_of_every_feasible_prefix() -> None:
    """The incremental history against the slow, obvious count over each prefix; None (an
    infeasible trial) adds nothing, and a point outside the reference box adds nothing."""
    rng = np.random.default_rng(3)
    baseline = (0.9, 100.0, 0.5)
    values: list[tuple[float, ...] | None] = []
    for i in range(14):
        if i % 5 == 3:
            values.append(None)
        else:
            values.append((rng.uniform(0.5, 1.0), rng.uniform(20, 600), rng.uniform(0.05, 1.2)))
    ref = reference_point(DIRS)
    got = history(values, baseline, DIRS)
    for i in range(len(values)):
        kept = [v for v in values[: i + 1] if v is not None]
        losses = normalized_losses(kept, baseline, DIRS)
        inside = losses[np.all(losses < ref, axis=1)]
        expected = union_volume(inside, ref) if len(inside) else 0.0
        assert got[i] == pytest.approx(expected), i
    assert len(got) == len(values) and got == sorted(got)  # never shrinks
