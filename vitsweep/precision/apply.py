"""The precision surgery: fp32, fp16/bf16 (autocast or full cast), int8 kernels, mixed
bit-width, tq (read through `vitsweep.precision`, which imports this on first use).

`apply_precision` is the surgery; `model_bytes` the storage it leads to. The maths beside it is
pure: `hessian.py` (Hutchinson traces), `ilp.py` (bit-width choice), `quantizers.py` (Q_b(W)),
`transform.py` (KLT, reverse water-filling, coefficient coding for `tq`, surgery in `tq.py`).
A new mode plugs in as one more entry of `_HANDLERS`.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from vitsweep.measure.compile import compile_program
from vitsweep.measure.lock import timing_lock
from vitsweep.measure.speed import make_input, thread_scope
from vitsweep.precision import act_quant
from vitsweep.precision.bytes import model_bytes
from vitsweep.precision.int8 import (
    backend_label,
    eager_backend,
    int8_linear,
    resolve_int8_backend,
)
from vitsweep.precision.latency import (
    LatencyTable,
    interleaved_seconds,
    layer_group,
    model_signature,
    rows_per_layer,
)
from vitsweep.precision.mixed import (
    LatencyInputs,
    MixedPlan,
    apply_plan,
    calib_batches,
    convert_layer,
    executed_weight,
    format_bits,
    input_ranges,
    other_linears,
    plan_mixed,
    resolve_low_bit_kernel,
    searched_linears,
    set_module,
)
from vitsweep.precision.pt2e import label as pt2e_label
from vitsweep.precision.pt2e import pt2e_bytes, quantize_pt2e
from vitsweep.precision.resolve import (
    MODES,
    Resolved,
    check_supported,
    resolve_device,
    resolve_precision,
)
from vitsweep.precision.retrain import frozen_copy, recipe_for, retrain
from vitsweep.precision.tq import (
    TRANSFORMS,
    apply_tq,
    choose_forwards,
    coded_layers,
    tq_layers,
    tq_stats,
)
from vitsweep.runctx import RunContext
from vitsweep.spec import ConfigError, MeasureSpec, PrecisionSpec

__all__ = [
    "MODES",
    "MixedPlan",
    "Resolved",
    "apply_precision",
    "model_bytes",
    "pt2e_bytes",
    "resolve_precision",
]

_APPLIED = "_vitsweep_precision"  # attribute holding (spec, ctx) on a converted model
PLAN_ATTR = "vitsweep_mixed_plan"  # attribute holding the MixedPlan of a mixed model
ACCURACY_ATTR = "vitsweep_accuracy_model"  # a simulation the accuracy is measured on
ANCHOR_ATTR = "vitsweep_latency_anchor"  # the compiled all-8-bit program a plan was priced on
RETRAIN_ATTR = "vitsweep_retrain_s"  # seconds a tq model spent retraining (a cost, like compile)
CALIB_BATCH_SIZE = 64  # images per calibration batch (PT2E int8, mixed, tq; runtimes' int8 too)
TQ_MAX_RATE = 8.0  # tq: rows take at most 8 bits, so 8 bits per weight is the most a layer spends


def _validate(spec: PrecisionSpec) -> None:
    resolve_precision(spec.mode, spec.cast)  # mode and cast strings
    if spec.mode == "tq":
        _validate_tq(spec)
    if spec.mode != "mixed":
        return
    if not spec.budget_ratio > 0:
        raise ConfigError(f"precision.budget_ratio={spec.budget_ratio}: must be > 0")
    if spec.calib_batches < 1 or spec.hutchinson_samples < 1:
        raise ConfigError(
            f"precision.calib_batches={spec.calib_batches}, precision.hutchinson_samples="
            f"{spec.hutchinson_samples}: both must be >= 1"
        )


def _validate_tq(spec: PrecisionSpec) -> None:
    if not 0 < spec.rate <= TQ_MAX_RATE:
        raise ConfigError(
            f"precision.rate={spec.rate}: average bits per weight, must be in (0, {TQ_MAX_RATE}]"
        )
    if spec.finetune_steps < 0:
        raise ConfigError(f"precision.finetune_steps={spec.finetune_steps}: must be >= 0")
    if spec.transform not in TRANSFORMS:
        raise ConfigError(f"precision.transform={spec.transform!r}: valid: {', '.join(TRANSFORMS)}")
    if spec.budget not in ("coefficients", "stored"):
        raise ConfigError(f"precision.budget={spec.budget!r}: valid: coefficients, stored")


def _float(
    model: nn.Module, spec: PrecisionSpec, resolved: Resolved, **_: object
) -> tuple[nn.Module, str, bool]:
    """fp32 / fp16 / bf16: a full cast changes parameter dtypes; autocast changes nothing here."""
    if resolved.model_dtype != torch.float32:
        model.to(resolved.model_dtype)
    return model, resolved.label, False


def _example_batches(
    model: nn.Module, spec: PrecisionSpec, calib: Dataset | None, batch_size: int, device: str
) -> list[torch.Tensor]:
    """Inputs PT2E exports and calibrates on: the first `calib_batches` train batches, or (no
    calibration data) one random batch shaped from the model's patch embedding."""
    if calib is not None:
        return [x for x, _ in calib_batches(calib, spec.calib_batches, batch_size, device)]
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "img_size", None)
    chans = getattr(getattr(embed, "proj", None), "in_channels", None)
    if size is None or chans is None:
        raise ConfigError(
            "precision.int8_backend='pt2e': needs calibration data or a timm-style "
            "patch_embed to shape an example input (apply_precision(..., calib=train set))"
        )
    gen = torch.Generator().manual_seed(0)
    return [torch.randn((2, chans, *tuple(size)), generator=gen).to(device)]


