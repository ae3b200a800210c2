"""ToMe: exact at r=0, right token counts, prefix kept, reversible, and the maths checked against
independent brute-force computations on random data."""

from __future__ import annotations

import copy
import io
import itertools
import math

import pytest
import torch
from timm.layers import Attention, Mlp
from timm.models.vision_transformer import ResPostBlock, VisionTransformer
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from vitsweep.spec import ConfigError, TokenSpec
from vitsweep.tome import (
    apply_token,
    apply_tome,
    bipartite_soft_matching,
    forward_tokens,
    is_patched,
    make_schedule,
    merge_wavg,
    remove_tome,
    schedule_of,
    token_counts,
)
from vitsweep.tome.fused import built_kernel, fused_merge, kernel, merge_step
from vitsweep.tome.merge import max_merge, size_bias
from vitsweep.tome.patch import KEY_ALIGN, _aligned_keys, _attention
from vitsweep.tome.reference import apply_reference_tome

IMG, PATCH, DIM = 48, 8, 64  # 36 patches: enough to merge a few per block, fast on 2 cores
NUM_PATCHES = (IMG // PATCH) ** 2


def vit(**kw: object) -> VisionTransformer:
    torch.manual_seed(0)
    args = dict(img_size=IMG, patch_size=PATCH, embed_dim=DIM, depth=4, num_heads=4, num_classes=5)
    args.update(kw)
    return VisionTransformer(**args).eval()


def subnet() -> VisionTransformer:
    """Like our supernet's subnets: per-layer heads and MLP ratio, head_dim 64 != DIM/heads."""
    model = vit(depth=3, qkv_bias=True)
    torch.manual_seed(1)
    for blk, heads, ratio in zip(model.blocks, (1, 3, 2), (3.0, 4.0, 3.5), strict=True):
        blk.attn = Attention(DIM, heads, attn_head_dim=64, qkv_bias=True)
        blk.mlp = Mlp(DIM, int(DIM * ratio))
    return model.eval()


MODELS = {
    "plain": lambda: vit(),
    "layerscale": lambda: vit(init_values=0.1),
    "qk_norm": lambda: vit(qk_norm=True),
    "registers": lambda: vit(reg_tokens=3, no_embed_class=True, init_values=0.1),
    "avg_no_cls": lambda: vit(class_token=False, global_pool="avg"),
    "subnet": subnet,
}


def prefix_of(model: VisionTransformer) -> int:
    return model.num_prefix_tokens


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(2))


