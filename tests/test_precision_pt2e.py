"""int8 on torchao's PT2E path, `measure.compile` and fp16 on CPU.

The compile test is the only one that runs inductor (tens of seconds on 2 shared cores); the
rest check the exported int8 program eagerly (its reference quantize/dequantize ops compute
the same int8 arithmetic the compiled kernels do, in fp32).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.data import TensorDataset

from vitsweep.measure import compile_model, measure_all, should_compile
from vitsweep.precision import apply_precision, model_bytes
from vitsweep.precision.pt2e import pt2e_available, pt2e_bytes
from vitsweep.precision.resolve import _cpu_has
from vitsweep.runctx import RunContext
from vitsweep.spec import ConfigError, MeasureSpec, PrecisionSpec
from vitsweep.tome import apply_tome

pytestmark = pytest.mark.skipif(
    not pt2e_available("cpu"), reason="torchao PT2E needs an x86 CPU with oneDNN"
)
SHAPE = (3, 32, 32)


def _vit() -> VisionTransformer:
    """Linear layers hold most weights, as in a real ViT (so bytes ratios mean something)."""
    torch.manual_seed(0)
    return VisionTransformer(
        img_size=32, patch_size=8, num_classes=10, embed_dim=128, depth=4, num_heads=2
    ).eval()


def _data(n: int, seed: int) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, *SHAPE, generator=gen), torch.zeros(n, dtype=torch.long))


@pytest.fixture(scope="module")
def int8_program():
    base = _vit()
    model, ctx = apply_precision(
        copy.deepcopy(base), PrecisionSpec(mode="int8"), calib=_data(64, 1)
    )
    return base, model, ctx


def test_static_int8_agrees_with_fp32_and_says_what_runs(int8_program):
    base, model, ctx = int8_program
    x = _data(128, 2).tensors[0]  # not the calibration batches
    with torch.inference_mode():
        ref, out = base(x), ctx.forward(model, x)
    assert ctx.precision_exec == "int8 static pt2e x86-inductor, 17 Linear"
    assert ctx.wants_compile
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.9


def test_int8_program_stores_int8_weights_only(int8_program):
    base, model, _ = int8_program
    assert model_bytes(model) <= 0.3 * model_bytes(base)
    linear_weights = sum(m.weight.numel() for m in base.modules() if isinstance(m, nn.Linear))
    int8 = sum(t.numel() for t in model.state_dict().values() if t.dtype == torch.int8)
    assert int8 == linear_weights  # every Linear weight once, in int8, no float copy kept


def test_a_program_exported_in_eval_mode_skips_torchaos_rewrite_and_stays_in_eval(
    int8_program, monkeypatch
):
    """program_module marks an eval-exported program as torchao's .eval() rewrite would, without
    running it; a program exported while training still gets the rewrite (dropout off)."""
    from torchao.quantization.pt2e import export_utils
    from torchao.quantization.pt2e.export_utils import _EXPORTED_TRAINING_ATTR

    from vitsweep.precision.pt2e import _infers_already, program_module

    rewrites = []
    original = export_utils._replace_dropout
    monkeypatch.setattr(  # torchao's, counted: the rewrite that exports 6 pattern graphs
        export_utils, "_replace_dropout", lambda m, **kw: rewrites.append(1) or original(m, **kw)
    )
    _, model, ctx = int8_program
    assert not rewrites and program_module(model.vitsweep_program) is not None and not rewrites
    assert _EXPORTED_TRAINING_ATTR == "_exported_training"  # the name program_module sets
    assert _infers_already(model) and getattr(model, _EXPORTED_TRAINING_ATTR) is False
    x = _data(16, 3).tensors[0]
    with torch.inference_mode():
        first = ctx.forward(model, x)
        model.train(False)  # what eval_mode() does after each measurement
        assert torch.equal(ctx.forward(model, x), first) and not model.training
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5)).train()
    program = torch.export.export(net, (torch.randn(4, 8),))
    assert not _infers_already(program.module())  # a dropout that trains
    module = program_module(program)
    assert len(rewrites) == 1
    y = torch.randn(4, 8)
    with torch.no_grad():
        assert torch.equal(module(y), net[0](y))  # the rewrite turned dropout off


def test_tome_int8_program_folds_every_weight_and_its_bytes_are_known_before_export(int8_program):
    """ToMe writes merged tokens back in place (`index_copy_`); torchao's folder then left every
    Linear before the first merge quantizing its fp32 weight at run time. Now none is, and the
    program's bytes are what `pt2e_bytes` counts on the float model, merging or not."""
    base, model, _ = int8_program
    assert pt2e_bytes(base) == model_bytes(model)
    tome = apply_tome(copy.deepcopy(base), [0, 4, 0, 4])
    program, ctx = apply_precision(
        copy.deepcopy(tome), PrecisionSpec(mode="int8"), calib=_data(32, 1)
    )
    assert ctx.precision_exec == "int8 static pt2e x86-inductor, 17 Linear"
    floats = [
        k for k, t in program.state_dict().items() if t.dtype == torch.float32 and t.dim() == 2
    ]
    assert floats == []  # no Linear weight kept in fp32
    assert model_bytes(program) == pt2e_bytes(tome) == model_bytes(model)
    x = _data(64, 2).tensors[0]
    with torch.inference_mode():
        ref, out = tome(x), ctx.forward(program, x)
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()


