"""HAWQ-style mixed precision: Hessian-trace sensitivity per layer, bit-widths from an ILP.

Which layers: every nn.Linear inside `model.blocks` (qkv, proj, fc1, fc2) is searched over
`spec.bits`: integer weights at 2..8 bits, or kept wide, bf16 (16) or fp32 (32), unquantized in
the int8 program (`float_layers.py`). Kept out of the search: every other nn.Linear (the head)
runs 8-bit on int8 kernels, and the patch-embedding Conv2d stays fp32 (no dynamic int8 conv
kernel, and the first layer is the one quantization hurts most); norms, tokens and position
embeddings stay fp32.

Sensitivity of layer l at b bits (HAWQ-V2/V3): (tr(H_l) / n_l) * ||W_l - Q_b(W_l)||^2. The trace
is divided by the weight count because a quantization error spread over all n_l weights sees the
*average* curvature: E[d^T H d] = tr(H)/n * ||d||^2 for a random direction d. Negative trace
estimates (noise, or a non-convex spot) are clamped to a small positive floor so that more bits
never look worse than fewer.

Costs: "bytes" = the layer's storage after conversion (model_bytes of the converted layer, so the
ILP prices exactly what is then stored); "bops" = MACs per image x weight bits x 8 activation bits
(HAWQ-V3 convention), a wide layer's at its width squared (its activations stay wide too), fp32
layers outside the search at 32 x 32. A wide layer's sensitivity is its weight's rounding error
(none at 32); the 8-bit activation quantization it avoids is not priced. The budget is
`budget_ratio` x the fp32 model's total, and the fixed parts are paid first.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, Dataset

from vitsweep.precision.bytes import model_bytes
from vitsweep.precision.float_layers import Bf16Linear, wide_label, wide_layer
from vitsweep.precision.hessian import hutchinson_trace
from vitsweep.precision.ilp import Budget, BudgetInfeasible, choose_within
from vitsweep.precision.int4 import Int4Linear, supports
from vitsweep.precision.int8 import backend_label, eager_backend, int8_linear
from vitsweep.precision.intmm_packed import IntMMPackedLinear
from vitsweep.precision.intmm_packed import supports as int_mm_supports
from vitsweep.precision.onednn_packed import OneDNNPackedLinear
from vitsweep.precision.onednn_packed import supports as onednn_supports
from vitsweep.precision.packed import PackedLinear
from vitsweep.spec import ConfigError, PrecisionSpec

BUDGET_KINDS = ("bytes", "bops")


@dataclass(frozen=True)
class LayerChoice:
    name: str  # qualified module name, e.g. "blocks.3.mlp.fc1"
    numel: int  # weights in the layer
    trace: float  # Hutchinson estimate of tr(H) of the loss w.r.t. the layer's weight
    sensitivity: tuple[float, ...]  # per candidate bit-width
    cost: tuple[float, ...]  # per candidate bit-width, in budget units
    bits: int  # the ILP's choice
    latency: tuple[float, ...] = ()  # per candidate: batch-1 seconds over its 8-bit time
    act_range: tuple[float, ...] = ()  # (min, max) of its inputs on the calibration batches


@dataclass(frozen=True)
class MixedPlan:
    candidates: tuple[int, ...]
    budget_kind: str
    budget_ratio: float
    reference: float  # the fp32 model's bytes or BOPs per image
    fixed: float  # cost of everything not searched (head int8, patch embed fp32, norms, ...)
    layers: tuple[LayerChoice, ...]
    latency_ratio: float | None = None  # batch-1 latency budget over the reference's
    fp32_latency_s: float | None = None  # the float model, batch 1, as measured at planning
    int8_latency_s: float | None = None  # the all-8-bit PT2E program, the prediction's anchor
    # how layers below 8 bits execute (`precision.low_bit_kernel`, never auto: resolved by
    # `resolve_low_bit_kernel` when planned); plans stored before it: packed
    low_bit_kernel: str = "packed"
    latency_reference: str = "fp32"  # what latency_ratio multiplies: fp32 | int8

    @classmethod
    def from_dict(cls, d: dict) -> MixedPlan:
        """The plan back from `checkpoint.plain(plan)` (as an export stores it)."""
        layers = tuple(
            LayerChoice(
                name=str(x["name"]),
                numel=int(x["numel"]),
                trace=float(x["trace"]),
                sensitivity=tuple(float(v) for v in x["sensitivity"]),
                cost=tuple(float(v) for v in x["cost"]),
                bits=int(x["bits"]),
                latency=tuple(float(v) for v in x.get("latency", ())),
                act_range=tuple(float(v) for v in x.get("act_range", ())),
            )
            for x in d["layers"]
        )
        optional = {k: d.get(k) for k in ("latency_ratio", "fp32_latency_s", "int8_latency_s")}
        reference = str(d.get("latency_reference", "fp32"))  # plans stored before it: fp32
        kernel = str(d.get("low_bit_kernel", "packed"))
        return cls(
            candidates=tuple(int(b) for b in d["candidates"]),
            budget_kind=str(d["budget_kind"]),
            budget_ratio=float(d["budget_ratio"]),
            reference=float(d["reference"]),
            fixed=float(d["fixed"]),
            layers=layers,
            # "auto" in a plan stored before auto was resolved meant int4 where it runs
            low_bit_kernel={"auto": "int4"}.get(kernel, kernel),
            latency_reference=reference,
            **{k: None if v is None else float(v) for k, v in optional.items()},
        )

    @property
    def budget(self) -> float:
        return self.budget_ratio * self.reference

    @property
    def bits(self) -> dict[str, int]:
        return {layer.name: layer.bits for layer in self.layers}

    @property
    def predicted_latency_s(self) -> float | None:
        """Batch-1 seconds the table predicts: the 8-bit anchor + each layer's difference."""
        if self.int8_latency_s is None:
            return None
        extra = sum(x.latency[self.candidates.index(x.bits)] for x in self.layers)
        return self.int8_latency_s + extra

    @property
    def cost(self) -> float:
        """Predicted total: fixed + the chosen option of every searched layer."""
        chosen = sum(layer.cost[self.candidates.index(layer.bits)] for layer in self.layers)
        return self.fixed + chosen


