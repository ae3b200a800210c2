"""One candidate, end to end: build the subnet, merge tokens, set precision, measure.

Pure Python -- no Hydra, Optuna or W&B -- so tests and benchmarks call it directly.
`build` is the one place a TrialSpec becomes the model that is measured; `vitsweep-export` ships
what `build` returns, so the export and the trial can never disagree about the model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from vitsweep.runctx import RunContext
from vitsweep.spec import METRIC_NAMES, Beside, ConfigError, MeasureSpec, Metrics, TrialSpec

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from vitsweep.data.splits import Splits
    from vitsweep.predict.accuracy import Evaluations


@dataclass
class Built:
    """The trial's deployable model, how to feed it, and the data it was made from."""

    model: nn.Module
    ctx: RunContext
    splits: Splits
    build_s: float  # seconds to get the float model (training, if not cached, included)


def build(spec: TrialSpec, *, evaluate_only: bool = False) -> Built:
    """The model one trial measures: float subnet (trained or extracted as cached), then ToMe,
    then precision (mixed: calibrated on the train split). `evaluate_only`: for accuracy only,
    never timed or exported (`precision.apply_precision`).

    Token and precision surgery run at `measure.threads` like the accuracy evaluation, so that a
    rebuild (an export) repeats the calibration's floating-point sums in the same order.
    """
    from vitsweep import data, measure, models, precision, tome

    t0 = time.perf_counter()
    torch.manual_seed(spec.seed)
    device = measure.resolve_device(spec.measure.device)
    splits = data.load(spec.data, data.data_dir(spec.root))
    model = models.build_model(spec.arch, spec.train, spec.data, splits, spec.root)
    build_s = time.perf_counter() - t0
    with measure.thread_scope(spec.measure.threads) as threads:
        model = tome.apply_token(model, spec.token)
        if spec.runtime.name != "torch":  # exported once, quantized by the runtime's own tools
            from vitsweep import runtime

            deployed, ctx = runtime.deploy(
                model, spec.runtime, spec.precision, calib=splits.train, threads=threads,
                device=device,
            )  # fmt: skip
            return Built(deployed, ctx, splits, build_s)
        model, ctx = precision.apply_precision(
            model,
            spec.precision,
            device=device,
            calib=splits.train,
            timing=spec.measure,
            cache_root=spec.root,
            evaluate_only=evaluate_only,
        )
    return Built(model, ctx, splits, build_s)


def as_ran(spec: TrialSpec, metrics: dict[str, Any]) -> TrialSpec:
    """`spec` pinned to what its trial recorded, for whatever rebuilds it (confirm, export):
    `measure.threads=0` ("the process default", which differs between a sweep worker and this
    process) to the count the trial used, and a mixed trial's plan to its `mixed_bits` (a
    latency budget's plan rests on timings taken when planning: planned again, it can differ)."""
    threads, bits = metrics.get("threads"), metrics.get("mixed_bits")
    if not spec.measure.threads and isinstance(threads, int) and threads >= 1:
        spec = replace(spec, measure=replace(spec.measure, threads=threads))
    if spec.precision.mode == "mixed" and isinstance(bits, str):
        spec = replace(spec, precision=replace(spec.precision, layer_bits=bits))
    return spec


def needs_training(spec: TrialSpec) -> bool:
    """Whether `build(spec)` would train a model first (none of its weights are cached yet)."""
    from vitsweep import models

    path = models.weights_file(spec.arch, spec.train, spec.data, spec.root)
    return path is not None and not path.exists()


def train_if_needed(spec: TrialSpec) -> None:
    """`train(spec)` unless the weights it needs are cached: what `isolated.trained` runs in a
    child, since even the check imports the models room (timm, torchvision, sklearn: 3 s) that
    a sweep's own process never needs otherwise."""
    if needs_training(spec):
        train(spec)


def train(spec: TrialSpec) -> Path | None:
    """Train (or find cached) the float model `spec` needs: the supernet and its teacher, or the
    standalone model. The cached weights' file, None when nothing is trained."""
    from vitsweep import data, models

    splits = data.load(spec.data, data.data_dir(spec.root))
    if spec.arch.kind == "supernet" and not spec.arch.finetune:
        return models.supernet_file(spec.arch, spec.train, spec.data, splits, spec.root)
    models.build_model(spec.arch, spec.train, spec.data, splits, spec.root)
    return models.weights_file(spec.arch, spec.train, spec.data, spec.root)


