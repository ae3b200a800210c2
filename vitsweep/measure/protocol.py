"""`measure_all`: every speed, energy and cost number of one candidate, in one call.

Order matters: peak memory is taken first (before warm-up has grown the allocator's caches),
FLOPs outside the lock (they time nothing), then throughput, latency and energy inside the
machine-wide timing lock, with the thread count fixed for all of them and the host allocator
steady (`steady_host_allocator`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from vitsweep.measure.cost import count_flops, count_params, peak_memory_bytes
from vitsweep.measure.device import device_name, is_cuda, synchronizer
from vitsweep.measure.drift import Probe
from vitsweep.measure.energy import (
    EstimateMeter,
    measure_energy,
    select_meter,
)
from vitsweep.measure.lock import timing_lock
from vitsweep.measure.speed import (
    eval_mode,
    forward_step,
    make_input,
    measure_latency,
    measure_throughput,
    steady_host_allocator,
    thread_scope,
    with_oom_retry,
)
from vitsweep.runctx import RunContext
from vitsweep.spec import MeasureSpec


def measure_all(
    model: torch.nn.Module,
    ctx: RunContext,
    sample_shape: tuple[int, int, int],
    spec: MeasureSpec,
    cost_model: torch.nn.Module | None = None,
    reference: float | None = None,
    beside: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """Throughput, latency, energy, params, FLOPs and peak memory of `model` run through `ctx`.

    The model must already sit on `ctx.device`. `cost_model`: the uncompiled module whose
    parameters and FLOPs are counted when `model` is its compiled runner (FlopCounterMode sees
    no aten ops inside a compiled graph); default `model`. Energy per image uses the meter chosen by
    `spec.energy`; the estimate needs no extra window (assumed watts / measured throughput).
    `reference`: the machine's reference GEMM rate (`drift.host_reference`); given, the host
    probe is timed after every repeat and `host_speed` says how fast the host ran (with
    `measure.host_probe=scale` every repeat is also scaled to the reference; `throughput_raw`
    is what the clock read). `beside`: another model's throughput, timed just before and just
    after `model`'s, inside the same lock; their mean is `baseline_throughput_beside` (the
    ratio to it holds where the host's speed moves between minutes, not within seconds).
    """
    sample_shape = tuple(sample_shape)  # type: ignore[assignment]
    steady_host_allocator()
    meter = select_meter(spec.energy, ctx.device, spec.watts)
    try:
        with thread_scope(spec.threads) as threads:
            counted = model if cost_model is None else cost_model
            params = count_params(counted)
            flops = count_flops(counted, ctx, sample_shape)
            (peak_mem, peak_mem_source), _ = with_oom_retry(
                lambda b: peak_memory_bytes(model, ctx, make_input(b, sample_shape, ctx)),
                spec.batch_size,
                ctx.device,
            )
            with timing_lock(spec) as lock_wait_s:
                scale = spec.host_probe == "scale"
                probe = None if reference is None else Probe(reference, scale)
                before = beside() if beside is not None else None
                tput, batch = measure_throughput(model, ctx, sample_shape, spec, probe)
                if beside is not None:
                    beside_rate = 0.5 * (before + beside())
                lat = measure_latency(model, ctx, sample_shape, spec, probe)
                if isinstance(meter, EstimateMeter):
                    energy = meter.watts / tput.rate
                    window_s = 0.0
                    power_w = meter.watts
                else:
                    with torch.inference_mode(), eval_mode(model):
                        x = make_input(batch, sample_shape, ctx)
                        reading = measure_energy(
                            forward_step(model, ctx, x),
                            synchronizer(ctx.device),
                            batch,
                            meter,
                            spec.energy_window_s,
                            preload_s=1.0 if is_cuda(ctx.device) else 0.2,
                        )
                    energy = reading.joules_per_image
                    window_s = reading.window_s
                    power_w = reading.power_w
    finally:
        meter.close()
    out = {
        "throughput": tput.rate,
        "latency_ms": lat.median_step_s * 1e3,
        "energy": energy,
        "energy_source": meter.source,
        "params": params,
        "flops": flops,
        "peak_mem_bytes": peak_mem,
        "peak_mem_source": peak_mem_source,
        "throughput_cv": tput.cv,
        "throughput_raw": tput.raw_rate,
        "host_speed": tput.host_speed,
        "latency_cv": lat.cv,
        "repeats": tput.repeats,
        "latency_repeats": lat.repeats,
        "iters_per_repeat": tput.iters,
        "noisy": tput.noisy or lat.noisy,
        "threads": threads,
        "batch_size": batch,
        "measure_device": torch.device(ctx.device).type,
        "device_name": device_name(ctx.device),
        "energy_window_s": window_s,
        "energy_power_w": power_w,
        "lock_wait_s": lock_wait_s,
    }
    if beside is not None:
        out["baseline_throughput_beside"] = beside_rate
    return out
