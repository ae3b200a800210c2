"""The speed protocol: warm-up, timed repeats until the spread is small, medians, OOM retry.

Each repeat times `iters` back-to-back steps between two device synchronizations, so that on a
GPU the queue stays full inside a repeat and the timestamps still mean "finished". Repeats go on
from `min_repeats` until the coefficient of variation (CV) of the per-repeat rates is below
`max_cv`, or `max_repeats` or `time_cap_s` is reached; a result that never settled is `noisy`.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache, partial
from typing import Protocol, TypeVar

import torch

from vitsweep.measure.device import is_cuda, synchronizer
from vitsweep.runctx import RunContext
from vitsweep.spec import MeasureSpec

T = TypeVar("T")


def coefficient_of_variation(values: Sequence[float]) -> float:
    """Sample standard deviation over mean; 0 for fewer than two values."""
    if len(values) < 2:
        return 0.0
    mean = statistics.fmean(values)
    return statistics.stdev(values) / mean if mean > 0 else math.inf


@dataclass(frozen=True)
class RepeatStats:
    """Timings of one timed section: every repeat kept, so the spread can be reported.

    With a host probe (`measure.host_probe`, `vitsweep.measure.drift`) the host's GEMM rate
    after each repeat is kept; when `scaled`, each repeat's rate is scaled by the reference
    GEMM rate over it: the reading at reference host speed."""

    times_s: tuple[float, ...]  # wall seconds per repeat
    items_per_repeat: int  # images processed per repeat (batch x iters)
    iters: int  # steps per repeat
    max_cv: float
    probe_rates: tuple[float, ...] = ()  # the host GEMM's rate after each repeat
    reference: float | None = None  # the machine's reference GEMM rate
    scaled: bool = True  # rates scaled to the reference (else the probe is only recorded)

    @property
    def repeats(self) -> int:
        return len(self.times_s)

    @property
    def _scale(self) -> list[float]:
        """Per repeat: reference host speed over the host speed beside it (1.0 unprobed)."""
        if self.reference is None or not self.probe_rates or not self.scaled:
            return [1.0] * self.repeats
        return [self.reference / p for p in self.probe_rates]

    @property
    def raw_rates(self) -> list[float]:
        """Images per second of each repeat, as the clock read them."""
        return [self.items_per_repeat / t for t in self.times_s]

    @property
    def rates(self) -> list[float]:
        """Images per second of each repeat, at reference host speed when scaled."""
        return [r * s for r, s in zip(self.raw_rates, self._scale, strict=True)]

    @property
    def rate(self) -> float:
        """Median images per second."""
        return statistics.median(self.rates)

    @property
    def raw_rate(self) -> float:
        return statistics.median(self.raw_rates)

    @property
    def host_speed(self) -> float | None:
        """The probe's median rate over the reference; None unprobed."""
        if self.reference is None or not self.probe_rates:
            return None
        return statistics.median(self.probe_rates) / self.reference

    @property
    def best_rate(self) -> float:
        """Fastest repeat's images per second: interference only ever slows a repeat down, so
        on a shared machine this is the steadier estimate of what the hardware can do."""
        return max(self.rates)

    @property
    def median_step_s(self) -> float:
        """Median seconds of one step (one forward of one batch)."""
        scaled = [t / s for t, s in zip(self.times_s, self._scale, strict=True)]
        return statistics.median(scaled) / self.iters

    @property
    def cv(self) -> float:
        return coefficient_of_variation(self.rates)

    @property
    def noisy(self) -> bool:
        return self.cv >= self.max_cv


class HostProbe(Protocol):
    reference: float
    scale: bool

    def rate(self) -> float: ...


def _validate(spec: MeasureSpec) -> None:
    checks = {
        "measure.warmup": spec.warmup >= 0,
        "measure.warmup_s": spec.warmup_s >= 0,
        "measure.min_repeats": spec.min_repeats >= 1,
        "measure.max_repeats": spec.max_repeats >= spec.min_repeats,
        "measure.max_cv": spec.max_cv > 0,
        "measure.time_cap_s": spec.time_cap_s > 0,
        "measure.threads": spec.threads >= 0,
        "measure.batch_size": spec.batch_size >= 1,
    }
    for key, ok in checks.items():
        if not ok:
            raise ValueError(
                f"{key}={getattr(spec, key.split('.')[1])!r}: invalid; need warmup >= 0, "
                "warmup_s >= 0, 1 <= min_repeats <= max_repeats, max_cv > 0, time_cap_s > 0, "
                "threads >= 0, batch_size >= 1"
            )


