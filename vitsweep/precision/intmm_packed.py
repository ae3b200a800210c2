"""Sub-8-bit weights multiplied on an int8 kernel: packed b-bit codes, unpacked to int8 on every
call, 8-bit activations, `torch._int_mm` (a W{b}A8 layer).

Why: nothing in the locked stack multiplies 2-7-bit weights by int8 activations on x86 (see
`int4.py`: torchao's wheel has no CPU low-bit ops; aten's int4 kernel takes bf16 activations and
ran at 0.55x the int8 program's images/s at batch 64 with 4 of 25 layers on it). The weight
codes are stored packed (`pack_planar`, the bytes the ILP prices) and widened to int8 in the
forward, which inductor turns into one small loop over the weight (K x N codes, a few us); the
GEMM is then int8 x int8 -> int32 like the PT2E program's 8-bit layers. What it costs against
a plain int8 layer is that unpacking, priced per layer by the latency table like every option.

Activations: one static affine int8 scale and zero point per layer from calibration (min/max
of its inputs), as the PT2E program's 8-bit layers quantize theirs; literals in the graph. The
zero point's correction (z x the column sums of the codes) and both scales fold into one fp32
bias and one fp32 scale per output, so the layer stores what `PackedLinear` stores.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from vitsweep.precision.quantizers import qmax, quantize


def chunk_shape(bits: int) -> tuple[int, int]:
    """(bytes, codes) of the smallest whole-byte chunk holding whole `bits`-bit codes:
    (1, 4) for 2 bits, (3, 8) for 3, (1, 2) for 4, (5, 8) for 5, (3, 4) for 6, (7, 8) for 7."""
    nbytes = bits // math.gcd(8, bits)
    return nbytes, 8 * nbytes // bits


def supports(layer: nn.Linear, bits: int, device: str) -> bool:
    """Whether this layer can run here: a CPU with `torch._int_mm` (CUDA's has other shape
    rules: not used), 2..7 bits, and input features a multiple of the codes per chunk."""
    return (
        str(device).startswith("cpu")
        and hasattr(torch, "_int_mm")
        and 2 <= bits <= 7
        and layer.in_features % chunk_shape(bits)[1] == 0
    )


def affine_int8(lo: float, hi: float, qmin: int = -128, qmax: int = 127) -> tuple[float, int]:
    """(scale, zero point) of an 8-bit affine quantizer covering [lo, hi] and 0: int8 by
    default, uint8 with (qmin, qmax) = (0, 255)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-8) / (qmax - qmin)
    zero = round(qmin - lo / scale)
    return scale, max(qmin, min(qmax, zero))


