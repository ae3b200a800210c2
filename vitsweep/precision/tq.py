"""Transform quantization surgery: every nn.Linear / nn.Conv -> a TQ layer storing the coded weight.

`TQLayer` holds what ships: the rows' bit-depths, their packed midrise codes and steps, the kept
basis vectors at 8 bits with their scales, and the bias (maths in `transform.py`). By default the
weight is rebuilt once (when the layer is made, loaded or fine-tuned) into a non-persistent buffer
and the layer runs one fp32 GEMM / conv. A Linear with a transform can instead run in the
transform domain, y = U (C x): k(m+n) multiply-adds per token against the dense m*n, fewer only
when under mn/(m+n) of its rows are kept (under half, for a square layer). On the xray baseline
with the stored budget, the layers that kept their KLT kept a median 10-28% of their rows per
shape at 1 bit and 20-55% at 2 bits, and none kept a KLT at 3 or 4 (`bench/tq_forward.py`). So
whether it pays is measured, per layer, on the layer's own inputs (`choose_forwards`), and the
faster form runs; `precision_exec` counts the factorized layers. `model_bytes` counts the
state_dict, i.e. the stored code and never a runtime copy.

Fine-tuning (`retrain.retrain`, the loop the uniform baseline is retrained with too):
quantization-aware, in the transform domain. Each layer's kept coefficients become a float
latent; the forward quantizes them with the layer's own bits and steps and passes the gradient
straight through (STE), so the network learns around the exact values that will be stored, and
at the end the latents are quantized by that very same function: the model evaluated after
fine-tuning is bit for bit the one stored, at the same rate. Fine-tuning float weights and
re-quantizing them instead would undo the adaptation (the float optimum moves little in a few
steps, and re-quantization puts the same error back), which is why it is not done. The
transform, the allocation and the steps stay fixed, so the rate cannot drift.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from vitsweep.measure.device import synchronizer
from vitsweep.measure.speed import thread_scope, timed_repeats
from vitsweep.precision import transform as T
from vitsweep.precision.mixed import set_module
from vitsweep.spec import MeasureSpec

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
        stored: bool = False,
    ) -> None:
        """Code `layer`'s weight at `rate` bits per weight. `analysis`: its KLT (or identity,
        `Analysis.of(w, identity=True)`) if already computed; `gains`: per-component output
        gains from calibration (None: weights only); `stored`: `rate` counts every stored bit of
        the weight (coefficients, transform, steps, depths), not the coefficients alone."""
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
        if stored:
            bits = torch.from_numpy(self._stored_bits(score.numpy(), an.identity))
        else:
            bits = torch.from_numpy(T.allocate_bits(score.numpy(), rate))
        # Identity: every row keeps its depth (0 included), a row with bits its step; no basis.
        keep = torch.ones_like(bits, dtype=torch.bool) if an.identity else bits > 0
        if an.identity:
            basis = torch.zeros(0, dtype=torch.int8)
            basis_scale = torch.zeros(0)
            c = a
        else:
            basis, basis_scale = T.quantize_basis(u[:, keep])
        # Coefficients against the quantized basis (least squares): exact when all rows are kept.
        if not an.identity and keep.any():
            c = torch.linalg.lstsq(T.dequantize_basis(basis, basis_scale), a).solution
        elif not an.identity:  # a budget under one bit per row: the layer codes to zero
            c = a.new_zeros(0, self.cols)
        codes, step = T.quantize_rows(c, bits[keep])
        if an.identity:  # a 0-bit row stores its depth (0) but no step
            step = step[bits > 0]
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
        # the transform-domain factors (`use_factorized`): runtime copies, like `weight`
        self.register_buffer("first", torch.empty(0, device=device), persistent=False)
        self.register_buffer("second", torch.empty(0, device=device), persistent=False)
        self.factorized = False
        self.latent: nn.Parameter | None = None  # float coefficients while fine-tuning
        self.refresh()

    @property
    def identity(self) -> bool:
        """No transform: the basis buffer is empty and 1-D (a KLT's is d x kept, even d x 0), so
        a reload onto a layer coded the other way takes the saved kind with the saved shapes."""
        return self.basis.dim() == 1

    def _stored_bits(self, score, identity: bool) -> torch.Tensor:
        """Depths whose coefficients and side information fit `rate` stored bits per weight:
        a kept KLT row stores its basis vector (d x TRANSFORM_BITS), its scale and step (fp32)
        and depth (uint8); the identity stores every row's depth, a kept row's step, no basis."""
        total = self.rate * self.rows * self.cols
        if identity:
            return T.allocate_stored(score, total, self.cols, 32, 8 * self.rows)
        return T.allocate_stored(score, total, self.cols, self.rows * T.TRANSFORM_BITS + 72)

    # ------------------------------------------------------------------ decoding

    def coefficients(self) -> torch.Tensor:
        """The dequantized kept coefficients, k x s (fp32)."""
        codes = T.unpack_rows(self.codes, self.bits, self.cols).to(self.step.device)
        return T.dequantize_rows(codes, self.bits, self.row_steps())

    def row_steps(self) -> torch.Tensor:
        """One step per row of `bits` (0 for a 0-bit row): the identity stores steps only for
        its rows with bits, a KLT only has such rows."""
        if self.step.numel() == self.bits.numel():
            return self.step
        full = self.step.new_zeros(self.bits.shape)
        full[self.bits > 0] = self.step
        return full

    def rebuild(self, coefficients: torch.Tensor) -> torch.Tensor:
        """Weight (fp32, the layer's shape) = quantized basis @ coefficients, back in place."""
        if self.identity:
            a = coefficients
        else:
            u = (self.basis.float() * self.basis_scale[None, :]).to(coefficients.device)
            a = u @ coefficients
        return (a.t() if self.transposed else a).reshape(self.weight_shape)

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the runtime weight (and factors, if factorized) from the stored code."""
        coefficients = self.coefficients()
        self.weight = self.rebuild(coefficients).contiguous()
        if self.factorized:
            self.first, self.second = self.factors(coefficients)

    @property
    def can_factorize(self) -> bool:
        """A Linear with a transform and at least one kept row."""
        return self.conv_args is None and not self.identity and self.bits.numel() > 0

    @property
    def kept(self) -> int:
        """Rows kept (k): the inner width of the factorized forward."""
        return int(self.bits.numel())

    def factors(self, coefficients: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(first, second) fp32 weights with y = second @ (first @ x): W = U C untransposed
        (U: out x k, C: k x in), W = (U C)^T transposed (first = U^T, second = C^T)."""
        u = (self.basis.float() * self.basis_scale[None, :]).to(coefficients.device)
        c = coefficients.float()
        if self.transposed:
            return u.t().contiguous(), c.t().contiguous()
        return c.contiguous(), u.contiguous()

    @torch.no_grad()
    def use_factorized(self, on: bool) -> None:
        """Run the transform domain (on) or the rebuilt dense weight (off)."""
        if on and not self.can_factorize:
            raise ValueError("use_factorized: only a Linear coded with a transform factorizes")
        self.factorized = on
        if on:
            self.first, self.second = self.factors(self.coefficients())
        else:
            # two tensors: one shared by both buffers fails torch.jit.trace (an export)
            self.first = torch.empty(0, device=self.weight.device)
            self.second = torch.empty(0, device=self.weight.device)

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
        step = self.row_steps()[:, None].clamp_min(1e-30)  # 0-bit rows (identity): value 0
        q = torch.floor(self.latent / step).clamp(-half, half - 1)
        value = torch.where(self.bits[:, None] > 0, (q + 0.5) * step, 0.0)
        return self.latent + (value - self.latent).detach()

    @torch.no_grad()
    def end_finetune(self) -> None:
        """Store Q(latent) -- the very values the last training step used -- and drop it."""
        assert self.latent is not None
        half = 2.0 ** (self.bits.float() - 1)[:, None]
        step = self.row_steps()[:, None].clamp_min(1e-30)
        q = torch.floor(self.latent / step).clamp(-half, half - 1)
        codes = torch.where(self.bits[:, None] > 0, q + half, 0.0).to(torch.uint8).cpu()
        self.codes = T.pack_rows(codes, self.bits.cpu()).to(self.codes.device)
        self.latent = None
        self.refresh()

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = None if self.bias is None else self.bias.to(x.dtype)
        if self.factorized and self.latent is None:
            return F.linear(F.linear(x, self.first.to(x.dtype)), self.second.to(x.dtype), b)
        w = self.weight if self.latent is None else self.rebuild(self._quantized_latent())
        w = w.to(x.dtype)
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
            + (", factorized" if self.factorized else "")
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


Measure = Callable[[str, nn.Module, torch.Tensor], tuple[torch.Tensor, int] | None]


@torch.no_grad()
def _input_means(
    model: nn.Module, layers: dict[str, nn.Module], batches: list[torch.Tensor], measure: Measure
) -> dict[str, torch.Tensor]:
    """Per layer, the mean of `measure(name, layer, its input)` -- a (sum, count) or None to
    skip -- over forwards of the float model on `batches`, all layers in one pass."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str):
        def record(mod: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
            found = measure(name, mod, inputs[0])
            if found is not None:
                sums[name] = sums.get(name, 0) + found[0]
                counts[name] = counts.get(name, 0) + found[1]

        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in layers.items()]
    try:
        for x in batches:
            model(x)
    finally:
        for h in handles:
            h.remove()
    return {name: sums[name] / counts[name] for name in sums}


def output_gains(
    model: nn.Module,
    layers: dict[str, tuple[nn.Module, T.Analysis]],
    batches: list[torch.Tensor],
) -> dict[str, torch.Tensor]:
    """g_i = E[(f_i . x)^2] per component of every layer, from forwards of the float model on
    `batches` (all layers measured in one pass, before any is coded). Grouped convs are left out
    (their components see different inputs) and get no entry: they are coded weights-only."""
    filters = {name: an.input_filters() for name, (_, an) in layers.items()}

    def energy(name: str, mod: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int] | None:
        p = _project(mod, x, filters[name])
        return None if p is None else (p.double().pow(2).sum(dim=1).cpu(), p.shape[1])

    return _input_means(model, {n: m for n, (m, _) in layers.items()}, batches, energy)


def input_moments(
    model: nn.Module, layers: dict[str, nn.Module], batches: list[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """E[x x^T] of the inputs every nn.Linear of `layers` sees (n_in x n_in, float64), from
    forwards of the float model: the output error of a coded weight W - W^ is then exactly
    tr((W - W^) E[x x^T] (W - W^)^T) on these inputs. Convs get no entry."""

    def moments(name: str, mod: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int] | None:
        if not isinstance(mod, nn.Linear):
            return None
        x = x.detach().reshape(-1, x.shape[-1]).double().cpu()
        return x.t() @ x, x.shape[0]

    return _input_means(model, layers, batches, moments)


def output_error(float_weight: torch.Tensor, coded: TQLayer, moments: torch.Tensor | None) -> float:
    """The coded layer's output error on the calibration inputs, tr(E M E^T) with E the weight
    error and M = E[x x^T]; the weights' squared error without moments (convs, no data)."""
    e = (coded.weight.detach().double().cpu() - float_weight.detach().double().cpu()).reshape(
        float_weight.shape[0], -1
    )
    if moments is None:
        return float(e.pow(2).sum())
    return float(((e @ moments) * e).sum())


TRANSFORMS = ("klt", "identity", "auto")


def apply_tq(
    model: nn.Module,
    rate: float,
    calib: list[torch.Tensor] | None = None,
    *,
    transform: str = "klt",
    stored: bool = False,
) -> list[str]:
    """Replace every coded layer (see `coded_layers`) by a TQLayer at `rate` average bits per
    weight; returns the names replaced. Norms, embeddings and tokens stay fp32.

    `calib` (input batches): bits are allocated on the variances seen at each layer's output
    (see `transform.Analysis.input_filters`); None: on the weights' own variances.
    `transform`: `klt` decorrelates every layer, `identity` none (the rows coded as they are,
    no transform stored), `auto` codes each layer both ways and keeps the one whose output
    error (`output_error`, on `calib`) is lower -- at equal stored bits when `stored`, so a
    transform is kept only where its rate-distortion gain pays for its bytes.
    `stored`: `rate` counts every stored bit of the coded weights, transforms included.
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"apply_tq: transform={transform!r}; valid: {', '.join(TRANSFORMS)}")
    found = coded_layers(model)
    if any(not name for name, _ in found):
        raise ValueError("apply_tq: the model itself is a single layer; wrap it in a module")
    kinds = {"klt": (False,), "identity": (True,), "auto": (False, True)}[transform]
    options: dict[bool, dict[str, tuple[nn.Module, T.Analysis]]] = {
        identity: {name: (layer, T.Analysis.of(layer.weight, identity)) for name, layer in found}
        for identity in kinds
    }
    gains = {
        identity: output_gains(model, layers, calib) if calib else {}
        for identity, layers in options.items()
    }
    moments = input_moments(model, dict(found), calib) if calib and len(kinds) > 1 else {}
    for name, layer in found:
        best: tuple[float, TQLayer] | None = None
        for identity in kinds:
            coded = TQLayer(
                layer,
                rate,
                analysis=options[identity][name][1],
                gains=gains[identity].get(name),
                stored=stored,
            )
            if len(kinds) == 1:
                best = (0.0, coded)
                break
            err = output_error(layer.weight, coded, moments.get(name))
            if best is None or err < best[0]:
                best = (err, coded)
        assert best is not None
        set_module(model, name, best[1])
    return [name for name, _ in found]


@dataclass(frozen=True)
class ForwardChoice:
    """One coded Linear's two forwards, timed on its own input: the rebuilt dense weight
    against the transform domain."""

    name: str
    out_features: int
    in_features: int
    kept: int  # rows kept (k), of min(out, in) for a KLT
    rows: int  # input rows (tokens x images) it was timed on
    dense_s: float
    factorized_s: float

    @property
    def macs_ratio(self) -> float:
        """Multiply-adds of the factorized forward over the dense one: k(m+n) / mn."""
        m, n = self.out_features, self.in_features
        return self.kept * (m + n) / (m * n)

    @property
    def factorized(self) -> bool:
        return self.factorized_s < self.dense_s


@torch.no_grad()
def choose_forwards(
    model: nn.Module, batch: torch.Tensor, timing: MeasureSpec
) -> list[ForwardChoice]:
    """Time every factorizable TQ Linear both ways on the input it sees in a forward of
    `batch` (the real rows: tokens, as merged), and leave each on its faster forward.

    Timed with the product's repeats (`measure.speed.timed_repeats`) at `timing.threads`, with
    short repeats: a trial pays this for every such layer (0.5-7 ms a call at batch 64 here)."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, TQLayer) and m.can_factorize}
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def record(mod: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
            seen.setdefault(name, inputs[0])  # a hook that returned it would replace the output

        return record

    handles = [m.register_forward_hook(keep(name)) for name, m in layers.items()]
    try:
        with torch.inference_mode():
            model(batch)
    finally:
        for h in handles:
            h.remove()
    quick = dataclasses.replace(
        timing, warmup=2, min_repeats=5, max_repeats=9, repeat_s=0.01, time_cap_s=1.0,
        host_probe="off",
    )  # fmt: skip
    out = []
    with thread_scope(timing.threads), torch.inference_mode():
        for name, layer in layers.items():
            x = seen[name]
            seconds = {}
            for on in (False, True):
                layer.use_factorized(on)
                step = partial(layer, x)
                stats = timed_repeats(step, synchronizer(str(x.device)), quick, 1)
                seconds[on] = stats.median_step_s
            choice = ForwardChoice(
                name, layer.weight_shape[0], layer.weight_shape[1], layer.kept,
                x.numel() // x.shape[-1], seconds[False], seconds[True],
            )  # fmt: skip
            out.append(choice)
    # the chosen forms are built outside inference mode: factors made inside it are inference
    # tensors, which a later forward with autograd on (a fine-tuned layer's bias requires
    # grad) refuses to use; test_precision_tq failed so in one CI run, by which form won
    for layer, choice in zip(layers.values(), out, strict=True):
        layer.use_factorized(choice.factorized)
    return out
