"""ToMe against the paper's algorithm, written here from the paper's description (Bolya et al.,
ICLR 2023, Sec. 3) and the published code's documented behaviour, as a plain, slow loop per token:

- all tokens alternate into A (even positions) and B (odd positions), the class token included;
  the class token (first A token) never merges; a distillation token (first B token) receives
  nothing; register tokens are protected the same way (our documented extension);
- each A token takes its most similar B token (cosine similarity of the head-averaged keys);
  the r best-scoring A tokens merge into their B token by size-weighted average;
- the output is [prefix | unmerged A | B], the unmerged A tokens back in position order when
  there is a prefix (score order otherwise); r is capped at half the unprotected tokens;
- proportional attention adds log(size) to every key's logit.

The oracle shares no code with `vitsweep.tome`; it checks which tokens merge into which (the
partition, after every block) and the outputs (float64, relative max difference <= 1e-4).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer

from vitsweep.tome import apply_tome, bipartite_soft_matching, merge_wavg, token_sources
from vitsweep.tome.fused import fused_merge, kernel, merge_step

IMG, PATCH = 112, 8  # 196 patches + class token = 197 tokens, as DeiT/ViT-S at 224 px


def vit(**kw: object) -> VisionTransformer:
    torch.manual_seed(0)
    args = dict(img_size=IMG, patch_size=PATCH, embed_dim=32, depth=4, num_heads=2, num_classes=7)
    args.update(kw)
    return VisionTransformer(**args).eval().double()


def images(batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return torch.randn(batch, 3, IMG, IMG, generator=g, dtype=torch.float64)


def oracle_step(
    metric: torch.Tensor,
    x: torch.Tensor,
    size: list[float],
    groups: list[list[int]],
    r: int,
    p: int,
) -> tuple[torch.Tensor, list[float], list[list[int]]]:
    """One merge for one image, token by token. `groups[i]` lists the input tokens token i
    holds; returns the merged (x, size, groups) in the output order."""
    n = x.shape[0]
    r = min(r, (n - p) // 2)
    set_a = [i for i in range(n) if i % 2 == 0 and i >= p]
    set_b = [i for i in range(n) if i % 2 == 1 and i >= p]
    best: dict[int, tuple[float, int]] = {}
    for a in set_a:
        sims = [F.cosine_similarity(metric[a], metric[b], dim=0).item() for b in set_b]
        j = max(range(len(sims)), key=lambda k: sims[k])  # first maximum
        best[a] = (sims[j], set_b[j])
    ranked = sorted(set_a, key=lambda a: -best[a][0])
    merged, unmerged = ranked[:r], ranked[r:]
    if p > 0:
        unmerged = sorted(unmerged)
    rows, sizes, out_groups = [], [], []
    for i in list(range(p)) + unmerged:
        rows.append(x[i])
        sizes.append(size[i])
        out_groups.append(groups[i])
    for b in set_b:
        members = [b] + [a for a in merged if best[a][1] == b]
        total = sum(size[m] for m in members)
        rows.append(sum(x[m] * size[m] for m in members) / total)
        sizes.append(total)
        out_groups.append(sorted(g for m in members for g in groups[m]))
    return torch.stack(rows), sizes, out_groups


def oracle_forward(
    model: VisionTransformer, x: torch.Tensor, r: int
) -> tuple[torch.Tensor, list[list[list[list[int]]]]]:
    """Final normed tokens and, after every block, each image's groups, for a timm ViT
    without LayerScale or qk-norm, with eager attention plus log(size) (proportional attention)."""
    p = model.num_prefix_tokens
    x = model.norm_pre(model._pos_embed(model.patch_embed(x)))
    batch, n, _ = x.shape
    sizes = [[1.0] * n for _ in range(batch)]
    groups = [[[i] for i in range(n)] for _ in range(batch)]
    history = []
    for blk in model.blocks:
        attn = blk.attn
        h = blk.norm1(x)
        q, k, v = attn.qkv(h).reshape(batch, x.shape[1], 3, attn.num_heads, -1).unbind(2)
        outs, metrics = [], []
        for i in range(batch):
            log_size = torch.tensor(sizes[i], dtype=x.dtype).log()
            heads = []
            for hd in range(attn.num_heads):
                logits = q[i, :, hd] @ k[i, :, hd].T * attn.scale + log_size
                heads.append(logits.softmax(dim=-1) @ v[i, :, hd])
            outs.append(torch.cat(heads, dim=-1))
            metrics.append(k[i].mean(dim=1))
        x = x + attn.proj(torch.stack(outs))
        merged = [oracle_step(metrics[i], x[i], sizes[i], groups[i], r, p) for i in range(batch)]
        x = torch.stack([m[0] for m in merged])
        sizes = [m[1] for m in merged]
        groups = [m[2] for m in merged]
        history.append(groups)
        x = x + blk.mlp(blk.norm2(x))
    return model.norm(x), history


def groups_of(source: torch.Tensor) -> list[list[list[int]]]:
    """token_sources' bool (batch, tokens, inputs) as lists of input tokens per token."""
    return [[row.nonzero().flatten().tolist() for row in img] for img in source]


def rel_max_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("r", range(1, 14))
def test_same_partition_and_outputs_as_the_paper(r: int) -> None:
    """Class token, r = 1..13, four blocks: the same tokens merge into the same tokens, in the
    same order, after every block, and the logits agree to 1e-4 (float64)."""
    model = vit()
    x = images()
    with torch.no_grad():
        tokens, history = oracle_forward(model, x, r)
        want = model.head(tokens[:, 0])
        apply_tome(model, r)
        got = model(x)
    sources = token_sources(model, x)
    assert len(sources) == len(history) == 4
    for block, (source, groups) in enumerate(zip(sources, history, strict=True)):
        assert groups_of(source) == groups, f"partition differs after block {block}"
    assert rel_max_diff(got, want) <= 1e-4


