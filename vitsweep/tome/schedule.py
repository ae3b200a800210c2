"""How many tokens each block merges: turn `r`, a schedule name or a keep-ratio into one
immutable per-block tuple, decided once at patch time (never popped during a forward)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

from vitsweep.tome.merge import max_merge

SCHEDULES = ("constant", "decreasing")


class TomeArgError(ValueError):
    """A bad argument to the ToMe API; the message starts with the argument's name so that
    `apply_token` can re-raise it under the config key (`token.r`, ...)."""


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _shape(schedule: str, depth: int) -> list[float]:
    """Relative merge amounts per block: flat, or linear down to 0 (the paper's decreasing
    schedule, which merges early where tokens are still redundant)."""
    if schedule == "constant" or depth == 1:
        return [1.0] * depth
    return [float(depth - 1 - i) for i in range(depth)]


def _spread(total: float, weights: list[float]) -> list[int]:
    """Integers proportional to `weights` that sum to round(total): round the running sum
    rather than each entry, so rounding errors do not pile up."""
    out, done, acc, norm = [], 0, 0.0, sum(weights)
    for w in weights:
        acc += total * w / norm
        out.append(round(acc) - done)
        done += out[-1]
    return out


def _fewest_left(n: int, num_prefix: int, blocks: int) -> int:
    """Tokens left if each of `blocks` blocks merges as many as the cap allows."""
    for _ in range(blocks):
        n -= max_merge(n, num_prefix)
    return n


def token_counts_for(r: Sequence[int], num_tokens: int, num_prefix: int) -> list[int]:
    """Tokens left after each block when block i merges min(r[i], half the mergeable tokens)."""
    counts, n = [], num_tokens
    for ri in r:
        n -= min(ri, max_merge(n, num_prefix))
        counts.append(n)
    return counts


def make_schedule(
    r: int | Sequence[int] | None,
    depth: int,
    *,
    schedule: str = "constant",
    keep_ratio: float | None = None,
    num_tokens: int | None = None,
    num_prefix: int = 0,
) -> tuple[int, ...]:
    """Per-block merge counts.

    - `r` int: `constant` merges r in every block; `decreasing` goes linearly from 2r to 0
      (same total as constant).
    - `r` list/tuple: taken as is (one entry per block; `schedule` must stay `constant`).
    - `keep_ratio` (0, 1]: the fraction of all `num_tokens` left after the last block; the merges
      are spread by `schedule` (moved earlier where the per-block cap demands it); a ratio
      below what capping allows ends at the smallest reachable count. Rounded half up.
    """
    if schedule not in SCHEDULES:
        raise TomeArgError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if keep_ratio is not None:
        if r not in (None, 0):
            raise TomeArgError(f"r must be 0 when keep_ratio is given, got r={r!r}")
        if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, numbers.Real):
            raise TomeArgError(f"keep_ratio must be a number in (0, 1], got {keep_ratio!r}")
        if not 0.0 < keep_ratio <= 1.0:
            raise TomeArgError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
        if num_tokens is None:
            raise TomeArgError("keep_ratio needs num_tokens (tokens entering the first block)")
        target = max(num_tokens - math.floor(keep_ratio * num_tokens + 0.5), 0)
        keep = num_tokens - target
        out, n, done = [], num_tokens, 0
        for i, want in enumerate(_spread_cumulative(target, _shape(schedule, depth))):
            cap = max_merge(n, num_prefix)
            ri = min(max(want - done, 0), cap)
            # caps shrink as tokens go: merge more now if later blocks could not catch up
            while ri < cap and _fewest_left(n - ri, num_prefix, depth - 1 - i) > keep:
                ri += 1
            out.append(ri)
            done, n = done + ri, n - ri
        return tuple(out)
    if r is None:
        r = 0
    if _is_int(r):
        if r < 0:
            raise TomeArgError(f"r must be >= 0 (tokens merged per block), got {r}")
        return tuple(_spread(int(r) * depth, _shape(schedule, depth)))
    if isinstance(r, Sequence) and not isinstance(r, str):
        if schedule != "constant":
            raise TomeArgError(
                f"schedule must be 'constant' when r is a per-block list, got {schedule!r}"
            )
        if len(r) != depth:
            raise TomeArgError(f"r must have one entry per block ({depth}), got {len(r)}")
        if not all(_is_int(v) and v >= 0 for v in r):
            raise TomeArgError(f"r entries must be integers >= 0, got {list(r)!r}")
        return tuple(int(v) for v in r)
    raise TomeArgError(f"r must be an int >= 0 or a per-block list of them, got {r!r}")


def _spread_cumulative(total: int, weights: list[float]) -> list[int]:
    """Running targets of `_spread`: how many tokens should be merged after each block."""
    out, acc = [], 0
    for v in _spread(total, weights):
        acc += v
        out.append(acc)
    return out
