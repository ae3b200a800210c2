"""AutoFormer-style weight-sharing supernet over timm ViTs.

The supernet stores one timm `VisionTransformer` of the space's largest dims. A subnet uses the
leading slice of every weight (weight entanglement): the first `embed_dim` channels everywhere,
the first `depth` blocks, per layer the first `heads * head_dim` rows of each of q, k and v, and
the first `mlp_ratio * embed_dim` hidden units.

Both the training forward and `extract` run timm's own module code on those slices: training
calls `torch.func.functional_call` on a weightless (meta-device) skeleton of the subnet's shape,
so gradients flow into the shared tensors; `extract` copies the same slices into a real model.
One code path for the maths means the subnet a trial measures computes exactly what was trained.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from vitsweep.models.checkpoint import FORMAT_VERSION as _FORMAT
from vitsweep.models.checkpoint import CheckpointError, atomic_save, load_state, plain, safe_load
from vitsweep.models.spaces import largest, smallest, subnet_shape, validate_space
from vitsweep.models.vit import TIMM_NORM_EPS, ViTShape, build_vit
from vitsweep.spec import SpaceSpec

_SKELETONS = 64  # meta skeletons kept per supernet (largest/smallest hit every step)


def _slice_to(full: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return full[tuple(slice(0, n) for n in shape)]


def _slice_qkv(full: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Leading heads of each of q, k, v (timm stacks them as [3 * heads * head_dim, ...])."""
    rows = shape[0] // 3
    stacked = full.reshape(3, full.shape[0] // 3, *full.shape[1:])
    part = stacked[(slice(None), slice(0, rows), *(slice(0, n) for n in shape[1:]))]
    return part.reshape(shape)


class Supernet(nn.Module):
    """Holds the largest weights of `space`; runs and extracts any subnet of it."""

    def __init__(
        self,
        space: SpaceSpec,
        *,
        img_size: int,
        patch_size: int,
        in_chans: int,
        num_classes: int,
        init: bool = True,
    ) -> None:
        """`init=False` leaves the weights uninitialised (for `load`, which overwrites them)."""
        super().__init__()
        validate_space(space)
        self.space = space
        self.img_size, self.patch_size = int(img_size), int(patch_size)
        self.in_chans, self.num_classes = int(in_chans), int(num_classes)
        self.vit = self._build(largest(space), init=init)
        self._skeletons: OrderedDict[ViTShape, nn.Module] = OrderedDict()

    def _build(self, shape: ViTShape, *, init: bool, meta: bool = False) -> nn.Module:
        geometry = dict(
            img_size=self.img_size,
            patch_size=self.patch_size,
            in_chans=self.in_chans,
            num_classes=self.num_classes,
        )
        if meta or not init:
            model = build_vit(shape, device="meta", init=False, **geometry)
            return model if meta else model.to_empty(device="cpu")
        return build_vit(shape, **geometry)

    # -- subnets -------------------------------------------------------------------------------

    def shape(
        self,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | Sequence[int] | None = None,
        mlp_ratio: float | Sequence[float] | None = None,
    ) -> ViTShape:
        """The validated subnet shape; omitted dims default to the largest choice."""
        space = self.space
        return subnet_shape(
            space,
            embed_dim=max(space.embed_dim) if embed_dim is None else embed_dim,
            depth=max(space.depth) if depth is None else depth,
            num_heads=max(space.num_heads) if num_heads is None else num_heads,
            mlp_ratio=max(space.mlp_ratio) if mlp_ratio is None else mlp_ratio,
        )

    @property
    def largest(self) -> ViTShape:
        return largest(self.space)

    @property
    def smallest(self) -> ViTShape:
        return smallest(self.space)

    def _skeleton(self, shape: ViTShape) -> nn.Module:
        skel = self._skeletons.pop(shape, None)
        if skel is None:
            skel = self._build(shape, init=False, meta=True)
        self._skeletons[shape] = skel
        while len(self._skeletons) > _SKELETONS:
            self._skeletons.popitem(last=False)
        return skel

    def subnet_state(self, shape: ViTShape) -> dict[str, torch.Tensor]:
        """The subnet's parameters as slices of the shared ones (differentiable views)."""
        full = dict(self.vit.named_parameters())
        out = {}
        for name, p in self._skeleton(shape).named_parameters():
            if name.endswith("attn.qkv.weight") or (
                name.endswith("attn.qkv.bias") and not self.space.change_qkv
            ):
                out[name] = _slice_qkv(full[name], p.shape)
            else:
                out[name] = _slice_to(full[name], p.shape)
        return out

    def forward(
        self,
        x: torch.Tensor,
        *,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | Sequence[int] | None = None,
        mlp_ratio: float | Sequence[float] | None = None,
        shape: ViTShape | None = None,
    ) -> torch.Tensor:
        """Logits of one subnet (default: the largest), computed on the shared weights."""
        if shape is None:
            shape = self.shape(embed_dim, depth, num_heads, mlp_ratio)
        skel = self._skeleton(shape)
        skel.train(self.training)
        return functional_call(skel, self.subnet_state(shape), (x,))

    @torch.no_grad()
    def extract(
        self,
        *,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | Sequence[int] | None = None,
        mlp_ratio: float | Sequence[float] | None = None,
        shape: ViTShape | None = None,
    ) -> nn.Module:
        """A standalone timm `VisionTransformer` holding copies of exactly the subnet's weights
        (float32, CPU, eval mode): params, FLOPs and speed are those of a real model that shape."""
        if shape is None:
            shape = self.shape(embed_dim, depth, num_heads, mlp_ratio)
        model = self._build(shape, init=False)
        state = {k: v.detach().clone() for k, v in self.subnet_state(shape).items()}
        model.load_state_dict(state, strict=True)
        return model.float().eval()

    # -- files ---------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return {
            "space": plain(self.space),
            "img_size": self.img_size,
            "patch_size": self.patch_size,
            "in_chans": self.in_chans,
            "num_classes": self.num_classes,
        }

    def save(self, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
        """Write the supernet atomically (temp file + rename); `meta`: plain values only."""
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        return atomic_save(
            {
                "kind": "supernet",
                "format": _FORMAT,
                "config": self.config(),
                "state_dict": state,
                "meta": meta or {},
            },
            path,
        )

    @classmethod
    def load(cls, path: str | Path) -> Supernet:
        """Load a file written by `save`; a corrupt or mismatched file raises `CheckpointError`."""
        return cls.from_saved(safe_load(path, "supernet"), path)

    @classmethod
    def from_saved(cls, obj: dict[str, Any], path: str | Path) -> Supernet:
        """The supernet in `obj`, what `save` wrote to `path` (already read and checked)."""
        try:
            cfg = obj["config"]
            space = SpaceSpec(
                embed_dim=tuple(int(v) for v in cfg["space"]["embed_dim"]),
                depth=tuple(int(v) for v in cfg["space"]["depth"]),
                mlp_ratio=tuple(float(v) for v in cfg["space"]["mlp_ratio"]),
                num_heads=tuple(int(v) for v in cfg["space"]["num_heads"]),
                head_dim=int(cfg["space"]["head_dim"]),
                rel_pos=int(cfg["space"].get("rel_pos", 0)),
                global_pool=str(cfg["space"].get("global_pool", "token")),
                norm_eps=float(cfg["space"].get("norm_eps", TIMM_NORM_EPS)),
                change_qkv=bool(cfg["space"].get("change_qkv", False)),
            )
            net = cls(
                space,
                img_size=cfg["img_size"],
                patch_size=cfg["patch_size"],
                in_chans=cfg["in_chans"],
                num_classes=cfg["num_classes"],
                init=False,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: bad supernet config in checkpoint ({e!r})") from None
        load_state(net, obj.get("state_dict"), path)
        net.meta = obj.get("meta", {})
        return net.eval()
