"""Pick one option (bit-width) per layer: least total sensitivity within a cost budget.

    minimise   sum_l sum_k S[l, k] x[l, k]
    subject to sum_k x[l, k] = 1            (one bit-width per layer)
               sum_l sum_k C[l, k] x[l, k] <= budget
               x binary
solved exactly by `scipy.optimize.milp` (HiGHS) with the relative MIP gap set to 0.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp


class BudgetInfeasible(ValueError):
    """Even the cheapest option in every layer costs more than the budget."""

    def __init__(self, min_cost: float, budget: float) -> None:
        super().__init__(f"budget {budget:g} < smallest feasible cost {min_cost:g}")
        self.min_cost, self.budget = min_cost, budget


def choose(sensitivity: np.ndarray, cost: np.ndarray, budget: float) -> np.ndarray:
    """Index of the chosen option per layer (shape (L,)); BudgetInfeasible if none fits."""
    s = np.asarray(sensitivity, dtype=np.float64)
    c = np.asarray(cost, dtype=np.float64)
    if s.ndim != 2 or s.shape != c.shape:
        raise ValueError(f"sensitivity {s.shape} and cost {c.shape} must both be (layers, options)")
    layers, options = s.shape
    min_cost = float(c.min(axis=1).sum())
    if min_cost > budget:
        raise BudgetInfeasible(min_cost, budget)
    # Scale both rows to O(1) so HiGHS's absolute tolerances mean the same at any model size.
    s_scale = max(float(np.abs(s).max()), 1e-300)
    c_scale = max(float(np.abs(c).max()), float(budget), 1e-300)
    one_each = np.kron(np.eye(layers), np.ones((1, options)))
    limit = budget
    for _ in range(3):  # HiGHS may overshoot by its feasibility tolerance: tighten and re-solve
        res = milp(
            c=s.ravel() / s_scale,
            integrality=np.ones(layers * options),
            bounds=Bounds(0, 1),
            constraints=[
                LinearConstraint(one_each, 1, 1),
                LinearConstraint((c.ravel() / c_scale)[None, :], -np.inf, limit / c_scale),
            ],
            options={"mip_rel_gap": 0.0},
        )
        if not res.success:
            raise BudgetInfeasible(min_cost, budget)
        pick = np.rint(res.x).reshape(layers, options).argmax(axis=1)
        spent = float(c[np.arange(layers), pick].sum())
        if spent <= budget:
            return pick
        limit -= spent - budget + 1e-9 * c_scale
    raise RuntimeError(f"milp kept returning cost {spent:g} over budget {budget:g}")
