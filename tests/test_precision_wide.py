"""Mixed precision's wide options (precision/float_layers.py): a searched layer kept in bf16 (16)
or fp32 (32) inside the PT2E int8 program. What the plan stores, what compiling runs, that the
ILP takes them at the least sensitivity (brute force over every plan of a small model), how
their latency is priced, and that their inputs stay float in the activation simulation.

Oracles: brute force for the ILP, the bytes counted by hand, the kernels read from the code
inductor generates, the all-8-bit program's kernel count. No timing is asserted."""

from __future__ import annotations

import copy
import itertools
import re
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn
from torch._inductor.utils import run_and_get_code

from tests.conftest import tiny_vit
from vitsweep.measure.compile import compile_program
from vitsweep.precision import apply_precision
from vitsweep.precision.bytes import model_bytes
from vitsweep.precision.int8 import resolve_int8_backend
from vitsweep.precision.latency import LatencyTable
from vitsweep.precision.mixed import plan_mixed
from vitsweep.precision.pt2e import PROGRAM_ATTR, load_program, pt2e_available
from vitsweep.spec import ConfigError, MeasureSpec, PrecisionSpec

pytestmark = pytest.mark.usefixtures("one_thread")
needs_pt2e = pytest.mark.skipif(not pt2e_available("cpu"), reason="needs the x86 PT2E flow")

KW = {"mode": "mixed", "hutchinson_samples": 2, "calib_batches": 1}
WIDE = "blocks.0.attn.qkv:16,blocks.0.mlp.fc1:32"
QUICK = MeasureSpec(threads=1, warmup=1, min_repeats=2, max_repeats=3, repeat_s=0.01,
                    time_cap_s=0.5)  # fmt: skip


def _qlinears(code: str) -> int:
    return len(re.findall(r"torch\.ops\.onednn\.qlinear_pointwise\.\w+\(", code))


@needs_pt2e
def test_wide_layers_run_unquantized_in_the_int8_program_and_store_their_width(
    digits16, tmp_path
) -> None:
    spec = PrecisionSpec(**KW, bits=(8, 16, 32), layer_bits=WIDE)
    base = tiny_vit(depth=1)
    mixed, ctx = apply_precision(copy.deepcopy(base), spec, calib=digits16.train)
    plan = mixed.vitsweep_mixed_plan
    assert plan.bits == {"blocks.0.attn.qkv": 16, "blocks.0.attn.proj": 8,
                         "blocks.0.mlp.fc1": 32, "blocks.0.mlp.fc2": 8}  # fmt: skip
    assert re.search(r"fp32 x1, bf16[^,]* x1", ctx.precision_exec), ctx.precision_exec
    # stored: qkv's weight and bias in bf16, fc1's in fp32, counted by hand
    qkv, fc1 = base.blocks[0].attn.qkv, base.blocks[0].mlp.fc1
    by_dtype = Counter()
    for v in mixed.state_dict().values():
        by_dtype[v.dtype] += v.numel()
    assert by_dtype[torch.bfloat16] == qkv.weight.numel() + qkv.bias.numel()
    assert model_bytes(mixed) == plan.cost  # the ILP priced exactly what is stored
    layer = {x.name: x for x in plan.layers}
    assert layer["blocks.0.attn.qkv"].cost[1] == 2 * (qkv.weight.numel() + qkv.bias.numel())
    assert layer["blocks.0.mlp.fc1"].cost[2] == 4 * (fc1.weight.numel() + fc1.bias.numel())

    int8, _ = apply_precision(copy.deepcopy(base), PrecisionSpec(mode="int8"),
                              calib=digits16.train)  # fmt: skip
    x = torch.stack([digits16.val[i][0] for i in range(8)])
    codes = {}
    with torch.inference_mode():
        for name, model in (("int8", int8), ("mixed", mixed)):
            torch._dynamo.reset()
            out, code = run_and_get_code(compile_program(model), x)
            codes[name] = "\n".join(code)
        eager = mixed(x)
    # the two wide layers left the int8 GEMMs; the rest did not
    assert _qlinears(codes["mixed"]) == _qlinears(codes["int8"]) - 2 > 0
    assert torch.allclose(out, eager, rtol=2e-2, atol=2e-2)
    assert torch.equal(out.argmax(1), eager.argmax(1))
    with torch.inference_mode():
        assert float((eager - base(x)).abs().max()) < 0.1 * float(base(x).abs().max())

    file = tmp_path / "model.pt2"  # shipped as vitsweep-export ships it
    torch.export.save(getattr(mixed, PROGRAM_ATTR), file)
    loaded = load_program(file)
    assert model_bytes(loaded) == model_bytes(mixed)
    with torch.inference_mode():
        assert torch.allclose(loaded(x), eager, rtol=1e-5, atol=1e-5)


