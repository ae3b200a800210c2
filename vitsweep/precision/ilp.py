"""Pick one option (bit-width) per layer: least total sensitivity within cost budgets.

    minimise   sum_l sum_k S[l, k] x[l, k]
    subject to sum_k x[l, k] = 1                 (one bit-width per layer)
               sum_l sum_k C_j[l, k] x[l, k] <= B_j   for every budget j (bytes, latency, ...)
               x binary
solved exactly by `scipy.optimize.milp` (HiGHS) with the relative MIP gap set to 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp


@dataclass(frozen=True)
class Budget:
    """One cost row of the ILP: `cost[l, k]` of option k in layer l, at most `limit` in all."""

    name: str  # what a user sets, e.g. "precision.budget_ratio"
    cost: np.ndarray
    limit: float


class BudgetInfeasible(ValueError):
    """No assignment meets the budget(s) named `names`: alone (`min_cost` > `budget`, the
    cheapest option in every layer costs too much) or only together (`min_cost` is NaN)."""

    def __init__(self, min_cost: float, budget: float, names: tuple[str, ...] = ()) -> None:
        what = " and ".join(names) or "budget"
        if np.isnan(min_cost):
            super().__init__(f"{what}: each can be met alone, but not together")
        else:
            super().__init__(f"{what}: {budget:g} < smallest feasible cost {min_cost:g}")
        self.min_cost, self.budget, self.names = min_cost, budget, names


def choose(sensitivity: np.ndarray, cost: np.ndarray, budget: float) -> np.ndarray:
    """Index of the chosen option per layer (shape (L,)) within one budget."""
    return choose_within(sensitivity, [Budget("budget", np.asarray(cost), budget)])


def choose_within(sensitivity: np.ndarray, budgets: Sequence[Budget]) -> np.ndarray:
    """Index of the chosen option per layer (shape (L,)) meeting every budget; BudgetInfeasible
    names the budget that cannot be met (or the ones that cannot be met together)."""
    s = np.asarray(sensitivity, dtype=np.float64)
    costs = [np.asarray(b.cost, dtype=np.float64) for b in budgets]
    if s.ndim != 2 or any(c.shape != s.shape for c in costs):
        shapes = ", ".join(str(c.shape) for c in costs)
        raise ValueError(f"sensitivity {s.shape} and cost {shapes} must all be (layers, options)")
    for b, c in zip(budgets, costs, strict=True):
        if float(c.min(axis=1).sum()) > b.limit:
            raise BudgetInfeasible(float(c.min(axis=1).sum()), b.limit, (b.name,))
    layers, options = s.shape
    rows = np.arange(layers)
    # Scale every row to O(1) so HiGHS's absolute tolerances mean the same at any model size.
    s_scale = max(float(np.abs(s).max()), 1e-300)
    scales = [
        max(float(np.abs(c).max()), abs(b.limit), 1e-300)
        for b, c in zip(budgets, costs, strict=True)
    ]
    one_each = np.kron(np.eye(layers), np.ones((1, options)))
    names = tuple(b.name for b in budgets)

    def solve(objective_scale: float) -> np.ndarray:
        limits = [b.limit for b in budgets]
        for _ in range(3):  # HiGHS may overshoot by its feasibility tolerance: tighten, re-solve
            res = milp(
                c=s.ravel() / objective_scale,
                integrality=np.ones(layers * options),
                bounds=Bounds(0, 1),
                constraints=[LinearConstraint(one_each, 1, 1)]
                + [
                    LinearConstraint((c.ravel() / k)[None, :], -np.inf, lim / k)
                    for c, k, lim in zip(costs, scales, limits, strict=True)
                ],
                options={"mip_rel_gap": 0.0},
            )
            if not res.success:
                raise BudgetInfeasible(float("nan"), float("nan"), names)
            pick = np.rint(res.x).reshape(layers, options).argmax(axis=1)
            over = [
                float(c[rows, pick].sum()) - b.limit for b, c in zip(budgets, costs, strict=True)
            ]
            if all(o <= 0 for o in over):
                return pick
            limits = [
                lim - (o + 1e-9 * k if o > 0 else 0.0)
                for lim, o, k in zip(limits, over, scales, strict=True)
            ]
        raise RuntimeError(f"milp kept returning costs over their budgets ({names})")

    pick = solve(s_scale)
    # HiGHS also stops within an absolute gap of 1e-6 of the scaled objective, which scipy does
    # not let us set. Where the optimum sits far below the largest sensitivity (bf16 and fp32
    # options, whose errors are near 0), that gap swallowed real differences (a tiny ViT: 5.49
    # against 5.01e-13 found by brute force), so solve again scaled by the first answer.
    found = float(s[rows, pick].sum())
    if 0 < found < 1e-2 * s_scale:
        again = solve(found)
        if float(s[rows, again].sum()) < found:
            pick = again
    return pick