def mlp_token_counts(model: VisionTransformer, x: torch.Tensor) -> list[int]:
    """Tokens each block's MLP really received (the merge sits between attention and MLP)."""
    seen: list[int] = []
    hooks = [
        b.mlp.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
        for b in model.blocks
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("name", list(MODELS))
def test_r0_matches_stock(name: str, images: torch.Tensor) -> None:
    model = MODELS[name]()
    with torch.no_grad():
        stock = model(images)
        apply_tome(model, 0)
        assert is_patched(model)
        torch.testing.assert_close(model(images), stock, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(MODELS))
def test_merging_changes_output_and_counts(name: str, images: torch.Tensor) -> None:
    model = MODELS[name]()
    n = NUM_PATCHES + prefix_of(model)
    with torch.no_grad():
        stock = model(images)
    apply_tome(model, 4)
    depth = len(model.blocks)
    expected = [n - 4 * (i + 1) for i in range(depth)]
    assert token_counts(model, n) == expected
    assert mlp_token_counts(model, images) == expected
    with torch.no_grad():
        merged = model(images)
        assert forward_tokens(model, images)[0].shape[1] == expected[-1]
    assert merged.shape == stock.shape and torch.isfinite(merged).all()
    assert not torch.allclose(merged, stock, atol=1e-4)


def test_r0_runs_exactly_the_stock_ops(images: torch.Tensor) -> None:
    """'No added work at r=0': the same torch calls, in the same order, as the stock model."""

    class Record(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[str] = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.calls.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    model = vit(init_values=0.1, qk_norm=True)
    traces = []
    for patch in (False, True):
        if patch:
            apply_tome(model, 0)
        with torch.no_grad(), Record() as rec:
            model(images)
        traces.append(rec.calls)
    assert traces[0] == traces[1] and "scaled_dot_product_attention" in traces[0]


def test_schedules_lists_and_caps(images: torch.Tensor) -> None:
    model = vit(reg_tokens=2)  # 3 prefix tokens, 36 mergeable
    n, p = NUM_PATCHES + 3, 3
    apply_tome(model, [0, 5, 0, 2])
    assert mlp_token_counts(model, images) == [n, n - 5, n - 5, n - 7]
    apply_tome(model, 100)  # capped at half the mergeable tokens, every block
    expected, left = [], n
    for _ in range(4):
        left -= (left - p) // 2
        expected.append(left)
    assert expected[0] == p + 18 and token_counts(model, n) == expected
    assert mlp_token_counts(model, images) == expected
    assert make_schedule(6, 4, schedule="decreasing") == (12, 8, 4, 0)
    dec = make_schedule(5, 12, schedule="decreasing")
    assert sum(dec) == 60 and list(dec) == sorted(dec, reverse=True) and dec[-1] == 0


@pytest.mark.parametrize("schedule", ["constant", "decreasing"])
def test_keep_ratio_reaches_its_target(schedule: str, images: torch.Tensor) -> None:
    model = vit()
    n = NUM_PATCHES + 1
    apply_tome(model, keep_ratio=0.4, schedule=schedule)
    assert mlp_token_counts(model, images)[-1] == round(0.4 * n)
    apply_tome(model, keep_ratio=0.01, schedule=schedule)  # unreachable: as few as capping allows
    assert token_counts(model, n)[-1] == token_counts(apply_tome(vit(), 100), n)[-1]


def test_prefix_tokens_survive_and_sizes_add_up(images: torch.Tensor) -> None:
    def with_twin_registers() -> VisionTransformer:
        """Identical registers: the most similar pair there is, the first a matcher merges."""
        model = vit(reg_tokens=3, no_embed_class=True)
        model.reg_token.data[:] = model.reg_token.data[:, :1]
        return model

    model = apply_tome(with_twin_registers(), 6)
    with torch.no_grad():
        tokens, size = forward_tokens(model, images)
    assert size is not None and tokens.shape[1] == size.shape[1] == 4 + NUM_PATCHES - 24
    assert torch.equal(size[:, :4, 0], torch.ones(2, 4))  # class + registers never merged
    torch.testing.assert_close(size.sum(dim=(1, 2)), torch.full((2,), float(NUM_PATCHES + 4)))
    # the published patch protects only the class token: register 2 (set A) merges into
    # register 1 or 3 (set B, the first two of its B tokens, placed last)
    ref = apply_reference_tome(with_twin_registers(), 6)
    after_block0 = []
    ref.blocks[0].register_forward_hook(lambda *_: after_block0.append(ref._tome_info["size"]))
    with torch.no_grad():
        ref(images)
    num_b = (NUM_PATCHES + 4) // 2
    assert (after_block0[0][:, -num_b : -num_b + 2].amax(dim=1) == 2).all()


def test_apply_twice_equals_once_and_remove_restores(images: torch.Tensor) -> None:
    model = vit(init_values=0.1)
    keys = list(model.state_dict())
    with torch.no_grad():
        stock = model(images)
        once = apply_tome(model, 3)(images)
        twice = apply_tome(apply_tome(model, 3), 3)(images)
        torch.testing.assert_close(twice, once, rtol=0, atol=0)
        assert type(model).__mro__.count(type(model).__mro__[1]) == 1
        assert schedule_of(model).r == (3, 3, 3, 3)
        remove_tome(model)
        assert type(model) is VisionTransformer and not hasattr(model, "_tome")
        torch.testing.assert_close(model(images), stock, rtol=0, atol=0)
    assert list(model.state_dict()) == keys
    assert remove_tome(model) is model  # no-op when unpatched


def test_subclass_copy_and_pickle(images: torch.Tensor) -> None:
    class MyViT(VisionTransformer):
        pass

    torch.manual_seed(0)
    mine = MyViT(img_size=IMG, patch_size=PATCH, embed_dim=DIM, depth=2, num_heads=2).eval()
    apply_tome(mine, 2)
    assert isinstance(mine, MyViT) and token_counts(mine)[-1] == NUM_PATCHES + 1 - 4
    assert type(remove_tome(mine)) is MyViT

    model = apply_tome(vit(), 3)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        out = model(images)
        torch.testing.assert_close(loaded(images), out)
        torch.testing.assert_close(clone(images), out)


def test_bad_arguments_are_one_line_errors() -> None:
    model = vit()
    for bad in (-1, 1.5, True, "3", [1, 2], [1, -1, 0, 0], [1.0, 0, 0, 0]):
        with pytest.raises(ValueError, match=r"^r "):
            apply_tome(model, bad)
    with pytest.raises(ValueError, match="schedule"):
        apply_tome(model, 2, schedule="linear")
    for ratio in (0.0, 1.5):
        with pytest.raises(ValueError, match="keep_ratio"):
            apply_tome(model, keep_ratio=ratio)
    with pytest.raises(ValueError, match="ResPostBlock"):
        apply_tome(vit(block_fn=ResPostBlock), 2)
    with pytest.raises(ValueError, match="VisionTransformer"):
        apply_tome(torch.nn.Linear(2, 2), 2)
    assert not is_patched(model)


def test_apply_token_from_spec(images: torch.Tensor) -> None:
    model = vit()
    with torch.no_grad():
        stock = model(images)
    apply_token(model, TokenSpec(mode="tome", r=(2, 2, 0, 1), prop_attn=False))
    assert schedule_of(model).r == (2, 2, 0, 1) and not schedule_of(model).prop_attn
    assert not schedule_of(model).compile_merge  # the compiled merge region is opt-in
    apply_token(model, TokenSpec(mode="tome", r=2, compile_merge=True))
    assert schedule_of(model).compile_merge
    apply_token(model, TokenSpec(mode="tome", keep_ratio=0.6, schedule="decreasing"))
    assert token_counts(model)[-1] == round(0.6 * (NUM_PATCHES + 1))
    assert apply_token(model, TokenSpec(mode="none")) is model and not is_patched(model)
    with torch.no_grad():
        torch.testing.assert_close(model(images), stock, rtol=0, atol=0)
    with pytest.raises(ConfigError, match=r"token\.mode .*'none', 'tome'"):
        apply_token(model, TokenSpec(mode="tokenlearner"))
    with pytest.raises(ConfigError, match=r"^token\.r "):
        apply_token(model, TokenSpec(mode="tome", r=-2))
    with pytest.raises(ConfigError, match=r"^token\.compile_merge must be a bool"):
        apply_token(model, TokenSpec(mode="tome", r=2, compile_merge="yes"))


def test_weighted_merge_conserves_mass_and_r0_is_identity() -> None:
    """Which tokens merge is checked against the paper in test_tome_published.py; here: the
    merge keeps sum(size * x) and the total size, and r=0 keeps every token where it is."""
    g = torch.Generator().manual_seed(3)
    batch, n, c, p, r = 2, 11, 5, 2, 3
    metric = torch.randn(batch, n, 4, generator=g)
    x = torch.randn(batch, n, c, generator=g)
    size = torch.randint(1, 4, (batch, n, 1), generator=g).float()
    out, out_size = merge_wavg(bipartite_soft_matching(metric, r, p), x, size)
    assert out.shape == (batch, n - r, c) and out_size.shape == (batch, n - r, 1)
    torch.testing.assert_close((out * out_size).sum(1), (x * size).sum(1))
    torch.testing.assert_close(out_size.sum(1), size.sum(1))
    torch.testing.assert_close(out[:, :p], x[:, :p], rtol=0, atol=0)  # prefix first, untouched
    same, same_size = merge_wavg(bipartite_soft_matching(metric, 0, p), x, size)
    assert torch.equal(same, x) and torch.equal(same_size, size)


def test_proportional_attention_equals_attending_to_copies() -> None:
    """A token of size s with log(s) added to its logit attends like s identical tokens: the
    paper's reason for the bias. Checked on both the fused and the eager path."""
    torch.manual_seed(4)
    attn = Attention(DIM, 4, qkv_bias=True, qk_norm=True, norm_layer=torch.nn.LayerNorm).eval()
    x = torch.randn(2, 5, DIM)
    counts = torch.tensor([1, 3, 1, 2, 4])
    expanded = x.repeat_interleave(counts, dim=1)
    size = counts.float().view(1, 5, 1).expand(2, 5, 1)
    bias = size.log().transpose(1, 2).unsqueeze(1)
    first = torch.cumsum(counts, 0) - counts  # where each token's first copy sits
    with torch.no_grad():
        want = attn(expanded)[:, first]
        for fused in (True, False):
            attn.fused_attn = fused
            got, metric = _attention(attn, x, bias)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert metric.shape == (2, 5, attn.head_dim)


@pytest.mark.parametrize("with_bias", [True, False])
def test_bf16_attention_pads_keys_without_changing_the_result(with_bias: bool) -> None:
    """bf16 keys are padded to a multiple of KEY_ALIGN for the CPU kernel's fast path; the padded
    keys are masked out, so the output is that of the real keys (float64 oracle, bf16 tolerance).
    An unmasked pad would hand 11 of 16 attention slots to zero keys and fail this."""
    torch.manual_seed(5)
    attn = Attention(DIM, 4, qkv_bias=True).eval().to(torch.bfloat16)
    x = torch.randn(2, 5, DIM).to(torch.bfloat16)
    size = torch.tensor([1.0, 3, 1, 2, 4]).view(1, 5, 1).expand(2, 5, 1)
    bias = size_bias(size, torch.bfloat16) if with_bias else None
    with torch.no_grad():
        got, _ = _attention(attn, x, bias)
        b, n, _ = x.shape
        q, k, v = (
            attn.qkv(x).double().reshape(b, n, 3, 4, DIM // 4).permute(2, 0, 3, 1, 4).unbind(0)
        )
        logits = q @ k.transpose(-1, -2) * attn.scale
        if bias is not None:
            logits = logits + bias.double()
        want = attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(b, n, DIM).bfloat16())
        padded_k = _aligned_keys(k.bfloat16(), v.bfloat16(), bias)[0]
    assert padded_k.shape[-2] == KEY_ALIGN
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)


def test_same_result_as_published_algorithm_without_prefix(images: torch.Tensor) -> None:
    """With no prefix token both implementations pair the same tokens, so features agree; the
    published one just runs eager attention."""

    def tokens_out() -> VisionTransformer:  # no pooling, no head: forward returns the tokens
        return vit(class_token=False, global_pool="", num_classes=0)

    ours, ref = apply_tome(tokens_out(), 5), apply_reference_tome(tokens_out(), 5)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), ref(images))
        torch.testing.assert_close(ours.forward_features(images), ref(images))
        # the published state (sizes, a popped r list) is reset only by forward(): any other
        # entry point inherits the last forward's leftovers and fails; ours holds no such state
        with pytest.raises((IndexError, RuntimeError)):
            ref.forward_features(images)


