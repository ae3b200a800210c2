"""Token axis: ToMe token merging for timm ViTs and supernet subnets.

`apply_token(model, spec)` is what a trial calls; `apply_tome`/`remove_tome` are the surgery,
`merge` the pure maths, `schedule` the per-block merge counts.
"""

from __future__ import annotations

import torch

from vitsweep.spec import ConfigError, TokenSpec
from vitsweep.tome.merge import bipartite_soft_matching, max_merge, merge_wavg
from vitsweep.tome.patch import (
    TomeSchedule,
    apply_tome,
    block_forward,
    forward_tokens,
    is_patched,
    num_tokens_of,
    remove_tome,
    schedule_of,
    token_counts,
    token_sources,
)
from vitsweep.tome.schedule import SCHEDULES, TomeArgError, make_schedule

TOKEN_MODES = ("none", "tome")

__all__ = [
    "SCHEDULES",
    "TOKEN_MODES",
    "TomeSchedule",
    "apply_token",
    "apply_tome",
    "bipartite_soft_matching",
    "block_forward",
    "forward_tokens",
    "is_patched",
    "make_schedule",
    "max_merge",
    "merge_wavg",
    "num_tokens_of",
    "remove_tome",
    "schedule_of",
    "token_counts",
    "token_sources",
]


def apply_token(model: torch.nn.Module, spec: TokenSpec) -> torch.nn.Module:
    """Set the model's token axis from the config: `none` -> stock, `tome` -> merged.
    Argument errors come back as ConfigError naming the `token.*` key."""
    mode = getattr(spec, "mode", "none")
    if mode == "none":
        return remove_tome(model)
    if mode != "tome":
        raise ConfigError(f"token.mode must be one of {TOKEN_MODES}, got {mode!r}")
    r = spec.r
    if isinstance(r, list | tuple):
        r = tuple(r)  # OmegaConf ListConfig arrives as a list after to_object
    try:
        return apply_tome(
            model,
            r,
            prop_attn=spec.prop_attn,
            schedule=spec.schedule,
            keep_ratio=spec.keep_ratio,
            compile_merge=spec.compile_merge,
        )
    except TomeArgError as e:
        raise ConfigError(f"token.{e}") from None