def _pt2e(
    model: nn.Module,
    spec: PrecisionSpec,
    calib: Dataset | None,
    batch_size: int,
    device: str,
    module_names: list[str] | None = None,
    program: bool = True,
) -> tuple[nn.Module, str]:
    """The PT2E int8 program; static needs calibration data, without it dynamic (said so).
    `program=False`: its eager simulation, to evaluate accuracy only (`pt2e.simulated`)."""
    dynamic = spec.int8_scheme == "dynamic" or calib is None
    batches = _example_batches(model, spec, calib, batch_size, device)
    built = quantize_pt2e(
        model, batches, dynamic=dynamic, module_names=module_names, program=program
    )
    text = pt2e_label(built, dynamic) + ("" if program else " (eager simulation)")
    if calib is None and spec.int8_scheme == "static":
        text += " (dynamic: no calibration data given)"
    return built, text


def _export_failure(err: Exception) -> str:
    first = (str(err).strip().splitlines() or [""])[0][:160]
    return f"{type(err).__name__}: {first}"


def _int8(
    model: nn.Module,
    spec: PrecisionSpec,
    resolved: Resolved,
    *,
    device: str,
    int8_backend: str,
    calib: Dataset | None,
    calib_batch_size: int,
    evaluate_only: bool = False,
    **_: object,
) -> tuple[nn.Module, str, bool]:
    """PT2E (x86 CPU): every Linear and the patch-embed Conv int8 in one exported program, to
    be compiled (`evaluate_only`: its eager simulation, never compiled). Eager backends: every
    nn.Linear -> int8-kernel Linear, the rest fp32."""
    backend = resolve_int8_backend(device, int8_backend)
    fallback = ""
    if backend == "pt2e":
        try:
            program, text = _pt2e(
                model, spec, calib, calib_batch_size, device, program=not evaluate_only
            )
            return program, text, not evaluate_only
        except Exception as err:  # torch.export's failures have no common type
            if int8_backend == "pt2e":
                raise ConfigError(
                    f"precision.int8_backend='pt2e': torch.export could not capture the model "
                    f"({_export_failure(err)}); use precision.int8_backend=auto"
                ) from err
            backend = eager_backend(device, backend)
            fallback = f", fallback: torch.export failed ({_export_failure(err)})"
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    for name, layer in linears:
        set_module(model, name, int8_linear(layer, backend, device))
    eager = " eager" if backend == "ao_dynamic" else ""
    text = f"{backend_label(backend, device)}{eager} x{len(linears)} Linear, rest fp32{fallback}"
    return model, text, False


