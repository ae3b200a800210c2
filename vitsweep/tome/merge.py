"""Token Merging maths (Bolya et al., ICLR 2023), pure tensor code with no model knowledge.

The published matching (facebookresearch/ToMe `bipartite_soft_matching`), token for token:
- *all* tokens alternate into set A (even positions) and set B (odd positions), prefix tokens
  included; a prefix token in A (the class token, position 0) never merges (the published code
  gives it a -inf score), a prefix token in B (a distillation token, position 1) receives no
  merge (-inf column);
- each A token takes its most similar B token (cosine similarity of the metric, the
  head-averaged keys); the `r` best-scoring A tokens merge into their B tokens by a
  size-weighted average;
- the output is `[prefix | unmerged A | B]`. With a prefix, the unmerged A tokens are put back in
  position order (the published code sorts them when there is a class token, so the next block
  alternates over spatial neighbours); without one they stay in score order, as published.
For one class token, and for class + distillation token, this is exactly the published layout.
Register tokens and other prefixes (timm `num_prefix_tokens` > 2), which the published code does
not know, are protected the same way: never merged, nothing merged into them, kept at the front
in their order. `r` is capped at half of the unprotected tokens.

Instead of -inf scores we score only the unprotected tokens (same argmax, same ranking) and
write the merge as row copies (`index_select`/`index_add_`), which stay cheap in every dtype and
trace statically under torch.export / torch.compile (token counts depend only on shapes).

This is the readable formulation (and what the fast one is tested against); merging blocks run
`fused.merge_step`, the same matching and merge in fewer calls, compiled as one region in
eager inference (issue #35).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class Matching(NamedTuple):
    """Where every output token comes from, as token positions in the input, shape (batch, k)."""

    num_prefix: int
    keep: torch.Tensor  # (batch, n - r): input positions of the output, [prefix | unm. A | B]
    src: torch.Tensor  # (batch, r): input positions of the merged A tokens
    dst: torch.Tensor  # (batch, r): output positions of the B tokens they merge into

    @property
    def r(self) -> int:
        return self.src.shape[1]


def max_merge(num_tokens: int, num_prefix: int) -> int:
    """The most tokens one step may merge: half the unprotected ones (the published cap)."""
    return max(num_tokens - num_prefix, 0) // 2


def _sets(n: int, num_prefix: int) -> tuple[int, int, int]:
    """First unprotected A position, first unprotected B position and the A count."""
    first_a = num_prefix + num_prefix % 2  # even positions >= num_prefix
    first_b = num_prefix + 1 - num_prefix % 2  # odd positions >= num_prefix
    return first_a, first_b, max(n - first_a + 1, 0) // 2


def bipartite_soft_matching(metric: torch.Tensor, r: int, num_prefix: int) -> Matching:
    """Pair the `r` most redundant A tokens with their closest B tokens (see module docstring).

    `metric` is (batch, tokens, features), e.g. keys averaged over heads. `r` is capped at
    `max_merge`. The indices carry no gradient, so the scoring runs without autograd; it runs
    in float32 at least, so that bf16/fp16 models rank tokens like fp32 ones.
    """
    batch, n, _ = metric.shape
    p = num_prefix
    r = max(min(r, max_merge(n, p)), 0)
    first_a, first_b, num_a = _sets(n, p)
    dev = metric.device
    with torch.no_grad():
        if r == 0:  # nothing to pair (and an empty set B has no max): keep every token
            order = torch.arange(n, device=dev).expand(batch, n)
            empty = order[:, :0]
            return Matching(p, order, empty, empty)
        if metric.dtype in (torch.float16, torch.bfloat16):
            metric = metric.float()
        metric = F.normalize(metric, dim=-1)
        a, b = metric[:, first_a::2], metric[:, first_b::2]
        best_score, best_b = (a @ b.transpose(-1, -2)).max(dim=-1)
        order = best_score.argsort(dim=-1, descending=True)
        src_a, unm_a = order[:, :r], order[:, r:]
        if p > 0:  # back to position order: the prefix stays first, neighbours stay adjacent
            unm_a = unm_a.sort(dim=-1).values
        num_b = len(range(first_b, n, 2))
        b_pos = torch.arange(first_b, n, 2, device=dev).expand(batch, num_b)
        keep = torch.cat(
            [torch.arange(p, device=dev).expand(batch, p), first_a + 2 * unm_a, b_pos], dim=1
        )
        dst = best_b.gather(1, src_a) + (p + num_a - r)
        return Matching(p, keep, first_a + 2 * src_a, dst)


def merge_wavg(
    matching: Matching, x: torch.Tensor, size: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge `x` (batch, tokens, channels) by size-weighted average; return (x, size).

    `size` (batch, tokens, 1) counts the patches each token stands for; None means all ones.
    This runs in every block, so it touches as little as it can, in any dtype: one row copy
    (`index_select` on the flattened batch, memcpy-like) builds `[prefix | unmerged A | B]`;
    then only the <= r receiving B rows per image are recomputed. Their sums come from a tiny
    (r x r) "same receiver" matrix product instead of `index_add_`/`scatter_reduce`, which on CPU
    fall back to slow scatter kernels in bf16/fp16, and are written back with `index_copy_`
    (a receiver chosen twice gets the same row twice). Static shapes throughout: it traces
    under torch.export / torch.compile.
    """
    batch, n, channels = x.shape
    r, m = matching.r, matching.keep.shape[1]
    offs = torch.arange(batch, device=x.device).unsqueeze(1)
    keep = (matching.keep + offs * n).flatten()
    rows = x.reshape(batch * n, channels)
    out = rows.index_select(0, keep)
    # sizes and the receivers' sums in float32 at least: bf16 counts exactly only up to 256
    acc = torch.promote_types(x.dtype, torch.float32)
    size_rows = None if size is None else size.reshape(batch * n, 1)
    if size_rows is None:
        out_size = torch.ones(batch * m, 1, dtype=acc, device=x.device)
    else:
        out_size = size_rows.index_select(0, keep)
    if r == 0:
        return out.view(batch, m, channels), out_size.view(batch, m, 1)
    src = (matching.src + offs * n).flatten()
    dst = (matching.dst + offs * m).flatten()
    same = (matching.dst.unsqueeze(2) == matching.dst.unsqueeze(1)).to(acc)  # (b, r, r)
    recv_s = out_size.index_select(0, dst)
    src_x = rows.index_select(0, src).to(acc)
    recv_x = out.index_select(0, dst).to(acc)
    if size_rows is None:  # every token holds one patch
        src_sum = same @ src_x.view(batch, r, channels)
        new_s = recv_s + same.sum(dim=2).reshape(batch * r, 1)
        new_x = recv_x + src_sum.view(batch * r, channels)
    else:
        src_s = size_rows.index_select(0, src)
        src_sum = same @ (src_x * src_s).view(batch, r, channels)
        new_s = recv_s + (same @ src_s.view(batch, r, 1)).view(batch * r, 1)
        new_x = recv_x * recv_s + src_sum.view(batch * r, channels)
    out.index_copy_(0, dst, (new_x / new_s).to(x.dtype))
    out_size.index_copy_(0, dst, new_s)
    return out.view(batch, m, channels), out_size.view(batch, m, 1)


def size_bias(size: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Proportional attention: log(size) added to the logits, shaped (batch, 1, 1, keys) so it
    broadcasts over heads and queries as a float `attn_mask` for scaled_dot_product_attention."""
    return size.log().to(dtype).transpose(1, 2).unsqueeze(1)
