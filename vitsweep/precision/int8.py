"""int8 Linear layers that run on real int8 kernels (int8 x int8 -> int32 accumulate).

Eager int8 layers: since torchao's PT2E path (`pt2e.py`) is the default on x86 CPUs, these run
only where it cannot (CUDA: `int_mm`; a model torch.export cannot capture: `ao_dynamic`, labelled
as a fallback) and as the per-layer stand-ins mixed precision prices its 8-bit option with.

API choice (torch 2.14.1):
- CPU default `ao_dynamic`: `torch.ao.nn.quantized.dynamic.Linear`, fbgemm/x86 dynamic
  quantization (per-tensor activation scale found at run time, per-channel int8 weights, VNNI
  GEMM, dequantize fused in one op). Measured here on a ViT-S fc1 (3152x384 @ 384x1536):
  2.7 ms vs 22 ms fp32, and 3.0x fp32 on the whole ViT-S/16. It is deprecated (pytorch#184982:
  qint8 tensors "will be removed"), hence the second backend behind the same seam.
- `int_mm`: plain int8 tensors and `torch._int_mm` with per-token activation scales computed in
  eager ops: no deprecated dtype, runs on CPU and CUDA, but on CPU 5.9 ms for the same fc1 (the
  eager activation quantization costs more than the GEMM). Used on CUDA, and on CPU when
  torch.ao's dynamic modules are gone.
Weights come from `quantizers.quantize` (symmetric per-channel, 8 bits) in both backends.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from vitsweep.precision.quantizers import quantize
from vitsweep.spec import ConfigError

INT8_BACKENDS = ("auto", "pt2e", "ao_dynamic", "int_mm")


def ao_dynamic_available() -> bool:
    """torch.ao's dynamic quantized Linear is importable and a CPU engine is active."""
    try:
        import torch.ao.nn.quantized.dynamic
    except ImportError:
        return False
    return torch.backends.quantized.engine in ("x86", "fbgemm", "onednn", "qnnpack")


def resolve_int8_backend(device: str, requested: str = "auto") -> str:
    """Which int8 kernel family runs on `device`; an impossible request is a ConfigError."""
    if requested not in INT8_BACKENDS:
        raise ConfigError(
            f"precision.int8_backend={requested!r}: unknown; valid: {', '.join(INT8_BACKENDS)}"
        )
    from vitsweep.precision.pt2e import pt2e_available

    kind = torch.device(device).type
    if requested == "pt2e" and not pt2e_available(device):
        raise ConfigError(
            "precision.int8_backend='pt2e': torchao's PT2E x86-inductor flow needs a CPU with "
            f"oneDNN and torchao installed (device={device!r}); valid here: auto, int_mm"
        )
    if requested == "ao_dynamic" and (kind != "cpu" or not ao_dynamic_available()):
        raise ConfigError(
            "precision.int8_backend='ao_dynamic': torch.ao dynamic int8 runs on CPU only and "
            f"needs torch.ao.nn.quantized.dynamic (device={device!r}); valid here: int_mm"
        )
    if requested != "auto":
        return requested
    if pt2e_available(device):
        return "pt2e"
    return "ao_dynamic" if kind == "cpu" and ao_dynamic_available() else "int_mm"


def eager_backend(device: str, backend: str) -> str:
    """The eager int8 kernels standing in for `backend` where one layer is converted on its own
    (mixed's pricing) or PT2E cannot capture the model (the labelled fallback)."""
    if backend != "pt2e":
        return backend
    return "ao_dynamic" if ao_dynamic_available() else "int_mm"


def backend_label(backend: str, device: str) -> str:
    """Human name of what executes, e.g. 'int8 dynamic (x86)'."""
    if backend == "ao_dynamic":
        return f"int8 dynamic ({torch.backends.quantized.engine})"
    return f"int8 _int_mm ({torch.device(device).type})"


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


class IntMMLinear(nn.Module):
    """A Linear computed as int8 activations x int8 weights by `torch._int_mm`.

    Modifications vs nn.Linear: weight -> int8 buffer `weight_t` (in x out, zero-padded to
    multiples of 8 on CUDA, which `_int_mm` requires there) and fp32 per-output `scale`;
    activations are quantized per token (row abs-max / 127) on every call.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        weight_t: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_t", weight_t)
        self.register_buffer("scale", scale.float())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear, device: str = "cpu") -> IntMMLinear:
        codes, scale = quantize(linear.weight, 8)
        weight_t = codes.t().contiguous()
        if torch.device(device).type == "cuda":
            k, n = _round_up(linear.in_features, 8), _round_up(linear.out_features, 8)
            weight_t = F.pad(weight_t, (0, n - linear.out_features, 0, k - linear.in_features))
        return cls(linear.in_features, linear.out_features, weight_t, scale, linear.bias).to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).float()
        x_scale = x2.abs().amax(dim=1, keepdim=True).clamp_min(1e-8) / 127.0
        q = torch.round(x2 / x_scale).to(torch.int8)
        m = q.shape[0]
        k_pad = self.weight_t.shape[0] - self.in_features
        if x.is_cuda:  # _int_mm on CUDA: more than 16 rows, K and N multiples of 8
            q = F.pad(q, (0, k_pad, 0, max(0, 17 - m)))
        acc = torch._int_mm(q, self.weight_t)[:m, : self.out_features]
        y = acc.float() * x_scale * self.scale
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def _ao_dynamic_linear(linear: nn.Linear) -> nn.Module:
    """torch.ao dynamic Linear holding our per-channel codes (so Q_8 is the same everywhere)."""
    import torch.ao.nn.quantized.dynamic as nnqd

    codes, scale = quantize(linear.weight, 8)
    out_features = linear.out_features
    bias = None if linear.bias is None else linear.bias.detach().float()
    with warnings.catch_warnings():
        # The qint8 deprecation notice (pytorch#184982) fires on every tensor; said once above.
        warnings.filterwarnings("ignore", message=".*quantized tensor creation.*")
        warnings.filterwarnings("ignore", message=".*deprecated.*", category=UserWarning)
        qweight = torch._make_per_channel_quantized_tensor(
            codes.cpu(), scale.double().cpu(), torch.zeros(out_features, dtype=torch.int64), 0
        )
        qlin = nnqd.Linear(
            linear.in_features, out_features, bias_=bias is not None, dtype=torch.qint8
        )
        qlin.set_weight_bias(qweight, None if bias is None else bias.cpu())
    return qlin


def int8_linear(linear: nn.Linear, backend: str, device: str = "cpu") -> nn.Module:
    """The int8-kernel replacement of one nn.Linear (`backend` from `resolve_int8_backend`)."""
    if backend == "ao_dynamic":
        return _ao_dynamic_linear(linear)
    if backend == "int_mm":
        return IntMMLinear.from_linear(linear, device)
    raise ValueError(f"backend={backend!r}: valid: ao_dynamic, int_mm")