def _mixed(
    model: nn.Module,
    spec: PrecisionSpec,
    resolved: Resolved,
    *,
    device: str,
    calib: Dataset | None,
    calib_batch_size: int,
    seed: int,
    int8_backend: str,
    plan: MixedPlan | None = None,
    timing: MeasureSpec | None = None,
    cache_root: str | None = None,
    **_: object,
) -> tuple[nn.Module, str, bool]:
    """HAWQ plan, low-bit layers packed; the 8-bit layers run on PT2E int8 where it can capture
    the model (the packed layers stay inside the program), else on eager int8 kernels."""
    backend = resolve_int8_backend(device, int8_backend)
    eager = eager_backend(device, backend)
    if spec.act_bits < 8 and plan is not None:
        raise ConfigError(
            f"precision.act_bits={spec.act_bits}: simulated for accuracy only, no kernel runs "
            "it, so there is nothing to export that would; export a plan with act_bits=8"
        )
    if plan is None:  # given: a reloaded export, the plan the trial chose, no recalibration
        if calib is None:
            raise ConfigError(
                "precision.mode='mixed': needs calibration data "
                "(apply_precision(..., calib=train set))"
            )
        latency = None
        if spec.latency_ratio is not None and spec.layer_bits is None:  # else nothing to choose
            if backend != "pt2e":
                raise ConfigError(
                    f"precision.latency_ratio={spec.latency_ratio:g}: priced on the PT2E int8 "
                    f"program, which {device} does not run; set it to null here"
                )
            latency = _latency_inputs(
                model, spec, calib, calib_batch_size, device, timing or MeasureSpec(), cache_root
            )
        plan = plan_mixed(
            model, spec, calib, backend=backend, device=device, batch_size=calib_batch_size,
            seed=seed, latency=latency,
        )  # fmt: skip
    simulation = None
    if spec.act_bits < 8:
        assert calib is not None  # checked with the plan above
        simulation = _simulation(model, plan, spec, calib, calib_batch_size, device, eager)
    if backend == "pt2e":
        eight = [n for n, b in plan.bits.items() if b == 8] + [n for n, _ in other_linears(model)]
        packed_only = copy.deepcopy(model)
        text = apply_plan(packed_only, plan, backend=eager, device=device, eight_bit=False)
        try:
            program, q_text = _pt2e(packed_only, spec, calib, calib_batch_size, device, eight)
            setattr(program, PLAN_ATTR, plan)
            _keep_anchor(program, latency)
            return (*_simulated(program, simulation, f"{text}; 8-bit: {q_text}"), True)
        except Exception as err:  # torch.export's failures have no common type
            fallback = f", fallback: torch.export failed ({_export_failure(err)})"
    else:
        fallback = ""
    if plan.low_bit_kernel == "onednn":  # outside the PT2E program it would be a float GEMM
        plan = dataclasses.replace(plan, low_bit_kernel="int_mm")
    label = apply_plan(model, plan, backend=eager, device=device) + fallback
    setattr(model, PLAN_ATTR, plan)
    _keep_anchor(model, latency)
    return (*_simulated(model, simulation, label), False)


def _keep_anchor(model: nn.Module, latency: LatencyInputs | None) -> None:
    """The all-8-bit program the plan's latency was predicted from rides on the model, so the
    trial can time it again beside the plan (`anchored_latency`); not a submodule, so neither
    the model's state nor its bytes see it."""
    if latency is not None and latency.anchor is not None:
        object.__setattr__(model, ANCHOR_ATTR, latency.anchor)