def test_requantized_is_torchaos_quantize_dequantize_pair_bit_for_bit():
    """Ties (half a step: rounded to even), values past either end (clamped) and a zero point
    off the middle, against the reference ops a converted program runs."""
    import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401  (registers the ops)

    from vitsweep.precision.pt2e import requantized

    q = torch.ops.quantized_decomposed
    scale, zero = 0.0371, 37
    steps = torch.arange(-300, 300, dtype=torch.float32)
    x = torch.cat([(steps + 0.5) * scale, steps * scale, torch.randn(10_000) * 5])
    for lo, hi, dtype in ((0, 255, torch.uint8), (-128, 127, torch.int8)):
        ref = q.dequantize_per_tensor(
            q.quantize_per_tensor(x, scale, zero, lo, hi, dtype), scale, zero, lo, hi, dtype
        )
        out = requantized(x, scale, zero, lo, hi)
        assert out.dtype == ref.dtype == torch.float32
        assert torch.equal(out, ref)
        assert out.min() == (lo - zero) * torch.tensor(scale)  # clamped at both ends
        assert out.unique().numel() == hi - lo + 1


@pytest.mark.parametrize("merge", [None, [0, 4, 0, 4]], ids=["vit", "tome"])
def test_evaluate_only_builds_the_programs_numbers_without_its_reference_pairs(merge):
    """What predicted mode evaluates: the same logits as the exported program run eagerly,
    ToMe's in-place merges included, with no activation quantize/dequantize pair left, the
    program's int8 weights and counts, and nothing to compile."""
    from vitsweep.measure import count_params

    base = _vit() if merge is None else apply_tome(_vit(), merge)
    program, ctx = apply_precision(
        copy.deepcopy(base), PrecisionSpec(mode="int8"), calib=_data(32, 1)
    )
    sim, sim_ctx = apply_precision(
        copy.deepcopy(base), PrecisionSpec(mode="int8"), calib=_data(32, 1), evaluate_only=True
    )
    assert sim_ctx.precision_exec == ctx.precision_exec + " (eager simulation)"
    assert ctx.wants_compile and not sim_ctx.wants_compile
    assert not hasattr(sim, "vitsweep_program")  # nothing exported to ship or compile
    targets = [str(n.target) for n in sim.graph.nodes if n.op == "call_function"]
    assert "quantized_decomposed.quantize_per_tensor.default" not in targets
    assert "quantized_decomposed.dequantize_per_tensor.default" not in targets
    assert targets.count("quantized_decomposed.dequantize_per_channel.default") == 17
    assert model_bytes(sim) == model_bytes(program) and count_params(sim) == count_params(program)
    x = _data(64, 2).tensors[0]
    with torch.inference_mode():
        ref, out = ctx.forward(program, x), sim_ctx.forward(sim, x)
        sim.train(False)
        again = sim_ctx.forward(sim, x)
    assert torch.equal(out, ref) and torch.equal(again, ref) and not sim.training


