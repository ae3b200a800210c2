"""One builder for every ViT we run: a stock timm `VisionTransformer`, per-layer heads/MLP ratio.

Standalone models, supernet storage and extracted subnets all come from `build_vit`, so ToMe,
quantization and the cost counters see the same module tree (timm's) whatever the source.

Three options of a shape exist for AutoFormer's published supernets (Chen et al. 2021), whose
blocks differ from timm's default ViT: 2-D relative position embeddings added to the keys and
the values (`rel_pos`, their `max_relative_position`; timm's ViT has none, so `RelPosAttention`
below), global average pooling of the patch tokens after the final norm (`global_pool="avg"`,
their `gp`) and torch's LayerNorm epsilon 1e-5 (timm's ViT uses 1e-6). Defaults are timm's.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from timm.layers import Attention, LayerNorm, trunc_normal_
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

TIMM_NORM_EPS = 1e-6  # timm's ViT LayerNorm epsilon (torch's own default is 1e-5)


@dataclass(frozen=True)
class ViTShape:
    """The dims of one ViT; hashable, so skeletons and memos can be keyed by it."""

    embed_dim: int
    depth: int
    num_heads: tuple[int, ...]  # one per layer
    mlp_ratio: tuple[float, ...]  # one per layer
    head_dim: int | None = None  # None: timm's embed_dim // num_heads
    rel_pos: int = 0  # > 0: 2-D relative position embeddings on keys and values, clipped there
    global_pool: str = "token"  # token: the class token; avg: mean of the patch tokens
    norm_eps: float = TIMM_NORM_EPS

    @staticmethod
    def of(
        embed_dim: int,
        depth: int,
        num_heads: int | tuple[int, ...] | list[int],
        mlp_ratio: float | tuple[float, ...] | list[float],
        head_dim: int | None = None,
        **style: Any,
    ) -> ViTShape:
        """Broadcast scalar heads/ratio to every layer (lists must already have `depth` entries)."""
        heads = (
            tuple(int(h) for h in num_heads)
            if isinstance(num_heads, list | tuple)
            else (int(num_heads),) * depth
        )
        ratios = (
            tuple(float(r) for r in mlp_ratio)
            if isinstance(mlp_ratio, list | tuple)
            else (float(mlp_ratio),) * depth
        )
        if len(heads) != depth or len(ratios) != depth:
            raise ValueError(
                f"num_heads/mlp_ratio: need one entry per layer (depth={depth}), "
                f"got {len(heads)} and {len(ratios)}"
            )
        return ViTShape(int(embed_dim), int(depth), heads, ratios, head_dim, **style)


Rows = tuple[torch.Tensor, torch.Tensor]  # row and column offsets' table rows


class RelPos2D(nn.Module):
    """One per-head-dim embedding per clipped 2-D offset between two patches (AutoFormer's
    `RelativePosition2D_super`): row and column offsets each index a table of `2 * max + 2`
    rows, row 0 standing for any pair that involves the class token; the two lookups add."""

    def __init__(self, head_dim: int, max_distance: int, device: Any = None) -> None:
        super().__init__()
        self.max_distance = int(max_distance)
        rows = 2 * self.max_distance + 2
        self.table_v = nn.Parameter(torch.empty(rows, head_dim, device=device))
        self.table_h = nn.Parameter(torch.empty(rows, head_dim, device=device))
        if self.table_v.device.type != "meta":
            trunc_normal_(self.table_v, std=0.02)
            trunc_normal_(self.table_h, std=0.02)

    def index(self, pos: torch.Tensor) -> Rows:
        return table_rows(pos, self.max_distance)

    def rows(self, n: int, device: torch.device, pos: torch.Tensor | None) -> Rows:
        """`index(pos)`, or for the unmerged grid of `n` patches (`pos` None) the same rows
        computed once per (n, max, device) and kept: they are constants, and recomputing them
        in every block of every forward took ~20 small ops per block (on an H200 that is what
        made an AutoFormer-T subnet's batch-1 forward 7x slower than DeiT-B's). Traced
        programs (torch.compile, torch.export) compute them in the graph instead."""
        if pos is None and not torch.compiler.is_compiling():
            return _grid_rows(n, self.max_distance, torch.device(device))
        return self.index(grid_positions(n, device) if pos is None else pos)


def table_rows(pos: torch.Tensor, max_distance: int) -> Rows:
    """Table rows [b, n + 1, n + 1] for the class token and patches at `pos` [b, n, 2]
    (row, column; fractional after ToMe merges, rounded to the grid's offsets)."""
    m = max_distance

    def one(coord: torch.Tensor) -> torch.Tensor:
        d = torch.round(coord[:, None, :] - coord[:, :, None]).long().clamp(-m, m) + m + 1
        return nn.functional.pad(d, (1, 0, 1, 0), value=0)  # the class token's row/column

    return one(pos[..., 0]), one(pos[..., 1])


@functools.lru_cache(maxsize=16)
def _grid_rows(n: int, max_distance: int, device: torch.device) -> Rows:
    """Table rows of the unmerged grid, as ordinary tensors even when first asked for under
    `torch.inference_mode` (a training forward may gather with them later)."""
    with torch.inference_mode(False), torch.no_grad():
        return table_rows(grid_positions(n, device), max_distance)


def grid_positions(n: int, device: Any = None) -> torch.Tensor:
    """(row, column) of `n` patches on a square grid, [1, n, 2] float."""
    side = math.isqrt(n)
    i = torch.arange(n, device=device)
    return torch.stack([i // side, i % side], dim=-1).float().unsqueeze(0)


class RelPosAttention(Attention):
    """timm `Attention` whose logits and outputs also see relative positions (Shaw et al.'s
    relative attention, 2-D as in AutoFormer): softmax(q.(k_j + a^K_ij) * scale) weighs
    (v_j + a^V_ij). The embeddings are applied per table row (q against each row, then a
    gather; attention summed into row bins, then one product), never as AutoFormer's
    [n, n, head_dim] tensor: the same sums in O(n^2) memory, and positions may differ per
    image, which ToMe needs (`attend(pos=...)`). Weights and everything else are timm's, so
    surgery that walks `qkv`/`proj` (quantization, the supernet's slices) is unchanged."""

    def __init__(self, dim: int, *, max_distance: int, **kwargs: Any) -> None:
        super().__init__(dim, **kwargs)
        self.rel_k = RelPos2D(self.head_dim, max_distance, device=kwargs.get("device"))
        self.rel_v = RelPos2D(self.head_dim, max_distance, device=kwargs.get("device"))

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise NotImplementedError("RelPosAttention: no attention masks")
        return self.attend(x)[0]

    def attend(
        self,
        x: torch.Tensor,
        bias: torch.Tensor | None = None,
        pos: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(output, keys averaged over heads) for tokens [class | patches at `pos`] (None: the
        full grid), with an additive logit `bias` (ToMe's log-size)."""
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if getattr(self, "gate", None) is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        rows_k = rows_v = self.rel_k.rows(N - 1, x.device, pos)  # both tables: one max
        shape = (B, self.num_heads, N, N)
        logits = q @ k.transpose(-2, -1)
        for table, rows in zip((self.rel_k.table_v, self.rel_k.table_h), rows_k, strict=True):
            per_row = q @ table.to(q.dtype).T  # [B, H, N, table rows]
            logits = logits + per_row.gather(-1, rows.unsqueeze(1).expand(shape))
        logits = logits * self.scale
        if bias is not None:
            logits = logits + bias.to(logits.dtype)
        attn = self.attn_drop(logits.softmax(dim=-1))
        out = attn @ v
        for table, rows in zip((self.rel_v.table_v, self.rel_v.table_h), rows_v, strict=True):
            bins = attn.new_zeros(B, self.num_heads, N, table.shape[0])
            bins = bins.scatter_add(-1, rows.unsqueeze(1).expand(shape), attn)
            out = out + bins @ table.to(attn.dtype)
        out = self.norm(out.transpose(1, 2).reshape(B, N, self.attn_dim))
        if gate is not None:
            out = out * gate
        return self.proj_drop(self.proj(out)), k.mean(dim=1)


class _PerLayerBlock:
    """A `block_fn` for timm's VisionTransformer that varies heads/MLP ratio with the layer index.

    timm builds every block with the same kwargs plus `depth=i`; we override heads and ratio from
    the shape. The attention is replaced after construction because timm's `_create_attn` calls
    `issubclass(attn_layer, ...)`, which rejects a `functools.partial(Attention, attn_head_dim=..)`;
    the result is still a plain `timm.layers.Attention`, initialised by the model's init pass.
    """

    def __init__(self, shape: ViTShape) -> None:
        self.shape = shape

    def __call__(self, *, depth: int, **kwargs: Any) -> Block:
        heads = self.shape.num_heads[depth]
        kwargs["mlp_ratio"] = self.shape.mlp_ratio[depth]
        # With a fixed head dim, heads need not divide dim: build with one head (always valid),
        # then put the real attention in.
        kwargs["num_heads"] = heads if self.shape.head_dim is None else 1
        block = Block(depth=depth, **kwargs)
        if self.shape.head_dim is not None or self.shape.rel_pos:
            common = dict(
                num_heads=heads,
                attn_head_dim=self.shape.head_dim,
                qkv_bias=kwargs.get("qkv_bias", True),
                device=kwargs.get("device"),
                dtype=kwargs.get("dtype"),
            )
            block.attn = (
                RelPosAttention(kwargs["dim"], max_distance=self.shape.rel_pos, **common)
                if self.shape.rel_pos
                else Attention(kwargs["dim"], **common)
            )
        return block


def build_vit(
    shape: ViTShape,
    *,
    img_size: int,
    patch_size: int,
    in_chans: int,
    num_classes: int,
    device: str | torch.device | None = None,
    init: bool = True,
) -> VisionTransformer:
    """A timm ViT (class token, learned abs. pos-embed, pre-norm blocks, final norm, linear head).

    `device="meta", init=False` gives a free skeleton whose tensors are swapped in later
    (extraction, the supernet's sliced forward).
    """
    style: dict[str, Any] = {}
    if shape.global_pool != "token":  # AutoFormer's gp: the final norm runs before the mean
        style.update(global_pool=shape.global_pool, fc_norm=False)
    if shape.norm_eps != TIMM_NORM_EPS:
        style["norm_layer"] = partial(LayerNorm, eps=shape.norm_eps)
    return VisionTransformer(
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        num_classes=num_classes,
        embed_dim=shape.embed_dim,
        depth=shape.depth,
        num_heads=shape.num_heads[0] if shape.depth else 1,
        mlp_ratio=shape.mlp_ratio[0] if shape.depth else 4.0,
        qkv_bias=True,
        block_fn=_PerLayerBlock(shape),
        weight_init="" if init else "skip",
        device=device,
        **style,
    )