def pack_planar(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed codes (K x N) -> uint8 (K / codes-per-chunk, chunk bytes, N): code plane i (rows
    i*K/c .. (i+1)*K/c - 1) sits at bit offset i*bits of every chunk. Planar rather than
    interleaved (`packed.pack_codes`) so that unpacking is a shift by a constant per plane:
    inductor compiled the interleaved layout's per-element shift amount to a scalar loop."""
    nbytes, per = chunk_shape(bits)
    k, n = codes.shape
    planes = (codes.to(torch.int64) + qmax(bits)).reshape(per, k // per, n)
    shifts = (torch.arange(per, dtype=torch.int64) * bits).reshape(per, 1, 1)
    group = (planes << shifts).sum(dim=0)  # fields do not overlap: sum == bitwise or
    byte_shifts = (torch.arange(nbytes, dtype=torch.int64) * 8).reshape(1, nbytes, 1)
    return ((group[:, None, :] >> byte_shifts) & 0xFF).to(torch.uint8)


def unpack_planar(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of `pack_planar`: int8 codes (K x N)."""
    nbytes, per = chunk_shape(bits)
    mask = (1 << bits) - 1
    if nbytes == 1:  # 2 and 4 bits: shift and mask in int8 itself (the sign bits are masked off)
        group = packed[:, 0].view(torch.int8)
    else:  # a chunk of 3, 5 or 7 bytes, assembled in the narrowest integer that holds it
        b = packed.to(torch.int32 if nbytes < 4 else torch.int64)
        group = b[:, 0]
        for i in range(1, nbytes):
            group = group | (b[:, i] << (8 * i))
    planes = [(group >> (bits * i)) & mask for i in range(per)]
    return torch.cat(planes).to(torch.int8) - qmax(bits)  # an int8 minus an int stays int8


@torch.library.custom_op("vitsweep::held", mutates_args=())
def held(packed: torch.Tensor) -> torch.Tensor:
    """A copy of `packed` that inductor's freezing never constant-folds (`never_fold_held`).
    Without it freezing folds the whole unpacking into an int8 constant: the compiled program
    would hold every weight at 8 bits, and the bytes the plan saves would exist only on disk.

    Our own op rather than the PT2E flow's no-op conversion
    (`quantized_decomposed.convert_element_type.no_fuse`, which the folder also leaves alone):
    that one runs through `prims.convert_element_type` and cost ~0.6 ms per call inside the
    xray mixed program at batch 64 (torch.profiler, 7 calls per forward, 5% of the forward);
    this copy of 110 KB costs ~30 us (AMD EPYC, 2 threads, 2026-12-05)."""
    return packed.clone()


@held.register_fake
def _(packed: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(packed)


@functools.cache
def never_fold_held() -> None:
    """Tells inductor's constant folder to leave `held` in the graph: once per process, when the
    first layer is built or a program holding the op is loaded (not at import: importing
    inductor's folder costs ~2 s)."""
    from torch._inductor.constant_folding import add_dont_constant_fold

    add_dont_constant_fold(torch.ops.vitsweep.held.default)


class IntMMPackedLinear(nn.Module):
    """A Linear with `bits`-bit weights stored packed, run as int8 x int8 by `torch._int_mm`.

    Modifications vs nn.Linear: weight -> buffer `packed` (the codes of W^T, K x N, packed);
    bias and the per-output weight scale folded with the activation quantizer into buffers
    `out_scale` and `out_bias` (fp32); forward quantizes the input (static affine int8),
    unpacks the codes to int8, multiplies on `_int_mm`, rescales once.
    """

    # the latency table's name for this forward (`precision.latency`), renamed whenever its
    # cost changes so that a machine's cached timings of the old forward are measured again
    # ("2": `held` instead of `no_fuse`, 0.7-1.1x an int8 layer at batch 1 where it was 1.5-3x)
    table_name = "IntMMPackedLinear2"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int,
        packed: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor | None,
        act_range: tuple[float, float],
    ) -> None:
        super().__init__()
        never_fold_held()
        self.in_features, self.out_features, self.bits = in_features, out_features, bits
        self.x_scale, self.x_zero = affine_int8(*act_range)
        codes = unpack_planar(packed, bits)
        colsum = codes.sum(dim=0, dtype=torch.int64).float()
        out_scale = weight_scale.float() * self.x_scale
        out_bias = -out_scale * self.x_zero * colsum
        if bias is not None:
            out_bias = out_bias + bias.detach().float()
        self.register_buffer("packed", packed)
        self.register_buffer("out_scale", out_scale)
        self.register_buffer("out_bias", out_bias)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, bits: int, act_range: tuple[float, float] = (-1.0, 1.0)
    ) -> IntMMPackedLinear:
        """`act_range`: the layer's input range on calibration data (the default serves
        weight-only uses: pricing bytes and the weight's error)."""
        codes, scale = quantize(linear.weight, bits)
        packed = pack_planar(codes.t().contiguous(), bits)
        return cls(
            linear.in_features, linear.out_features, bits, packed, scale, linear.bias, act_range
        )

    @staticmethod
    def storage_bytes(out_features: int, in_features: int, bits: int) -> int:
        """Bytes stored: packed codes, fp32 scale and bias per output (as `PackedLinear`)."""
        return out_features * in_features * bits // 8 + 8 * out_features

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight (out x in) the layer multiplies by."""
        w_scale = self.out_scale / self.x_scale
        return unpack_planar(self.packed, self.bits).t().float() * w_scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        q = torch.clamp(torch.round(rows / self.x_scale) + self.x_zero, -128, 127)
        acc = torch._int_mm(q.to(torch.int8), unpack_planar(held(self.packed), self.bits))
        y = acc.float() * self.out_scale + self.out_bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    @property
    def buffered_params(self) -> int:
        """Parameters held as buffers (codes and bias), as `count_params` counts them."""
        return self.out_features * (self.in_features + 1)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bits={self.bits}, act=int8 affine"
        )
