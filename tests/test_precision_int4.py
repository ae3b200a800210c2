"""4-bit layers on aten's int4 CPU kernel (precision/int4.py): what the kernel computes, where it
applies, how a plan records it, and that the latency table times distinct copies.

The oracle is the definition: codes = round(W / s) clamped to +-7 with s = bf16(max|W_group| / 7),
so the kernel must compute bf16(x) @ (codes * s)^T + b, up to its bf16 output rounding."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from tests.conftest import tiny_vit
from vitsweep.precision import apply_precision
from vitsweep.precision.int4 import GROUPS, Int4Linear, group_size, supports
from vitsweep.precision.intmm_packed import IntMMPackedLinear
from vitsweep.precision.latency import REPEATS, LatencyTable
from vitsweep.precision.mixed import MixedPlan, convert_layer
from vitsweep.precision.packed import PackedLinear
from vitsweep.spec import ConfigError, MeasureSpec, PrecisionSpec

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(("k", "n"), [(32, 16), (192, 576), (768, 192), (320, 48)])
def test_the_kernel_computes_the_defined_int4_product(k: int, n: int) -> None:
    torch.manual_seed(k + n)
    lin = nn.Linear(k, n)
    layer = Int4Linear.from_linear(lin)
    group = group_size(k)
    assert layer.group == group and k % group == 0 and all(k % g for g in GROUPS if g > group)
    # the definition, written out per group
    w = lin.weight.detach().reshape(n, k // group, group)
    s = (w.abs().amax(-1, keepdim=True) / 7).bfloat16().float()
    wq = (torch.clamp(torch.round(w / s), -7, 7) * s).reshape(n, k)
    assert torch.equal(Int4Linear.fake_quantize(lin.weight), wq)
    # round to nearest: no weight is further than half a step from its code
    assert bool(((lin.weight.detach() - wq).abs().reshape(n, -1, group) <= s / 2 + 1e-7).all())
    x = torch.randn(2, 9, k)
    want = x.bfloat16().float() @ wq.t() + lin.bias.detach()
    got = layer(x)
    assert got.shape == (2, 9, n) and got.dtype == torch.float32
    tol = 2**-7 * want.abs().max()  # the kernel's bf16 output: 8 significant bits
    assert float((got - want).abs().max()) <= tol
    # 4 bits a weight + one bf16 (scale, zero) pair per group + the fp32 bias
    stored = sum(b.numel() * b.element_size() for b in layer.buffers())
    assert stored == k * n // 2 + 4 * n * (k // group) + 4 * n


def test_shapes_the_kernel_cannot_take_stay_packed() -> None:
    for lin in (nn.Linear(32, 10), nn.Linear(48, 32)):  # outputs not /16; inputs not /32
        assert not supports(lin, "cpu")
        assert isinstance(convert_layer(lin, 4, "x86", "cpu", "int4"), PackedLinear)
    lin = nn.Linear(64, 32)
    assert isinstance(convert_layer(lin, 4, "x86", "cpu", "int4"), Int4Linear)
    assert isinstance(convert_layer(lin, 4, "x86", "cpu", "packed"), PackedLinear)
    assert isinstance(convert_layer(lin, 6, "x86", "cpu", "int4"), PackedLinear)  # no 6-bit kernel
    assert not supports(lin, "cuda")  # the CUDA int4 kernel packs differently


@pytest.fixture(scope="module")
def planned(digits16):
    """A tight byte budget on a tiny ViT, both ways: {low_bit_kernel: (model, ctx)}."""
    out = {}
    for kernel in ("int_mm", "int4", "packed"):
        spec = PrecisionSpec(mode="mixed", budget_ratio=0.33, hutchinson_samples=2,
                             calib_batches=1, low_bit_kernel=kernel)  # fmt: skip
        out[kernel] = apply_precision(tiny_vit(depth=1), spec, calib=digits16.train)
    return out


def test_a_plan_names_each_layers_kernel_and_keeps_it(planned) -> None:
    plans = {k: model.vitsweep_mixed_plan for k, (model, _) in planned.items()}
    fours = {k: sum(b == 4 for b in p.bits.values()) for k, p in plans.items()}
    assert fours["int4"] > 0 and plans["int4"].low_bit_kernel == "int4"
    assert plans["int_mm"].low_bit_kernel == "int_mm"
    exec_int4, exec_packed, exec_int_mm = (
        planned[k][1].precision_exec for k in ("int4", "packed", "int_mm")
    )
    assert f"4-bit aten int4 kernel (bf16 in, group 32) x{fours['int4']}" in exec_int4
    assert "aten int4" not in exec_packed and "4-bit packed+dequantized" in exec_packed
    assert (
        f"4-bit packed, unpacked per call to int8 _int_mm (int8 activations) x{fours['int_mm']}"
        in exec_int_mm
    )
    # the plan travels with an export: the kernel comes back; plans stored before it: packed;
    # stored while auto was not resolved: int4, what auto meant then
    plain = dataclasses.asdict(plans["int4"])
    assert MixedPlan.from_dict(plain) == plans["int4"]
    assert MixedPlan.from_dict({**plain, "low_bit_kernel": "auto"}).low_bit_kernel == "int4"
    del plain["low_bit_kernel"]
    assert MixedPlan.from_dict(plain).low_bit_kernel == "packed"


def test_bad_low_bit_kernel_is_one_line() -> None:
    with pytest.raises(
        ConfigError, match=r"^precision\.low_bit_kernel=int2: .*auto, onednn, int_mm, int4, packed"
    ):
        PrecisionSpec(mode="mixed", low_bit_kernel="int2")


def test_the_latency_table_times_distinct_copies(tmp_path) -> None:
    """One module applied REPEATS times lets inductor compute its weight-only work once for
    all of them; each copy must hold its own weights, so each pays its own."""
    table = LatencyTable(tmp_path, MeasureSpec(threads=1, warmup=0, min_repeats=1,
                                               max_repeats=1, repeat_s=0))  # fmt: skip
    lin = nn.Linear(32, 64)
    for bits, kernel in ((4, "int4"), (4, "packed"), (6, "int4"), (6, "int_mm")):
        module, xs = table.program(lin, 5, bits, kernel)
        copies = list(module.layers)
        assert len(copies) == len(xs) == REPEATS and all(x.shape == (1, 5, 32) for x in xs)
        assert len({x.data_ptr() for x in xs}) == REPEATS  # each copy reads its own input
        assert len({m.packed.data_ptr() for m in copies}) == REPEATS
        assert {type(m) for m in copies} == {type(convert_layer(lin, bits, "x86", "cpu", kernel))}
        assert table.seconds(lin, 5, bits, kernel) > 0
    kinds = sorted(k.split("kernel=")[1].split(",")[0] for k in table.entries)
    # each kind under its table name (IntMMPackedLinear's is versioned with its forward)
    assert kinds == ["Int4Linear", IntMMPackedLinear.table_name, "PackedLinear", "PackedLinear"]
