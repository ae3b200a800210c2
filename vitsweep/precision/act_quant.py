"""Activation quantizers picked by the activation's distribution, as the mixed-precision seed
does it: a uniform quantizer where the values spread evenly, a non-uniform one where they do not.

- uniform: asymmetric, `2^b` levels over a calibrated [lo, hi] (the range is searched: clipping
  a few outliers buys finer steps for the rest);
- log_sqrt2: post-softmax attention probabilities, in [0, 1] with most of the mass near 0 and a
  few values near 1. Levels at hi * 2^(-q/2) keep the small probabilities that uniform steps
  round to 0; one code is exact zero. Base sqrt(2) (RepQ-ViT) rather than base 2 (FQ-ViT),
  measured here at 4 bits on softmax(N(0, s^2) logits) over 65 and 197 keys, s = 1 and 3: base
  2 lost to the (clip-searched) uniform quantizer in all 4 cases (its steps put up to 41% error
  on the large probabilities that dominate attn @ v), base sqrt(2) beat it in all 4, by
  1.06-3.1x in mean squared error and 1.09-3.2x in the error of attn @ v;
- two_range: post-GELU activations, whose negative part is squeezed into [-0.17, 0) while the
  positive part is long-tailed. Half the codes cover the negative range and half the positive
  one, each with its own step (PTQ4ViT's twin uniform).

Which one an activation gets: every kind its calibration values admit (log needs no negatives,
two_range needs both signs) is fitted, and the one with the least mean squared error on those
values is kept, so the choice follows the distribution the layer really sees.

No CPU kernel here runs 4- or 6-bit, log2 or two-range activations (oneDNN's int8 GEMMs take
8-bit affine activations), so these run simulated, in float (fake quantization): they decide
accuracy, never a reported speed. Written here because torch.ao's fake-quant modules are uniform
only and deprecated with torch.ao.quantization.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

KINDS = ("uniform", "log_sqrt2", "two_range")
LOG_STEP = 0.5  # log_sqrt2: levels are hi * 2^(-LOG_STEP * q)
ACT_BITS = (4, 6, 8)
# Range clipping tried by `fit`: the share of values allowed outside [lo, hi] on each side.
CLIP_QUANTILES = (0.0, 1e-4, 1e-3, 1e-2)
SAMPLES_PER_CALL = 1 << 16  # calibration values kept per forward (a strided subsample)


@dataclass(frozen=True)
class ActQuantizer:
    kind: str  # one of KINDS
    bits: int
    lo: float  # calibrated range: uniform and two_range use both ends, log_sqrt2 only `hi`
    hi: float

    @property
    def steps(self) -> tuple[float, float]:
        """(negative step, positive step); uniform: one step for the whole range."""
        if self.kind == "two_range":
            half = 2 ** (self.bits - 1) - 1
            return -self.lo / half, self.hi / half
        step = (self.hi - self.lo) / (2**self.bits - 1)
        return step, step

    @property
    def log_levels(self) -> int:
        """log_sqrt2: nonzero levels hi * 2^(-q/2), q = 0 .. levels - 1 (one code is exact 0)."""
        return 2**self.bits - 1

    @property
    def log_floor(self) -> float:
        """log_sqrt2: below this a value takes the zero code (half a step under the last level)."""
        return max(self.hi, 1e-12) * 2 ** (-LOG_STEP * (self.log_levels - 0.5))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "uniform":
            step = max(self.steps[0], 1e-12)
            q = torch.round((x.clamp(self.lo, self.hi) - self.lo) / step)
            return (q * step + self.lo).to(x.dtype)
        if self.kind == "two_range":
            neg, pos = (max(s, 1e-12) for s in self.steps)
            xc = x.clamp(self.lo, self.hi)
            out = torch.where(xc < 0, torch.round(xc / neg) * neg, torch.round(xc / pos) * pos)
            return out.to(x.dtype)
        hi = max(self.hi, 1e-12)
        last = self.log_levels - 1
        ratio = (x.float().clamp(min=0) / hi).clamp(max=1.0)
        q = torch.round(-torch.log2(ratio) / LOG_STEP)  # exact zeros: inf
        # below the smallest level's rounding boundary (and exact zeros): the zero code
        out = torch.where(q > last, 0.0, hi * torch.exp2(-LOG_STEP * q.clamp(max=last)))
        return out.to(x.dtype)

    def bound(self, x: torch.Tensor) -> torch.Tensor:
        """The largest |x - Q(x)| for each x in [lo, hi] (log_sqrt2: in [0, hi]): half a step
        for the uniform kinds; for log_sqrt2, rounding in the log domain keeps Q(x) / x within
        2^(+-LOG_STEP/2), so |x - Q(x)| <= (2^(LOG_STEP/2) - 1) x above `log_floor`, and x
        itself below it (the zero code)."""
        if self.kind == "log_sqrt2":
            rel = (2 ** (LOG_STEP / 2) - 1) * x
            return torch.where(x < self.log_floor, x, rel)
        return torch.full_like(x, max(self.steps) / 2)


def _candidates(kind: str, values: torch.Tensor) -> list[tuple[float, float]]:
    """(lo, hi) ranges to try for `kind` on `values`: the full range and a few clipped ones."""
    lo_hi = []
    flat = values.float().flatten()
    for p in CLIP_QUANTILES:
        lo = float(flat.min()) if p == 0 else float(torch.quantile(flat, p))
        hi = float(flat.max()) if p == 0 else float(torch.quantile(flat, 1 - p))
        if kind == "log_sqrt2":
            lo = 0.0
        lo_hi.append((min(lo, 0.0) if kind == "two_range" else lo, max(hi, lo + 1e-12)))
    return lo_hi


def admits(kind: str, values: torch.Tensor) -> bool:
    """Whether `kind` can represent `values`: log_sqrt2 no negatives, two_range both signs."""
    if kind == "log_sqrt2":
        return bool(values.min() >= 0)
    if kind == "two_range":
        return bool(values.min() < 0 < values.max())
    return True


def fit(kind: str, bits: int, values: torch.Tensor) -> tuple[ActQuantizer, float]:
    """The `kind` quantizer with the least mean squared error on `values`, and that error."""
    best: tuple[ActQuantizer, float] | None = None
    x = values.float().flatten()
    for lo, hi in _candidates(kind, x):
        q = ActQuantizer(kind, bits, lo, hi)
        err = float((q(x) - x).pow(2).mean())
        if best is None or err < best[1]:
            best = (q, err)
    assert best is not None
    return best


def choose(values: torch.Tensor, bits: int, kinds: tuple[str, ...] = KINDS) -> ActQuantizer:
    """The quantizer for an activation from its calibration `values`: among `kinds` that the
    values admit, the least mean squared error (uniform is always admitted)."""
    fitted = [fit(k, bits, values) for k in kinds if admits(k, values)]
    if not fitted:
        fitted = [fit("uniform", bits, values)]
    return min(fitted, key=lambda qe: qe[1])[0]


class ActFakeQuant(nn.Module):
    """Records calibration values until `settle`, then fake-quantizes what passes through.

    It is an identity while it observes, so the model calibrates on its own float activations
    (not on activations already distorted by earlier quantizers): every layer's quantizer is
    fitted on the distribution the float model gives it."""

    def __init__(self, site: str) -> None:
        super().__init__()
        self.site = site  # e.g. "blocks.0.attn.softmax", "blocks.0.mlp.fc2.input"
        self.seen: list[torch.Tensor] = []
        self.quantizer: ActQuantizer | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantizer is not None:
            return self.quantizer(x)
        flat = x.detach().float().flatten()
        stride = max(1, flat.numel() // SAMPLES_PER_CALL)
        self.seen.append(flat[::stride].cpu())
        return x

    def settle(self, bits: int, kinds: tuple[str, ...]) -> ActQuantizer:
        if not self.seen:
            raise RuntimeError(f"{self.site}: no calibration values reached this activation")
        self.quantizer = choose(torch.cat(self.seen), bits, kinds)
        self.seen = []
        return self.quantizer


def _insert(model: nn.Module, wide: frozenset[str]) -> list[ActFakeQuant]:
    """A recording quantizer before every block Linear's input (but those in `wide`) and after
    every attention softmax (timm `Attention` and its subclasses: unfused, so the probabilities
    exist and pass through `attn_drop`, the identity at eval, which the quantizer replaces)."""
    from timm.models.vision_transformer import Attention

    from vitsweep.precision.mixed import searched_linears, set_module

    sites: list[ActFakeQuant] = []
    for name, layer in searched_linears(model):
        if name in wide:
            continue
        site = ActFakeQuant(f"{name}.input")
        set_module(model, name, nn.Sequential(site, layer))
        sites.append(site)
    for name, module in list(model.named_modules()):
        if isinstance(module, Attention):
            module.fused_attn = False
            module.attn_drop = ActFakeQuant(f"{name}.softmax")
            sites.append(module.attn_drop)
    return sites


def simulate(
    model: nn.Module,
    weights: dict[str, torch.Tensor],
    act_bits: int,
    kinds: tuple[str, ...],
    batches: list[torch.Tensor],
    wide: frozenset[str] = frozenset(),
) -> dict[str, ActQuantizer]:
    """Turn `model` (float, changed in place) into the simulation of a mixed plan at `act_bits`
    activations: each named Linear's weight replaced by `weights` (what the plan's real layers
    compute with), then a quantizer per activation chosen on the float activations of
    `batches`; the Linears in `wide` (kept bf16 or fp32 by the plan) keep float inputs.
    Returns site -> quantizer."""
    with torch.no_grad():
        for name, weight in weights.items():
            model.get_submodule(name).weight.copy_(weight)
    sites = _insert(model, wide)
    model.eval()
    with torch.inference_mode():
        for x in batches:
            model(x)
    return {site.site: site.settle(act_bits, kinds) for site in sites}


def label(chosen: dict[str, ActQuantizer], act_bits: int) -> str:
    """What ran, for precision_exec: the simulated sites by kind, and where the speed is from."""
    counts: dict[str, int] = {}
    for q in chosen.values():
        counts[q.kind] = counts.get(q.kind, 0) + 1
    kinds = ", ".join(f"{k} x{counts[k]}" for k in KINDS if k in counts)
    return (
        f"activations {act_bits}-bit simulated for accuracy only ({kinds}); "
        "speed: the same plan with 8-bit activations"
    )
