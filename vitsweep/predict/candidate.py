"""A candidate as both predictors see it: the subnet's per-layer dims, the tokens each block
takes in and merges, and the precision. One description from one `TrialSpec`, so the accuracy
and the cost predictor can never read a config differently from each other or from the trial
(the token schedule comes from ToMe's own `make_schedule`, capped as the patch caps it).
"""

from __future__ import annotations

from dataclasses import dataclass

from vitsweep.models.build import vit_shape
from vitsweep.models.spaces import arch_shape
from vitsweep.spec import ConfigError, TrialSpec
from vitsweep.tome.schedule import make_schedule, token_counts_for

NUM_PREFIX = 1  # the class token: our supernets' subnets are timm ViTs with one


@dataclass(frozen=True)
class Block:
    """One transformer block as it executes: its dims, tokens in, tokens merged after attention."""

    embed_dim: int
    heads: int
    head_dim: int
    mlp_ratio: float
    tokens_in: int
    merged: int
    first: bool  # the first block: no token sizes yet (ToMe's size bias starts after a merge)


@dataclass(frozen=True)
class Candidate:
    """A supernet subnet x ToMe schedule x precision."""

    embed_dim: int
    heads: tuple[int, ...]  # one per layer (depth = len)
    mlp_ratio: tuple[float, ...]
    head_dim: int
    r: tuple[int, ...]  # tokens merged after each block, as capped at run time
    tokens: int  # tokens entering the first block (patches + class token)
    precision: str
    cast: str = "autocast"  # fp16/bf16: "full" casts the weights (time and bytes differ)

    @property
    def runs_as(self) -> str:
        """The precision as it executes and is stored: "bf16" (autocast) or "bf16-full"."""
        return f"{self.precision}-full" if self.cast == "full" else self.precision

    @property
    def depth(self) -> int:
        return len(self.heads)

    def blocks(self) -> list[Block]:
        out, tokens, merging = [], self.tokens, False
        for h, m, r in zip(self.heads, self.mlp_ratio, self.r, strict=True):
            out.append(Block(self.embed_dim, h, self.head_dim, m, tokens, r, not merging))
            merging = merging or r > 0
            tokens -= r
        return out

    def params(self) -> int:
        """Weights and biases of the float subnet (a timm ViT) but its patch embedding and
        classifier, which the data's channels, patch size and classes decide, not the search."""
        e, hd = self.embed_dim, self.head_dim
        total = (self.tokens + 1) * e + 2 * e  # position embeddings, class token, final norm
        for h, m in zip(self.heads, self.mlp_ratio, strict=True):
            inner, hidden = h * hd, int(m * e)
            total += e * 3 * inner + 3 * inner + inner * e + e  # qkv, proj
            total += e * hidden + hidden + hidden * e + e + 4 * e  # fc1, fc2, two norms
        return total


def candidate(spec: TrialSpec) -> Candidate:
    """The candidate a trial measures: a supernet's subnet (`arch.kind=supernet`), or a ViT
    built from its dims (`arch.kind=vit`, a study's baseline), whose cost is priced alike."""
    arch = spec.arch
    if arch.kind == "supernet" and arch.space is not None:
        shape = arch_shape(arch.space, arch)
        head_dim = shape.head_dim
    elif arch.kind == "vit" and arch.timm_name is None and arch.pretrained is None:
        shape = vit_shape(arch)
        dims = {arch.head_dim or arch.embed_dim // h for h in shape.num_heads}
        if len(dims) != 1:
            raise ConfigError(
                f"arch.num_heads={list(shape.num_heads)}: the predictors need one head dim "
                f"for every layer; set arch.head_dim"
            )
        head_dim = dims.pop()
    else:
        raise ConfigError(
            f"arch.kind={arch.kind!r}: the predictors describe supernet subnets and ViTs built "
            "from their dims (no timm_name, no pretrained); valid: supernet, vit"
        )
    tokens = (arch.img_size // arch.patch_size) ** 2 + NUM_PREFIX
    token = spec.token
    if token.mode == "tome":
        r = make_schedule(
            token.r,
            shape.depth,
            schedule=token.schedule,
            keep_ratio=token.keep_ratio,
            num_tokens=tokens,
            num_prefix=NUM_PREFIX,
        )
    else:
        r = (0,) * shape.depth
    # the patch caps each block's r at half of the unprotected tokens: the counts say what ran
    counts = token_counts_for(r, tokens, NUM_PREFIX)
    before = (tokens, *counts[:-1])
    ran = tuple(b - a for b, a in zip(before, counts, strict=True))
    return Candidate(
        embed_dim=shape.embed_dim,
        heads=tuple(shape.num_heads),
        mlp_ratio=tuple(float(m) for m in shape.mlp_ratio),
        head_dim=head_dim,
        r=ran,
        tokens=tokens,
        precision=spec.precision.mode,
        cast=spec.precision.cast if spec.precision.mode in ("fp16", "bf16") else "autocast",
    )
