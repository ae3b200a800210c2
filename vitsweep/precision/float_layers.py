"""Mixed precision's wide options: a searched layer kept in bf16 (16) or fp32 (32) while the rest
of the plan runs in the PT2E int8 program.

X86InductorQuantizer's int8-mixed-bf16 mode runs every unquantized layer in bf16 by compiling
the whole program under autocast; a plan needs that per layer, so `Bf16Linear` holds its weight
and bias in bf16 and casts its input in and its output back. Exported into the PT2E program, it
is `aten.linear` on bf16 constants, which inductor's freezing prepacks for oneDNN's bf16 GEMM
(`mkldnn._linear_pointwise`, AMX-BF16 or AVX512-BF16 where the CPU has them). A layer at 32 stays
the plain nn.Linear, left out of the quantizer: an fp32 GEMM (`mkl._mkl_linear`) in the same
program. Neither quantizes its input: the activations of a wide layer stay 16 or 32 bits too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WIDE_BITS = (16, 32)  # bf16, fp32; below them the integer widths 2..8


class Bf16Linear(nn.Module):
    """nn.Linear in bf16 inside an fp32 model: input cast in, output cast back."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.weight = nn.Parameter(weight.detach().to(torch.bfloat16), requires_grad=False)
        b = None if bias is None else nn.Parameter(bias.detach().to(torch.bfloat16), False)
        self.bias = b

    @classmethod
    def from_linear(cls, layer: nn.Linear) -> Bf16Linear:
        return cls(layer.weight, layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight, self.bias).to(x.dtype)

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight.float()


def wide_layer(layer: nn.Linear, bits: int) -> nn.Module:
    """The layer at a wide option: 16 -> Bf16Linear, 32 -> the nn.Linear itself (unquantized)."""
    if bits == 16:
        return Bf16Linear.from_linear(layer).to(layer.weight.device)
    if bits == 32:
        return layer
    raise ValueError(f"wide_layer: bits={bits}; valid: {', '.join(map(str, WIDE_BITS))}")


def wide_label(bits: int, in_program: bool) -> str:
    """A wide layer's kernel in precision_exec's words."""
    if bits == 32:
        return "fp32"
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "bf16 (emulated: this CPU has no native bf16)"
    return "bf16 (oneDNN bf16 GEMM when compiled)" if in_program else "bf16"
