"""The published ToMe patch's algorithm (facebookresearch/ToMe, `patch/timm.py` for timm 0.4.12),
re-implemented as the baseline that the benchmark and the tests measure ours against. Written
from the paper and the patch's documented behaviour, not copied, and kept faithful on purpose,
shortcomings included (checked once beside the published code on timm 1.0.31,
vit_small_patch16_224 in float64: identical outputs):
- eager attention (q @ k^T, + log size, softmax, @ v): no fused SDPA;
- timm-0.4.12 blocks: no LayerScale (`ls1`/`ls2` ignored), no qk-norm;
- only the class (and distillation) token is protected, through -inf scores; register tokens
  can be merged;
- one mutable `_tome_info` dict shared by the model and all blocks, the per-block r list rebuilt
  at every forward and popped block by block.
Use `vitsweep.tome.apply_tome` for real work; this module exists to be measured against.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from timm.layers import Attention
from timm.models.vision_transformer import Block, VisionTransformer


def _parse_r(num_layers: int, r: int) -> list[int]:
    """Constant schedule (the published default, inflection 0)."""
    return [r] * num_layers


def _matching(
    metric: torch.Tensor, r: int, class_token: bool, distill_token: bool
) -> Callable[[torch.Tensor, str], torch.Tensor] | None:
    """Bipartite soft matching over all tokens, protection by -inf scores; None: no merge."""
    protected = int(class_token) + int(distill_token)
    t = metric.shape[1]
    r = min(r, (t - protected) // 2)
    if r <= 0:
        return None
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        a, b = metric[..., ::2, :], metric[..., 1::2, :]
        scores = a @ b.transpose(-1, -2)
        if class_token:
            scores[..., 0, :] = -math.inf
        if distill_token:
            scores[..., :, 0] = -math.inf
        node_max, node_idx = scores.max(dim=-1)
        edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
        unm_idx = edge_idx[..., r:, :]
        src_idx = edge_idx[..., :r, :]
        dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)
        if class_token:
            unm_idx = unm_idx.sort(dim=1)[0]  # keeps the class token first

    def merge(x: torch.Tensor, mode: str) -> torch.Tensor:
        src, dst = x[..., ::2, :], x[..., 1::2, :]
        n, t1, c = src.shape
        unm = src.gather(dim=-2, index=unm_idx.expand(n, t1 - r, c))
        src = src.gather(dim=-2, index=src_idx.expand(n, r, c))
        dst = dst.scatter_reduce(-2, dst_idx.expand(n, r, c), src, reduce=mode)
        if distill_token:  # class token, distillation token, then the rest
            return torch.cat([unm[:, :1], dst[:, :1], unm[:, 1:], dst[:, 1:]], dim=1)
        return torch.cat([unm, dst], dim=1)

    return merge


def _merge_wavg(
    merge: Callable[[torch.Tensor, str], torch.Tensor], x: torch.Tensor, size: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    if size is None:
        size = torch.ones_like(x[..., 0, None])
    x = merge(x * size, "sum")
    size = merge(size, "sum")
    return x / size, size


class RefToMeAttention(Attention):
    def forward(  # type: ignore[override]
        self, x: torch.Tensor, size: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        B, N, C = x.shape
        qkv = (
            self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        )
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        if size is not None:
            attn = attn + size.log()[:, None, None, :, 0]
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x)), k.mean(1)


class RefToMeBlock(Block):
    _tome_info: dict[str, Any]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        info = self._tome_info
        attn_size = info["size"] if info["prop_attn"] else None
        x_attn, metric = self.attn(self.norm1(x), attn_size)
        x = x + self.drop_path1(x_attn)
        r = info["r"].pop(0)
        if r > 0:
            merge = _matching(metric, r, info["class_token"], info["distill_token"])
            if merge is not None:
                x, info["size"] = _merge_wavg(merge, x, info["size"])
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class RefToMeVisionTransformer(VisionTransformer):
    r: int
    _tome_info: dict[str, Any]

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._tome_info["r"] = _parse_r(len(self.blocks), self.r)
        self._tome_info["size"] = None
        return super().forward(*args, **kwargs)


def apply_reference_tome(
    model: VisionTransformer, r: int, prop_attn: bool = True
) -> VisionTransformer:
    """Patch a plain timm ViT the published way (class swap + shared dict), in place."""
    if type(model) is not VisionTransformer:
        raise ValueError(
            f"model must be a plain timm VisionTransformer, got {type(model).__name__}"
        )
    model.__class__ = RefToMeVisionTransformer
    model.r = r
    model._tome_info = {
        "r": [],
        "size": None,
        "prop_attn": prop_attn,
        "class_token": model.cls_token is not None,
        "distill_token": False,
    }
    for blk in model.blocks:
        blk.__class__ = RefToMeBlock
        blk._tome_info = model._tome_info
        blk.attn.__class__ = RefToMeAttention
    return model
