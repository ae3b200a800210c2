"""Token Merging maths (Bolya et al., ICLR 2023), pure tensor code with no model knowledge.

Tokens are laid out as `[prefix | mergeable]`. Prefix tokens (class, distillation, registers) are
never split, scored or merged, so they stay at the front, in order, where the pooling expects them.
The mergeable tokens alternate into sets A (even) and B (odd); each A token picks its most similar
B token (cosine similarity of the attention keys) and the `r` best-scoring A tokens are merged
into their B partners by a size-weighted average. The output is `[prefix | unmerged A | B]`.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F


class Matching(NamedTuple):
    """Which A tokens merge and where they go (indices into A and B, shape (batch, k))."""

    num_prefix: int
    order: torch.Tensor  # every A index, the merged ones (best scores) first
    dst: torch.Tensor  # for each merged A token, the B index it merges into

    @property
    def r(self) -> int:
        return self.dst.shape[1]

    @property
    def src(self) -> torch.Tensor:
        return self.order[:, : self.r]

    @property
    def unmerged(self) -> torch.Tensor:
        return self.order[:, self.r :]


def max_merge(num_tokens: int, num_prefix: int) -> int:
    """The most tokens one step may merge: half the mergeable ones (set B must survive)."""
    return max(num_tokens - num_prefix, 0) // 2


def bipartite_soft_matching(metric: torch.Tensor, r: int, num_prefix: int) -> Matching:
    """Pair the `r` most redundant A tokens with their closest B tokens.

    `metric` is (batch, tokens, features), e.g. keys averaged over heads. `r` is capped at
    `max_merge`. The indices carry no gradient, so the scoring runs without autograd.
    """
    r = max(min(r, max_merge(metric.shape[1], num_prefix)), 0)
    if r == 0:  # nothing to pair (and an empty set B has no max)
        order = torch.arange((metric.shape[1] - num_prefix + 1) // 2, device=metric.device)
        return Matching(
            num_prefix, order.expand(metric.shape[0], -1), order[:0].expand(metric.shape[0], 0)
        )
    with torch.no_grad():
        tokens = F.normalize(metric[:, num_prefix:], dim=-1)
        a, b = tokens[:, ::2], tokens[:, 1::2]
        best_score, best_b = (a @ b.transpose(-1, -2)).max(dim=-1)
        order = best_score.argsort(dim=-1, descending=True)
        return Matching(num_prefix, order, best_b.gather(1, order[:, :r]))


def merge_wavg(
    matching: Matching, x: torch.Tensor, size: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge `x` (batch, tokens, channels) by size-weighted average; return (x, size).

    `size` (batch, tokens, 1) counts the patches each token stands for; None means all ones.
    This runs in every block, so it is written as whole-row copies (`index_select`,
    `index_add_` on the flattened batch are memcpy-like; `gather` with an expanded index is
    several times slower on CPU): one copy builds `[prefix | unmerged A | B]`, then only the B
    rows are re-weighted in place; prefix and unmerged rows are never multiplied and divided.
    """
    batch, n, channels = x.shape
    p, r = matching.num_prefix, matching.r
    num_a, num_b = (n - p + 1) // 2, (n - p) // 2
    first_b = p + num_a - r  # where set B starts in the output
    arange = partial(torch.arange, device=x.device)
    a_pos = p + 2 * matching.order  # token positions of A, merged ones first
    keep = torch.cat(
        [arange(p).expand(batch, p), a_pos[:, r:], (p + 1 + 2 * arange(num_b)).expand(batch, -1)],
        dim=1,
    )
    keep = (keep + arange(batch).unsqueeze(1) * n).flatten()
    src = (a_pos[:, :r] + arange(batch).unsqueeze(1) * n).flatten()
    dst = (matching.dst + first_b + arange(batch).unsqueeze(1) * (n - r)).flatten()

    rows = x.reshape(batch * n, channels)
    out = rows.index_select(0, keep)
    out_b = out.view(batch, n - r, channels)[:, first_b:]
    if size is None:
        out_size = x.new_ones(batch * (n - r), 1)
        src_x, src_s = rows.index_select(0, src), x.new_ones(batch * r, 1)
    else:
        size_rows = size.reshape(batch * n, 1)
        out_size = size_rows.index_select(0, keep)
        src_s = size_rows.index_select(0, src)
        src_x = rows.index_select(0, src) * src_s
        out_b.mul_(size[:, p + 1 :: 2])  # not out_size: autograd needs it unchanged
    out.index_add_(0, dst, src_x)
    out_size.index_add_(0, dst, src_s)
    out_b.div_(out_size.view(batch, n - r, 1)[:, first_b:])
    return out.view(batch, n - r, channels), out_size.view(batch, n - r, 1)


def size_bias(size: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Proportional attention: log(size) added to the logits, shaped (batch, 1, 1, keys) so it
    broadcasts over heads and queries as a float `attn_mask` for scaled_dot_product_attention."""
    return size.log().to(dtype).transpose(1, 2).unsqueeze(1)
