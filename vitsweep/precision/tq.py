"""Transform quantization surgery: every nn.Linear / nn.Conv -> a TQ layer storing the coded weight.

`TQLayer` holds what ships: the rows' bit-depths, their packed midrise codes and steps, the kept
basis vectors at 8 bits with their scales, and the bias (maths in `transform.py`). The forward
does NOT run in the transform domain: y = U (C x) costs k(m+n) multiply-adds per token against the
dense layer's m*n, which pays only when fewer than mn/(m+n) rows are kept (under half, for a
square layer), and reverse water-filling at 2..8 bits keeps nearly all rows of these weights. So
the weight is rebuilt once (when the layer is made, loaded or fine-tuned) into a non-persistent
buffer and the layer runs one fp32 GEMM / conv: tq saves storage, not time, and `precision_exec`
says so. `model_bytes` counts the state_dict, i.e. the stored code and never the runtime copy.

Fine-tuning (`finetune`): quantization-aware, in the transform domain. Each layer's kept
coefficients become a float latent; the forward quantizes them with the layer's own bits and
steps and passes the gradient straight through (STE), so the network learns around the exact
values that will be stored, and at the end the latents are quantized by that very same function:
the model evaluated after fine-tuning is bit for bit the one stored, at the same rate. Fine-tuning
float weights and re-quantizing them instead would undo the adaptation (the float optimum moves
little in a few steps, and re-quantization puts the same error back), which is why it is not done.
The transform, the allocation and the steps stay fixed, so the rate cannot drift.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vitsweep.precision import transform as T
from vitsweep.precision.mixed import set_module

_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@dataclass(frozen=True)
class TQStats:
    """What the TQ layers of a model store, in bits: the quantities a rate is judged by."""

    layers: int
    weighted: int  # layers whose bits were allocated on output (activation-weighted) variances
    weights: int  # weights the layers represent (m*n each)
    coeff_bits: int  # packed coefficient codes
    side_bits: int  # kept basis (8-bit) + its scales + coefficient steps + bit-depths

    @property
    def rate(self) -> float:
        """Coefficient bits per weight: the rate the allocation spent."""
        return self.coeff_bits / max(self.weights, 1)

    @property
    def effective_bits(self) -> float:
        """All stored bits of the coded weights (biases excluded) per weight."""
        return (self.coeff_bits + self.side_bits) / max(self.weights, 1)


class TQLayer(nn.Module):
    """A Linear or Conv whose weight is stored transform-coded.

    Modifications vs the float layer: weight -> buffers `bits` (uint8, per kept row), `codes`
    (uint8 bitstream of the kept rows' codes), `step` (fp32 per kept row), `basis` (int8 d x k)
    and `basis_scale` (fp32 per kept row); bias kept as an fp32 Parameter; `weight` is the rebuilt
    fp32 weight, a non-persistent buffer (recomputed, not stored). Conv hyperparameters are kept.
    """

    bits: torch.Tensor
    codes: torch.Tensor
    step: torch.Tensor
    basis: torch.Tensor
    basis_scale: torch.Tensor
    weight: torch.Tensor

    def __init__(
        self,
        layer: nn.Linear | nn.modules.conv._ConvNd,
        rate: float,
        *,
        analysis: T.Analysis | None = None,
        gains: torch.Tensor | None = None,
    ) -> None:
        """Code `layer`'s weight at `rate` bits per weight. `analysis`: its KLT if already
        computed; `gains`: per-component output gains from calibration (None: weights only)."""
        super().__init__()
        w = layer.weight.detach()
        self.weight_shape = tuple(w.shape)
        self.conv_args: dict | None = None
        if isinstance(layer, nn.modules.conv._ConvNd):
            self.conv_args = {
                "dims": w.dim() - 2,
                "stride": layer.stride,
                "padding": layer.padding,
                "dilation": layer.dilation,
                "groups": layer.groups,
                "padding_mode": layer.padding_mode,
                "reversed_padding": getattr(layer, "_reversed_padding_repeated_twice", None),
            }
        self.rate = float(rate)
        self.weighted = gains is not None
        an = analysis or T.Analysis.of(w)
        a, u, self.transposed = an.a, an.basis, an.transposed
        self.rows, self.cols = a.shape  # d (transformed side) x s (coefficients per row)
        score = an.variances if gains is None else an.variances * gains.to(torch.float64).cpu()
        bits = torch.from_numpy(T.allocate_bits(score.numpy(), rate))
        keep = bits > 0
        basis, basis_scale = T.quantize_basis(u[:, keep])
        # Coefficients against the quantized basis (least squares): exact when all rows are kept.
        if keep.any():
            c = torch.linalg.lstsq(T.dequantize_basis(basis, basis_scale), a).solution
        else:  # a budget under one bit per row: the layer codes to zero
            c = a.new_zeros(0, self.cols)
        codes, step = T.quantize_rows(c, bits[keep])
        device = w.device
        self.register_buffer("bits", bits[keep].to(torch.uint8).to(device))
        self.register_buffer("codes", T.pack_rows(codes, bits[keep]).to(device))
        self.register_buffer("step", step.to(device))
        self.register_buffer("basis", basis.to(device))
        self.register_buffer("basis_scale", basis_scale.to(device))
        self.bias = (
            None if layer.bias is None else nn.Parameter(layer.bias.detach().float().clone())
        )
        self.register_buffer("weight", torch.empty(0, device=device), persistent=False)
        self.latent: nn.Parameter | None = None  # float coefficients while fine-tuning
        self.refresh()

    # ------------------------------------------------------------------ decoding

    def coefficients(self) -> torch.Tensor:
        """The dequantized kept coefficients, k x s (fp32)."""
        codes = T.unpack_rows(self.codes, self.bits, self.cols).to(self.step.device)
        return T.dequantize_rows(codes, self.bits, self.step)

    def rebuild(self, coefficients: torch.Tensor) -> torch.Tensor:
        """Weight (fp32, the layer's shape) = quantized basis @ coefficients, back in place."""
        u = (self.basis.float() * self.basis_scale[None, :]).to(coefficients.device)
        a = u @ coefficients
        return (a.t() if self.transposed else a).reshape(self.weight_shape)

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the runtime weight from the stored code."""
        self.weight = self.rebuild(self.coefficients()).contiguous()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, *args) -> None:
        # How many rows are kept, hence the buffers' lengths, depends on the weights that were
        # coded: take the shapes of what is loaded (an export rebuilt from zeroed weights).
        for name in ("bits", "codes", "step", "basis", "basis_scale"):
            incoming = state_dict.get(prefix + name)
            if isinstance(incoming, torch.Tensor) and incoming.shape != self._buffers[name].shape:
                self._buffers[name] = torch.empty_like(incoming, device=self._buffers[name].device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, *args)
        self.refresh()

    # ------------------------------------------------------------------ fine-tuning

    def begin_finetune(self) -> nn.Parameter:
        """Make the kept coefficients a trainable float latent; returns it."""
        self.latent = nn.Parameter(self.coefficients().clone())
        return self.latent

    def _quantized_latent(self) -> torch.Tensor:
        """Q(latent) with the layer's fixed bits and steps; identity gradient (STE)."""
        assert self.latent is not None
        half = 2.0 ** (self.bits.float() - 1)[:, None]
        q = torch.floor(self.latent / self.step[:, None]).clamp(-half, half - 1)
        value = (q + 0.5) * self.step[:, None]
        return self.latent + (value - self.latent).detach()

    @torch.no_grad()
    def end_finetune(self) -> None:
        """Store Q(latent) -- the very values the last training step used -- and drop it."""
        assert self.latent is not None
        half = 2.0 ** (self.bits.float() - 1)[:, None]
        q = torch.floor(self.latent / self.step[:, None]).clamp(-half, half - 1)
        codes = (q + half).to(torch.uint8).cpu()
        self.codes = T.pack_rows(codes, self.bits.cpu()).to(self.codes.device)
        self.latent = None
        self.refresh()

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight if self.latent is None else self.rebuild(self._quantized_latent())
        w = w.to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        if self.conv_args is None:
            return F.linear(x, w, b)
        c = self.conv_args
        padding = c["padding"]
        if c["padding_mode"] != "zeros":  # what nn.Conv does for reflect/replicate/circular
            x = F.pad(x, c["reversed_padding"], mode=c["padding_mode"])
            padding = 0
        return _CONV_FN[c["dims"]](x, w, b, c["stride"], padding, c["dilation"], c["groups"])

    # ------------------------------------------------------------------ accounting

    @property
    def numel(self) -> int:
        return self.rows * self.cols

    @property
    def buffered_params(self) -> int:
        """Weights held as coded buffers (the bias is a Parameter): `count_params` adds them."""
        return self.numel

    @property
    def coeff_bits(self) -> int:
        return int(self.bits.long().sum()) * self.cols

    @property
    def side_bits(self) -> int:
        return 8 * sum(
            t.numel() * t.element_size()
            for t in (self.bits, self.step, self.basis, self.basis_scale)
        )

    def extra_repr(self) -> str:
        kind = "linear" if self.conv_args is None else f"conv{self.conv_args['dims']}d"
        return (
            f"{kind}, weight={list(self.weight_shape)}, rate={self.rate:g}, "
            f"kept_rows={self.bits.numel()}/{self.rows}, "
            f"allocation={'output-weighted' if self.weighted else 'weights'}"
        )


def coded_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers tq codes: every nn.Linear and nn.Conv1d/2d/3d with a weight, in module order.

    Left out: the out_proj of nn.MultiheadAttention (its parent reads `.weight` directly, which is
    why torch gives it its own Linear subclass) and transposed convolutions.
    """
    found = []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.linear.NonDynamicallyQuantizableLinear):
            continue
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            found.append((name, m))
    return found


def tq_layers(model: nn.Module) -> list[TQLayer]:
    return [m for m in model.modules() if isinstance(m, TQLayer)]


def tq_stats(model: nn.Module) -> TQStats:
    layers = tq_layers(model)
    return TQStats(
        layers=len(layers),
        weighted=sum(m.weighted for m in layers),
        weights=sum(m.numel for m in layers),
        coeff_bits=sum(m.coeff_bits for m in layers),
        side_bits=sum(m.side_bits for m in layers),
    )


def _cycle(loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for _ in itertools.count():
        yield from loader


def finetune(
    model: nn.Module,
    data: Dataset,
    steps: int,
    *,
    batch_size: int = 64,
    lr: float = 1e-4,
    device: str = "cpu",
    seed: int = 0,
) -> None:
    """`steps` AdamW steps of cross-entropy on `data` through the quantized forward (STE).

    Trained: every TQ layer's latent coefficients, and the float parameters left (biases, norms,
    embeddings), which are stored fp32 anyway. The model stays in eval mode, so BatchNorm keeps
    its running statistics and dropout stays off: a few hundred small-batch steps would make
    running statistics noisy, and the point is to correct quantization error, not to regularise.
    Cosine-decayed learning rate, no weight decay (the steps are there to move coefficients
    across quantization cells where the loss asks, not to shrink them). Ends with every latent
    quantized back.
    """
    layers = tq_layers(model)
    latents = [layer.begin_finetune() for layer in layers]
    others = [p for p in model.parameters() if p.requires_grad and all(p is not q for q in latents)]
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=gen, drop_last=False)
    opt = torch.optim.AdamW([*latents, *others], lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    model.eval()
    try:
        with torch.enable_grad():
            for (x, y), _ in zip(_cycle(loader), range(steps), strict=False):
                loss = F.cross_entropy(model(x.to(device)).float(), y.to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    finally:
        for layer in layers:
            layer.end_finetune()
        for p in others:
            p.grad = None


def _project(layer: nn.Module, x: torch.Tensor, filters: torch.Tensor) -> torch.Tensor | None:
    """f_i . x for every component filter and every input vector the layer sees (tokens, or
    conv patches via the conv itself); channels first. None: grouped conv, no single input."""
    f = filters.to(device=x.device, dtype=torch.float32)
    if isinstance(layer, nn.Linear):
        return F.linear(x.float(), f).reshape(-1, f.shape[0]).t()
    if layer.groups != 1:
        return None
    x = x.float()
    padding = layer.padding
    if layer.padding_mode != "zeros":
        x = F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
        padding = 0
    conv = _CONV_FN[layer.weight.dim() - 2]
    y = conv(x, f.reshape(-1, *layer.weight.shape[1:]), None, layer.stride, padding, layer.dilation)
    return y.transpose(0, 1).reshape(f.shape[0], -1)


@torch.no_grad()
def output_gains(
    model: nn.Module,
    layers: dict[str, tuple[nn.Module, T.Analysis]],
    batches: list[torch.Tensor],
) -> dict[str, torch.Tensor]:
    """g_i = E[(f_i . x)^2] per component of every layer, from forwards of the float model on
    `batches` (all layers measured in one pass, before any is coded). Grouped convs are left out
    (their components see different inputs) and get no entry: they are coded weights-only."""
    filters = {name: an.input_filters() for name, (_, an) in layers.items()}
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str):
        def record(mod: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
            p = _project(mod, inputs[0], filters[name])
            if p is None:
                return
            sums[name] = sums.get(name, 0) + p.double().pow(2).sum(dim=1).cpu()
            counts[name] = counts.get(name, 0) + p.shape[1]

        return record

    handles = [m.register_forward_hook(hook(name)) for name, (m, _) in layers.items()]
    try:
        for x in batches:
            model(x)
    finally:
        for h in handles:
            h.remove()
    return {name: sums[name] / counts[name] for name in sums}


def apply_tq(model: nn.Module, rate: float, calib: list[torch.Tensor] | None = None) -> list[str]:
    """Replace every coded layer (see `coded_layers`) by a TQLayer at `rate` average bits per
    weight; returns the names replaced. Norms, embeddings and tokens stay fp32.

    `calib` (input batches): bits are allocated on the variances seen at each layer's output
    (see `transform.Analysis.input_filters`); None: on the weights' own variances.
    """
    found = coded_layers(model)
    if any(not name for name, _ in found):
        raise ValueError("apply_tq: the model itself is a single layer; wrap it in a module")
    layers = {name: (layer, T.Analysis.of(layer.weight)) for name, layer in found}
    gains = output_gains(model, layers, calib) if calib else {}
    for name, (layer, an) in layers.items():
        set_module(model, name, TQLayer(layer, rate, analysis=an, gains=gains.get(name)))
    return list(layers)