def test_the_ilp_takes_wide_options_at_the_least_sensitivity(digits16) -> None:
    """Every plan of 4 layers x 4 options enumerated: the ILP's is the least total sensitivity
    within the bytes, at each budget; at the whole fp32 budget every layer stays fp32."""
    base = tiny_vit(depth=1)
    backend = resolve_int8_backend("cpu", "auto")
    picked_wide = False
    for ratio in (0.3, 0.45, 0.6, 0.8, 1.0):
        spec = PrecisionSpec(**KW, bits=(4, 8, 16, 32), budget_ratio=ratio)
        plan = plan_mixed(copy.deepcopy(base), spec, digits16.train, backend=backend)
        sens = np.array([x.sensitivity for x in plan.layers])
        cost = np.array([x.cost for x in plan.layers])
        for s, c in zip(sens, cost, strict=True):  # more bits: never less bytes, never worse
            assert list(c) == sorted(c) and list(s) == sorted(s, reverse=True) and s[-1] == 0
        limit = plan.budget - plan.fixed
        rows = np.arange(len(plan.layers))
        best = min(
            sens[rows, idx].sum()
            for idx in map(list, itertools.product(range(4), repeat=len(plan.layers)))
            if cost[rows, idx].sum() <= limit + 1e-6
        )
        chosen = [plan.candidates.index(b) for b in plan.bits.values()]
        assert sens[rows, chosen].sum() == pytest.approx(best, rel=1e-9, abs=1e-30)
        assert plan.cost <= plan.budget
        picked_wide |= any(b > 8 for b in plan.bits.values())
        if ratio == 1.0:
            assert set(plan.bits.values()) == {32}
    assert picked_wide


@needs_pt2e
@pytest.mark.slow
def test_a_wide_option_is_priced_by_its_group_switched_whole_once_per_machine(
    digits16, tmp_path
) -> None:
    """Under onednn the widths below 8 cost nothing over 8; bf16 is the all-8-bit program with
    each group switched to bf16, timed beside it: one entry per group, read back next time."""
    base = tiny_vit(depth=1)
    spec = PrecisionSpec(**KW, bits=(6, 8, 16), budget_ratio=1.0, latency_ratio=1e6)
    model, _ = apply_precision(copy.deepcopy(base), spec, calib=digits16.train, timing=QUICK,
                               cache_root=str(tmp_path))  # fmt: skip
    plan = model.vitsweep_mixed_plan
    table = LatencyTable(tmp_path, QUICK)
    entries = dict(table.entries)
    assert sorted(k.rsplit("group=", 1)[1] for k in entries) == [
        "attn.proj", "attn.qkv", "mlp.fc1", "mlp.fc2"
    ]  # fmt: skip
    for x in plan.layers:
        group = x.name.removeprefix("blocks.0.")
        assert x.latency[:2] == (0.0, 0.0)
        assert x.latency[2] == entries[next(k for k in entries if k.endswith(f"={group}"))]
    assert plan.predicted_latency_s == pytest.approx(
        plan.int8_latency_s + sum(x.latency[plan.candidates.index(x.bits)] for x in plan.layers)
    )
    stamp = table.path.stat().st_mtime_ns
    again, _ = apply_precision(copy.deepcopy(base), spec, calib=digits16.train, timing=QUICK,
                               cache_root=str(tmp_path))  # fmt: skip
    assert table.path.stat().st_mtime_ns == stamp  # read back, nothing timed again
    assert [x.latency for x in again.vitsweep_mixed_plan.layers] == [x.latency for x in plan.layers]


def test_a_wide_layer_keeps_float_inputs_in_the_activation_simulation(digits16) -> None:
    spec = PrecisionSpec(**KW, bits=(8, 32), layer_bits="blocks.0.mlp.fc2:32", act_bits=4)
    _, ctx = apply_precision(tiny_vit(depth=1), spec, calib=digits16.train)
    sites = re.search(r"activations 4-bit simulated for accuracy only \(([^)]*)\)",
                      ctx.precision_exec)  # fmt: skip
    assert sites, ctx.precision_exec
    counted = sum(int(n) for n in re.findall(r"x(\d+)", sites.group(1)))
    assert counted == 3 + 1  # qkv, proj, fc1 inputs and the softmax; not fc2's input


def test_widths_between_8_and_16_are_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^precision\.bits=\[4, 12\]: .*16 \(bf16\)"):
        PrecisionSpec(mode="mixed", bits=(4, 12))
    assert PrecisionSpec(mode="mixed", bits=(4, 8, 16, 32)).bits == (4, 8, 16, 32)


def test_a_wide_layer_outside_the_program_is_the_same_float_layer(digits16) -> None:
    """Eager int8 (no PT2E): the fp32 layer is the model's own nn.Linear, the bf16 one holds
    bf16 weights, and both say so in precision_exec."""
    spec = PrecisionSpec(**KW, bits=(8, 16, 32), layer_bits=WIDE)
    model, ctx = apply_precision(tiny_vit(depth=1), spec, calib=digits16.train,
                                 int8_backend="ao_dynamic")  # fmt: skip
    assert type(model.blocks[0].mlp.fc1) is nn.Linear
    assert model.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert "fp32 x1" in ctx.precision_exec and re.search(r"bf16[^,]* x1", ctx.precision_exec)
