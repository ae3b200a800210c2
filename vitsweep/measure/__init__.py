"""How candidates are judged: accuracy, speed, energy and cost, measured on this machine."""

from __future__ import annotations

from vitsweep.measure.accuracy import correct_flags, evaluate
from vitsweep.measure.compile import compile_model, should_compile
from vitsweep.measure.cost import count_flops, count_params, peak_memory_bytes
from vitsweep.measure.deploy import installed_bytes
from vitsweep.measure.device import resolve_device
from vitsweep.measure.drift import host_reference
from vitsweep.measure.energy import (
    EnergyReading,
    EstimateMeter,
    MeterUnavailable,
    NvmlMeter,
    RaplMeter,
    counter_delta,
    measure_energy,
    select_meter,
)
from vitsweep.measure.lock import timing_lock
from vitsweep.measure.protocol import measure_all
from vitsweep.measure.speed import (
    RepeatStats,
    coefficient_of_variation,
    measure_latency,
    measure_throughput,
    thread_scope,
    timed_repeats,
    with_oom_retry,
)

__all__ = [
    "EnergyReading",
    "EstimateMeter",
    "MeterUnavailable",
    "NvmlMeter",
    "RaplMeter",
    "RepeatStats",
    "coefficient_of_variation",
    "compile_model",
    "correct_flags",
    "count_flops",
    "count_params",
    "counter_delta",
    "evaluate",
    "host_reference",
    "installed_bytes",
    "measure_all",
    "measure_energy",
    "measure_latency",
    "measure_throughput",
    "peak_memory_bytes",
    "resolve_device",
    "select_meter",
    "should_compile",
    "thread_scope",
    "timed_repeats",
    "timing_lock",
    "with_oom_retry",
]
