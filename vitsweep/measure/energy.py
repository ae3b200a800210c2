"""Energy per image from real meters (NVML, RAPL) or an honest, labelled estimate.

Every meter is a cumulative joule counter (`read_j`), so one window protocol serves them all:
run the model for a fixed window of repeated batches with the device drained at both ends, read
the counter around it, divide by the images. NVML's counter only moves every 20-100 ms, so for
NVML a poller thread records when it ticks and the average power is taken between the first and
last tick inside the window (reading at arbitrary moments would be off by up to one update
period at each end). The same poller samples `nvmlDeviceGetPowerUsage` for a cross-check.
"""

from __future__ import annotations

import glob
import itertools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from vitsweep.measure.device import is_cuda
from vitsweep.spec import ConfigError

ENERGY_KINDS = ("auto", "nvml", "rapl", "estimate")
RAPL_BASE = "/sys/class/powercap"


class MeterUnavailable(RuntimeError):
    """This meter cannot be read on this machine (absent, unsupported or not permitted)."""


class EnergyMeter(Protocol):
    source: str  # recorded as energy_source: "nvml:<gpu>", "rapl" or "estimate"
    ticks: bool  # True when the counter updates coarsely and windows must align on its ticks

    def read_j(self) -> float:
        """Joules since an arbitrary origin; monotonic (wrap-arounds already unfolded)."""
        ...

    def close(self) -> None: ...


def counter_delta(prev: int, cur: int, max_range: int) -> int:
    """Increase of a counter that wraps to 0 after `max_range` (RAPL's energy_uj)."""
    if cur >= prev:
        return cur - prev
    return (max_range - prev) + cur


class RaplMeter:
    """Sum of the package-level RAPL domains (intel-rapl:N) under a powercap sysfs tree.

    `base` is a directory argument so a test can lay out a counter tree of its own. Subdomains
    (intel-rapl:N:M, e.g. core/dram) are skipped because the package already contains them.
    RAPL counts the whole package: other processes on the machine are included.
    """

    source = "rapl"
    ticks = False

    def __init__(self, base: str = RAPL_BASE) -> None:
        zones = sorted(
            d
            for d in glob.glob(os.path.join(base, "intel-rapl:*"))
            if os.path.basename(d).count(":") == 1
        )
        self._zones: list[tuple[str, int]] = []
        for zone in zones:
            try:
                with open(os.path.join(zone, "max_energy_range_uj")) as f:
                    max_range = int(f.read().strip())
                self._read_uj(zone)
            except (OSError, ValueError):
                continue  # unreadable (root-only on recent kernels) or malformed
            self._zones.append((zone, max_range))
        if not self._zones:
            raise MeterUnavailable(f"no readable RAPL package counters under {base}")
        self._last = [self._read_uj(z) for z, _ in self._zones]
        self._total_uj = 0

    @staticmethod
    def _read_uj(zone: str) -> int:
        with open(os.path.join(zone, "energy_uj")) as f:
            return int(f.read().strip())

    @property
    def zones(self) -> list[str]:
        return [os.path.basename(z) for z, _ in self._zones]

    def read_j(self) -> float:
        """Unfolds wrap-arounds since the previous read; read at least once per wrap period."""
        for i, (zone, max_range) in enumerate(self._zones):
            cur = self._read_uj(zone)
            self._total_uj += counter_delta(self._last[i], cur, max_range)
            self._last[i] = cur
        return self._total_uj / 1e6

    def close(self) -> None:
        pass


def _nvml() -> Any:
    try:
        import pynvml  # nvidia-ml-py; optional at import time of vitsweep
    except ImportError as e:
        raise MeterUnavailable("pynvml (package nvidia-ml-py) is not installed") from e
    return pynvml


