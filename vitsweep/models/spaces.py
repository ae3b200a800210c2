"""Subnet validation and sampling within a search space (the spaces themselves live in YAML:
conf/arch/supernet.yaml and conf/arch/autoformer_{tiny,small,base}.yaml)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from vitsweep.models.vit import ViTShape
from vitsweep.spec import ArchSpec, ConfigError, SpaceSpec


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
    return ViTShape(int(embed_dim), int(depth), heads, ratios, space.head_dim, **style(space))


def arch_shape(space: SpaceSpec, arch: ArchSpec) -> ViTShape:
    """The subnet of `space` that `arch`'s composed dims name (errors name arch.<key>)."""
    return subnet_shape(
        space,
        embed_dim=arch.embed_dim,
        depth=arch.depth,
        num_heads=arch.num_heads,
        mlp_ratio=arch.mlp_ratio,
    )


def style(space: SpaceSpec) -> dict[str, Any]:
    """The block options every subnet of `space` shares (`ViTShape`'s non-searched fields)."""
    return {
        "rel_pos": space.rel_pos,
        "global_pool": space.global_pool,
        "norm_eps": space.norm_eps,
    }


def largest(space: SpaceSpec) -> ViTShape:
    d = max(space.depth)
    return ViTShape.of(
        max(space.embed_dim),
        d,
        max(space.num_heads),
        max(space.mlp_ratio),
        space.head_dim,
        **style(space),
    )


def smallest(space: SpaceSpec) -> ViTShape:
    d = min(space.depth)
    return ViTShape.of(
        min(space.embed_dim),
        d,
        min(space.num_heads),
        min(space.mlp_ratio),
        space.head_dim,
        **style(space),
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
        **style(space),
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
        **style(space),
    )


def validate_space(space: SpaceSpec) -> None:
    """Reject spaces a supernet cannot hold (empty or non-positive choices)."""
    for key in ("embed_dim", "depth", "num_heads", "mlp_ratio"):
        choices = getattr(space, key)
        if not choices or any(c <= 0 for c in choices):
            raise ConfigError(f"arch.space.{key}={list(choices)}: need positive choices")
    if space.head_dim <= 0:
        raise ConfigError(f"arch.space.head_dim={space.head_dim}: need a positive integer")
