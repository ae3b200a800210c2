"""Model surgery: ToMe on current timm `VisionTransformer`s (and our supernet subnets).

Modifications made by `apply_tome` (and undone exactly by `remove_tome`):
- the model's class becomes a subclass of its own class whose `forward`/`forward_features` run
  the blocks themselves, passing token sizes from block to block as local variables;
- the model holds the schedule as one frozen `TomeSchedule` (`model._tome`); nothing is popped
  or mutated during a forward, so forwards do not leak state into each other.
Blocks, attention modules and weights are untouched; a block that merges nothing while all
sizes are 1 runs its stock `forward` (r=0 costs nothing). A merging block re-uses the block's
own modules: LayerScale, qk-norm, drop-path, dropouts, fused SDPA (the log-size bias as its float
`attn_mask`) and each attention module's own heads/head_dim (supernet subnets vary per layer).
Other entry points (`forward_intermediates`, `blocks(x)`) stay stock and merge nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import Block, VisionTransformer

from vitsweep.models.vit import RelPosAttention, grid_positions
from vitsweep.tome.fused import fused_merge
from vitsweep.tome.merge import max_merge, size_bias
from vitsweep.tome.schedule import TomeArgError, make_schedule, token_counts_for


@dataclass(frozen=True)
class TomeSchedule:
    r: tuple[int, ...]  # tokens merged after each block's attention (capped at run time)
    prop_attn: bool  # add log(size) to the attention logits
    compile_merge: bool = False  # eager inference merges through the compiled region (`fused`)


# CPU flash attention runs bf16 keys through its fast (AMX/brgemm) path only when the key count
# is a multiple of this; otherwise it takes 2-3x as long (measured with 2 threads at batch 16:
# 93 keys 1.53 ms, 96 keys 0.56 ms; 197 keys 2.44 ms, 208 keys 1.89 ms). Merged token counts are
# arbitrary, so merging blocks pad their keys to the next multiple, masked out with -inf.
# FLOPs are counted as executed (`measure.count_flops`), so a bf16 model's count includes the
# padded keys: 0.3% (DeiT-S) and 0.6% (DeiT-Ti) more than the same model in fp32 at r=13.
KEY_ALIGN = 16


def _aligned_keys(
    k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Keys, values and bias padded to a multiple of `KEY_ALIGN` keys where that is faster
    (bf16 on CPU); the padded keys get -inf, so every output is that of the unpadded keys."""
    n = k.shape[-2]
    pad = -n % KEY_ALIGN
    if pad == 0 or k.dtype != torch.bfloat16 or k.device.type != "cpu":
        return k, v, bias
    if bias is None:
        bias = k.new_zeros(k.shape[0], 1, 1, n)
    bias = F.pad(bias, (0, pad), value=float("-inf"))
    return F.pad(k, (0, 0, 0, pad)), F.pad(v, (0, 0, 0, pad)), bias


def _attention(
    attn: Attention, x: torch.Tensor, bias: torch.Tensor | None, pos: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """timm `Attention.forward` plus the size bias, also returning the head-averaged keys
    (after qk-norm: the keys attention really compares) as the merge metric. Relative-position
    attention (AutoFormer's blocks) places each patch token at `pos`."""
    if isinstance(attn, RelPosAttention):
        return attn.attend(x, bias, pos)
    B, N, _ = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if attn.fused_attn:
        if bias is not None:
            bias = bias.to(q.dtype)
        k_pad, v_pad, bias = _aligned_keys(k, v, bias)
        dropout_p = attn.attn_drop.p if attn.training else 0.0
        out = F.scaled_dot_product_attention(q, k_pad, v_pad, attn_mask=bias, dropout_p=dropout_p)
    else:  # the module was built with fused attention off: follow it
        scores = (q * attn.scale) @ k.transpose(-2, -1)
        if bias is not None:
            scores = scores + bias
        out = attn.attn_drop(scores.softmax(dim=-1)) @ v
    out = out.transpose(1, 2).reshape(B, N, attn.num_heads * attn.head_dim)
    out = attn.norm(out)
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out)), k.mean(dim=1)