def runner(
    model: nn.Module, ctx: RunContext, splits: Splits, spec: MeasureSpec
) -> tuple[nn.Module, RunContext, float]:
    """(what runs, its ctx, compile_s): `model` compiled per `measure.compile` for every batch
    size the trial runs (timing batch, batch 1, evaluation batch and the splits' tails), so no
    compilation falls inside accuracy or timing; compile_s 0.0 when nothing was compiled. The
    export re-measures through this too, so it runs what the trial ran. A model deployed to
    another runtime is compiled already: compile_s is its export and quantization seconds."""
    from vitsweep import measure, runtime

    if runtime.is_deployed(model):
        return model, ctx, round(model.deployed.seconds, 3)

    sample_shape = splits.sample_shape
    eb = spec.eval_batch_size
    tails = [len(d) % eb for d in (splits.val, splits.test)]  # type: ignore[arg-type]
    sizes = (spec.batch_size, 1, min(eb, len(splits.val)), *tails)  # type: ignore[arg-type]
    with measure.thread_scope(spec.threads):
        run_model, ctx, compile_s = measure.compile_model(model, ctx, spec, sample_shape, sizes)
    return run_model, ctx, round(compile_s, 3) if compile_s is not None else 0.0


def ready(spec: TrialSpec) -> tuple[Built, nn.Module, RunContext, float]:
    """(built, what runs, its ctx, compile_s): the trial's model as the trial runs it. Whatever
    measures a trial again (confirm) starts here: a PT2E program run uncompiled is 3-4x slower."""
    built = build(spec)
    run_model, ctx, compile_s = runner(built.model, built.ctx, built.splits, spec.measure)
    return built, run_model, ctx, compile_s


def throughput_now(
    model: nn.Module,
    ctx: RunContext,
    sample_shape: tuple[int, int, int],
    spec: MeasureSpec,
    reference: float | None,
) -> float:
    """`model`'s images/s timed now, as `measure_all` times a trial's (threads, host probe)."""
    from vitsweep.measure.drift import Probe
    from vitsweep.measure.speed import measure_throughput, thread_scope

    with thread_scope(spec.threads):
        probe = None if reference is None else Probe(reference, spec.host_probe == "scale")
        stats, _ = measure_throughput(model, ctx, sample_shape, spec, probe)
    return stats.rate


def timer(spec: TrialSpec) -> Callable[[], float]:
    """A call that times, each time it is called, the throughput of the model `spec` builds,
    run as its trial ran it (built and compiled once, here)."""
    from vitsweep import measure

    built, run_model, ctx, _ = ready(spec)
    reference = measure.host_reference(spec.root, spec.measure, ctx.device)
    sample = built.splits.sample_shape
    return partial(throughput_now, run_model, ctx, sample, spec.measure, reference)


def in_baseline_units(cost: dict[str, Any], beside: Beside, spec: MeasureSpec) -> dict[str, Any]:
    """`measure.beside=baseline`: the trial's throughput as its ratio to the baseline timed
    beside it, times the throughput the baseline's own trial recorded. Two readings of one
    program minutes apart differ by up to 30% on a drifting host, so only a ratio taken within
    seconds can be compared across trials and with `vitsweep-confirm` (which times the same
    baseline beside each member). The estimate's energy follows the throughput it divides."""
    x = cost["throughput"] / cost["baseline_throughput_beside"]
    out = {
        "throughput_x_beside": x,
        "throughput": x * beside.throughput,
        "beside_trial": beside.number,
    }
    if cost["energy_source"] == "estimate":
        out["energy"] = spec.watts / out["throughput"]
    return out


def accuracy(model: nn.Module, ctx: RunContext, dataset: Dataset, spec: MeasureSpec) -> float:
    """Top-1 on `dataset` at `measure.threads` (the thread count fixes the order of float sums,
    so the same model gives the same accuracy in the trial and in its export)."""
    return float(correct_flags(model, ctx, dataset, spec).mean())


