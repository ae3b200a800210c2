"""The bit-width ILP against brute force on small instances."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from vitsweep.precision.ilp import BudgetInfeasible, choose


def _brute_force(sens: np.ndarray, cost: np.ndarray, budget: float) -> float:
    """Least total sensitivity over every assignment that fits (inf if none)."""
    best = np.inf
    rows = np.arange(sens.shape[0])
    for pick in itertools.product(range(sens.shape[1]), repeat=sens.shape[0]):
        idx = np.array(pick)
        if cost[rows, idx].sum() <= budget:
            best = min(best, sens[rows, idx].sum())
    return best


def _instance(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """4 layers x bits (4, 6, 8): HAWQ-shaped numbers (error ~ 4^-bits, bytes ~ bits)."""
    rng = np.random.default_rng(seed)
    bits = np.array([4, 6, 8])
    numel = rng.integers(1_000, 50_000, size=4)
    trace = rng.lognormal(0.0, 1.5, size=4)
    sens = trace[:, None] * numel[:, None] * 4.0 ** (-bits[None, :]) * rng.uniform(0.8, 1.2, (4, 3))
    cost = numel[:, None] * bits[None, :] / 8 + 64
    return sens, cost


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.6, 1.0])
def test_ilp_equals_brute_force_and_respects_budget(seed, fraction):
    sens, cost = _instance(seed)
    lo, hi = cost.min(axis=1).sum(), cost.max(axis=1).sum()
    budget = lo + fraction * (hi - lo)
    pick = choose(sens, cost, budget)
    rows = np.arange(4)
    assert pick.shape == (4,)
    assert cost[rows, pick].sum() <= budget
    np.testing.assert_allclose(sens[rows, pick].sum(), _brute_force(sens, cost, budget), rtol=1e-9)


def test_budget_exactly_at_an_assignment_is_feasible():
    sens, cost = _instance(0)
    exact = float(cost[0, 0] + cost[1, 2] + cost[2, 1] + cost[3, 0])
    pick = choose(sens, cost, exact)
    assert cost[np.arange(4), pick].sum() <= exact


def test_full_budget_takes_most_bits_everywhere():
    sens, cost = _instance(1)
    assert choose(sens, cost, cost.max(axis=1).sum()).tolist() == [2, 2, 2, 2]


def test_infeasible_budget_reports_the_minimum():
    sens, cost = _instance(2)
    lo = cost.min(axis=1).sum()
    with pytest.raises(BudgetInfeasible) as err:
        choose(sens, cost, lo - 1)
    assert err.value.min_cost == pytest.approx(lo)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="sensitivity"):
        choose(np.ones((4, 3)), np.ones((4, 2)), 10.0)
