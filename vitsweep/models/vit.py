"""One builder for every ViT we run: a stock timm `VisionTransformer`, per-layer heads/MLP ratio.

Standalone models, supernet storage and extracted subnets all come from `build_vit`, so ToMe,
quantization and the cost counters see the same module tree (timm's) whatever the source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from timm.layers import Attention
from timm.models.vision_transformer import Block, VisionTransformer


@dataclass(frozen=True)
class ViTShape:
    """The dims of one ViT; hashable, so skeletons and memos can be keyed by it."""

    embed_dim: int
    depth: int
    num_heads: tuple[int, ...]  # one per layer
    mlp_ratio: tuple[float, ...]  # one per layer
    head_dim: int | None = None  # None: timm's embed_dim // num_heads

    @staticmethod
    def of(
        embed_dim: int,
        depth: int,
        num_heads: int | tuple[int, ...] | list[int],
        mlp_ratio: float | tuple[float, ...] | list[float],
        head_dim: int | None = None,
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
        return ViTShape(int(embed_dim), int(depth), heads, ratios, head_dim)


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
        if self.shape.head_dim is not None:
            block.attn = Attention(
                kwargs["dim"],
                num_heads=heads,
                attn_head_dim=self.shape.head_dim,
                qkv_bias=kwargs.get("qkv_bias", True),
                device=kwargs.get("device"),
                dtype=kwargs.get("dtype"),
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
    )