def test_training_autocast_and_flops(images: torch.Tensor) -> None:
    model = apply_tome(vit(qk_norm=True, drop_path_rate=0.1, init_values=0.1), 4).train()
    model(images).logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in model.blocks[-1].parameters())
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(model(images).float()).all()

    def flops(m: torch.nn.Module) -> int:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            m(images)
        return counter.get_total_flops()

    stock = flops(remove_tome(model))
    merged = flops(apply_tome(model, 8))
    assert merged < 0.8 * stock  # fewer tokens, fewer executed FLOPs
    assert math.isclose(flops(apply_tome(model, 0)), stock)


def test_exports_and_compiles_with_the_same_outputs(images: torch.Tensor) -> None:
    """The precision flows trace ToMe models: torch.export with a dynamic batch dimension (what
    PT2E int8 exports) and torch.compile in one graph (no graph break), same outputs."""
    from torch.export import Dim

    model = apply_tome(vit(init_values=0.1, qk_norm=True), 4)
    with torch.no_grad():
        want = model(images)
        program = torch.export.export(model, (images,), dynamic_shapes=({0: Dim.AUTO},))
        both = torch.cat([images, images.flip(0)])
        got = program.module()(both)
        torch.testing.assert_close(got[:2], want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[2:], model(images.flip(0)), rtol=1e-5, atol=1e-6)
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(images), want, rtol=1e-5, atol=1e-6)