class NvmlMeter:
    """The GPU board's total-energy counter (mJ since driver load; Volta and newer)."""

    ticks = True

    def __init__(self, cuda_index: int = 0) -> None:
        pynvml = _nvml()
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            raise MeterUnavailable(f"NVML cannot start: {e}") from e
        self._pynvml = pynvml
        try:
            self._handle = self._handle_for(cuda_index)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
            name = pynvml.nvmlDeviceGetName(self._handle)
        except pynvml.NVMLError as e:
            pynvml.nvmlShutdown()
            raise MeterUnavailable(f"NVML energy counter unavailable: {e}") from e
        self.name = name.decode() if isinstance(name, bytes) else str(name)
        self.source = f"nvml:{self.name}"

    def _handle_for(self, cuda_index: int) -> Any:
        """NVML and CUDA number GPUs differently under CUDA_VISIBLE_DEVICES: match by UUID."""
        pynvml = self._pynvml
        try:
            import torch

            uuid = str(torch.cuda.get_device_properties(cuda_index).uuid)
            return pynvml.nvmlDeviceGetHandleByUUID(
                uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
            )
        except Exception:
            return pynvml.nvmlDeviceGetHandleByIndex(cuda_index)

    def read_j(self) -> float:
        return self._pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1e3

    def power_w(self) -> float:
        """Board power now (on Ampere and newer NVML averages it over about 1 s)."""
        return self._pynvml.nvmlDeviceGetPowerUsage(self._handle) / 1e3

    def close(self) -> None:
        self._pynvml.nvmlShutdown()


class EstimateMeter:
    """Wall time x assumed watts: the fallback when nothing can be read. Labelled `estimate`."""

    source = "estimate"
    ticks = False

    def __init__(self, watts: float) -> None:
        if not watts > 0:
            raise ValueError(f"measure.watts={watts!r}: must be > 0")
        self.watts = watts

    def read_j(self) -> float:
        return self.watts * time.perf_counter()

    def close(self) -> None:
        pass


def select_meter(kind: str, device: str, watts: float, rapl_base: str = RAPL_BASE) -> EnergyMeter:
    """The meter for `measure.energy=kind` on `device`.

    auto: NVML on a GPU, RAPL on a CPU, else the estimate (labelled so). RAPL is never used for
    GPU work: it would measure the host, not the model. An explicitly requested meter that cannot
    be read is a ConfigError, never a silent estimate.
    """
    if kind not in ENERGY_KINDS:
        raise ConfigError(
            f"measure.energy={kind!r}: unknown meter; valid: {', '.join(ENERGY_KINDS)}"
        )
    cuda = is_cuda(device)
    if kind == "estimate":
        return EstimateMeter(watts)
    if kind == "nvml" or (kind == "auto" and cuda):
        if not cuda:
            if kind == "auto":
                return EstimateMeter(watts)
            raise ConfigError(
                f"measure.energy=nvml: the model runs on {device!r}, NVML meters only GPUs; "
                "valid here: auto, rapl, estimate"
            )
        try:
            import torch

            return NvmlMeter(torch.device(device).index or 0)
        except MeterUnavailable as e:
            if kind == "auto":
                return EstimateMeter(watts)
            raise ConfigError(f"measure.energy=nvml: {e}; valid here: auto, estimate") from e
    # rapl, or auto on a CPU
    if cuda and kind == "rapl":
        raise ConfigError(
            "measure.energy=rapl: RAPL meters the CPU package but the model runs on the GPU; "
            "valid here: auto, nvml, estimate"
        )
    try:
        return RaplMeter(rapl_base)
    except MeterUnavailable as e:
        if kind == "auto":
            return EstimateMeter(watts)
        raise ConfigError(f"measure.energy=rapl: {e}; valid here: auto, estimate") from e