def test_dynamic_scheme_and_no_calibration_data_are_labelled():
    _, ctx = apply_precision(_vit(), PrecisionSpec(mode="int8", int8_scheme="dynamic"))
    assert ctx.precision_exec == "int8 dynamic pt2e x86-inductor, 17 Linear"
    _, ctx = apply_precision(_vit(), PrecisionSpec(mode="int8"))  # static asked, nothing to see
    assert ctx.precision_exec.endswith("(dynamic: no calibration data given)")


class _DataDependent(nn.Module):
    """Python control flow on a tensor's value: torch.export cannot capture it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


def test_uncapturable_model_falls_back_to_eager_int8_and_says_why():
    calib = TensorDataset(torch.randn(16, 8), torch.zeros(16, dtype=torch.long))
    _, ctx = apply_precision(_DataDependent(), PrecisionSpec(mode="int8"), calib=calib)
    assert "eager x1 Linear" in ctx.precision_exec
    assert "fallback: torch.export failed" in ctx.precision_exec
    assert not ctx.wants_compile
    with pytest.raises(ConfigError, match=r"precision\.int8_backend=.pt2e."):
        apply_precision(
            _DataDependent(), PrecisionSpec(mode="int8", int8_backend="pt2e"), calib=calib
        )


def test_compile_setting_is_validated_and_auto_follows_the_precision():
    with pytest.raises(ConfigError, match=r"measure\.compile=.yes."):
        should_compile("yes", RunContext())
    assert should_compile("auto", RunContext(wants_compile=True))
    assert not should_compile("auto", RunContext())
    assert should_compile("always", RunContext()) and not should_compile("never", RunContext())


def test_uncompiled_program_says_it_runs_reference_ops(int8_program):
    _, model, ctx = int8_program
    runner, ctx2, compile_s = compile_model(model, ctx, MeasureSpec(compile="never"), SHAPE)
    assert runner is model and compile_s is None
    assert ctx2.precision_exec.endswith("not compiled: reference q/dq ops in fp32")


@pytest.mark.timeout(900)
def test_compiled_int8_matches_the_program_and_compile_time_stands_apart(int8_program):
    _, model, ctx = int8_program
    spec = MeasureSpec(
        device="cpu", batch_size=8, eval_batch_size=16, threads=1, warmup=1, min_repeats=2,
        max_repeats=3, max_cv=0.5, time_cap_s=0.5, repeat_s=0.0, energy="estimate",
        lock=False, compile="auto",
    )  # fmt: skip
    runner, run_ctx, compile_s = compile_model(model, ctx, spec, SHAPE, (8, 1))
    assert run_ctx.precision_exec == "int8 static pt2e x86-inductor, 17 Linear, compiled"
    assert compile_s is not None and math.isfinite(compile_s) and compile_s > 0
    x = _data(8, 3).tensors[0]
    with torch.inference_mode():
        ref, out = ctx.forward(model, x), run_ctx.forward(runner, x)
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()  # int8 kernels vs reference ops
    metrics = measure_all(runner, run_ctx, SHAPE, spec, cost_model=model)
    assert "compile_s" not in metrics  # throughput and latency are timed after compilation
    assert metrics["throughput"] > 0
    # int8 weights are buffers in the program, still counted as the parameters they are
    assert metrics["params"] == sum(p.numel() for p in _vit().parameters())


@pytest.mark.skipif(not _cpu_has(torch.float16), reason="this CPU has no native fp16 matmul")
def test_fp16_runs_natively_on_this_cpu():
    base = _vit()
    model, ctx = apply_precision(copy.deepcopy(base), PrecisionSpec(mode="fp16", cast="full"))
    assert ctx.precision_exec == "fp16 full"
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    x = _data(16, 4).tensors[0]
    with torch.inference_mode():
        ref, out = base(x), ctx.forward(model, x)
    assert out.dtype == torch.float32 and (out - ref).abs().max() < 0.02 * ref.abs().max() + 1e-3