def test_cap_and_no_class_token() -> None:
    """r above the cap merges half the unprotected tokens per block; without a prefix the
    unmerged A tokens stay in score order (as published), outputs still agree."""
    model = vit(depth=3)
    x = images()
    with torch.no_grad():
        tokens, history = oracle_forward(model, x, 200)
        want = model.head(tokens[:, 0])
        got = apply_tome(model, 200)(x)
    assert [len(g[0]) for g in history] == [99, 50, 26]
    assert [groups_of(s) for s in token_sources(model, x)] == history
    assert rel_max_diff(got, want) <= 1e-4

    no_cls = vit(class_token=False, global_pool="avg", depth=2)
    apply_tome(no_cls, 9)
    _, history = oracle_forward(
        vit(class_token=False, global_pool="avg", depth=2), x, 9
    )  # its head pools differently: compare the partition only
    assert [groups_of(s) for s in token_sources(no_cls, x)] == history


@pytest.mark.parametrize("r", [6, 13])
def test_distillation_token_as_published(r: int) -> None:
    """DeiT with a distillation token (second token, first of set B): never merged, receives
    nothing, stays second; tokens and partition as the oracle's."""
    torch.manual_seed(0)
    model = (
        VisionTransformerDistilled(
            img_size=IMG, patch_size=PATCH, embed_dim=32, depth=3, num_heads=2, num_classes=7
        )
        .eval()
        .double()
    )
    x = images()
    with torch.no_grad():
        want, history = oracle_forward(model, x, r)
        got = apply_tome(model, r).forward_features(x)
    sources = token_sources(model, x)
    assert [groups_of(s) for s in sources] == history
    assert all(g[:2] == [[0], [1]] for groups in history for g in groups)
    assert rel_max_diff(got, want) <= 1e-4


@pytest.mark.parametrize("p", [2, 4, 5])
def test_matching_with_distillation_and_register_tokens(p: int) -> None:
    """One merge step on random data: p=2 is class + distillation token (first A, first B:
    the published handling), p=4/5 class + registers (ours, same spirit): no prefix token
    merges or receives a merge, they stay first and in order."""
    g = torch.Generator().manual_seed(p)
    batch, n, r = 3, 2 * 20 + p + 1, 13
    metric = torch.randn(batch, n, 8, generator=g, dtype=torch.float64)
    x = torch.randn(batch, n, 6, generator=g, dtype=torch.float64)
    size = torch.randint(1, 5, (batch, n, 1), generator=g).double()
    out, out_size = merge_wavg(bipartite_soft_matching(metric, r, p), x, size)
    fast, fast_size, _ = merge_step(metric, x, size, r, p)
    with torch.no_grad():  # eager inference: the C++ kernel
        kern, kern_size, _ = fused_merge(metric, x, size, r, p)
    for i in range(batch):
        groups = [[j] for j in range(n)]
        want, want_size, want_groups = oracle_step(
            metric[i], x[i], size[i, :, 0].tolist(), groups, r, p
        )
        assert want_groups[:p] == [[j] for j in range(p)]
        torch.testing.assert_close(out[i], want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(fast[i], want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(kern[i], want, rtol=1e-12, atol=1e-12)
        assert out_size[i, :, 0].tolist() == fast_size[i, :, 0].tolist() == want_size
        assert kern_size[i, :, 0].tolist() == want_size


def test_compiled_region_is_the_published_algorithm_too() -> None:
    """The merge compiled as one region (`token.compile_merge: true`; off by default): the
    oracle's logits (float64, r=13), the eager step's; one graph for every
    block's token count (197 -> 145 here, and one more unseen); fewer top-level ATen ops per
    merge than the eager step (a property, not a timing); FLOP counting still sees the eager
    ops. One compile: tens of seconds on 2 cores."""
    from torch._dynamo.utils import counters
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    model, x = vit(), images()
    with torch.no_grad():
        tokens, _ = oracle_forward(model, x, 13)
        want = model.head(tokens[:, 0])
    apply_tome(model, 13)
    graphs = counters["stats"]["unique_graphs"]
    with torch.inference_mode():
        eager = model(x)
        assert counters["stats"]["unique_graphs"] == graphs  # the default: nothing compiled
        got = apply_tome(model, 13, compile_merge=True)(x)
    assert counters["stats"]["unique_graphs"] == graphs + 1
    assert rel_max_diff(got, want) <= 1e-4
    torch.testing.assert_close(got, eager, rtol=1e-10, atol=1e-10)

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    assert torch.ops.aten.baddbmm in counter.get_flop_counts()["Global"]

    g = torch.Generator().manual_seed(9)
    with torch.inference_mode():
        n = 131  # a token count no block saw: the same graph
        args = (torch.randn(2, n, 16, generator=g, dtype=torch.float64),
                torch.randn(2, n, 32, generator=g, dtype=torch.float64),
                torch.ones(2, n, 1, dtype=torch.float64), 13, 1)  # fmt: skip

        def top_level_ops(enabled: bool) -> int:
            with profile(activities=[ProfilerActivity.CPU]) as prof, kernel(False):
                fused_merge(*args, compile=enabled)
            return sum(
                e.name.startswith("aten::")
                and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
                for e in prof.events()
            )

        assert 0 < top_level_ops(True) < top_level_ops(False)
    assert counters["stats"]["unique_graphs"] == graphs + 1
