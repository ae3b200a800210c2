"""What each precision mode adds to the search space, as plain data. The search room turns these
into Optuna distributions without knowing any precision by name: a new mode with a knob touches
this file only."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Knob:
    """One searched key: `choices` (categorical), or a float range `low..high` by `step`."""

    key: str
    choices: tuple[float | None, ...] = ()
    low: float = 0.0
    high: float = 0.0
    step: float | None = None


# tq's rates, in stored bits per weight (conf/precision/tq.yaml: budget=stored, transform=auto):
# 1 to 3 bits, where tq competes with 1-3 bit uniform codes; from 4 bits int8's speed is near.
TQ_RATES = (1.0, 1.5, 2.0, 3.0)

# mixed's latency budgets: on the xray baseline (Xeon, no AMX) the all-int8 program ran batch 1
# at 0.6-0.9x the fp32 model's, so these span "no slower than fp32" to "about int8's".
LATENCY_RATIOS = (None, 0.6, 0.8, 1.0)

MODE_KNOBS: dict[str, tuple[Knob, ...]] = {
    # mixed: the model-bytes budget of the bit-width ILP, as a fraction of fp32, and its batch-1
    # latency budget against the fp32 model's (None: bytes only; a budget this machine cannot
    # meet fails the trial with the smallest feasible ratio in its reason)
    "mixed": (
        Knob("precision.budget_ratio", low=0.15, high=0.3, step=0.05),
        Knob("precision.latency_ratio", choices=LATENCY_RATIOS),
    ),
    "tq": (Knob("precision.rate", choices=TQ_RATES),),
}
