"""4-bit weights on a real CPU kernel: aten's int4 weight-only GEMM (`_weight_int4pack_mm_for_cpu`).

What exists for x86 in the locked stack (torch 2.14.1, torchao 0.18.0), found by trying each:
- torchao's wheel ships no CPU kernels (its `torch.ops.torchao` has no da8w4/intx CPU ops here;
  only CUDA extensions), so its int4 configs fall back to torch's ops;
- torch's own `_weight_int4pack_mm_for_cpu` multiplies bf16, fp16 or fp32 activations by
  group-wise uint4 weights. Only its bf16 path is vectorized: fp32 and fp16 took 70-140x longer
  (15.7 and 30 ms against 0.21 ms for 65x192 @ 192x768 on the Xeon @2.80GHz), so the layer
  casts its input to bf16 and its output back;
- nothing multiplies 6-bit (or 2/3/5/7-bit) weights: those are widened to int8 on every call
  (`precision.intmm_packed`, what mixed runs by default) or dequantized (`precision.packed`).

The kernel wants N (out features) divisible by 16 and K (in features) by its group size
(32, 64, 128 or 256); `supports` says where it applies. The group is the largest that divides
K, so every group's bf16 scale costs at most 1 extra bit per weight (0.5 at K=192, 0.125 at
K=768). Codes are symmetric like every other quantizer here (`quantizers.qmax`): the zero of
the kernel's (scale, zero) pair is 0.
"""

from __future__ import annotations

import torch
from torch import nn

from vitsweep.precision.quantizers import qmax

GROUPS = (256, 128, 64, 32)  # group sizes the kernel takes, largest first


def group_size(in_features: int) -> int | None:
    """The largest group the kernel takes that divides `in_features`, or None."""
    return next((g for g in GROUPS if in_features % g == 0), None)


def supports(layer: nn.Linear, device: str) -> bool:
    """Whether the int4 CPU kernel runs this layer's shape on `device`."""
    return (
        str(device).startswith("cpu")
        and layer.out_features % 16 == 0
        and group_size(layer.in_features) is not None
    )


class Int4Linear(nn.Module):
    """A Linear with 4-bit group-wise weights, run by aten's int4 CPU kernel on bf16 inputs.

    Modifications vs nn.Linear: weight -> buffers `packed` (the kernel's uint8 layout, two codes
    a byte) and `scale_zero` (bf16, (K/group, N, 2)); bias kept as an fp32 buffer; forward casts
    the input to bf16, runs the kernel, adds the bias in fp32.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        group: int,
        packed: torch.Tensor,
        scale_zero: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.group = in_features, out_features, group
        self.register_buffer("packed", packed)
        self.register_buffer("scale_zero", scale_zero)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @staticmethod
    def codes(weight: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Signed codes in [-7, 7] and one scale per (row, group), the scale already rounded to
        bf16 as the kernel stores it, so the codes are fitted to the scale that is applied."""
        n, k = weight.shape
        w = weight.detach().float().reshape(n, k // group, group)
        scale = (w.abs().amax(dim=-1) / qmax(4)).clamp_min(1e-12).bfloat16().float()
        codes = torch.clamp(torch.round(w / scale[..., None]), -qmax(4), qmax(4))
        return codes.reshape(n, k).to(torch.int32), scale

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int4Linear:
        group = group_size(linear.in_features)
        if group is None or linear.out_features % 16:
            raise ValueError(
                f"int4 kernel: Linear {linear.in_features}->{linear.out_features} has no group "
                f"size in {GROUPS} dividing its inputs, or outputs not divisible by 16"
            )
        codes, scale = cls.codes(linear.weight, group)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.cpu() + 8, 1)
        # the kernel computes (code - 8) * scale + zero per group; (K/group, N, 2) layout
        scale_zero = torch.stack([scale.t(), torch.zeros_like(scale.t())], dim=-1)
        return cls(
            linear.in_features,
            linear.out_features,
            group,
            packed,
            scale_zero.contiguous().bfloat16(),
            linear.bias,
        )

    @classmethod
    def fake_quantize(cls, weight: torch.Tensor) -> torch.Tensor:
        """The float weight the kernel multiplies by, for a layer made from `weight`."""
        group = group_size(weight.shape[1])
        assert group is not None, "checked by supports()"
        codes, scale = cls.codes(weight, group)
        return (codes.float().reshape(*scale.shape, group) * scale[..., None]).reshape(weight.shape)

    def _mm(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(
            rows.to(torch.bfloat16), self.packed, self.group, self.scale_zero
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._mm(x.reshape(-1, self.in_features)).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    @property
    def buffered_params(self) -> int:
        """Parameters held as buffers (codes and bias), as `count_params` counts them."""
        return self.out_features * self.in_features + (
            0 if self.bias is None else self.out_features
        )

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bits=4, group={self.group}"