def correct_flags(
    model: nn.Module, ctx: RunContext, dataset: Dataset, spec: MeasureSpec
) -> np.ndarray:
    """Per-image correctness on `dataset` at `measure.threads` (see `accuracy`)."""
    from vitsweep import measure

    with measure.thread_scope(spec.threads):
        return measure.correct_flags(model, ctx, dataset, spec.eval_batch_size)


def accuracy_metrics(val: np.ndarray, test: np.ndarray) -> dict[str, Any]:
    """The accuracy keys a trial records: val and test accuracy with 95% Wilson intervals and
    image counts, and the test split's per-image flags (packed) for the paired headline."""
    from vitsweep.measure.accuracy import TEST_FLAGS_KEY, accuracy_summary, pack_flags

    return {
        **accuracy_summary(val, "accuracy"),
        **accuracy_summary(test, "test_accuracy"),
        TEST_FLAGS_KEY: pack_flags(test),
    }


def stored_bytes(model: nn.Module) -> int:
    """`model_bytes`: the tensors as stored (torch), or the runtime's model files."""
    from vitsweep import precision, runtime

    if runtime.is_deployed(model):
        return runtime.stored_bytes(model)
    return precision.model_bytes(model)


def deploy_bytes(spec: TrialSpec, model_bytes: int, precision_exec: str) -> int:
    """`deploy_bytes`: the model's stored bytes plus the installed runtime it needs."""
    from vitsweep import measure, runtime

    packages = runtime.distributions(spec.runtime.name, precision_exec)
    return model_bytes + measure.installed_bytes(packages, Path(spec.root) / "host")


# `measure.mode=predicted`: blocks of one (precision, batch) timed into the per-machine table
# before the block model prices the rest, twice its weights so that the fit is overdetermined.
PREDICT_AFTER = 16


def run(spec: TrialSpec) -> Metrics:
    from vitsweep import runtime

    if spec.measure.mode == "predicted" and priceable(spec):
        return _predicted(spec)
    t0 = time.perf_counter()
    built, run_model, ctx, compile_s = ready(spec)
    try:
        return _measured(spec, built, run_model, ctx, compile_s, t0)
    finally:
        if runtime.is_deployed(built.model):  # its files are measured: sizes are recorded
            built.model.discard_files()


def _measured(
    spec: TrialSpec,
    built: Built,
    run_model: nn.Module,
    ctx: RunContext,
    compile_s: float,
    t0: float,
) -> Metrics:
    from vitsweep import measure, precision, runtime

    model, splits = built.model, built.splits
    judged = precision.accuracy_model(model, run_model)  # a simulation, where one was asked
    acc = accuracy_metrics(
        correct_flags(judged, ctx, splits.val, spec.measure),
        correct_flags(judged, ctx, splits.test, spec.measure),
    )
    _keep_evaluation(spec, acc)
    size = stored_bytes(model)
    sample_shape = splits.sample_shape
    reference = measure.host_reference(spec.root, spec.measure, ctx.device)
    cost = measure.measure_all(
        run_model,
        ctx,
        sample_shape,
        spec.measure,
        cost_model=runtime.cost_model(model),
        reference=reference,
        beside=None if spec.beside is None else timer(spec.beside.spec),
    )
    if spec.beside is not None:
        cost.update(in_baseline_units(cost, spec.beside, spec.measure))
    core = {k: cost.pop(k) for k in METRIC_NAMES if k in cost}
    return Metrics(
        accuracy=acc.pop("accuracy"),
        test_accuracy=acc.pop("test_accuracy"),
        model_bytes=size,
        deploy_bytes=deploy_bytes(spec, size, ctx.precision_exec),
        **core,
        extra={
            **acc,
            **cost,
            "runtime": spec.runtime.name,
            **runtime.file_metrics(model),
            "precision_exec": ctx.precision_exec,
            **precision.plan_metrics(model),
            **precision.anchored_latency(model, run_model, ctx, sample_shape, spec.measure),
            "compile_s": compile_s,  # apart: never inside throughput or latency
            "build_s": round(built.build_s, 3),
            "trial_s": round(time.perf_counter() - t0, 3),
        },
    )