# CPython 3.11 keeps each thread's frames in 16 KiB chunks and frees a chunk as soon as it
# empties (gh-142183; fixed by a cached chunk in 3.13 and 3.14, not in 3.11). A timing loop
# whose forward's call tree crosses a chunk boundary maps and unmaps a chunk at every crossing
# and loses the interpreter's call specialisation there. Whether a candidate is hit depends only
# on the call depth the loop runs at: here one extra caller frame moved an int8 subnet from
# 4,400-4,760 to 5,650-6,280 img/s, and 337 mmap calls in 3 s to none. So the step is tried at
# depths a quarter of a chunk apart (a frame of `deeper` is 13 slots, 104 bytes) and the
# repeats run at the fastest: the interpreter's tax is not the model's speed.
DEPTH_OFFSETS = (0, 40, 80)


def deeper(frames: int, fn: Callable[[], T]) -> T:
    """`fn()` called `frames` Python frames further down the thread's frame stack."""
    return fn() if frames <= 0 else deeper(frames - 1, fn)


def _timed(step: Callable[[], object], sync: Callable[[], None], iters: int) -> float:
    """Seconds for `iters` back-to-back steps between two synchronizations."""
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    return max(time.perf_counter() - t0, 1e-9)


def timed_repeats(
    step: Callable[[], object],
    sync: Callable[[], None],
    spec: MeasureSpec,
    items_per_step: int,
    probe: HostProbe | None = None,
) -> RepeatStats:
    """Warm up, calibrate steps per repeat, then time repeats until the CV settles or time is up;
    with a `probe`, the host's speed is timed after every repeat (`vitsweep.measure.drift`).

    A repeat shorter than `spec.repeat_s` is dominated by timer and scheduler jitter on a busy
    CPU, so repeats of small models run several steps each (measured here: 10 measurements of
    ViT-Ti/112 on 1 thread spread 2.3% with 0.05 s repeats and 1.5% with 0.25 s repeats).
    """
    _validate(spec)
    warm_until = time.perf_counter() + spec.warmup_s
    done = 0
    while done < spec.warmup or time.perf_counter() < warm_until:
        step()
        if spec.warmup_s > 0:
            sync()  # the device's time, not how far ahead the host has queued its steps
        done += 1
    sync()
    # One timed step per call depth picks the depth the repeats run at (see DEPTH_OFFSETS) and
    # calibrates how many steps make a repeat long enough to time reliably, without letting the
    # minimum repeats alone overrun the time cap. The step must sit at the same depth in both:
    # `partial`, not a lambda, and a loop, not a generator (each would add a Python frame).
    tried: list[tuple[float, int]] = []
    for d in DEPTH_OFFSETS:
        tried.append((deeper(d, partial(_timed, step, sync, 1)), d))
    one, depth = min(tried)
    target = min(spec.repeat_s, spec.time_cap_s / (2 * spec.min_repeats))
    iters = max(1, math.ceil(target / one)) if target > 0 else 1

    times: list[float] = []
    probes: list[float] = []
    reference = probe.reference if probe is not None else None
    scaled = probe is not None and probe.scale
    started = time.perf_counter()
    while True:
        times.append(deeper(depth, partial(_timed, step, sync, iters)))
        if probe is not None:
            probes.append(probe.rate())
        stats = RepeatStats(
            tuple(times),
            items_per_step * iters,
            iters,
            spec.max_cv,
            tuple(probes),
            reference,
            scaled,
        )
        n = len(times)
        if n >= spec.max_repeats:
            break
        if n >= spec.min_repeats:
            if stats.cv < spec.max_cv:
                break
            if time.perf_counter() - started >= spec.time_cap_s:
                break
    return stats


