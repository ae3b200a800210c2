"""The ViT study's conditional search space, as a space hook of the generic sweeper
(`hydra.sweeper.space_hook: vitsweep.vit_space.conditional`).

Why here and not in `search/`: the sweeper serves any Hydra app, so the search room knows
nothing of supernets or precisions; this hook is the ViT study's own part of the space.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution

from vitsweep.precision.knobs import MODE_KNOBS, Knob
from vitsweep.spec import TrialSpec


def conditional(trial: optuna.Trial, base: TrialSpec, sampled: dict[str, Any]) -> dict[str, Any]:
    """The default hook: the supernet's conditional space and the quantizers' own knobs.

    A fixed-length encoding of a conditional space: every trial suggests the same params, and
    the ones a trial does not use are ignored. Depth first; then heads and MLP ratio for every
    layer up to the space's *deepest* depth, of which only the first `depth` reach the config.
    Why: Optuna's GP and NSGA-II model only the params that every complete trial shares, and
    TPE (multivariate) only the ones in its relative search space, so per-layer params that
    exist for some trials only (layers past the shallowest depth) were drawn at random with no
    history at all. With one param set for every trial, every sampler learns every layer; an
    ignored value is a dimension that does not change the result, which a GP's per-dimension
    length scale and TPE's density both absorb.

    The quantizers' knobs get the same treatment: the bit budget (`precision=mixed`) and the
    rate (`precision=tq`) are suggested whenever the study *can* sample that precision (it is
    one of the choices of a searched `precision` param), and passed on only to trials of that
    precision. A study that cannot reach mixed or tq (xray's default: fp32/bf16/int8) gets no
    dead dimension; a precision fixed for the launch (not an Optuna param) is the same in every
    trial, so its knob is sampled every trial anyway.
    """
    out: dict[str, Any] = {}
    space = base.arch.space
    if base.arch.kind == "supernet" and space is not None:
        if "arch.embed_dim" not in sampled:
            out["arch.embed_dim"] = trial.suggest_categorical("arch.embed_dim", space.embed_dim)
        depth = sampled.get("arch.depth")
        if depth is None:
            depth = trial.suggest_categorical("arch.depth", space.depth)
            out["arch.depth"] = depth
        deepest = max(space.depth)
        if "arch.num_heads" not in sampled:
            heads = [
                trial.suggest_categorical(f"arch.num_heads.{i}", space.num_heads)
                for i in range(deepest)
            ]
            out["arch.num_heads"] = heads[:depth]
        if "arch.mlp_ratio" not in sampled:
            ratios = [
                trial.suggest_categorical(f"arch.mlp_ratio.{i}", space.mlp_ratio)
                for i in range(deepest)
            ]
            out["arch.mlp_ratio"] = ratios[:depth]
    precision = sampled.get("precision")
    for mode, knobs in MODE_KNOBS.items():  # each precision mode's own knobs (precision.knobs)
        for knob in knobs:
            if knob.key in sampled or not _may_be(trial, precision, mode):
                continue
            value = _suggest_knob(trial, knob)
            if precision == mode:
                out[knob.key] = value
    return out


def _suggest_knob(trial: optuna.Trial, knob: Knob) -> Any:
    if knob.choices:
        return trial.suggest_categorical(knob.key, knob.choices)
    return trial.suggest_float(knob.key, knob.low, knob.high, step=knob.step)


def _may_be(trial: optuna.Trial, precision: Any, mode: str) -> bool:
    """Whether some trial of this study can have `precision=mode`: this one has it, or the
    study searches `precision` with `mode` among its choices."""
    if precision == mode:
        return True
    dist = trial.distributions.get("precision")
    return isinstance(dist, CategoricalDistribution) and mode in dist.choices