def priceable(spec: TrialSpec) -> bool:
    """What `measure.mode=predicted` prices: what the cost table's blocks describe, supernet
    subnets and ViTs built from their dims (a study's usual baseline, priced like its subnets
    so that their ratios rest on one predictor); a timm or pretrained model is measured."""
    arch = spec.arch
    plain = arch.kind == "vit" and arch.timm_name is None and arch.pretrained is None
    return arch.kind == "supernet" or plain


def evaluations(spec: TrialSpec) -> Evaluations | None:
    """Where a candidate's real val accuracy is kept (`predict.accuracy.Evaluations`, beside
    its weights): a supernet's subnets, which the accuracy predictor is fitted on, and a ViT
    built from its dims and trained here (a study's usual baseline), whose evaluation a later
    predicted study reuses. None for the rest (a timm or pretrained model, a fine-tuned subnet,
    another runtime, mixed or transform precision)."""
    import dataclasses
    import hashlib
    import json

    from vitsweep import models
    from vitsweep.models.checkpoint import recorded_sha256
    from vitsweep.predict.accuracy import Evaluations
    from vitsweep.predict.cost import PRECISIONS

    arch = spec.arch
    subnet = arch.kind == "supernet" and arch.space is not None and not arch.finetune
    if not (subnet or (priceable(spec) and arch.kind == "vit" and arch.checkpoint is None)):
        return None
    if spec.runtime.name != "torch" or spec.precision.mode not in PRECISIONS:
        return None
    weights = models.weights_file(arch, spec.train, spec.data, spec.root)
    if weights is None:
        return None
    # what the candidate does not say but accuracy depends on: the other precision and token
    # options (calibration, int8 scheme, ToMe's proportional attention, ...); the candidate
    # carries the precision, its cast (xray's bf16 casts fully, its int8 does not) and r
    said = {"precision": ("mode", "cast"), "token": ("r",)}
    setting = {
        group: {k: v for k, v in dataclasses.asdict(getattr(spec, group)).items() if k not in keys}
        for group, keys in said.items()
    }
    digest = hashlib.sha1(json.dumps(setting, sort_keys=True, default=str).encode()).hexdigest()
    return Evaluations(weights.with_suffix(".accuracy.json"), digest[:16], recorded_sha256(weights))


def _keep_evaluation(spec: TrialSpec, acc: dict[str, Any]) -> None:
    """A subnet's real val accuracy joins its supernet's evaluations."""
    from vitsweep.predict.candidate import candidate

    kept = evaluations(spec)
    if kept is not None:
        kept.add(candidate(spec), acc["accuracy"], acc["accuracy_n"])