def anchored_latency(
    model: nn.Module,
    runner: Callable[[torch.Tensor], object],
    ctx: RunContext,
    sample_shape: tuple[int, ...],
    timing: MeasureSpec,
) -> dict[str, Any]:
    """A planned mixed model's batch-1 latency timed again side by side with the all-8-bit
    program its prediction is anchored on, and the prediction re-anchored on that reading.

    The prediction is the anchor timed while planning + the table's differences; the trial
    times the plan later, and this host's speed moves 20-40% in between (README, #32), so the
    two readings of one trial disagree by that much whatever the table. Timed side by side
    (`latency.interleaved_seconds`, 5 rounds, under the machine's timing lock like every
    timed section), the drift hits both alike. {} for any other model (no latency budget, a
    plan given as `layer_bits`, not mixed)."""
    plan = getattr(model, PLAN_ATTR, None)
    anchor = getattr(model, ANCHOR_ATTR, None)
    if anchor is None or plan is None or plan.predicted_latency_s is None:
        return {}
    x1 = make_input(1, sample_shape, ctx)
    fns = {"plan": lambda: ctx.forward(runner, x1), "int8": lambda: ctx.forward(anchor, x1)}
    with timing_lock(timing), thread_scope(timing.threads), torch.inference_mode():
        seconds = interleaved_seconds(fns, timing)
    table_s = plan.predicted_latency_s - plan.int8_latency_s
    return {
        "side_by_side_latency_ms": round(1e3 * seconds["plan"], 4),
        "side_by_side_int8_latency_ms": round(1e3 * seconds["int8"], 4),
        "side_by_side_predicted_ms": round(1e3 * (seconds["int8"] + table_s), 4),
    }


def _simulation(
    model: nn.Module,
    plan: MixedPlan,
    spec: PrecisionSpec,
    calib: Dataset,
    batch_size: int,
    device: str,
    backend: str,
) -> tuple[nn.Module, str]:
    """The plan with `act_bits` activations, simulated on a float copy (precision/act_quant.py):
    what the trial's accuracy is measured on; returns it and its precision_exec part."""
    sim = copy.deepcopy(model)
    weight_bits = {**plan.bits, **{n: 8 for n, _ in other_linears(sim)}}
    weights = {
        name: executed_weight(sim.get_submodule(name), b, backend, device, plan.low_bit_kernel)
        for name, b in weight_bits.items()
    }
    batches = [x for x, _ in calib_batches(calib, spec.calib_batches, batch_size, device)]
    kinds = act_quant.KINDS if spec.act_quantizers == "auto" else ("uniform",)
    wide = frozenset(n for n, b in plan.bits.items() if b > 8)
    chosen = act_quant.simulate(sim, weights, spec.act_bits, kinds, batches, wide)
    return sim, act_quant.label(chosen, spec.act_bits)


def _simulated(
    model: nn.Module, simulation: tuple[nn.Module, str] | None, label: str
) -> tuple[nn.Module, str]:
    """(model, precision_exec): the simulation, if any, rides on the model that is timed."""
    if simulation is None:
        return model, label
    # object.__setattr__: as a submodule it would join the model's state and its model_bytes
    object.__setattr__(model, ACCURACY_ATTR, simulation[0])
    return model, f"{label}; {simulation[1]}"


def accuracy_model(model: nn.Module, runner: nn.Module) -> nn.Module:
    """What a trial's accuracy is measured on: the simulation a converted model carries
    (activations below 8 bits), else `runner`, the model as it runs."""
    return getattr(model, ACCURACY_ATTR, runner)


_INT8_AGAIN = "int8, built last"


