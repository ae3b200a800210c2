"""Host speed: a fixed GEMM timed after every repeat, so a reading says how fast the host ran.

Why: on a shared 2-core KVM guest (Intel Xeon @ 2.80GHz, AVX512-VNNI, no AMX) the host's speed
drifted in regimes lasting seconds to minutes: a plain 2-thread GEMM varied 79-134 per half
second with nothing else running; the fp32 baseline, timed in 4 fresh processes, read 259-379
img/s. Over 90 s of interleaved 0.1 s repeats the baseline, an int8 subnet and a 512x512 fp32
GEMM moved together (correlation 0.94-0.98 over 1 s windows). `host_speed` (the GEMM's median
rate over this machine's reference) is therefore kept beside every timing: a trial timed while
the host ran at 0.7 says so.

`measure.host_probe=scale` also scales each repeat by the reference over the GEMM rate beside
it. It is not the default because it steadied fp32 and not int8: over those 4 processes the
baseline read 441-472 scaled (raw 259-379), but the int8 subnet 6,948-10,399 scaled against
5,151-6,309 raw (its rate followed the fp32 GEMM with a slope of 1.03-1.10 over windows, the
baseline's 0.76-0.80, and not at all in some minutes).

Our own because no library times a host-speed reference beside a benchmark's repeats (pyperf
and torch.utils.benchmark report spread; they do not say how fast the host ran).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import torch

from vitsweep.files import write_text
from vitsweep.measure.device import is_cuda
from vitsweep.measure.host import describe, machine_key
from vitsweep.measure.lock import timing_lock
from vitsweep.measure.speed import thread_scope
from vitsweep.spec import MeasureSpec

PROBE_SIZE = 512  # fp32 GEMM edge: a few ms on 2 cores, in cache, no allocation per call
PROBE_S = 0.02  # seconds one probe lasts (a fifth of a default repeat)
CALIBRATION_PROBES = 50  # about a second of probes sets the machine's reference


class Probe:
    """The fixed GEMM: `rate()` is GEMMs per second now, on the threads in effect."""

    def __init__(self, reference: float, scale: bool = False, seconds: float = PROBE_S) -> None:
        gen = torch.Generator().manual_seed(0)
        self.a = torch.randn(PROBE_SIZE, PROBE_SIZE, generator=gen)
        self.b = torch.randn(PROBE_SIZE, PROBE_SIZE, generator=gen)
        self.out = torch.empty(PROBE_SIZE, PROBE_SIZE)
        self.reference = reference
        self.scale = scale  # timings are scaled to the reference, not only recorded beside it
        self.iters = 1
        for _ in range(3):
            self.rate()
        one = 1.0 / max(self.rate() for _ in range(3))
        self.iters = max(1, math.ceil(seconds / one))

    def rate(self) -> float:
        t0 = time.perf_counter()
        for _ in range(self.iters):
            torch.mm(self.a, self.b, out=self.out)
        return self.iters / max(time.perf_counter() - t0, 1e-9)


def reference_file(root: str | Path, threads: int) -> Path:
    """Where this machine's reference lives: one per CPU, thread count and torch version."""
    return Path(root) / "host" / f"{machine_key(threads)}.json"


def _read(path: Path) -> float:
    try:
        value = float(json.loads(path.read_text())["gemm_per_s"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{path}: not a host speed reference ({type(err).__name__}: {err}); "
            "delete it and the next trial measures the reference again"
        ) from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{path}: gemm_per_s={value} must be > 0; delete the file to remeasure")
    return value


def host_reference(root: str | Path, spec: MeasureSpec, device: str) -> float | None:
    """This machine's reference GEMM rate, measured once and kept under `<root>/host/` so that
    every trial, confirmation and resumed study of that root reads throughput in the same units;
    None where no probe applies (`measure.host_probe=off`, or a GPU, whose clock the host's
    GEMM does not follow)."""
    if spec.host_probe == "off" or is_cuda(device):
        return None
    with thread_scope(spec.threads) as threads:
        path = reference_file(root, threads)
        if path.exists():
            return _read(path)
        with timing_lock(spec):  # one worker calibrates; the others wait and read its file
            if path.exists():
                return _read(path)
            probe = Probe(reference=1.0)
            value = statistics.median(probe.rate() for _ in range(CALIBRATION_PROBES))
            record = {
                "gemm_per_s": value,
                "gemm": f"fp32 {PROBE_SIZE}x{PROBE_SIZE}x{PROBE_SIZE}",
                "cpu": describe(),
                "threads": threads,
                "torch": torch.__version__,
                "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            write_text(path, json.dumps(record, indent=2) + "\n")
            return value