@dataclass(frozen=True)
class LatencyInputs:
    """What `precision.latency_ratio` is priced with (`precision.latency`): per searched layer
    and candidate, batch-1 seconds over the 8-bit option; the float model's and the all-8-bit
    program's measured batch-1 seconds, and that program compiled (`anchor`), which the trial
    times again beside the plan (`precision.anchored_latency`)."""

    extra_s: np.ndarray  # (layers, candidates)
    fp32_s: float
    int8_s: float
    anchor: Callable[[torch.Tensor], object] | None = None

    def unit(self, reference: str) -> float:
        """The batch-1 seconds `precision.latency_ratio` multiplies (`latency_reference`)."""
        return self.int8_s if reference == "int8" else self.fp32_s


def searched_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The Linear layers inside the transformer blocks, in forward order."""
    found = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name.startswith("blocks.")
    ]
    if not found:
        raise ConfigError(
            "precision.mode='mixed': the model has no nn.Linear under `blocks` "
            "(expected a timm-style VisionTransformer)"
        )
    return found


def other_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Linear layers outside the blocks (the head): fixed at 8 bits."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and not name.startswith("blocks.")
    ]


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted `name`."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def macs_per_image(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Multiply-accumulates of every Linear and Conv, per image, as this input really flows
    (so merged tokens, if ToMe is applied first, are counted as merged)."""
    macs: dict[str, float] = {}

    def hook(name: str):
        def record(mod: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
            if isinstance(mod, nn.Linear):
                rows = inputs[0].numel() // mod.in_features
                n = rows * mod.in_features * mod.out_features
            else:
                k = int(np.prod(mod.kernel_size)) * (mod.in_channels // mod.groups)
                n = out.numel() * k
            macs[name] = macs.get(name, 0.0) + n / x.shape[0]

        return record

    kinds = (nn.Linear, nn.modules.conv._ConvNd)
    handles = [
        m.register_forward_hook(hook(name))
        for name, m in model.named_modules()
        if isinstance(m, kinds)
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return macs


def calib_batches(calib: Dataset, count: int, batch_size: int, device: str) -> list[tuple]:
    """The first `count` (inputs, labels) batches of `calib`, in order, on `device`: what mixed
    and tq calibrate on."""
    loader = DataLoader(calib, batch_size=batch_size, shuffle=False)
    out = []
    for i, (x, y) in enumerate(loader):
        if i >= count:
            break
        out.append((x.to(device), y.to(device)))
    if not out:
        raise ConfigError("precision.calib_batches: the calibration dataset is empty")
    return out


def input_ranges(
    model: nn.Module, layers: list[nn.Linear], batches: list[tuple]
) -> list[tuple[float, float]]:
    """(min, max) of each layer's inputs over the calibration batches: the static int8 scale of
    a layer that quantizes its own activations (`IntMMPackedLinear`)."""
    lows = [float("inf")] * len(layers)
    highs = [float("-inf")] * len(layers)

    def hook(i: int):
        def record(mod: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
            lows[i] = min(lows[i], float(inputs[0].min()))
            highs[i] = max(highs[i], float(inputs[0].max()))

        return record

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            for x, _ in batches:
                model(x)
    finally:
        for h in handles:
            h.remove()
    return list(zip(lows, highs, strict=True))


def layer_traces(
    model: nn.Module,
    layers: list[nn.Linear],
    batches: list[tuple],
    samples: int,
    seed: int = 0,
) -> np.ndarray:
    """Hutchinson tr(H) of the cross-entropy loss w.r.t. each layer's weight, batch-averaged."""
    weights = [layer.weight for layer in layers]
    was = [w.requires_grad for w in weights]
    device = weights[0].device
    gen = torch.Generator(device=device).manual_seed(seed)
    total = np.zeros(len(layers))
    try:
        for w in weights:
            w.requires_grad_(True)
        # Fused CPU/CUDA attention kernels have no double backward; the math kernel does.
        with sdpa_kernel(SDPBackend.MATH), torch.enable_grad():
            for x, y in batches:
                loss = F.cross_entropy(model(x).float(), y)
                total += hutchinson_trace(loss, weights, samples, gen).numpy()
    finally:
        for w, r in zip(weights, was, strict=True):
            w.requires_grad_(r)
    return total / len(batches)


def pt2e_linear_bytes(layer: nn.Linear) -> int:
    """What a PT2E program stores for one int8 Linear: 1 byte per weight, a per-channel fp32
    scale and int64 zero point, the fp32 bias (activation scales are literals in the graph)."""
    bias = 0 if layer.bias is None else 4 * layer.bias.numel()
    return layer.weight.numel() + 12 * layer.out_features + bias


def _int8_bytes(layer: nn.Linear, backend: str, device: str) -> int:
    if backend == "pt2e":
        return pt2e_linear_bytes(layer)
    return model_bytes(int8_linear(layer, backend, device))


def resolve_low_bit_kernel(requested: str, device: str, backend: str = "pt2e") -> str:
    """`precision.low_bit_kernel` as a plan records it: auto -> onednn where the 8-bit layers
    run in the PT2E program (the codes widened into the program's own int8 GEMM: an 8-bit
    layer's time, where every other kernel cost more, README #32); else int_mm on a CPU with
    `torch._int_mm` (packed weights, int8 activations: at batch 64 it ran 1.0-1.5x an int8
    layer's time where aten's int4 kernel ran 1.7-2.8x, AMD EPYC; at batch 1 both 1.4-2x),
    else int4 (aten's kernel, CPU only; elsewhere packed per layer). Valid values: `spec`."""
    from vitsweep.precision.pt2e import pt2e_available

    if requested == "onednn" and backend != "pt2e":
        raise ConfigError(
            f"precision.low_bit_kernel=onednn: runs inside the PT2E int8 program, and the 8-bit "
            f"layers here run on {backend}; use auto, int_mm, int4 or packed"
        )
    if requested != "auto":
        return requested
    if backend == "pt2e" and pt2e_available(device):
        return "onednn"
    return "int_mm" if str(device).startswith("cpu") and hasattr(torch, "_int_mm") else "int4"


def convert_layer(
    layer: nn.Linear,
    bits: int,
    backend: str,
    device: str,
    low_bit_kernel: str,
    act_range: tuple[float, ...] = (),
) -> nn.Module:
    """The layer as it executes at `bits`: 8 on eager int8 kernels; below 8 by `low_bit_kind`;
    16 or 32 kept wide (`float_layers.wide_layer`; 32 is `layer` itself). `act_range`: its
    calibrated input range (int_mm layers quantize their own inputs)."""
    if bits == 8:
        return int8_linear(layer, backend, device)
    if bits > 8:
        return wide_layer(layer, bits)
    return low_bit_layer(layer, bits, device, low_bit_kernel, act_range)


def low_bit_kind(layer: nn.Linear, bits: int, device: str, low_bit_kernel: str) -> type:
    """How `layer` runs at `bits` < 8 under `low_bit_kernel` (auto resolved): onednn ->
    OneDNNPackedLinear (packed codes, widened to int8 when the PT2E program is compiled);
    int_mm -> IntMMPackedLinear (packed codes widened to int8 per call, int8 activations,
    `_int_mm`), also where onednn does not take the shape; int4 -> Int4Linear (aten's int4
    kernel, 4 bits only); each where the shape and device allow, else (and under packed)
    PackedLinear (dequantized into a float GEMM)."""
    low_bit_kernel = resolve_low_bit_kernel(low_bit_kernel, device)
    if low_bit_kernel == "onednn" and onednn_supports(layer, bits, device):
        return OneDNNPackedLinear
    if low_bit_kernel in ("onednn", "int_mm") and int_mm_supports(layer, bits, device):
        return IntMMPackedLinear
    if bits == 4 and low_bit_kernel == "int4" and supports(layer, device):
        return Int4Linear
    return PackedLinear


def low_bit_layer(
    layer: nn.Linear,
    bits: int,
    device: str,
    low_bit_kernel: str,
    act_range: tuple[float, ...] = (),
) -> nn.Module:
    """The layer at `bits` < 8, as `low_bit_kind` says it runs (see `convert_layer`)."""
    kind = low_bit_kind(layer, bits, device, low_bit_kernel)
    if kind in (IntMMPackedLinear, OneDNNPackedLinear):
        lo, hi = act_range or (-1.0, 1.0)  # no range: weight-only uses (bytes, error, timing)
        return kind.from_linear(layer, bits, (lo, hi)).to(device)
    if kind is Int4Linear:
        return Int4Linear.from_linear(layer).to(device)
    return PackedLinear.from_linear(layer, bits).to(device)


def _dequantized(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """The float weight a layer converted from `weight` computes with."""
    if isinstance(module, Int4Linear):
        return Int4Linear.fake_quantize(weight)
    if isinstance(module, PackedLinear | IntMMPackedLinear | OneDNNPackedLinear | Bf16Linear):
        return module.dequantized_weight()
    if type(module) is nn.Linear:  # kept at fp32
        return module.weight.detach().float()
    if hasattr(module, "weight_t"):  # IntMMLinear
        w = module.weight_t[: module.in_features, : module.out_features].t().float()
        return w * module.scale[:, None]
    return module.weight().dequantize()  # torch.ao dynamic Linear


def low_bit_label(module: nn.Module, bits: int) -> str:
    """A sub-8-bit layer's kernel, in precision_exec's words."""
    if isinstance(module, Int4Linear):
        return f"{bits}-bit aten int4 kernel (bf16 in, group {module.group})"
    if isinstance(module, IntMMPackedLinear):
        return f"{bits}-bit packed, unpacked per call to int8 _int_mm (int8 activations)"
    if isinstance(module, OneDNNPackedLinear):
        return f"{bits}-bit packed, widened when compiled to the int8 oneDNN GEMM (resident int8)"
    return f"{bits}-bit packed+dequantized"


def executed_weight(
    layer: nn.Linear, bits: int, backend: str, device: str, low_bit_kernel: str
) -> torch.Tensor:
    """The float weight `layer` computes with once converted at `bits` (what its sensitivity
    and a simulation of the plan use)."""
    conv = convert_layer(layer, bits, backend, device, low_bit_kernel)
    return _dequantized(conv, layer.weight.detach().float()).to(layer.weight.device)


def plan_mixed(
    model: nn.Module,
    spec: PrecisionSpec,
    calib: Dataset,
    *,
    backend: str,
    device: str = "cpu",
    batch_size: int = 64,
    seed: int = 0,
    latency: LatencyInputs | None = None,
) -> MixedPlan:
    """Measure sensitivities and costs on the float model, solve the ILP; the model is unchanged.

    `backend` pt2e: the 8-bit error is measured on the eager stand-in (the same symmetric
    per-channel int8), the 8-bit bytes are what the PT2E program stores. `latency` (with
    `spec.latency_ratio`): a second budget, batch-1 latency <= latency_ratio x the float
    model's, predicted as the all-8-bit program's plus each layer's difference."""
    if spec.budget_kind not in BUDGET_KINDS:
        raise ConfigError(
            f"precision.budget_kind={spec.budget_kind!r}: valid: {', '.join(BUDGET_KINDS)}"
        )
    candidates = tuple(spec.bits)
    searched = searched_linears(model)
    others = other_linears(model)
    batches = calib_batches(calib, spec.calib_batches, batch_size, device)
    traces = layer_traces(model, [m for _, m in searched], batches, spec.hutchinson_samples, seed)
    mean_trace = traces / np.array([m.weight.numel() for _, m in searched])
    floor = 1e-6 * max(float(np.abs(mean_trace).max()), 1e-30)
    mean_trace = np.maximum(mean_trace, floor)

    sens = np.zeros((len(searched), len(candidates)))
    cost = np.zeros_like(sens)
    if spec.budget_kind == "bops":
        macs = macs_per_image(model, batches[0][0])
    kernel = resolve_low_bit_kernel(spec.low_bit_kernel, device, backend)
    ranges = input_ranges(model, [m for _, m in searched], batches)
    for i, (name, layer) in enumerate(searched):
        w = layer.weight.detach().float()
        for j, bits in enumerate(candidates):
            conv = convert_layer(layer, bits, eager_backend(device, backend), device, kernel)
            deq = _dequantized(conv, w).to(w.device)
            sens[i, j] = mean_trace[i] * float((w - deq).pow(2).sum())
            if spec.budget_kind == "bytes":
                pt2e = bits == 8 and backend == "pt2e"
                cost[i, j] = pt2e_linear_bytes(layer) if pt2e else model_bytes(conv)
            else:  # weights x activations: 8-bit activations up to 8 bits, wide ones beyond
                cost[i, j] = macs[name] * bits * max(bits, 8)
    if spec.budget_kind == "bytes":
        reference = float(model_bytes(model))
        fixed = reference - sum(model_bytes(m) for _, m in searched + others)
        fixed += sum(_int8_bytes(m, backend, device) for _, m in others)
    else:
        reference = 32.0 * 32.0 * sum(macs.values())
        other_names = {n for n, _ in others}
        searched_names = {n for n, _ in searched}
        fixed = sum(
            v * (8 * 8 if n in other_names else 32 * 32)
            for n, v in macs.items()
            if n not in searched_names
        )

    budget = spec.budget_ratio * reference
    budgets = [Budget("precision.budget_ratio", cost, budget - fixed)]
    if latency is not None:
        limit = spec.latency_ratio * latency.unit(spec.latency_reference) - latency.int8_s
        budgets.append(Budget("precision.latency_ratio", latency.extra_s, limit))
    if spec.layer_bits is not None:  # a plan chosen before (the trial's, rebuilt)
        bits = fixed_bits(spec, [n for n, _ in searched])
        pick = [candidates.index(bits[n]) for n, _ in searched]
    else:
        try:
            pick = choose_within(sens, budgets)
        except BudgetInfeasible as err:
            raise ConfigError(_infeasible(err, spec, reference, fixed, latency)) from None
    layers = tuple(
        LayerChoice(
            name=name,
            numel=layer.weight.numel(),
            trace=float(traces[i]),
            sensitivity=tuple(float(v) for v in sens[i]),
            cost=tuple(float(v) for v in cost[i]),
            bits=candidates[pick[i]],
            latency=() if latency is None else tuple(float(v) for v in latency.extra_s[i]),
            act_range=ranges[i],
        )
        for i, (name, layer) in enumerate(searched)
    )
    timed = {} if latency is None else {
        "latency_ratio": spec.latency_ratio,
        "latency_reference": spec.latency_reference,
        "fp32_latency_s": latency.fp32_s,
        "int8_latency_s": latency.int8_s,
    }  # fmt: skip
    return MixedPlan(
        candidates, spec.budget_kind, spec.budget_ratio, reference, fixed, layers,
        low_bit_kernel=kernel, **timed,
    )  # fmt: skip


def format_bits(plan: MixedPlan) -> str:
    """`precision.layer_bits` of `plan`: "name:bits" for each layer not at 8, comma-separated."""
    return ",".join(f"{x.name}:{x.bits}" for x in plan.layers if x.bits != 8)


def fixed_bits(spec: PrecisionSpec, names: list[str]) -> dict[str, int]:
    """Each searched layer's bits as `precision.layer_bits` fixes them (8 where not named)."""
    key = "precision.layer_bits"
    bits = dict.fromkeys(names, 8)
    for item in filter(None, (spec.layer_bits or "").split(",")):
        name, colon, value = item.strip().rpartition(":")
        if not colon:
            raise ConfigError(f"{key}: {item.strip()!r}: expected name:bits, e.g. {names[0]}:6")
        if name not in bits:
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            raise ConfigError(f"{key}: {name!r} is not a searched layer; valid: {shown}")
        if not value.isdigit() or int(value) not in spec.bits:
            raise ConfigError(
                f"{key}: {item.strip()!r}: bits must be one of precision.bits {list(spec.bits)}"
            )
        bits[name] = int(value)
    unnamed = [n for n, b in bits.items() if b not in spec.bits]
    if unnamed:  # left at 8, which is not a candidate here
        raise ConfigError(f"{key}: {unnamed[0]!r} not named, and 8 is not in precision.bits")
    return bits


def _infeasible(
    err: BudgetInfeasible,
    spec: PrecisionSpec,
    reference: float,
    fixed: float,
    latency: LatencyInputs | None,
) -> str:
    """The one line that says which budget cannot be met, and the least that could."""
    bits = f"bits={list(spec.bits)}"
    if len(err.names) > 1:
        return (
            f"precision.budget_ratio={spec.budget_ratio:g} and precision.latency_ratio="
            f"{spec.latency_ratio:g}: each can be met alone, not together with {bits}; "
            "raise either"
        )
    if err.names == ("precision.latency_ratio",):
        assert latency is not None
        unit = latency.unit(spec.latency_reference)
        least = (latency.int8_s + err.min_cost) / unit
        return (
            f"precision.latency_ratio={spec.latency_ratio:g}: infeasible for this model on "
            f"this machine; the smallest feasible ratio with {bits} is {least:.4f} (batch-1 "
            f"{spec.latency_reference} {unit * 1e3:.3f} ms)"
        )
    smallest = (fixed + err.min_cost) / reference
    return (
        f"precision.budget_ratio={spec.budget_ratio:g}: infeasible for this model "
        f"({spec.budget_kind}); the smallest feasible ratio with {bits} is {smallest:.4f}"
    )


def apply_plan(
    model: nn.Module,
    plan: MixedPlan,
    *,
    backend: str,
    device: str = "cpu",
    eight_bit: bool = True,
) -> str:
    """Swap each searched Linear for its chosen kind, the head for int8; returns precision_exec.

    Modifications: blocks' nn.Linear -> int8-kernel Linear (8 bits), or below 8 bits the kind
    `low_bit_kind` gives for the plan's `low_bit_kernel` and the layer's shape (OneDNNPacked-,
    IntMMPacked-, Int4- or PackedLinear), at 16 Bf16Linear, at 32 unchanged; other nn.Linear ->
    int8-kernel Linear; everything else untouched (fp32).
    `eight_bit=False`: the 8-bit layers and the head stay nn.Linear, for PT2E to quantize them
    in one exported program.
    """
    bits = plan.bits
    ranges = {x.name: x.act_range for x in plan.layers}
    other: Counter[tuple[int, str]] = Counter()  # the layers not at 8 bits, by width and kernel
    for name, layer in searched_linears(model):
        if bits[name] == 8 and not eight_bit:
            continue
        kernel = plan.low_bit_kernel
        new = convert_layer(layer, bits[name], backend, device, kernel, ranges[name])
        set_module(model, name, new)
        if bits[name] < 8:
            other[bits[name], low_bit_label(new, bits[name])] += 1
        elif bits[name] > 8:
            other[bits[name], wide_label(bits[name], in_program=not eight_bit)] += 1
    others = other_linears(model)
    if eight_bit:
        for name, layer in others:
            set_module(model, name, int8_linear(layer, backend, device))
    kernels = backend_label(backend, device) if eight_bit else "(PT2E)"
    eights = sum(b == 8 for b in bits.values()) + len(others)
    parts = [f"8-bit {kernels} x{eights}"]
    parts += [f"{text} x{n}" for (_, text), n in sorted(other.items(), reverse=True)]
    return (
        f"mixed {plan.budget_kind}<={plan.budget_ratio:g}: "
        + ", ".join(parts)
        + ", patch embed fp32"
    )