def _latency_inputs(
    model: nn.Module,
    spec: PrecisionSpec,
    calib: Dataset,
    batch_size: int,
    device: str,
    timing: MeasureSpec,
    cache_root: str | None,
) -> LatencyInputs:
    """Batch-1 timings the latency budget is priced with: the float model and its all-8-bit
    PT2E program measured whole (compiled, as a trial runs it) and side by side; each searched
    layer's options below 8 bits from the per-machine table (`precision.latency`) plus its
    group's correction in context; its wide options (bf16, fp32) from its group switched whole
    to each, per layer. A group is switched once per model and machine (kept in the table).
    Under the onednn kernel every option below 8 bits costs what 8 bits cost: none is timed."""
    x1 = calib_batches(calib, 1, 1, device)[0][0]
    searched = searched_linears(model)
    names = [n for n, _ in searched]
    rows = rows_per_layer(model, names, x1)
    table = LatencyTable(cache_root, timing)
    kernel = resolve_low_bit_kernel(spec.low_bit_kernel, device)
    extra = np.zeros((len(names), len(spec.bits)))
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(layer_group(name), []).append(i)
    ranges: list[tuple[float, float]] = []  # calibrated input ranges, if a group goes below 8

    def program(switched: list[int], bits: int) -> Callable[[torch.Tensor], object]:
        """The model compiled as the trial runs it, the layers `switched` at `bits`."""
        copied = copy.deepcopy(model)
        eager = eager_backend(device, "pt2e")
        for i in switched:
            act = ranges[i] if bits < 8 else ()
            new = convert_layer(copied.get_submodule(names[i]), bits, eager, device, kernel, act)
            set_module(copied, names[i], new)
        eights = [n for i, n in enumerate(names) if i not in switched]
        eights += [n for n, _ in other_linears(model)]
        return compile_program(_pt2e(copied, spec, calib, batch_size, device, eights)[0])

    def at_batch_1(run: Callable[[torch.Tensor], object]) -> Callable[[], object]:
        return lambda: run(x1)

    # onednn: each bit-width below 8 runs the 8-bit layer's own compiled GEMM, so no difference
    # (`onednn_packed.py`; the bench times such plans side by side with int8 to check it)
    below = [] if kernel == "onednn" else [b for b in spec.bits if b < 8]
    for i, (name, layer) in enumerate(searched if below else []):
        eight = table.seconds(layer, rows[name], 8, spec.low_bit_kernel)
        for j, bits in enumerate(spec.bits):
            if bits < 8:
                extra[i, j] = table.seconds(layer, rows[name], bits, spec.low_bit_kernel) - eight
    # the widths each group is switched to whole: the highest below 8 (its correction then
    # holds for every width below 8), and each wide one (its whole difference)
    switches = [max(below)] if below else []
    switches += [b for b in spec.bits if b > 8]
    layers = [(n, m, rows[n]) for n, m in searched]
    sig = {b: model_signature(layers, f"{kernel},{b},{spec.int8_scheme}") for b in switches}
    missing = [(g, b) for b in switches for g in groups if table.context(sig[b], g) is None]
    if any(b < 8 for _, b in missing):  # the layers' input ranges, once for all the programs
        batches = calib_batches(calib, spec.calib_batches, batch_size, device)
        ranges.extend(input_ranges(model, [m for _, m in searched], batches))

    anchor = program([], 8)
    fns = {"fp32": lambda: model(x1), "int8": at_batch_1(anchor)}
    fns.update({f"{g}@{b}": at_batch_1(program(groups[g], b)) for g, b in missing})
    if missing:  # built first and again last, the groups between: in one process a program
        fns[_INT8_AGAIN] = at_batch_1(program([], 8))  # built earlier ran faster (README, #32)
    with thread_scope(timing.threads), torch.inference_mode():
        seconds = interleaved_seconds(fns, timing)
    if missing:  # per layer: the group's cost in the program beyond what the table says
        seconds["int8"] = (seconds["int8"] + seconds.pop(_INT8_AGAIN)) / 2
    for b in switches:
        col = spec.bits.index(b)
        measured = {
            g: (seconds[f"{g}@{b}"] - seconds["int8"]) / len(groups[g])
            - float(np.mean(extra[groups[g], col]))
            for g, width in missing
            if width == b
        }
        if measured:
            table.set_context(sig[b], measured)
        cols = [j for j, w in enumerate(spec.bits) if w < 8] if b < 8 else [col]
        for g, members in groups.items():
            extra[np.ix_(members, cols)] += table.context(sig[b], g)
    return LatencyInputs(extra, seconds["fp32"], seconds["int8"], anchor)