def _readable(
    metric: torch.Tensor, x: torch.Tensor, size: torch.Tensor | None, r: int, p: int
) -> tuple[torch.Tensor, torch.Tensor]:
    return merge_wavg(bipartite_soft_matching(metric, r, p), x, size)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_step_merges_like_the_readable_formulation(dtype: torch.dtype) -> None:
    """`merge_step` (what merging blocks run) against `bipartite_soft_matching` + `merge_wavg`:
    the same tokens in the same order with the same sizes, for r = 0, 1, 5 and above the cap,
    0/1/2 prefix tokens, batch 1 and 3, first block (no sizes) and later ones; token values
    within rounding (bf16: one unit in the last place). Extras (sources) merge like `x`."""
    g = torch.Generator().manual_seed(7)
    tol = {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 8e-3, "atol": 0}
    for p in (0, 1, 2):
        n = 2 * 15 + p + 1
        for batch in (1, 3):
            metric = torch.randn(batch, n, 8, generator=g).to(dtype)
            x = torch.randn(batch, n, 6, generator=g).to(dtype)
            sized = torch.randint(1, 5, (batch, n, 1), generator=g).float()
            src = torch.eye(n, dtype=dtype).expand(batch, n, n)
            for r, size in itertools.product((0, 1, 5, 100), (None, sized)):
                with torch.no_grad():
                    want_x, want_size = _readable(metric, x, size, r, p)
                    got_x, got_size, (got_src,) = merge_step(metric, x, size, r, p, (src,))
                    want_src = merge_wavg(bipartite_soft_matching(metric, r, p), src, size)[0]
                assert got_x.shape == want_x.shape == (batch, n - min(r, (n - p) // 2), 6)
                assert got_x.dtype == x.dtype and got_size.dtype == torch.float32
                torch.testing.assert_close(got_size, want_size, rtol=0, atol=0)
                torch.testing.assert_close(got_x, want_x, **tol)
                assert torch.equal(got_src > 0, want_src > 0)  # the same tokens merged


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_the_cpp_kernel_merges_like_merge_step(dtype: torch.dtype) -> None:
    """The C++ kernel (eager inference's default) against `merge_step`: the same shapes and
    dtypes, sizes exactly, tokens within rounding (bf16: one unit in the last place), extras
    merged like `x`; prefix 0/1/2, batch 1 and 3, r = 1, 5 and the cap, with and without sizes."""
    k = built_kernel()
    assert k is not None  # this machine has a C++ compiler: inductor needs one too
    g = torch.Generator().manual_seed(11)
    tol = {
        torch.float64: {"rtol": 1e-12, "atol": 1e-12},
        torch.float32: {"rtol": 1e-5, "atol": 1e-6},
        torch.bfloat16: {"rtol": 8e-3, "atol": 0},
    }[dtype]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    for p, batch in itertools.product((0, 1, 2), (1, 3)):
        n = 2 * 15 + p + 1
        metric = torch.randn(batch, n, 8, generator=g, dtype=torch.float64).to(dtype)
        x = torch.randn(batch, n, 6, generator=g, dtype=torch.float64).to(dtype)
        pos = torch.randn(batch, n, 2, generator=g, dtype=torch.float64).to(dtype)
        sized = torch.randint(1, 5, (batch, n, 1), generator=g).to(acc)
        for r, size in itertools.product((1, 5, max_merge(n, p)), (None, sized)):
            with torch.inference_mode():
                want_x, want_size, (want_pos,) = merge_step(metric, x, size, r, p, (pos,))
                got_x, got_size, got_pos = k.merge_step(metric, x, size, r, p, [pos])
            assert got_x.shape == want_x.shape and got_x.dtype == dtype
            assert got_size.dtype == want_size.dtype == acc
            torch.testing.assert_close(got_size, want_size, rtol=0, atol=0)
            torch.testing.assert_close(got_x, want_x, **tol)
            torch.testing.assert_close(got_pos, want_pos, **tol)


def test_eager_inference_merges_in_the_kernel_and_autograd_op_by_op() -> None:
    """`fused_merge` takes the kernel in eager inference (fewer top-level ATen ops than
    `merge_step`: only its matching's, dispatched from C++), the same tokens; with autograd on
    it merges op by op, so gradients reach the tokens."""
    from torch.profiler import ProfilerActivity, profile

    g = torch.Generator().manual_seed(12)
    metric, x = torch.randn(2, 97, 16, generator=g), torch.randn(2, 97, 24, generator=g)
    size = torch.randint(1, 3, (2, 97, 1), generator=g).float()

    def top_level_ops(enabled: bool) -> tuple[int, torch.Tensor]:
        with torch.inference_mode(), kernel(enabled):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                out = fused_merge(metric, x, size, 13, 1)[0]
        n = sum(
            e.name.startswith("aten::")
            and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
            for e in prof.events()
        )
        return n, out

    (in_kernel, ours), (op_by_op, step) = top_level_ops(True), top_level_ops(False)
    assert 0 < in_kernel < op_by_op
    torch.testing.assert_close(ours, step, rtol=1e-5, atol=1e-6)
    xg = x.clone().requires_grad_()
    fused_merge(metric, xg, size, 13, 1)[0].sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0


def test_a_trace_under_no_grad_records_the_merge_not_the_kernels_result() -> None:
    """torch.jit.trace under no_grad (how the TorchScript export traces) must not take the
    kernel, whose loops the tracer cannot see: the traced model merges a second, different
    input as the eager model does."""
    model = apply_tome(vit(), 4)
    g = torch.Generator().manual_seed(13)
    x1, x2 = (torch.randn(2, 3, IMG, IMG, generator=g) for _ in range(2))
    with torch.no_grad():
        traced = torch.jit.trace(model, x1, check_trace=False)
        torch.testing.assert_close(traced(x2), model(x2), rtol=1e-5, atol=1e-5)


def test_fast_step_dispatches_fewer_ops_than_the_readable_formulation() -> None:
    """A property, not a timing: fewer torch calls from Python and fewer ATen ops per merge."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Calls(TorchFunctionMode):
        n = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    class Ops(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    g = torch.Generator().manual_seed(8)
    metric, x = torch.randn(1, 184, 64, generator=g), torch.randn(1, 184, 96, generator=g)
    size = torch.randint(1, 3, (1, 184, 1), generator=g).float()
    counts = {}
    for name, fn in (("readable", _readable), ("fast", lambda *a: merge_step(*a)[:2])):
        with torch.inference_mode(), Calls() as calls, Ops() as ops:
            fn(metric, x, size, 13, 1)
        counts[name] = (calls.n, ops.n)
    assert counts["fast"][0] < counts["readable"][0] and counts["fast"][1] < counts["readable"][1]