def _predicted(spec: TrialSpec) -> Metrics:
    """A candidate judged on the predictors (`measure.mode=predicted`): throughput and batch-1
    latency from the per-machine cost table, whose blocks are timed until the block model can
    price the rest; energy as the estimate's watts over that throughput. Its val accuracy is
    evaluated (uncompiled: same weights and calibration; compiling is most of an int8 trial's
    time; int8 as the program's eager simulation, `pt2e.simulated`); a subnet's until
    `measure.accuracy_after` of the supernet's subnets were, then predicted from them. The test
    split is left to `vitsweep-confirm`, which measures the front. `predicted` names the
    metrics that were not measured."""
    from vitsweep import data, measure, models, precision, tome
    from vitsweep.measure.accuracy import accuracy_summary
    from vitsweep.predict.candidate import candidate
    from vitsweep.predict.cost import (
        PRECISIONS,
        BlockModel,
        CostPredictor,
        CostTable,
        Geometry,
    )
    from vitsweep.predict.surrogate import count_bytes
    from vitsweep.stats import wilson

    t0 = time.perf_counter()
    c = candidate(spec)
    if spec.runtime.name != "torch" or c.precision not in PRECISIONS:
        raise ConfigError(
            f"measure.mode=predicted: the cost table times torch's {', '.join(PRECISIONS)}, "
            f"not runtime={spec.runtime.name} precision={c.precision}; use measure.mode=measured"
        )
    if measure.resolve_device(spec.measure.device) != "cpu":
        raise ConfigError(
            "measure.mode=predicted: the cost table is timed on this CPU; with "
            f"measure.device={spec.measure.device} use measure.mode=measured"
        )
    kept = evaluations(spec)  # None for a timm or pretrained model: always evaluated
    space = spec.arch.space
    known = None if kept is None else kept.lookup(c)  # evaluated before: reused as it was
    predictor = None
    if kept is not None and space is not None and known is None:
        predictor = kept.predictor(c, spec.measure.accuracy_after, max(space.depth))
    predicted = ["throughput", "latency_ms", "energy"]
    extra: dict[str, Any]
    model_bytes: int | None
    if predictor is None and known is None:  # evaluated, and kept for the predictor
        built = build(spec, evaluate_only=True)
        model, ctx, splits = built.model, built.ctx, built.splits
        flags = correct_flags(precision.accuracy_model(model, model), ctx, splits.val, spec.measure)
        acc = accuracy_summary(flags, "accuracy")
        model_bytes = stored_bytes(model)
        if kept is not None:
            kept.add(c, acc["accuracy"], acc["accuracy_n"])
        extra = {**acc, "precision_exec": ctx.precision_exec, "build_s": round(built.build_s, 3)}
    else:  # the float subnet only, for its size and FLOPs: nothing calibrated or evaluated
        splits = data.load(spec.data, data.data_dir(spec.root))
        model = models.build_model(spec.arch, spec.train, spec.data, splits, spec.root)
        with measure.thread_scope(spec.measure.threads):
            model = tome.apply_token(model, spec.token)
        ctx = RunContext()  # FLOPs do not depend on the precision
        model_bytes = None  # counted below
        # not built at its precision: what the trial would execute, by name (for the runtime it
        # needs); vitsweep-confirm builds it
        extra = {"precision_exec": f"{c.precision}{' pt2e' * (c.precision == 'int8')} (not built)"}
        if known is not None and kept is not None:  # e.g. the baseline, once per weights
            value, n = known
            lo, hi = wilson(round(value * n), n) if n else (float("nan"), float("nan"))
            acc = {"accuracy": value, "accuracy_lo": lo, "accuracy_hi": hi, "accuracy_n": n}
            extra["accuracy_source"] = f"evaluated before ({kept.path.name})"
        else:
            acc = {"accuracy": float(predictor.predict([c])[0])}
            predicted = ["accuracy", *predicted]
            extra["accuracy_fitted_on"] = predictor.fitted_on
    geometry = Geometry(
        spec.arch.img_size, spec.arch.patch_size, splits.in_chans, splits.num_classes
    )
    if model_bytes is None:
        # exact, and nothing exported: int8 counted on the float subnet as its PT2E program
        # stores it (an export was ~5 s of each such xray trial); the other precisions on
        # the candidate built whole with random weights (storage does not depend on them)
        if c.precision == "int8":
            model_bytes = precision.pt2e_bytes(model)
        else:
            model_bytes = count_bytes(c, geometry, spec.token.prop_attn)
    table = CostTable(
        spec.root, spec.measure, geometry, prop_attn=spec.token.prop_attn, shipped=True
    )
    table.model = BlockModel.fit(table.timed_blocks(), min_rows=PREDICT_AFTER)
    cost = CostPredictor(table, spec.measure.batch_size).predict(c)
    shape = splits.sample_shape
    with measure.thread_scope(spec.measure.threads):
        params, flops = measure.count_params(model), measure.count_flops(model, ctx, shape)
    return Metrics(
        accuracy=acc.pop("accuracy"),
        test_accuracy=float("nan"),
        throughput=cost.throughput,
        latency_ms=cost.latency_ms,
        energy=spec.measure.watts / cost.throughput,
        energy_source="estimate",
        params=params,
        flops=flops,
        model_bytes=model_bytes,
        deploy_bytes=deploy_bytes(spec, model_bytes, extra["precision_exec"]),
        peak_mem_bytes=float("nan"),
        extra={
            **acc,
            **extra,
            "predicted": ",".join(predicted),
            "test_accuracy_source": "not measured (measure.mode=predicted): vitsweep-confirm",
            "peak_mem_source": "not measured (measure.mode=predicted)",
            "cost_parts_timed": table.measured,
            **({"cost_parts_from": ",".join(table.seeded_from)} if table.seeded_from else {}),
            "runtime": spec.runtime.name,
            "trial_s": round(time.perf_counter() - t0, 3),
        },
    )