@dataclass
class _Poller:
    """Background thread: records every counter tick and, optionally, power samples."""

    meter: EnergyMeter
    power: Callable[[], float] | None = None
    period_s: float = 0.002
    ticks: list[tuple[float, float]] = field(default_factory=list)
    samples: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = None
        while not self._stop.is_set():
            t = time.perf_counter()
            e = self.meter.read_j()
            if e != last:
                self.ticks.append((t, e))
                last = e
            if self.power is not None:
                self.samples.append((t, self.power()))
            self._stop.wait(self.period_s)

    def __enter__(self) -> _Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def integrate_power(samples: list[tuple[float, float]], t0: float, t1: float) -> float:
    """Mean watts over [t0, t1] from (time, watts) samples by the trapezoid rule."""
    inside = [(t, p) for t, p in samples if t0 <= t <= t1]
    if len(inside) < 2:
        return float("nan")
    joules = sum((tb - ta) * (pa + pb) / 2 for (ta, pa), (tb, pb) in itertools.pairwise(inside))
    return joules / (inside[-1][0] - inside[0][0])


@dataclass(frozen=True)
class EnergyReading:
    joules_per_image: float
    source: str
    power_w: float  # average power over the window by the counter
    window_s: float  # loaded seconds the result covers
    images: int
    sampled_power_w: float | None = None  # NVML power sampling over the same interval
    aligned: bool = False  # average power taken between counter ticks

    @property
    def sampled_joules_per_image(self) -> float | None:
        if self.sampled_power_w is None:
            return None
        return self.sampled_power_w * self.window_s / self.images


def measure_energy(
    step: Callable[[], object],
    sync: Callable[[], None],
    batch: int,
    meter: EnergyMeter,
    window_s: float,
    preload_s: float = 1.0,
    sample_power: bool = False,
) -> EnergyReading:
    """Joules per image over >= `window_s` of back-to-back batches of `batch` images.

    `preload_s` of batches first bring clocks, temperature and NVML's 1 s power average to the
    loaded steady state. J/image = average power x loaded seconds / images; the average power is
    taken between counter ticks when the meter ticks coarsely.
    """
    if not window_s > 0:
        raise ValueError(f"measure.energy_window_s={window_s!r}: must be > 0")
    power = getattr(meter, "power_w", None) if sample_power else None
    t_end = time.perf_counter() + preload_s
    while time.perf_counter() < t_end:
        step()
    sync()
    with _Poller(meter, power) if (meter.ticks or power) else _nullpoller() as poller:
        t0 = time.perf_counter()
        e0 = meter.read_j()
        n = 0
        while True:
            step()
            n += 1
            if time.perf_counter() - t0 >= window_s:
                break
        sync()
        t1 = time.perf_counter()
        e1 = meter.read_j()
    images = n * batch
    power_w = (e1 - e0) / (t1 - t0)
    aligned = False
    span = (t0, t1)
    if poller is not None and meter.ticks:
        inside = [(t, e) for t, e in poller.ticks if t0 <= t <= t1]
        if len(inside) >= 2 and inside[-1][0] > inside[0][0]:
            (ta, ea), (tb, eb) = inside[0], inside[-1]
            power_w = (eb - ea) / (tb - ta)
            span = (ta, tb)
            aligned = True
    sampled = None
    if poller is not None and power is not None:
        sampled = integrate_power(poller.samples, *span)
    return EnergyReading(
        joules_per_image=power_w * (t1 - t0) / images,
        source=meter.source,
        power_w=power_w,
        window_s=t1 - t0,
        images=images,
        sampled_power_w=sampled,
        aligned=aligned,
    )


class _nullpoller:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        pass


def estimate_note(kind: str, device: str, watts: float, objectives: dict[str, str]) -> str | None:
    """The one line a sweep says at launch when its energy will be an estimate (no meter here):
    then energy is watts / throughput, a copy of the throughput objective, not a measurement."""
    from vitsweep.measure.device import resolve_device

    if "energy" not in objectives:
        return None
    if not isinstance(select_meter(kind, resolve_device(device), watts), EstimateMeter):
        return None
    also = " (a copy of the throughput objective)" if "throughput" in objectives else ""
    return (
        f"energy: no meter on this machine, so energy = {watts:g} W / throughput{also}, an "
        "estimate; the front is the same with or without it, and the report's hypervolume "
        "leaves it out"
    )