def _block(
    blk: Block,
    x: torch.Tensor,
    size: torch.Tensor | None,
    r: int,
    num_prefix: int,
    prop: bool,
    source: torch.Tensor | None = None,
    pos: torch.Tensor | None = None,
    compile_merge: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """timm `Block.forward` with a merge between attention and MLP (as in the paper).
    `source` (batch, tokens, input tokens), when given, follows the merges (its entries are
    > 0 exactly at the input tokens each token holds). `pos` (batch, tokens, 2), for
    relative-position attention, puts a merged token at the size-weighted mean position of
    its patches (AutoFormer's tables are indexed by the rounded offset)."""
    bias = size_bias(size, x.dtype) if prop and size is not None else None
    y, metric = _attention(blk.attn, blk.norm1(x), bias, None if pos is None else pos[:, 1:])
    x = x + blk.drop_path1(blk.ls1(y))
    r = min(r, max_merge(x.shape[1], num_prefix))
    if r > 0:
        extras = tuple(t for t in (source, pos) if t is not None)
        x, size, extras = fused_merge(metric, x, size, r, num_prefix, extras, compile_merge)
        if source is not None:
            source, *rest = extras
            extras = tuple(rest)
        if pos is not None:
            (pos,) = extras
    x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
    return x, size, source, pos


def block_forward(
    blk: Block, x: torch.Tensor, size: torch.Tensor | None, r: int, num_prefix: int, prop: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One block as a patched model runs it: (tokens, sizes) out. The stock block while nothing
    was merged yet and this block merges nothing, else attention, merge, MLP. For timing one
    block alone (the cost predictor's table), so it runs the code a trial runs."""
    if size is None and r == 0:
        return blk(x), None
    x, size, _, _ = _block(blk, x, size, r, num_prefix, prop)
    return x, size


def _features(
    model: VisionTransformer, x: torch.Tensor, sources: list[torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`VisionTransformer.forward_features` with merging blocks; returns (tokens, sizes).
    A `sources` list receives, after each block, which input tokens each token holds."""
    x = model.patch_embed(x)
    x = model._pos_embed(x)
    x = model.patch_drop(x)
    x = model.norm_pre(x)
    sched: TomeSchedule = model._tome
    p = model.num_prefix_tokens
    size = source = pos = None
    if sources is not None:
        source = torch.eye(x.shape[1], dtype=x.dtype, device=x.device).expand(x.shape[0], -1, -1)
    if isinstance(model.blocks[0].attn, RelPosAttention):  # the class token, then the grid
        grid = grid_positions(x.shape[1] - p, device=x.device)
        pos = F.pad(grid, (0, 0, p, 0)).expand(x.shape[0], -1, -1)
    for blk, r in zip(model.blocks, sched.r, strict=True):
        if size is None and r == 0:
            x = blk(x)  # nothing merged yet: the stock block is exact and as fast
        else:
            x, size, source, pos = _block(
                blk, x, size, r, p, sched.prop_attn, source, pos, sched.compile_merge
            )
        if sources is not None:
            sources.append(source > 0)
    return model.norm(x), size


def _weighted_pool(model: VisionTransformer, x: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Average pooling weighted by token size, so a merged token counts for every patch it
    holds and the pooled vector matches the unmerged model's mean."""
    if not model.pool_include_prefix:
        x, size = x[:, model.num_prefix_tokens :], size[:, model.num_prefix_tokens :]
    mean = ((x * size).sum(dim=1) / size.sum(dim=1)).to(x.dtype)  # sizes may be wider
    if model.global_pool == "avgmax":
        return 0.5 * (x.amax(dim=1) + mean)
    return mean


def _no_mask(attn_mask: torch.Tensor | None, is_causal: bool) -> None:
    if attn_mask is not None or is_causal:
        raise ValueError(
            "attn_mask/is_causal cannot be combined with ToMe (tokens move); remove_tome first"
        )


class _ToMeMixin:
    """Overrides placed in front of the model's own class by `apply_tome`."""

    def forward_features(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        _no_mask(attn_mask, is_causal)
        return _features(self, x)[0]

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        _no_mask(attn_mask, is_causal)
        x, size = _features(self, x)
        stock_head = type(self).forward_head is VisionTransformer.forward_head
        if (
            size is None
            or not stock_head
            or self.attn_pool is not None
            or self.global_pool not in ("avg", "avgmax")
        ):
            return self.forward_head(x)
        return self.head(self.head_drop(self.fc_norm(_weighted_pool(self, x, size))))


class ToMeVisionTransformer(_ToMeMixin, VisionTransformer):
    """The patched class for plain timm ViTs (module level, so a patched model pickles)."""


# patched class per original class, and back; subclasses of VisionTransformer get a class
# made on first use (such a patched model deep-copies but pickles only via its state_dict)
_PATCHED: dict[type, type] = {VisionTransformer: ToMeVisionTransformer}
_ORIGINAL: dict[type, type] = {ToMeVisionTransformer: VisionTransformer}


def _tome_class(base: type) -> type:
    if base not in _PATCHED:
        cls = type(f"ToMe{base.__name__}", (_ToMeMixin, base), {"__module__": __name__})
        _PATCHED[base], _ORIGINAL[cls] = cls, base
    return _PATCHED[base]


def _base_class(model: torch.nn.Module) -> type:
    """The class the model had before patching (its own class when unpatched)."""
    return _ORIGINAL.get(type(model), type(model))


def _check_model(model: torch.nn.Module) -> None:
    """Refuse what we would silently get wrong: our block re-implementation mirrors timm's
    `Block` + `Attention` exactly, nothing else."""
    base = _base_class(model)
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"model must be a timm VisionTransformer, got {type(model).__name__}")
    if base.forward_features is not VisionTransformer.forward_features:
        raise ValueError(f"model: {base.__name__} overrides forward_features; not supported")
    for i, blk in enumerate(model.blocks):
        if not isinstance(blk, Block) or type(blk).forward is not Block.forward:
            raise ValueError(
                f"model.blocks[{i}] is {type(blk).__name__}; only timm Block is supported"
            )
        attn = blk.attn
        stock = isinstance(attn, Attention) and type(attn).forward is Attention.forward
        if not stock and not (type(attn) is RelPosAttention and model.num_prefix_tokens == 1):
            raise ValueError(
                f"model.blocks[{i}].attn is {type(attn).__name__}; only timm Attention and "
                "vitsweep's RelPosAttention are supported"
            )


def num_tokens_of(model: VisionTransformer) -> int:
    """Tokens entering the first block at the model's configured image size."""
    return model.patch_embed.num_patches + model.num_prefix_tokens


def apply_tome(
    model: torch.nn.Module,
    r: int | Sequence[int] | None = 0,
    *,
    prop_attn: bool = True,
    schedule: str = "constant",
    keep_ratio: float | None = None,
    compile_merge: bool = False,
) -> torch.nn.Module:
    """Patch `model` in place (and return it) to merge tokens per the schedule.

    `r`: tokens merged per block (int), or one int per block; `schedule` spreads an int r
    (`constant`, `decreasing`); `keep_ratio` instead targets the fraction of tokens left after
    the last block. `compile_merge`: eager inference merges through the compiled region
    (`tome.fused`). Applying again replaces the schedule (same arguments: same model).
    """
    _check_model(model)
    if not isinstance(prop_attn, bool):
        raise TomeArgError(f"prop_attn must be a bool, got {prop_attn!r}")
    if not isinstance(compile_merge, bool):
        raise TomeArgError(f"compile_merge must be a bool, got {compile_merge!r}")
    depth = len(model.blocks)
    rs = make_schedule(
        r,
        depth,
        schedule=schedule,
        keep_ratio=keep_ratio,
        num_tokens=num_tokens_of(model),
        num_prefix=model.num_prefix_tokens,
    )
    model.__class__ = _tome_class(_base_class(model))
    model._tome = TomeSchedule(r=rs, prop_attn=prop_attn, compile_merge=compile_merge)
    return model


def remove_tome(model: torch.nn.Module) -> torch.nn.Module:
    """Undo `apply_tome` in place: the original class and no ToMe attribute (a no-op when the
    model is not patched)."""
    if isinstance(model, _ToMeMixin):
        model.__class__ = _base_class(model)
        del model._tome
    return model


def is_patched(model: torch.nn.Module) -> bool:
    return isinstance(model, _ToMeMixin)


def schedule_of(model: torch.nn.Module) -> TomeSchedule | None:
    return getattr(model, "_tome", None) if is_patched(model) else None


def forward_tokens(
    model: torch.nn.Module, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Final (normed) tokens and how many patches each stands for, (batch, tokens, 1); sizes are
    None when nothing was merged. For reports, visualisation and tests."""
    if not is_patched(model):
        return model.forward_features(x), None
    return _features(model, x)


def token_sources(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """After each block, which input tokens each token holds: bool (batch, tokens, input
    tokens), one per block (the published patch's `trace_source`). For visualisation and tests."""
    if not is_patched(model):
        raise ValueError("token_sources needs a ToMe-patched model (apply_tome first)")
    sources: list[torch.Tensor] = []
    with torch.no_grad():
        _features(model, x, sources)
    return sources


def token_counts(model: torch.nn.Module, num_tokens: int | None = None) -> list[int]:
    """Tokens after each block for an input of `num_tokens` tokens (prefix included; default:
    the model's configured image size). Unpatched models keep them all."""
    if num_tokens is None:
        num_tokens = num_tokens_of(model)
    sched = schedule_of(model)
    if sched is None:
        return [num_tokens] * len(model.blocks)
    return token_counts_for(sched.r, num_tokens, model.num_prefix_tokens)
