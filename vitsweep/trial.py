"""One candidate, end to end: build the subnet, merge tokens, set precision, measure.

Pure Python -- no Hydra, Optuna or W&B -- so tests and benchmarks call it directly.
"""

from __future__ import annotations

import time

import torch

from vitsweep.spec import Metrics, TrialSpec


def run(spec: TrialSpec) -> Metrics:
    from vitsweep import data, measure, models, precision, tome

    t0 = time.perf_counter()
    torch.manual_seed(spec.seed)
    device = measure.resolve_device(spec.measure.device)
    splits = data.load(spec.data)
    model = models.build_model(spec.arch, spec.train, spec.data, splits, spec.root)
    t_build = time.perf_counter() - t0
    model = tome.apply_token(model, spec.token)
    model, ctx = precision.apply_precision(model, spec.precision, device=device, calib=splits.train)
    batch = spec.measure.eval_batch_size
    accuracy = measure.evaluate(model, ctx, splits.val, batch)
    test_accuracy = measure.evaluate(model, ctx, splits.test, batch)
    sample_shape = (splits.in_chans, splits.image_size, splits.image_size)
    cost = measure.measure_all(model, ctx, sample_shape, spec.measure)
    core = {
        k: cost.pop(k)
        for k in (
            "throughput",
            "latency_ms",
            "energy",
            "energy_source",
            "params",
            "flops",
            "peak_mem_bytes",
        )
    }
    return Metrics(
        accuracy=accuracy,
        test_accuracy=test_accuracy,
        model_bytes=precision.model_bytes(model),
        **core,
        extra={
            **cost,
            "precision_exec": ctx.precision_exec,
            "build_s": round(t_build, 3),
            "trial_s": round(time.perf_counter() - t0, 3),
        },
    )
