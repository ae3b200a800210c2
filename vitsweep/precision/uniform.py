"""Uniform per-channel coding as a layer: the baseline tq is judged against at equal stored bytes.

`UniformLayer` holds a Linear/Conv weight as `quantizers.quantize` codes (symmetric midtread,
searched clip, per output channel; 1 bit: sign + scale) and a fp32 scale per channel, and speaks
the same fine-tuning protocol as `TQLayer` (`begin_finetune` / `end_finetune`): a float latent
quantized with the layer's fixed scales through a straight-through estimator, stored quantized
at the end. So `retrain.retrain` retrains both the same way and a comparison is like for like.
What it stores (`stored_bits`): bits per weight of packed codes plus 32 per channel; the codes
are held one per int8 here, as this layer exists to measure accuracy, not to ship.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitsweep.precision.mixed import set_module
from vitsweep.precision.quantizers import SIGN_BITS, dequantize, qmax, quantize

_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class UniformLayer(nn.Module):
    """Modifications vs the float layer: weight -> buffers `codes` (int8, its shape) and `scale`
    (fp32 per output channel); `weight` the dequantized fp32 runtime copy (not stored); bias
    kept as an fp32 Parameter; conv hyperparameters kept."""

    codes: torch.Tensor
    scale: torch.Tensor
    weight: torch.Tensor

    def __init__(self, layer: nn.Linear | nn.modules.conv._ConvNd, bits: int) -> None:
        super().__init__()
        self.bits = int(bits)
        self.conv: dict | None = None  # conv hyperparameters (the float layer is not kept)
        if isinstance(layer, nn.modules.conv._ConvNd):
            self.conv = {
                "stride": layer.stride,
                "padding": layer.padding,
                "dilation": layer.dilation,
                "groups": layer.groups,
                "padding_mode": layer.padding_mode,
                "reversed_padding": layer._reversed_padding_repeated_twice,
            }
        codes, scale = quantize(layer.weight, self.bits)
        self.register_buffer("codes", codes)
        self.register_buffer("scale", scale)
        self.bias = (
            None if layer.bias is None else nn.Parameter(layer.bias.detach().float().clone())
        )
        self.register_buffer("weight", dequantize(codes, scale), persistent=False)
        self.latent: nn.Parameter | None = None

    @property
    def numel(self) -> int:
        return self.codes.numel()

    @property
    def stored_bits(self) -> int:
        return self.bits * self.numel + 32 * self.scale.numel()

    def _q(self, w: torch.Tensor) -> torch.Tensor:
        s = self.scale.reshape((-1,) + (1,) * (w.dim() - 1))
        if self.bits == SIGN_BITS:
            return torch.where(w < 0, -1.0, 1.0)
        top = qmax(self.bits)
        return torch.round(w / s).clamp(-top, top)

    def begin_finetune(self) -> nn.Parameter:
        self.latent = nn.Parameter(self.weight.clone())
        return self.latent

    @torch.no_grad()
    def end_finetune(self) -> None:
        assert self.latent is not None
        self.codes = self._q(self.latent).to(torch.int8)
        self.weight = dequantize(self.codes, self.scale)
        self.latent = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if self.latent is not None:  # Q(latent), identity gradient (STE)
            s = self.scale.reshape((-1,) + (1,) * (w.dim() - 1))
            value = self._q(self.latent) * s
            w = self.latent + (value - self.latent).detach()
        if self.conv is None:
            return F.linear(x, w, self.bias)
        c = self.conv
        padding = c["padding"]
        if c["padding_mode"] != "zeros":  # what nn.Conv does for reflect/replicate/circular
            x = F.pad(x, c["reversed_padding"], mode=c["padding_mode"])
            padding = 0
        conv = _CONV_FN[w.dim() - 2]
        return conv(x, w, self.bias, c["stride"], padding, c["dilation"], c["groups"])


def apply_uniform(model: nn.Module, bits: int, layers: list[tuple[str, nn.Module]]) -> None:
    """Replace each (name, layer) of `model` by its `UniformLayer` at `bits`."""
    for name, layer in layers:
        set_module(model, name, UniformLayer(layer, bits))


def uniform_layers(model: nn.Module) -> list[UniformLayer]:
    return [m for m in model.modules() if isinstance(m, UniformLayer)]