def plan_metrics(model: nn.Module) -> dict[str, Any]:
    """A mixed plan's bits (`mixed_bits`, what `precision.layer_bits` rebuilds it from) and
    what it predicted, beside what the trial then measures (`latency_ms`): the whole and its
    anchor, the all-8-bit program as timed when planning. tq: the seconds its retraining took
    (`retrain_s`: a cost of its own, like `compile_s`)."""
    retrain_s = getattr(model, RETRAIN_ATTR, None)
    if retrain_s is not None:
        return {"retrain_s": round(retrain_s, 3)}
    plan = getattr(model, PLAN_ATTR, None)
    if plan is None:
        return {}
    out: dict[str, Any] = {"mixed_bits": format_bits(plan)}
    predicted = plan.predicted_latency_s  # None when nothing was timed (no latency budget)
    if predicted is not None:
        out["predicted_latency_ms"] = round(1e3 * predicted, 4)
        out["planned_int8_latency_ms"] = round(1e3 * plan.int8_latency_s, 4)
    return out


def _tq(
    model: nn.Module,
    spec: PrecisionSpec,
    resolved: Resolved,
    *,
    device: str,
    calib: Dataset | None,
    calib_batch_size: int,
    seed: int,
    timing: MeasureSpec | None = None,
    **_: object,
) -> tuple[nn.Module, str, bool]:
    """Every nn.Linear / nn.Conv -> TQLayer at `spec.rate` bits per weight, bits allocated on
    the output variances seen on `calib_batches` batches of `calib` (on the weights' own without
    `calib`); then, with `finetune_steps`, quantization-aware fine-tuning on `calib`; then, with
    `calib`, each Linear with a transform runs whichever forward its timing favours (dense or
    in the transform domain, `tq.choose_forwards`)."""
    if spec.finetune_steps > 0 and calib is None:
        raise ConfigError(
            f"precision.finetune_steps={spec.finetune_steps}: needs training data "
            "(apply_precision(..., calib=train set)); or set precision.finetune_steps=0"
        )
    if not coded_layers(model):
        raise ConfigError("precision.mode='tq': the model has no nn.Linear or nn.Conv to code")
    inputs = None
    if calib is not None:
        batches = calib_batches(calib, spec.calib_batches, calib_batch_size, device)
        inputs = [x for x, _ in batches]
    recipe = recipe_for(spec.rate, spec.finetune_steps, calib_batch_size)
    teacher = frozen_copy(model) if spec.finetune_steps > 0 and recipe.distill else None
    apply_tq(model, spec.rate, inputs, transform=spec.transform, stored=spec.budget == "stored")
    model.to(device)
    if spec.finetune_steps > 0:
        assert calib is not None
        seconds = retrain(model, calib, recipe, teacher=teacher, device=device, seed=seed)
        setattr(model, RETRAIN_ATTR, seconds)
    factorized = 0
    if inputs is not None:
        chosen = choose_forwards(model, inputs[0], timing or MeasureSpec())
        factorized = sum(c.factorized for c in chosen)
    stats = tq_stats(model)
    alloc = "output-weighted" if stats.weighted else "weights-only"
    tuned = f", fine-tuned {spec.finetune_steps} steps" if spec.finetune_steps else ""
    klt = sum(not layer.identity for layer in tq_layers(model))
    return (
        model,
        f"tq {stats.rate:.3g} bits/weight ({stats.effective_bits:.3g} with transforms), "
        f"{alloc} allocation, KLT in {klt} of {stats.layers} Linear/Conv{tuned}; fp32: "
        f"{factorized} in the transform domain (timed faster), the rest rebuilt once",
        False,
    )


