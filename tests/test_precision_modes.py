"""Every precision mode on a tiny timm ViT and on a subnet-like ViT, trained briefly on digits."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from timm.layers import Attention
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vitsweep.data import load
from vitsweep.measure.accuracy import predict
from vitsweep.measure.cost import count_params
from vitsweep.models.train import train_briefly
from vitsweep.precision import apply_precision, model_bytes
from vitsweep.precision.int4 import Int4Linear
from vitsweep.precision.intmm_packed import IntMMPackedLinear
from vitsweep.precision.onednn_packed import OneDNNPackedLinear
from vitsweep.precision.packed import PackedLinear
from vitsweep.runctx import RunContext
from vitsweep.spec import ConfigError, DataSpec, PrecisionSpec

pytestmark = pytest.mark.usefixtures("one_thread")


class HeadDim16Attention(Attention):
    """AutoFormer subnets fix the head dim (here 16) whatever the embed dim: qkv is not 3*dim."""

    def __init__(self, dim: int, **kwargs) -> None:
        super().__init__(dim, attn_head_dim=16, **kwargs)


def _vit(kind: str) -> VisionTransformer:
    torch.manual_seed(0)
    if kind == "timm":
        return VisionTransformer(
            img_size=16, patch_size=4, num_classes=10, embed_dim=32, depth=2, num_heads=2
        )
    return VisionTransformer(
        img_size=16,
        patch_size=4,
        num_classes=10,
        embed_dim=24,
        depth=2,
        num_heads=3,
        mlp_ratio=3.0,
        attn_layer=HeadDim16Attention,
    )


@pytest.fixture(scope="module")
def splits():
    return load(DataSpec(image_size=16))


@pytest.fixture(scope="module", params=["timm", "subnet"])
def trained(request, splits, trained_vit_state):
    """(kind, briefly trained float model, its fp32 test predictions, labels)."""
    model = _vit(request.param)
    if request.param == "timm":  # tiny_vit(): trained once per run, the same way (conftest)
        model.load_state_dict(trained_vit_state)
        model.eval()  # as train_briefly leaves it
    else:
        train_briefly(model, splits.train, epochs=12, lr=3e-3, amp=False)
    pred, label = predict(model, RunContext(), splits.test)
    assert (pred == label).float().mean() > 0.5  # it learned something: agreement means something
    return request.param, model, pred, label


def test_subnet_attention_is_not_dim_wide():
    attn = _vit("subnet").blocks[0].attn
    assert attn.qkv.out_features == 3 * 3 * 16 != 3 * 24
    assert attn.proj.in_features == 48


@pytest.mark.parametrize(
    ("spec", "label", "param_dtype"),
    [
        (PrecisionSpec(mode="fp32"), "fp32", torch.float32),
        (PrecisionSpec(mode="bf16", cast="autocast"), "bf16 autocast", torch.float32),
        (PrecisionSpec(mode="bf16", cast="full"), "bf16 full", torch.bfloat16),
    ],
    ids=["fp32", "bf16-autocast", "bf16-full"],
)
def test_float_modes(trained, splits, spec, label, param_dtype):
    _, base, ref_pred, _ = trained
    model, ctx = apply_precision(copy.deepcopy(base), spec)
    assert ctx.precision_exec == label and not model.training
    assert model.blocks[0].mlp.fc1.weight.dtype == param_dtype
    pred, _ = predict(model, ctx, splits.test)
    agree = float((pred == ref_pred).float().mean())
    assert agree >= (1.0 if spec.mode == "fp32" else 0.95), agree
    expected_bytes = model_bytes(base) // (2 if spec.cast == "full" else 1)
    assert model_bytes(model) == expected_bytes


@pytest.mark.parametrize("backend", ["ao_dynamic", "int_mm"])
def test_int8_close_to_fp32(trained, splits, backend):
    kind, base, ref_pred, _ = trained
    model, ctx = apply_precision(
        copy.deepcopy(base), PrecisionSpec(mode="int8"), int8_backend=backend
    )
    assert "int8" in ctx.precision_exec and "x9 Linear" in ctx.precision_exec
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    x = torch.stack([splits.test[i][0] for i in range(64)])
    with torch.inference_mode():
        y, y_ref = ctx.forward(model, x), base(x)
    assert float((y - y_ref).norm() / y_ref.norm()) < 0.1
    pred, _ = predict(model, ctx, splits.test)
    agree = float((pred == ref_pred).float().mean())
    print(f"top-1 agreement with fp32: {kind} int8 {backend}: {agree:.4f}")
    assert agree >= 0.95, agree
    weights = sum(m.weight.numel() for m in base.modules() if isinstance(m, nn.Linear))
    assert (
        model_bytes(model) < model_bytes(base) - 2 * weights
    )  # 3 of 4 bytes saved, less row scales


@pytest.mark.parametrize("kind_budget", ["bytes", "bops"])
def test_mixed_close_to_fp32_and_within_budget(trained, splits, kind_budget):
    kind, base, ref_pred, _ = trained
    ratio = 0.3 if kind_budget == "bytes" else 0.1
    spec = PrecisionSpec(mode="mixed", budget_kind=kind_budget, budget_ratio=ratio)
    model, ctx = apply_precision(copy.deepcopy(base), spec, calib=splits.train, calib_batch_size=32)
    plan = model.vitsweep_mixed_plan
    assert ctx.precision_exec.startswith(f"mixed {kind_budget}<=")
    assert len(plan.layers) == 8 and all(b in (4, 6, 8) for b in plan.bits.values())
    assert plan.cost <= plan.budget
    if kind_budget == "bytes":
        assert model_bytes(model) == plan.cost  # the ILP priced exactly what is now stored
        assert model_bytes(model) <= ratio * model_bytes(base)
    assert min(plan.bits.values()) < 8  # the budget binds: some layers went below 8 bits
    for layer in plan.layers:  # more bits never cost less or hurt more
        assert list(layer.sensitivity) == sorted(layer.sensitivity, reverse=True)
        assert list(layer.cost) == sorted(layer.cost)
    # PT2E (x86 CPUs): the packed layers are inside the exported program, no modules any more;
    # precision_exec counts them either way, and names the program of the 8-bit layers.
    low = sum(b < 8 for b in plan.bits.values())
    low_kinds = PackedLinear | Int4Linear | IntMMPackedLinear | OneDNNPackedLinear
    packed = [m for m in model.modules() if isinstance(m, low_kinds)]
    kernels = (
        r"packed\+dequantized|aten int4 kernel \(bf16 in, group \d+\)"
        r"|packed, unpacked per call to int8 _int_mm \(int8 activations\)"
        r"|packed, widened when compiled to the int8 oneDNN GEMM \(resident int8\)"
    )
    listed = re.findall(rf"\d-bit (?:{kernels}) x(\d+)", ctx.precision_exec)
    assert sum(int(n) for n in listed) == low
    if isinstance(model, torch.fx.GraphModule):
        assert "; 8-bit: int8 static pt2e x86-inductor" in ctx.precision_exec and not packed
    else:
        assert len(packed) == low
    assert count_params(model) == count_params(base)  # packed and int8 weights still count
    pred, _ = predict(model, ctx, splits.test)
    agree = float((pred == ref_pred).float().mean())
    bits = "".join(str(b) for b in plan.bits.values())
    print(
        f"top-1 agreement with fp32: {kind} mixed {kind_budget}<={ratio} bits {bits}: {agree:.4f}"
    )
    assert agree >= 0.9, agree


def test_infeasible_budget_names_the_smallest_feasible_ratio(trained, splits):
    _, base, _, _ = trained
    spec = PrecisionSpec(mode="mixed", budget_ratio=0.05, hutchinson_samples=2, calib_batches=1)
    with pytest.raises(ConfigError, match=r"precision.budget_ratio=0.05.*feasible") as err:
        apply_precision(copy.deepcopy(base), spec, calib=splits.train)
    smallest = float(str(err.value).rsplit(" ", 1)[-1])
    ok = PrecisionSpec(
        mode="mixed", budget_ratio=smallest + 1e-4, hutchinson_samples=2, calib_batches=1
    )
    model, _ = apply_precision(copy.deepcopy(base), ok, calib=splits.train)
    assert set(model.vitsweep_mixed_plan.bits.values()) == {4}  # only all-4-bit fits there


def test_idempotent_and_refuses_a_second_precision(trained):
    _, base, _, _ = trained
    model, ctx = apply_precision(copy.deepcopy(base), PrecisionSpec(mode="int8"))
    again, ctx2 = apply_precision(model, PrecisionSpec(mode="int8"))
    assert again is model and ctx2 == ctx
    with pytest.raises(ConfigError, match="already converted"):
        apply_precision(model, PrecisionSpec(mode="bf16"))
    float_model, _ = apply_precision(copy.deepcopy(base), PrecisionSpec(mode="bf16"))
    _, ctx3 = apply_precision(float_model, PrecisionSpec(mode="int8"))  # autocast changed nothing
    assert ctx3.autocast_dtype is None and "int8" in ctx3.precision_exec
