"""Search spaces (AutoFormer's published ones and a CPU-sized default) and subnet validation."""

from __future__ import annotations

import random
from collections.abc import Sequence

from vitsweep.models.vit import ViTShape
from vitsweep.spec import ConfigError, SpaceSpec

# AutoFormer (Chen et al., ICCV 2021), Table 1, at 224 px with 16 px patches, head dim 64.
AUTOFORMER_TINY = SpaceSpec(
    embed_dim=(192, 216, 240), depth=(12, 13, 14), mlp_ratio=(3.5, 4.0), num_heads=(3, 4)
)
AUTOFORMER_SMALL = SpaceSpec(
    embed_dim=(320, 384, 448), depth=(12, 13, 14), mlp_ratio=(3.0, 3.5, 4.0), num_heads=(5, 6, 7)
)
AUTOFORMER_BASE = SpaceSpec(
    embed_dim=(528, 576, 624), depth=(14, 15, 16), mlp_ratio=(3.0, 3.5, 4.0), num_heads=(9, 10)
)
# For the built-in 32 px data with 4 px patches (65 tokens) on a 2-core CPU: the largest subnet
# (~1.2M params) trains in minutes, the smallest is >10x smaller in params and FLOPs, and a
# head dim of 32 keeps one-head layers meaningful at embed 64.
CPU = SpaceSpec(
    embed_dim=(64, 96, 128),
    depth=(3, 4, 5, 6),
    mlp_ratio=(2.0, 3.0, 4.0),
    num_heads=(1, 2, 4),
    head_dim=32,
)

SPACES: dict[str, SpaceSpec] = {
    "cpu": CPU,
    "autoformer_tiny": AUTOFORMER_TINY,
    "autoformer_small": AUTOFORMER_SMALL,
    "autoformer_base": AUTOFORMER_BASE,
}
# The input geometry each space was defined for: (img_size, patch_size).
SPACE_INPUT: dict[str, tuple[int, int]] = {
    "cpu": (32, 4),
    "autoformer_tiny": (224, 16),
    "autoformer_small": (224, 16),
    "autoformer_base": (224, 16),
}


def _valid(choices: Sequence) -> str:
    return ", ".join(str(c) for c in choices)


def _per_layer(value: object, depth: int, key: str, choices: Sequence, cast: type) -> tuple:
    """`value` (scalar or one entry per layer) as a per-layer tuple, each entry checked."""
    if isinstance(value, list | tuple):
        if len(value) != depth:
            raise ConfigError(
                f"arch.{key}: {len(value)} entries for depth {depth}; "
                "give one value or one per layer"
            )
        values = tuple(value)
        names = [f"arch.{key}[{i}]" for i in range(depth)]
    else:
        values = (value,) * depth
        names = [f"arch.{key}"] * depth
    for name, v in zip(names, values, strict=True):
        if isinstance(v, bool) or not isinstance(v, int | float) or cast(v) not in choices:
            raise ConfigError(f"{name}={v}: valid: {_valid(choices)}")
    return tuple(cast(v) for v in values)


def subnet_shape(
    space: SpaceSpec,
    *,
    embed_dim: int,
    depth: int,
    num_heads: int | Sequence[int],
    mlp_ratio: float | Sequence[float],
) -> ViTShape:
    """The subnet's shape, every choice checked against the space (errors name arch.<key>)."""
    if isinstance(embed_dim, bool) or embed_dim not in space.embed_dim:
        raise ConfigError(f"arch.embed_dim={embed_dim}: valid: {_valid(space.embed_dim)}")
    if isinstance(depth, bool) or depth not in space.depth:
        raise ConfigError(f"arch.depth={depth}: valid: {_valid(space.depth)}")
    heads = _per_layer(num_heads, depth, "num_heads", space.num_heads, int)
    ratios = _per_layer(mlp_ratio, depth, "mlp_ratio", space.mlp_ratio, float)
    return ViTShape(int(embed_dim), int(depth), heads, ratios, space.head_dim)


def largest(space: SpaceSpec) -> ViTShape:
    d = max(space.depth)
    return ViTShape.of(
        max(space.embed_dim), d, max(space.num_heads), max(space.mlp_ratio), space.head_dim
    )


def smallest(space: SpaceSpec) -> ViTShape:
    d = min(space.depth)
    return ViTShape.of(
        min(space.embed_dim), d, min(space.num_heads), min(space.mlp_ratio), space.head_dim
    )


def middle(space: SpaceSpec) -> ViTShape:
    """The median choice of every dimension (a representative mid-sized subnet)."""

    def mid(c: Sequence) -> float:
        return sorted(c)[len(c) // 2]

    d = int(mid(space.depth))
    return ViTShape.of(
        int(mid(space.embed_dim)),
        d,
        int(mid(space.num_heads)),
        mid(space.mlp_ratio),
        space.head_dim,
    )


def sample(space: SpaceSpec, rng: random.Random) -> ViTShape:
    """A uniformly random subnet: shared embed dim and depth, heads/ratio drawn per layer."""
    depth = rng.choice(space.depth)
    return ViTShape(
        rng.choice(space.embed_dim),
        depth,
        tuple(rng.choice(space.num_heads) for _ in range(depth)),
        tuple(float(rng.choice(space.mlp_ratio)) for _ in range(depth)),
        space.head_dim,
    )


def validate_space(space: SpaceSpec) -> None:
    """Reject spaces a supernet cannot hold (empty or non-positive choices)."""
    for key in ("embed_dim", "depth", "num_heads", "mlp_ratio"):
        choices = getattr(space, key)
        if not choices or any(c <= 0 for c in choices):
            raise ConfigError(f"arch.space.{key}={list(choices)}: need positive choices")
    if space.head_dim <= 0:
        raise ConfigError(f"arch.space.head_dim={space.head_dim}: need a positive integer")
