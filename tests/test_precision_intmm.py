"""Sub-8-bit weights on an int8 kernel (precision/intmm_packed.py): the planar packing, what the
layer computes, that it stores its bits, and that compiling keeps them packed.

Oracles: the weight is `quantizers.fake_quantize` (the product's one Q_b(W), tested on its own);
the activation is torch's `fake_quantize_per_tensor_affine` at the layer's scale and zero point.
The layer must compute fq(x) @ Q_b(W)^T + b with int32 accumulation, so up to fp32 rounding."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn
from torch._inductor.utils import run_and_get_code

from tests.conftest import tiny_vit
from vitsweep.measure.compile import compile_program
from vitsweep.precision import apply_precision
from vitsweep.precision.bytes import model_bytes
from vitsweep.precision.intmm_packed import (
    IntMMPackedLinear,
    affine_int8,
    chunk_shape,
    pack_planar,
    supports,
    unpack_planar,
)
from vitsweep.precision.quantizers import fake_quantize, qmax
from vitsweep.spec import PrecisionSpec

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7])
def test_planar_packing_round_trips_at_exactly_bits_per_weight(bits: int) -> None:
    g = torch.Generator().manual_seed(bits)
    k, n = 8 * 6, 40
    top = qmax(bits)
    codes = torch.randint(-top, top + 1, (k, n), generator=g, dtype=torch.int8)
    packed = pack_planar(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() * 8 == k * n * bits
    assert torch.equal(unpack_planar(packed, bits), codes)
    nbytes, per = chunk_shape(bits)
    assert (nbytes * 8) % bits == 0 and per * bits == nbytes * 8  # whole codes per chunk


def test_affine_int8_covers_the_range_and_zero() -> None:
    for lo, hi in ((-3.0, 5.0), (0.2, 4.0), (-6.0, -1.0), (0.0, 0.0)):
        scale, zero = affine_int8(lo, hi)
        assert -128 <= zero <= 127 and scale > 0
        low, high = (-128 - zero) * scale, (127 - zero) * scale
        assert low <= min(lo, 0.0) + scale and high >= max(hi, 0.0) - scale


@pytest.mark.parametrize(("k", "n", "bits"), [(32, 16, 4), (192, 96, 6), (64, 48, 2), (24, 8, 3)])
def test_the_layer_computes_quantized_activations_times_quantized_weights(
    k: int, n: int, bits: int
) -> None:
    torch.manual_seed(k + n + bits)
    lin = nn.Linear(k, n).requires_grad_(False)
    x = torch.randn(3, 7, k) * 2 + 0.5
    lo, hi = float(x.min()), float(x.max())
    layer = IntMMPackedLinear.from_linear(lin, bits, (lo, hi))
    assert supports(lin, bits, "cpu")
    wq = fake_quantize(lin.weight.detach(), bits)
    assert torch.allclose(layer.dequantized_weight(), wq, rtol=1e-5, atol=1e-7)
    xq = torch.fake_quantize_per_tensor_affine(x, layer.x_scale, layer.x_zero, -128, 127)
    want = xq @ wq.t() + lin.bias.detach()
    got = layer(x)
    assert got.shape == (3, 7, n) and got.dtype == torch.float32
    assert float((got - want).abs().max()) <= 1e-4 * float(want.abs().max())
    if bits >= 4:  # and it is a quantization of the float layer, near it from 4 bits up
        assert float((got - lin(x)).abs().max()) < 0.25 * float(lin(x).abs().max())


def test_it_stores_bits_per_weight_plus_a_scale_and_bias_per_output() -> None:
    lin = nn.Linear(192, 96)
    for bits in (2, 4, 6):
        layer = IntMMPackedLinear.from_linear(lin, bits)
        want = 192 * 96 * bits // 8 + 8 * 96
        assert model_bytes(layer) == IntMMPackedLinear.storage_bytes(96, 192, bits) == want


def test_compiling_keeps_the_weight_packed() -> None:
    """Inductor's freezing folds weight-only work into constants; folded, the unpacking would
    leave an int8 copy of the weight in the program and the saved bytes only on disk."""
    k, n = 64, 96
    lin = nn.Linear(k, n)
    model = nn.Sequential(IntMMPackedLinear.from_linear(lin, 4, (-3.0, 3.0))).eval()
    x = torch.randn(2, 5, k)
    with torch.inference_mode():
        eager = model(x)
        compiled, (code, *_) = run_and_get_code(compile_program(model), x)
    assert torch.allclose(compiled, eager, rtol=1e-5, atol=1e-5)
    assert "_int_mm" in code
    assert_packed_constants(code, [(k, n)])


def assert_packed_constants(code: str, shapes: list[tuple[int, int]]) -> None:
    """The generated program holds packed uint8 codes and no int8 (K, N) weight of `shapes`."""
    constants = [line for line in code.splitlines() if "= rand_strided(" in line]
    assert any("torch.uint8" in c for c in constants)  # the packed codes
    for k, n in shapes:
        assert not any(f"({k}, {n})" in c and "torch.int8" in c for c in constants)


def test_a_mixed_plan_runs_its_low_bit_layers_on_int_mm_and_compiles(digits16) -> None:
    spec = PrecisionSpec(mode="mixed", budget_ratio=0.33, hutchinson_samples=2, calib_batches=1,
                         low_bit_kernel="int_mm")  # fmt: skip
    model, ctx = apply_precision(tiny_vit(depth=1), spec, calib=digits16.train)
    plan = model.vitsweep_mixed_plan
    low = [x for x in plan.layers if x.bits < 8]
    assert plan.low_bit_kernel == "int_mm" and low
    assert all(len(x.act_range) == 2 and x.act_range[0] < x.act_range[1] for x in low)
    assert "unpacked per call to int8 _int_mm" in ctx.precision_exec
    x = torch.stack([digits16.val[i][0] for i in range(8)])
    with torch.inference_mode():
        eager = model(x)
        compiled, (code, *_) = run_and_get_code(compile_program(model), x)
    assert torch.allclose(compiled, eager, rtol=1e-3, atol=1e-3)
    assert torch.equal(compiled.argmax(1), eager.argmax(1))
    # inside the PT2E program too, the low-bit layers stay packed
    linears = dict(tiny_vit(depth=1).named_modules())  # the float model's shapes, by name
    shapes = [(linears[x.name].in_features, linears[x.name].out_features) for x in low]
    assert_packed_constants(code, shapes)


def test_an_exported_layer_loads_and_compiles_packed_in_a_fresh_process(tmp_path) -> None:
    """`vitsweep-export` ships mixed programs as `.pt2`; their low-bit layers hold their codes
    behind `vitsweep::held`, which a fresh process must know before `torch.export.load`, and
    which compiling the loaded program (no layer built in that process) must not fold."""
    model = nn.Sequential(IntMMPackedLinear.from_linear(nn.Linear(64, 96), 4, (-3.0, 3.0)))
    x = torch.randn(20, 64)
    program = torch.export.export(model.eval(), (x,))
    torch.export.save(program, tmp_path / "model.pt2")
    torch.save((x, model(x)), tmp_path / "io.pt")
    script = (
        "import sys, torch\n"
        "from torch._inductor.utils import run_and_get_code\n"
        "from vitsweep.measure.compile import compile_program\n"
        "from vitsweep.precision.pt2e import load_program\n"
        "module = load_program(sys.argv[1] + '/model.pt2')\n"
        "x, y = torch.load(sys.argv[1] + '/io.pt')\n"
        "assert torch.allclose(module(x), y, rtol=1e-5, atol=1e-5)\n"
        "with torch.inference_mode():\n"
        "    compiled, (code, *_) = run_and_get_code(compile_program(module), x)\n"
        "assert torch.allclose(compiled, y, rtol=1e-5, atol=1e-5)\n"
        "print(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert_packed_constants(done.stdout, [(64, 96)])
