"""Symmetric per-output-channel weight quantizers: the one definition of Q_b(W).

The same codes and scales feed the sensitivity estimate (||W - Q_b(W)||^2), the int8 kernels and
the packed low-bit layers, so what the ILP prices is exactly what then runs. Written here rather
than taken from torch.ao observers because those neither search a clipping range (which matters at
4 bits) nor outlive the deprecation of torch.ao.quantization.
"""

from __future__ import annotations

import torch

MIN_BITS, MAX_BITS = 2, 8  # the symmetric midtread quantizer's range (what mixed may choose)
SIGN_BITS = 1  # `quantize` at 1 bit: sign + scale, a baseline rather than a mixed option
# Clipping ratios tried per row: at 4 bits clipping the largest weights lowers ||W - Q(W)||^2.
CLIP_GRID = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5)


def qmax(bits: int) -> int:
    """Largest code of a symmetric `bits`-bit quantizer (codes in [-qmax, qmax], no zero point)."""
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits={bits}: valid: {MIN_BITS}..{MAX_BITS}")
    return 2 ** (bits - 1) - 1


@torch.no_grad()
def quantize_sign(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """1 bit: (codes +-1 int8, scale fp32 per output row). The scale mean|w| of a row is the one
    that minimises ||w - scale * sign(w)||^2; a symmetric midtread quantizer has no 1-bit form
    (its one code would be zero), so this is the sign + scale binarisation of XNOR-Net/BWN."""
    w = weight.detach().float().reshape(weight.shape[0], -1)
    codes = torch.where(w < 0, -1, 1).to(torch.int8)
    return codes.reshape(weight.shape), w.abs().mean(dim=1).clamp_min(1e-12)


@torch.no_grad()
def quantize(
    weight: torch.Tensor, bits: int, clip_grid: tuple[float, ...] = CLIP_GRID
) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8 of weight's shape, scale fp32 per output row) minimising each row's error;
    bits=1 is sign + scale (`quantize_sign`)."""
    if bits == SIGN_BITS:
        return quantize_sign(weight)
    top = qmax(bits)
    w = weight.detach().float().reshape(weight.shape[0], -1)
    amax = w.abs().amax(dim=1).clamp_min(1e-12)
    best_err = torch.full_like(amax, float("inf"))
    best_scale = amax / top
    best_codes = torch.zeros_like(w, dtype=torch.int8)
    for ratio in clip_grid:
        scale = amax * ratio / top
        codes = torch.round(w / scale[:, None]).clamp_(-top, top)
        err = (codes * scale[:, None] - w).pow_(2).sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
        best_codes[better] = codes[better].to(torch.int8)
    return best_codes.reshape(weight.shape), best_scale


def dequantize(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Float weight from codes and per-row scales."""
    shape = (-1,) + (1,) * (codes.dim() - 1)
    return codes.float() * scale.reshape(shape)


def fake_quantize(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Q_b(W) in float: the weight as the quantized layer will see it."""
    return dequantize(*quantize(weight, bits)).to(weight.dtype)


def perturbation(weight: torch.Tensor, bits: int) -> float:
    """||W - Q_b(W)||^2, the size of the step quantization takes in weight space."""
    w = weight.detach().float()
    return float((w - fake_quantize(w, bits)).pow(2).sum())
