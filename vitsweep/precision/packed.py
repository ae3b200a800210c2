"""Low-bit (2..7) linear layers stored packed and dequantized on every forward.

No CPU kernel in torch 2.14 multiplies 4- or 6-bit weights directly, so these layers save memory,
not time: `precision_exec` says so. Packing: 8 codes of b bits make one b-byte group (for b <= 7
a group fits an int64), so 4 bits is half a byte and 6 bits three quarters, with no per-element
padding. Hand-written because torch has no generic sub-byte pack for odd widths such as 6.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vitsweep.precision.quantizers import dequantize, qmax, quantize

_GROUP = 8  # codes per packed group


def packed_len(numel: int, bits: int) -> int:
    """Bytes that `numel` codes of `bits` bits take once packed."""
    return math.ceil(numel / _GROUP) * bits


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed codes in [-qmax, qmax] -> uint8 stream of `packed_len(codes.numel(), bits)` bytes."""
    if not 2 <= bits <= 7:
        raise ValueError(f"bits={bits}: packed storage is for 2..7 bits (8 bits runs on int8)")
    u = codes.reshape(-1).to(torch.int64) + qmax(bits)
    u = F.pad(u, (0, (-u.numel()) % _GROUP)).reshape(-1, _GROUP)
    shifts = torch.arange(_GROUP, device=u.device, dtype=torch.int64) * bits
    group = (u << shifts).sum(dim=1)  # fields do not overlap: sum == bitwise or
    byte_shifts = torch.arange(bits, device=u.device, dtype=torch.int64) * 8
    return ((group[:, None] >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)


def unpack_codes(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of `pack_codes`: int32 codes, flat, `numel` long."""
    b = packed.reshape(-1, bits).to(torch.int64)
    byte_shifts = torch.arange(bits, device=b.device, dtype=torch.int64) * 8
    group = (b << byte_shifts).sum(dim=1)
    shifts = torch.arange(_GROUP, device=b.device, dtype=torch.int64) * bits
    u = (group[:, None] >> shifts) & ((1 << bits) - 1)
    return (u.reshape(-1)[:numel] - qmax(bits)).to(torch.int32)


class PackedLinear(nn.Module):
    """A Linear whose weight lives as packed `bits`-bit codes plus one fp32 scale per output row.

    Modifications vs nn.Linear: weight -> buffers `packed` (uint8) and `scale` (fp32); bias kept as
    an fp32 buffer; forward dequantizes the whole weight, then runs a float matmul.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int,
        packed: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.bits = in_features, out_features, bits
        self.register_buffer("packed", packed)
        self.register_buffer("scale", scale.float())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int) -> PackedLinear:
        codes, scale = quantize(linear.weight, bits)
        return cls(
            linear.in_features,
            linear.out_features,
            bits,
            pack_codes(codes, bits),
            scale,
            linear.bias,
        )

    @staticmethod
    def storage_bytes(out_features: int, in_features: int, bits: int, bias: bool) -> int:
        """Bytes this layer stores: packed codes, fp32 scales, fp32 bias."""
        return packed_len(out_features * in_features, bits) + 4 * out_features * (1 + int(bias))

    def dequantized_weight(self) -> torch.Tensor:
        numel = self.out_features * self.in_features
        codes = unpack_codes(self.packed, self.bits, numel).reshape(
            self.out_features, self.in_features
        )
        return dequantize(codes, self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.dequantized_weight().to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w, b)

    @property
    def buffered_params(self) -> int:
        """Parameters this layer holds as buffers (codes and bias): `count_params` adds them."""
        bias = 0 if self.bias is None else self.bias.numel()
        return self.out_features * self.in_features + bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}"
