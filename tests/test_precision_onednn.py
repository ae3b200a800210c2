"""Sub-8-bit weights on the PT2E program's own int8 GEMM (precision/onednn_packed.py): what the
layer computes, what it stores, and that compiling lowers it onto oneDNN's int8 kernel exactly
as it lowers an 8-bit layer, from the program in memory and from a `.pt2` file.

Oracles: the weight is `quantizers.fake_quantize` (the product's one Q_b(W), tested on its own);
the activation is torch's `fake_quantize_per_tensor_affine` at the layer's uint8 scale and zero
point; the kernels are read from the code inductor generates."""

from __future__ import annotations

import re
from collections import Counter

import pytest
import torch
from torch import nn
from torch._inductor.utils import run_and_get_code

from tests.conftest import tiny_vit
from vitsweep.measure.compile import compile_program
from vitsweep.precision import apply_precision
from vitsweep.precision.bytes import model_bytes
from vitsweep.precision.pt2e import load_program, pt2e_available
from vitsweep.precision.quantizers import fake_quantize
from vitsweep.spec import ConfigError, PrecisionSpec

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not pt2e_available("cpu"), reason="needs the x86 PT2E flow (oneDNN)"),
]


def _layer(lin: nn.Linear, bits: int, act_range: tuple[float, float]) -> nn.Module:
    from vitsweep.precision.onednn_packed import OneDNNPackedLinear

    return OneDNNPackedLinear.from_linear(lin, bits, act_range)


@pytest.mark.parametrize(("k", "n", "bits"), [(32, 16, 4), (192, 96, 6), (64, 48, 2), (24, 8, 3)])
def test_the_layer_computes_uint8_activations_times_quantized_weights(
    k: int, n: int, bits: int
) -> None:
    torch.manual_seed(k + n + bits)
    lin = nn.Linear(k, n).requires_grad_(False)
    x = torch.randn(3, 7, k) * 2 + 0.5
    layer = _layer(lin, bits, (float(x.min()), float(x.max())))
    wq = fake_quantize(lin.weight.detach(), bits)
    assert torch.equal(layer.dequantized_weight(), wq)
    assert 0 <= layer.x_zero <= 255
    xq = torch.fake_quantize_per_tensor_affine(x, layer.x_scale, layer.x_zero, 0, 255)
    want = xq @ wq.t() + lin.bias
    got = layer(x)
    assert got.shape == (3, 7, n)
    assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())
    # stored: bits per weight, then per output an fp32 scale and an fp32 bias
    assert model_bytes(layer) == k * n * bits // 8 + (4 + 4) * n


def _kernels(code: str) -> Counter[str]:
    """The ops a generated program calls, by name (`torch.ops.<ns>.<op>`, extern GEMMs)."""
    calls = re.findall(r"torch\.ops\.(\w+\.\w+)|extern_kernels\.(\w+)|(_int_mm)", code)
    return Counter(next(c for c in call if c) for call in calls)


def test_a_mixed_plan_compiles_to_the_int8_programs_kernels_and_stores_its_bits(
    digits16, tmp_path
) -> None:
    """auto on this CPU: the layers below 8 bits join the PT2E program's oneDNN int8 GEMMs (the
    same kernels, the same count, as the all-8-bit program), and the program, in memory and
    saved, holds their packed codes: fewer bytes than the all-8-bit program."""
    kw = {"hutchinson_samples": 2, "calib_batches": 1}
    mixed, ctx = apply_precision(
        tiny_vit(depth=1), PrecisionSpec(mode="mixed", budget_ratio=0.3, **kw), calib=digits16.train
    )
    plan = mixed.vitsweep_mixed_plan
    low = [x for x in plan.layers if x.bits < 8]
    assert plan.low_bit_kernel == "onednn" and low
    assert f"widened when compiled to the int8 oneDNN GEMM (resident int8) x{len(low)}" in (
        ctx.precision_exec
    )
    int8, _ = apply_precision(tiny_vit(depth=1), PrecisionSpec(mode="int8"), calib=digits16.train)
    assert model_bytes(mixed) < model_bytes(int8)
    packed = {k for k, v in mixed.state_dict().items() if v.dtype == torch.uint8}
    assert {f"{x.name}.packed" for x in low} <= packed

    x = torch.stack([digits16.val[i][0] for i in range(8)])
    kernels = {}
    with torch.inference_mode():
        for name, model in (("int8", int8), ("mixed", mixed)):
            torch._dynamo.reset()
            out, code = run_and_get_code(compile_program(model), x)
            kernels[name] = _kernels("\n".join(code))
            if name == "mixed":
                eager = model(x)
                assert torch.allclose(out, eager, rtol=1e-3, atol=1e-3)
                assert torch.equal(out.argmax(1), eager.argmax(1))
    assert kernels["mixed"] == kernels["int8"]
    assert kernels["mixed"]["onednn.qlinear_pointwise"] > 0
    assert not {"mm", "addmm", "_int_mm"} & set(kernels["mixed"])

    # shipped as `vitsweep-export` ships it: the .pt2 file holds the codes packed, and a
    # loaded program compiles onto the same kernels
    from vitsweep.precision.pt2e import PROGRAM_ATTR

    file = tmp_path / "model.pt2"
    torch.export.save(getattr(mixed, PROGRAM_ATTR), file)
    loaded = load_program(file)
    assert model_bytes(loaded) == model_bytes(mixed)
    with torch.inference_mode():
        torch._dynamo.reset()
        out, code = run_and_get_code(compile_program(loaded), x)
    assert _kernels("\n".join(code)) == kernels["int8"]
    assert torch.allclose(out, eager, rtol=1e-3, atol=1e-3)


def test_onednn_outside_the_pt2e_program_is_refused_in_one_line(digits16) -> None:
    spec = PrecisionSpec(
        mode="mixed", low_bit_kernel="onednn", hutchinson_samples=1, calib_batches=1
    )
    with pytest.raises(ConfigError, match=r"^precision\.low_bit_kernel=onednn: .*ao_dynamic"):
        apply_precision(tiny_vit(depth=1), spec, calib=digits16.train, int8_backend="ao_dynamic")