# glibc's mallopt parameters (malloc.h); the mmap threshold's ceiling is 32 MiB on 64-bit
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 << 20


@cache
def steady_host_allocator() -> bool:
    """Keep freed host memory mapped, so repeated forwards reuse their pages (once per process).

    With glibc's defaults a large activation is returned to the kernel when freed (unmapped, or
    trimmed off the heap top) and faulted back in, zeroed, on the next forward: DeiT-S bf16 at
    batch 16 took 26,800 minor faults per forward, 20% of its time, and how many depends on
    what the process ran before, so variants timed side by side were not timed alike. A server
    avoids this (Intel's guidance: jemalloc or tcmalloc); these two settings do it within
    glibc, so the clock sees the model, not the allocator. The cost is resident memory kept at
    its peak; `peak_mem_bytes` counts tensors, not pages, and does not move. False where the C
    library is not glibc (nothing to change).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    )


@contextlib.contextmanager
def thread_scope(threads: int) -> Iterator[int]:
    """Use `threads` intra-op threads inside (0: leave as is); yields the count in effect."""
    if threads < 0:
        raise ValueError(f"measure.threads={threads}: must be >= 0 (0 keeps torch's default)")
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        if threads > 0:
            torch.set_num_threads(before)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode inside, the caller's mode restored after (a training loop may share the model)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def make_input(batch: int, sample_shape: tuple[int, ...], ctx: RunContext) -> torch.Tensor:
    """A fixed pseudo-random batch already on the device in the context's input dtype.

    Made in inference mode like every input a compiled runner is warmed up on: a normal tensor
    carries another dispatch key set, fails dynamo's guard and recompiles the whole program
    (the peak-memory forward did that in every int8 trial: 9 s of a 45 s trial).
    """
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        return ctx.prepare(torch.randn((batch, *sample_shape), generator=gen))


def free_device_memory(device: str) -> None:
    gc.collect()
    if is_cuda(device):
        torch.cuda.empty_cache()


def with_oom_retry(fn: Callable[[int], T], batch_size: int, device: str) -> tuple[T, int]:
    """Run `fn(batch)`; on out-of-memory halve the batch and retry. Returns (result, batch used)."""
    batch = batch_size
    while True:
        try:
            return fn(batch), batch
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
        # Outside the except block: the traceback no longer pins the failed step's tensors.
        free_device_memory(device)
        batch = max(1, batch // 2)


def forward_step(model: torch.nn.Module, ctx: RunContext, x: torch.Tensor) -> Callable[[], object]:
    """One inference forward exactly as accuracy is evaluated (ctx.forward)."""

    def step() -> object:
        return ctx.forward(model, x)

    return step


def time_forward(
    model: torch.nn.Module,
    ctx: RunContext,
    sample_shape: tuple[int, ...],
    batch: int,
    spec: MeasureSpec,
    probe: HostProbe | None = None,
) -> RepeatStats:
    """Timed repeats of `model` on one batch of `batch` images (inference mode, eval mode)."""
    with torch.inference_mode(), eval_mode(model):
        x = make_input(batch, sample_shape, ctx)
        step = forward_step(model, ctx, x)
        return timed_repeats(step, synchronizer(ctx.device), spec, batch, probe)


def measure_throughput(
    model: torch.nn.Module,
    ctx: RunContext,
    sample_shape: tuple[int, ...],
    spec: MeasureSpec,
    probe: HostProbe | None = None,
) -> tuple[RepeatStats, int]:
    """Images/s at `spec.batch_size` (halved on OOM). Returns (stats, batch used)."""
    return with_oom_retry(
        lambda b: time_forward(model, ctx, sample_shape, b, spec, probe),
        spec.batch_size,
        ctx.device,
    )


def measure_latency(
    model: torch.nn.Module,
    ctx: RunContext,
    sample_shape: tuple[int, ...],
    spec: MeasureSpec,
    probe: HostProbe | None = None,
) -> RepeatStats:
    """Batch-1 timings; latency_ms = 1000 x `median_step_s`."""
    return time_forward(model, ctx, sample_shape, 1, spec, probe)
