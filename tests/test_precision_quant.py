"""Quantizers, sub-byte packing, the int8 layers and model_bytes against the stored tensors."""

from __future__ import annotations

import io
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vitsweep.precision import apply_precision, model_bytes
from vitsweep.precision.int8 import IntMMLinear, int8_linear
from vitsweep.precision.packed import PackedLinear, pack_codes, packed_len, unpack_codes
from vitsweep.precision.quantizers import fake_quantize, perturbation, qmax, quantize
from vitsweep.spec import PrecisionSpec


def _weight(rows: int = 24, cols: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    w[0, 0] = 12.0  # one outlier row, where clipping pays off
    return w


def test_codes_in_range_and_error_falls_with_bits():
    w = _weight()
    errors = []
    for bits in range(2, 9):
        codes, scale = quantize(w, bits)
        assert codes.dtype == torch.int8 and scale.shape == (w.shape[0],)
        assert int(codes.abs().max()) <= qmax(bits)
        errors.append(perturbation(w, bits))
    assert all(a > b for a, b in itertools.pairwise(errors))
    assert errors[-1] < 1e-3 * float(w.pow(2).sum())


def test_one_bit_is_sign_times_the_best_scale_per_row():
    """1 bit: codes +-1 and, per row, the scale no other scale beats (mean |w|: the least-squares
    scale of a sign pattern); its error sits above the 2-bit quantizer's."""
    w = _weight()
    codes, scale = quantize(w, 1)
    assert codes.dtype == torch.int8 and set(codes.unique().tolist()) <= {-1, 1}
    assert torch.equal(codes, torch.where(w < 0, -1, 1).to(torch.int8))
    err = (w - dequant(codes, scale)).pow(2).sum(dim=1)
    for factor in (0.9, 0.97, 1.03, 1.1):
        assert torch.all(err < (w - dequant(codes, scale * factor)).pow(2).sum(dim=1))
    assert perturbation(w, 1) > perturbation(w, 2)


def test_clip_search_beats_plain_absmax():
    w = _weight()
    for bits in (4, 6):
        plain = (w - dequant(*quantize(w, bits, clip_grid=(1.0,)))).pow(2).sum()
        searched = (w - fake_quantize(w, bits)).pow(2).sum()
        assert searched <= plain
    # the outlier row at 4 bits is where the grid finds a clipped scale
    _, s_plain = quantize(w, 4, clip_grid=(1.0,))
    _, s_best = quantize(w, 4)
    assert s_best[0] < s_plain[0]


def dequant(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return codes.float() * scale[:, None]


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7])
@pytest.mark.parametrize("numel", [1, 8, 37, 1000])
def test_pack_roundtrip_and_size(bits, numel):
    g = torch.Generator().manual_seed(bits * 1000 + numel)
    top = qmax(bits)
    codes = torch.randint(-top, top + 1, (numel,), generator=g, dtype=torch.int8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == packed_len(numel, bits) == math.ceil(numel / 8) * bits
    assert torch.equal(unpack_codes(packed, bits, numel), codes.int())


def test_packed_linear_runs_the_fake_quantized_weight():
    lin = nn.Linear(40, 24)
    with torch.no_grad():
        lin.weight.copy_(_weight())
    x = torch.randn(5, 7, 40)
    for bits in (4, 6):
        p = PackedLinear.from_linear(lin, bits)
        ref = F.linear(x, fake_quantize(lin.weight, bits), lin.bias)
        torch.testing.assert_close(p(x), ref, rtol=1e-5, atol=1e-5)
        # 4 bits: half a byte per weight; 6 bits: three quarters; plus fp32 scale and bias
        assert model_bytes(p) == 24 * 40 * bits // 8 + 24 * 4 + 24 * 4


@pytest.mark.parametrize("backend", ["ao_dynamic", "int_mm"])
def test_int8_linear_close_to_float(backend):
    torch.manual_seed(0)
    lin = nn.Linear(64, 48)
    x = torch.randn(3, 10, 64)
    q = int8_linear(lin, backend)
    with torch.inference_mode():
        y, ref = q(x), lin(x)
    assert y.shape == ref.shape
    rel = float((y - ref).norm() / ref.norm())
    assert rel < 0.02, rel


def test_model_bytes_hand_counts():
    lin = nn.Linear(16, 8)
    assert model_bytes(lin) == (16 * 8 + 8) * 4
    assert model_bytes(nn.Linear(16, 8).to(torch.bfloat16)) == (16 * 8 + 8) * 2
    # torch.ao int8: 1 byte/weight + per-channel double scale and int64 zero point, fp32 bias,
    # and the module's unused output scale (fp32) and zero point (int64)
    assert model_bytes(int8_linear(lin, "ao_dynamic")) == 16 * 8 + 8 * (8 + 8) + 8 * 4 + 4 + 8
    assert model_bytes(IntMMLinear.from_linear(lin)) == 16 * 8 + 8 * 4 + 8 * 4
    tied = nn.Sequential(nn.Linear(16, 16, bias=False), nn.Linear(16, 16, bias=False))
    tied[1].weight = tied[0].weight
    assert model_bytes(tied) == 16 * 16 * 4


def _tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(
        img_size=16, patch_size=4, num_classes=10, embed_dim=32, depth=2, num_heads=2
    )


def _saved_size(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


@pytest.mark.parametrize(
    "spec",
    [
        PrecisionSpec(mode="fp32"),
        PrecisionSpec(mode="bf16", cast="full"),
        PrecisionSpec(mode="int8"),
    ],
    ids=["fp32", "bf16-full", "int8"],
)
def test_model_bytes_matches_what_is_saved(spec):
    """torch.save writes the same tensors plus bounded per-entry overhead."""
    model, _ = apply_precision(_tiny_vit(), spec)
    n = model_bytes(model)
    entries = len(model.state_dict())
    saved = _saved_size(model)
    assert n <= saved < n + 600 * entries + 2048


@pytest.mark.parametrize(
    ("backend", "per_row", "per_module"),
    [("ao_dynamic", 16, 12), ("pt2e", 12, 0)],
)
def test_int8_vit_bytes_from_the_architecture(backend, per_row, per_module):
    """Every Linear at 1 byte/weight (+ per-row scale and zero point: torch.ao double + int64,
    PT2E fp32 + int64; fp32 bias; torch.ao 12 B module scalars, PT2E's activation scales are
    literals in the graph); everything else (patch conv, norms, tokens, pos embed) still fp32,
    and PT2E keeps no float copy of a quantized weight."""
    fp32 = _tiny_vit()
    linears = [m for m in fp32.modules() if isinstance(m, nn.Linear)]
    lin_fp32 = sum(4 * (m.weight.numel() + m.bias.numel()) for m in linears)
    lin_int8 = sum(
        m.weight.numel() + per_row * m.out_features + 4 * m.bias.numel() + per_module
        for m in linears
    )
    expected = model_bytes(fp32) - lin_fp32 + lin_int8
    model, _ = apply_precision(fp32, PrecisionSpec(mode="int8", int8_backend=backend))
    assert model_bytes(model) == expected
