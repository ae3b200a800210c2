"""Host speed (`vitsweep.measure.drift`): a GEMM timed after every repeat against a reference
kept per machine under the root; recorded beside each timing, or scaling it (a drifting host
then leaves the reading where it was)."""

from __future__ import annotations

import itertools
import json
import time

import numpy as np
import pytest

from vitsweep.measure import (
    RepeatStats,
    coefficient_of_variation,
    host_reference,
    measure_all,
    timed_repeats,
)
from vitsweep.measure.drift import Probe, reference_file
from vitsweep.runctx import RunContext
from vitsweep.spec import MeasureSpec

from .test_measure import short_spec, tiny_vit


def test_each_repeat_is_scaled_by_the_probe_beside_it() -> None:
    times = (0.10, 0.20, 0.10, 0.40, 0.125)
    probes = (1000.0, 500.0, 1000.0, 250.0, 800.0)
    stats = RepeatStats(times, 10, 2, 0.05, probes, reference=1000.0)
    raw = np.array([10 / t for t in times])
    scaled = raw * 1000.0 / np.array(probes)
    assert stats.raw_rate == pytest.approx(float(np.median(raw)))
    assert stats.rate == pytest.approx(float(np.median(scaled)))
    assert stats.host_speed == pytest.approx(800.0 / 1000.0)
    steps = np.array(times) * np.array(probes) / 1000.0 / 2
    assert stats.median_step_s == pytest.approx(float(np.median(steps)))
    assert stats.cv < 1e-9  # every repeat was the same work on a host at another speed
    unprobed = RepeatStats(times, 10, 2, 0.05)
    assert unprobed.rate == unprobed.raw_rate and unprobed.host_speed is None
    recorded = RepeatStats(times, 10, 2, 0.05, probes, reference=1000.0, scaled=False)
    assert recorded.rate == stats.raw_rate and recorded.host_speed == stats.host_speed


class Host:
    """A host whose speed changes every repeat; steps and probe both run at its speed."""

    def __init__(self, speeds: list[float]) -> None:
        self.speeds = itertools.cycle(speeds)
        self.speed = next(self.speeds)
        self.reference = 100.0
        self.scale = True

    def step(self) -> None:
        time.sleep(0.01 / self.speed)

    def rate(self) -> float:  # what a GEMM probe reads, and the host moves on
        now = self.reference * self.speed
        self.speed = next(self.speeds)
        return now


def test_a_host_that_drifts_2x_between_repeats_reads_the_same_throughput() -> None:
    host = Host([1.0, 0.5, 1.0, 0.7, 0.5, 1.0])
    spec = MeasureSpec(warmup=0, min_repeats=6, max_repeats=6, max_cv=0.05, repeat_s=0)
    probed = timed_repeats(host.step, lambda: None, spec, 1, probe=host)
    raw = np.array(probed.raw_rates)
    assert raw.max() / raw.min() > 1.6  # the clock saw the drift...
    assert probed.cv < 0.15 < coefficient_of_variation(raw)  # ...the reading did not
    assert probed.rate == pytest.approx(100.0, rel=0.2)  # 10 ms at reference speed: 100/s
    assert len(probed.probe_rates) == probed.repeats


def test_the_reference_is_measured_once_per_root_and_kept(tmp_path) -> None:
    spec = short_spec(tmp_path)
    first = host_reference(tmp_path, spec, "cpu")
    path = reference_file(tmp_path, spec.threads)
    saved = json.loads(path.read_text())
    assert first is not None and first > 0 and saved["gemm_per_s"] == first
    assert saved["threads"] == spec.threads and saved["cpu"]
    stamp = path.stat().st_mtime_ns
    assert host_reference(tmp_path, spec, "cpu") == first and path.stat().st_mtime_ns == stamp
    assert host_reference(tmp_path, short_spec(tmp_path, host_probe="off"), "cpu") is None
    assert host_reference(tmp_path, spec, "cuda") is None  # the host's GEMM is not a GPU's clock


def test_a_damaged_reference_names_its_file_and_is_left_alone(tmp_path) -> None:
    spec = short_spec(tmp_path)
    path = reference_file(tmp_path, spec.threads)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=f"{path}.*delete it"):
        host_reference(tmp_path, spec, "cpu")
    assert path.read_text() == "{not json"


def test_measure_all_says_what_the_clock_read_and_how_fast_the_host_ran(tmp_path) -> None:
    model, spec = tiny_vit().eval(), short_spec(tmp_path)
    assert spec.host_probe == "record"  # the default
    reference = host_reference(tmp_path, spec, "cpu")
    out = measure_all(model, RunContext(), (3, 16, 16), spec, reference=reference)
    assert out["throughput"] == out["throughput_raw"] > 0 and out["latency_ms"] > 0
    assert 0.2 < out["host_speed"] < 5  # the same GEMM, seconds later, on the same machine
    scaled = measure_all(
        model, RunContext(), (3, 16, 16), short_spec(tmp_path, host_probe="scale"), None, reference
    )
    assert scaled["throughput"] > 0 and 0.2 < scaled["host_speed"] < 5
    ratio = scaled["throughput"] / scaled["throughput_raw"]
    assert 0.2 < ratio < 5 and ratio != 1.0  # scaled by the host's speed, not copied
    plain = measure_all(model, RunContext(), (3, 16, 16), spec)
    assert plain["host_speed"] is None and plain["throughput"] == plain["throughput_raw"]


def test_the_probe_times_a_fixed_gemm_of_about_its_duration() -> None:
    probe = Probe(reference=1.0, seconds=0.01)
    t0 = time.perf_counter()
    rate = probe.rate()
    took = time.perf_counter() - t0
    assert rate > 0 and probe.iters >= 1
    assert took == pytest.approx(probe.iters / rate, rel=0.05)