# A handler returns (the converted model, precision_exec, whether it must be compiled to run
# at its precision's speed): PT2E programs are reference q/dq graphs until inductor lowers them.
_HANDLERS: dict[str, Callable[..., tuple[nn.Module, str, bool]]] = {
    "fp32": _float,
    "fp16": _float,
    "bf16": _float,
    "int8": _int8,
    "mixed": _mixed,
    "tq": _tq,
}


def apply_precision(
    model: nn.Module,
    spec: PrecisionSpec,
    *,
    device: str = "cpu",
    calib: Dataset | None = None,
    calib_batch_size: int | None = None,
    seed: int = 0,
    int8_backend: str | None = None,
    plan: MixedPlan | None = None,
    timing: MeasureSpec | None = None,
    cache_root: str | None = None,
    evaluate_only: bool = False,
) -> tuple[nn.Module, RunContext]:
    """Convert `model` in place to run at `spec`'s precision on `device`; returns it and how to
    feed it. Idempotent: the same spec again returns the model untouched; a different one on a
    model whose weights were converted (full cast, int8, mixed) is a ConfigError.

    Modifications: eval mode, moved to `device`; fp16/bf16 full: float parameters cast;
    int8 on an x86 CPU: a NEW module, the torchao PT2E int8 program (torch.export'ed, calibrated
    on `calib` when static, every nn.Linear int8; `ctx.wants_compile`: it runs at int8 speed
    only once compiled, `vitsweep.measure.compile_model`); int8 elsewhere, or where
    torch.export fails (labelled fallback): every nn.Linear -> eager int8 Linear; mixed: block
    Linears -> int8 or packed low-bit per the ILP, head -> int8 (PT2E: a NEW module again, the
    8-bit layers quantized in the program), plan stored as `model.vitsweep_mixed_plan`;
    tq: every nn.Linear and nn.Conv -> TQLayer (KLT-coded weight at `precision.rate` bits per
    weight, rebuilt to fp32 for the forward), optionally fine-tuned.
    `calib` (a labelled dataset, e.g. the train split) is needed by mixed, and by tq when
    `precision.finetune_steps` > 0; `seed` fixes mixed's Rademacher vectors and tq's shuffling.
    `int8_backend` (auto | pt2e | ao_dynamic | int_mm) overrides `spec.int8_backend`.
    `plan` (mixed only) skips calibration and applies a plan chosen before: how an export is
    rebuilt to the very layer kinds its saved weights belong to. `timing` and `cache_root`
    (mixed with `precision.latency_ratio`): the timing protocol and where the per-machine
    latency table is kept. `evaluate_only`: the model is only evaluated, never timed, compiled
    or exported; PT2E int8 then comes as the program's eager simulation (`pt2e.simulated`: the
    same values, built 2-3x and evaluated 1.5x faster).
    """
    _validate(spec)
    device = resolve_device(device)
    check_supported(spec.mode, device)
    applied = getattr(model, _APPLIED, None)
    if applied is not None:
        if applied[0] == spec and applied[1].device == device:
            return model, applied[1]
        raise ConfigError(
            f"precision.mode={spec.mode!r}: model already converted to "
            f"{applied[1].precision_exec!r}; apply precision to a fresh float model"
        )
    resolved = resolve_precision(spec.mode, spec.cast)
    model.eval().to(device)
    model, label, wants_compile = _HANDLERS[spec.mode](
        model,
        spec,
        resolved,
        device=device,
        calib=calib,
        calib_batch_size=calib_batch_size or CALIB_BATCH_SIZE,
        seed=seed,
        int8_backend=int8_backend or spec.int8_backend,
        plan=plan,
        timing=timing,
        cache_root=cache_root,
        evaluate_only=evaluate_only,
    )
    ctx = RunContext(
        device=device,
        input_dtype=resolved.data_dtype,
        autocast_dtype=resolved.amp_dtype,
        precision_exec=label,
        wants_compile=wants_compile,
    )
    if spec.mode in ("int8", "mixed", "tq") or resolved.model_dtype != torch.float32:
        setattr(model, _APPLIED, (spec, ctx))  # weights changed: a second precision would stack
    return model, ctx
