"""Sub-8-bit weights on oneDNN's int8 GEMM: codes stored packed, widened to int8 when compiled.

Why: no x86 kernel in the locked stack multiplies 2-7-bit weights (`int4.py`, `intmm_packed.py`),
and every layer that leaves the PT2E program's fused oneDNN int8 GEMM costs time on top of it
(`torch._int_mm` plus separate kernels for the rescale and the layout: 1.0-1.6x an int8 layer at
batch 1, and whole groups of such layers cost more again in the program, README #32). A b-bit
code is also an int8 code. So this layer hands the PT2E program exactly the pattern its 8-bit
layers have (uint8 activations through quantize/dequantize, per-channel int8 weight through
`dequantize_per_channel`, `aten.linear`), with the weight computed from packed codes in the
graph. Inductor's freezing folds that unpacking into an int8 constant (it never folds the
dequantize, so the pattern survives) and lowers the layer onto the same `qlinear_pointwise` as an
8-bit one.

What that buys and what it does not: the program, and the `.pt2` file `vitsweep-export` writes,
store b bits per weight (the bytes the ILP prices). The compiled program holds its own int8 copy,
prepacked for oneDNN, so the resident weights are those of int8 (the trial's measured memory
says so) and the batch-1 time is the 8-bit layer's: its latency costs nothing beyond 8 bits.
Where the resident bytes matter more than the time, `precision.low_bit_kernel=int_mm` keeps the
codes packed in memory.

Activations: one static affine uint8 scale and zero point from the calibrated input range
(min/max, where the PT2E flow's 8-bit layers use its histogram observer), literals in the graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitsweep.precision.intmm_packed import affine_int8, chunk_shape, pack_planar, unpack_planar
from vitsweep.precision.quantizers import dequantize, qmax, quantize

UINT8 = (0, 255)  # the activation range the x86 lowering takes (X86InductorQuantizer's)


def supports(layer: nn.Linear, bits: int, device: str) -> bool:
    """Whether this layer can run here: a CPU the PT2E flow lowers for, 2..7 bits, and output
    features a multiple of the codes per packed chunk."""
    from vitsweep.precision.pt2e import pt2e_available

    return (
        2 <= bits <= 7 and layer.out_features % chunk_shape(bits)[1] == 0 and pt2e_available(device)
    )


class OneDNNPackedLinear(nn.Module):
    """A Linear with `bits`-bit weights stored packed, run as int8 by the compiled PT2E program.

    Modifications vs nn.Linear: weight -> buffers `packed` (the codes of W, out x in, packed
    along the outputs) and `scale` (fp32 per output), bias an fp32 buffer; forward
    fake-quantizes the input to uint8 and dequantizes the codes, which is the graph inductor
    lowers to an int8 GEMM. Run eagerly it is only that numerical model (a float GEMM): it is
    fast only compiled.
    """

    def __init__(
        self, linear: nn.Linear, bits: int, act_range: tuple[float, float] = (-1.0, 1.0)
    ) -> None:
        """`act_range`: the layer's input range on calibration data (the default serves
        weight-only uses: pricing bytes and the weight's error)."""
        super().__init__()
        import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401  (quantized_decomposed ops)

        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bits = bits
        self.x_scale, self.x_zero = affine_int8(*act_range, *UINT8)
        codes, scale = quantize(linear.weight, bits)
        self.register_buffer("packed", pack_planar(codes, bits))
        self.register_buffer("scale", scale.float())
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, bits: int, act_range: tuple[float, float] = (-1.0, 1.0)
    ) -> OneDNNPackedLinear:
        """As the other low-bit layers are made (`mixed.low_bit_layer`)."""
        return cls(linear, bits, act_range)

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight (out x in) the layer multiplies by."""
        return dequantize(unpack_planar(self.packed, self.bits), self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qd = torch.ops.quantized_decomposed
        act = (self.x_scale, self.x_zero, *UINT8, torch.uint8)
        x = qd.dequantize_per_tensor(qd.quantize_per_tensor(x, *act), *act)
        top = qmax(self.bits)
        # unpacked straight to out x in: a transposed view here was folded into a constant
        # inductor then read with the wrong strides (torch 2.14.1: outputs off by 1.7 on a
        # 2-layer model), while a contiguous one lowers and matches the eager graph
        codes = unpack_planar(self.packed, self.bits)
        zero = torch.zeros(self.out_features, dtype=torch.int64)  # symmetric: made, not stored
        w = qd.dequantize_per_channel(codes, self.scale, zero, 0, -top, top, torch.int8)
        return F.linear(x, w, self.bias)

    @property
    def buffered_params(self) -> int:
        """Parameters held as buffers (codes and bias), as `count_params` counts them."""
        bias = 0 if self.bias is None else self.bias.numel()
        return self.out_features * self.in_features + bias

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bits={self.bits}, act=uint8 affine"
        )
