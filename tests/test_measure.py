"""How candidates are judged: statistics, meters, FLOPs, memory, OOM retry, accuracy, lock."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import timm
import torch
from filelock import FileLock, Timeout
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import TensorDataset

from vitsweep.measure import (
    EstimateMeter,
    MeterUnavailable,
    RaplMeter,
    RepeatStats,
    coefficient_of_variation,
    count_flops,
    count_params,
    counter_delta,
    evaluate,
    measure_all,
    measure_energy,
    measure_throughput,
    peak_memory_bytes,
    resolve_device,
    select_meter,
    thread_scope,
    timed_repeats,
    timing_lock,
    with_oom_retry,
)
from vitsweep.runctx import RunContext
from vitsweep.spec import ConfigError, MeasureSpec

CPU = RunContext()
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks behaviour without a GPU")


def tiny_vit(img: int = 16) -> torch.nn.Module:
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=img,
        patch_size=4,
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_classes=5,
    )


# --- statistics over repeats ---------------------------------------------------------------


def test_median_and_cv_are_taken_over_the_recorded_repeats():
    times = (0.10, 0.20, 0.10, 0.40, 0.125)
    stats = RepeatStats(times, items_per_repeat=10, iters=2, max_cv=0.05)
    rates = np.array([10 / t for t in times])
    assert stats.repeats == 5
    assert stats.rate == pytest.approx(float(np.median(rates)))
    assert stats.cv == pytest.approx(float(rates.std(ddof=1) / rates.mean()))
    assert stats.median_step_s == pytest.approx(float(np.median(times)) / 2)
    assert stats.best_rate == pytest.approx(float(rates.max()))
    assert stats.noisy  # a CV this large is not a measurement to trust
    assert coefficient_of_variation([3.0]) == 0.0


def sleeper(durations):
    cycle = itertools.cycle(durations)
    return lambda: time.sleep(next(cycle))


def test_steady_repeats_stop_at_min_repeats_with_the_right_median():
    spec = MeasureSpec(
        warmup=1, min_repeats=4, max_repeats=50, max_cv=0.5, time_cap_s=10, repeat_s=0
    )
    stats = timed_repeats(sleeper([0.02]), lambda: None, spec, items_per_step=1)
    assert stats.repeats == 4 and stats.iters == 1
    assert 0.02 <= stats.median_step_s < 0.03  # sleep never returns early; allow a loaded box
    assert not stats.noisy


def test_unsteady_repeats_run_to_max_repeats_and_are_flagged_noisy():
    # calibration takes one sleep per call depth (3), so the repeats still alternate 5 / 40 ms
    spec = MeasureSpec(
        warmup=0, min_repeats=3, max_repeats=8, max_cv=0.05, time_cap_s=60, repeat_s=0
    )
    stats = timed_repeats(sleeper([0.04, 0.005]), lambda: None, spec, items_per_step=1)
    assert stats.repeats == 8
    assert stats.noisy
    fast, slow = sorted(stats.times_s)[:4], sorted(stats.times_s)[4:]
    assert max(fast) < 0.02 < min(slow)  # the recorded repeats are the ones that ran
    assert stats.cv == pytest.approx(coefficient_of_variation([1 / t for t in stats.times_s]))


def test_time_cap_ends_an_unsteady_measurement():
    spec = MeasureSpec(
        warmup=0, min_repeats=2, max_repeats=10_000, max_cv=0.01, time_cap_s=0.3, repeat_s=0
    )
    t0 = time.perf_counter()
    stats = timed_repeats(sleeper([0.002, 0.02]), lambda: None, spec, 1)
    assert time.perf_counter() - t0 < 2.0
    assert 2 <= stats.repeats < 10_000 and stats.noisy


def test_a_timed_warm_up_lasts_its_seconds_on_synchronized_steps():
    """`warmup_s`: a count of fast steps can end inside a GPU's clock ramp, so the warm-up also
    lasts at least this long, each step synchronized (the device's time, not the host's)."""
    from vitsweep.measure.speed import DEPTH_OFFSETS

    calls: list[tuple[str, float]] = []

    def step() -> None:
        calls.append(("step", time.perf_counter()))
        time.sleep(0.005)

    def sync() -> None:
        calls.append(("sync", time.perf_counter()))

    spec = MeasureSpec(
        warmup=2, warmup_s=0.2, min_repeats=2, max_repeats=2, time_cap_s=10, repeat_s=0
    )
    timed_repeats(step, sync, spec, 1)
    steps = [i for i, (kind, _) in enumerate(calls) if kind == "step"]
    warm = steps[: -(len(DEPTH_OFFSETS) + 2)]  # calibration and the two repeats come last
    assert len(warm) > spec.warmup  # the seconds, not the count, ended it
    # from the first warm-up step to the sync after the last: at least warmup_s, however slow
    # each sleep ran on a loaded machine
    assert calls[warm[-1] + 1][1] - calls[warm[0]][1] >= 0.2 - 1e-3
    assert all(calls[i + 1][0] == "sync" for i in warm)  # every warm-up step synchronized
    with pytest.raises(ValueError, match=r"measure\.warmup_s"):
        MeasureSpec(warmup_s=-1.0)


def test_repeats_are_lengthened_for_fast_steps():
    spec = MeasureSpec(warmup=1, min_repeats=3, max_repeats=3, time_cap_s=10, repeat_s=0.02)
    stats = timed_repeats(sleeper([0.001]), lambda: None, spec, 4)
    assert stats.iters >= 5 and stats.items_per_repeat == 4 * stats.iters
    assert min(stats.times_s) >= 0.001 * stats.iters


def test_repeats_run_at_the_call_depth_where_the_step_was_fastest():
    """CPython 3.11 taxes a loop whose calls cross a frame-stack chunk boundary; the repeats run
    at the calibrated depth where one step was fastest, and every repeat at that same depth.
    Here the step is 20 ms at the two shallower offsets and instant at the deepest."""
    from vitsweep.measure.speed import DEPTH_OFFSETS

    def depth() -> int:
        f, n = sys._getframe(), 0
        while f is not None:
            f, n = f.f_back, n + 1
        return n

    seen: list[int] = []

    def step() -> None:
        seen.append(depth())
        if seen[-1] < seen[0] + DEPTH_OFFSETS[-1]:  # the first call is the warm-up, at the top
            time.sleep(0.02)

    spec = MeasureSpec(warmup=1, min_repeats=3, max_repeats=3, time_cap_s=10, repeat_s=0)
    stats = timed_repeats(step, lambda: None, spec, 1)
    calibration, repeats = seen[1:4], seen[4:]
    assert len(set(calibration)) == len(DEPTH_OFFSETS) == 3
    assert len(repeats) == 3 and set(repeats) == {max(calibration)}
    assert stats.median_step_s < 0.01  # timed where the step is fast, not where it sleeps


def test_bad_repeat_settings_name_the_key():
    with pytest.raises(ValueError, match=r"measure\.max_repeats"):
        timed_repeats(lambda: None, lambda: None, MeasureSpec(min_repeats=5, max_repeats=2), 1)


def test_thread_scope_sets_and_restores():
    before = torch.get_num_threads()
    with thread_scope(1) as n:
        assert n == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before
    with thread_scope(0) as n:
        assert n == before
    with pytest.raises(ValueError, match=r"measure\.threads"):
        with thread_scope(-1):
            pass


# --- out of memory --------------------------------------------------------------------------


class OomAbove(torch.nn.Module):
    """Raises torch's real OOM exception for batches larger than `limit`."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"simulated: batch {x.shape[0]} > {self.limit}")
        return self.fc(x)


def test_oom_halves_the_batch_until_it_fits():
    spec = MeasureSpec(batch_size=20, warmup=0, min_repeats=2, max_repeats=2, repeat_s=0)
    stats, batch = measure_throughput(OomAbove(6), CPU, (8,), spec)
    assert batch == 5  # 20 -> 10 -> 5
    assert stats.items_per_repeat == 5 * stats.iters


def test_oom_at_batch_one_is_raised():
    with pytest.raises(torch.OutOfMemoryError):
        with_oom_retry(lambda b: OomAbove(0)(torch.zeros(b, 8)), 4, "cpu")


# --- energy meters --------------------------------------------------------------------------


def write_rapl(base, zone: str, energy_uj: int, max_uj: int, name: str = "package-0") -> None:
    """A counter directory in the layout of /sys/class/powercap/intel-rapl:N."""
    d = base / zone
    d.mkdir(exist_ok=True)
    (d / "name").write_text(name + "\n")
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")


def test_counter_delta_unfolds_a_wrap():
    assert counter_delta(100, 250, 1000) == 150
    assert counter_delta(900, 50, 1000) == 150


def test_rapl_meter_sums_packages_and_handles_wrap_around(tmp_path):
    max_uj = 262_143_328_850  # a real package's max_energy_range_uj
    write_rapl(tmp_path, "intel-rapl:0", max_uj - 2_000_000, max_uj)
    write_rapl(tmp_path, "intel-rapl:1", 5_000_000, max_uj, "package-1")
    write_rapl(tmp_path, "intel-rapl:0:0", 123, max_uj, "core")  # subzone: inside package 0
    meter = RaplMeter(str(tmp_path))
    assert meter.zones == ["intel-rapl:0", "intel-rapl:1"]
    start = meter.read_j()
    # package 0 wraps: 2 J to the top, then 3 J more; package 1 moves 1.5 J; the core zone moves
    write_rapl(tmp_path, "intel-rapl:0", 3_000_000, max_uj)
    write_rapl(tmp_path, "intel-rapl:1", 6_500_000, max_uj, "package-1")
    write_rapl(tmp_path, "intel-rapl:0:0", 9_999_999, max_uj, "core")
    assert meter.read_j() - start == pytest.approx(2.0 + 3.0 + 1.5)
    write_rapl(tmp_path, "intel-rapl:0", 4_000_000, max_uj)  # no wrap this time
    assert meter.read_j() - start == pytest.approx(7.5)


def test_rapl_unreadable_is_unavailable_and_an_explicit_request_fails(tmp_path):
    with pytest.raises(MeterUnavailable):
        RaplMeter(str(tmp_path))
    with pytest.raises(ConfigError, match=r"measure\.energy=rapl"):
        select_meter("rapl", "cpu", 15.0, rapl_base=str(tmp_path))
    # auto with nothing readable falls back to the labelled estimate
    meter = select_meter("auto", "cpu", 15.0, rapl_base=str(tmp_path))
    assert meter.source == "estimate"


def test_rapl_through_select_meter(tmp_path):
    write_rapl(tmp_path, "intel-rapl:0", 10, 1000)
    assert select_meter("auto", "cpu", 15.0, rapl_base=str(tmp_path)).source == "rapl"


@NO_GPU
def test_auto_on_this_machine_without_meters_is_estimate():
    if os.path.isdir("/sys/class/powercap"):
        try:
            RaplMeter()
            pytest.skip("this machine has readable RAPL counters")
        except MeterUnavailable:
            pass
    assert select_meter("auto", resolve_device("auto"), 15.0).source == "estimate"


@NO_GPU
def test_nvml_requested_without_a_gpu_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"measure\.energy=nvml") as err:
        select_meter("nvml", resolve_device("auto"), 15.0)
    assert "\n" not in str(err.value)


def test_unknown_meter_and_device_name_the_key():
    with pytest.raises(ConfigError, match=r"measure\.energy=.*valid: auto, nvml, rapl, estimate"):
        select_meter("joulemeter", "cpu", 15.0)
    with pytest.raises(ConfigError, match=r"measure\.device"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match=r"measure\.watts"):
        EstimateMeter(0)


@NO_GPU
def test_cuda_requested_without_a_gpu_is_a_clear_error():
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ConfigError, match=r"measure\.device='cuda'"):
        resolve_device("cuda")


class TickingMeter:
    """A counter that, like NVML's, moves only every `period` seconds at a constant power."""

    source = "test-ticking"
    ticks = True

    def __init__(self, watts: float, period: float) -> None:
        self.watts, self.period = watts, period

    def read_j(self) -> float:
        return self.watts * self.period * (time.perf_counter() // self.period)

    def power_w(self) -> float:
        return self.watts

    def close(self) -> None:
        pass


def test_energy_window_gives_power_times_time_per_image():
    step = sleeper([0.01])
    reading = measure_energy(step, lambda: None, 4, EstimateMeter(20.0), 0.3, preload_s=0)
    assert reading.window_s >= 0.3 and reading.images % 4 == 0
    assert reading.power_w == pytest.approx(20.0, rel=1e-3)
    assert reading.joules_per_image == pytest.approx(
        20.0 * reading.window_s / reading.images, rel=1e-3
    )
    assert not reading.aligned


def test_coarse_counter_is_read_between_its_ticks():
    # reading a 100 ms counter at arbitrary moments could be off by a third over 0.35 s;
    # between ticks the power is exact
    reading = measure_energy(
        sleeper([0.005]), lambda: None, 2, TickingMeter(40.0, 0.1), 0.35, 0, sample_power=True
    )
    assert reading.aligned
    assert reading.power_w == pytest.approx(40.0, rel=0.05)
    assert reading.sampled_power_w == pytest.approx(40.0)  # the cross-check's integral
    assert reading.sampled_joules_per_image == pytest.approx(
        40.0 * reading.window_s / reading.images
    )
    assert reading.joules_per_image == pytest.approx(
        reading.power_w * reading.window_s / reading.images
    )


# --- cost ------------------------------------------------------------------------------------


def test_flops_of_vit_tiny_match_timm_published_gmacs():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    flops = count_flops(model, CPU, (3, 224, 224))
    assert flops == pytest.approx(2 * 1.26e9, rel=0.05)
    assert count_params(model) == sum(p.numel() for p in model.parameters())


def test_flops_follow_the_executed_token_count():
    # fewer tokens through the same weights (what ToMe does) must count fewer FLOPs
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=4,
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_classes=5,
        dynamic_img_size=True,
    )
    full = count_flops(model, CPU, (3, 32, 32))  # 64 patches + cls
    fewer = count_flops(model, CPU, (3, 16, 16))  # 16 patches + cls, same weights
    assert fewer < 0.5 * full


def test_int8_dynamic_layers_keep_their_params_and_flops():
    from torch.ao.quantization import quantize_dynamic

    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    assert count_params(q) == count_params(model) == 64 * 32 + 32 + 32 * 10 + 10
    assert count_flops(q, CPU, (64,)) == count_flops(model, CPU, (64,)) == 2 * (64 * 32 + 32 * 10)


class BigActivation(torch.nn.Module):
    """Allocates a known activation (`mib` MiB per image) during forward."""

    def __init__(self, mib: int) -> None:
        super().__init__()
        self.n = mib * 2**20 // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        big = x.new_ones(x.shape[0], self.n) * 2.0
        return big[:, :3] + big.sum(dim=1, keepdim=True)


def test_cpu_peak_memory_sees_the_activation_every_time():
    """The activation is counted on every call, also once the allocator has pages to reuse
    (the resident-set method used before read 0 from the second forward on)."""
    model = BigActivation(mib=16)
    (peak4, source), (again, _) = (peak_memory_bytes(model, CPU, torch.zeros(4, 8)) for _ in "ab")
    peak1, _ = peak_memory_bytes(model, CPU, torch.zeros(1, 8))
    assert 4 * 16 * 2**20 <= peak4 <= 3 * 4 * 16 * 2**20  # the 64 MiB tensor and its product
    assert again == peak4 and peak4 == pytest.approx(4 * peak1, rel=0.01)
    assert "allocator" in source


def test_a_vit_reports_a_real_peak_that_grows_with_the_batch():
    model = VisionTransformer(img_size=16, patch_size=4, num_classes=10, embed_dim=32, depth=2,
                              num_heads=2)  # fmt: skip
    small, _ = peak_memory_bytes(model, CPU, torch.zeros(2, 3, 16, 16))
    large, _ = peak_memory_bytes(model, CPU, torch.zeros(16, 3, 16, 16))
    # 17 tokens x 32 dims x 4 bytes per image is the smallest activation a block holds.
    assert small >= 2 * 17 * 32 * 4 and large > 4 * small


KINETO_PREFIXES = {"USDT", "STAGE", "ERROR", "WARNING", "INFO"}  # kineto's stderr line heads


def test_measuring_peak_memory_prints_nothing_of_the_profilers_own():
    """A sweep measures peak memory in every trial: kineto's start/stop and no-GPU lines must
    not reach the user's terminal. A fresh process, since kineto reads its level once."""
    code = (
        "import torch\n"
        "from vitsweep.measure import peak_memory_bytes\n"
        "from vitsweep.runctx import RunContext\n"
        "peak, _ = peak_memory_bytes(torch.nn.Linear(8, 8), RunContext(), torch.zeros(4, 8))\n"
        "print(peak > 0)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "KINETO_LOG_LEVEL"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr
    kineto = [ln for ln in done.stderr.splitlines() if ln.split(":", 1)[0] in KINETO_PREFIXES]
    assert kineto == []


FAULTS_PER_FORWARD = """
import resource, sys, timm, torch
from vitsweep.measure.speed import steady_host_allocator
torch.set_num_threads(1)
if sys.argv[1] == "steady":
    assert steady_host_allocator()
model = timm.create_model("vit_tiny_patch16_224").eval()
x = torch.randn(8, 3, 224, 224)
with torch.inference_mode():
    model(x), model(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        model(x)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3)
"""


def _faults_per_forward(mode: str) -> float:
    # glibc's mmap threshold pinned at its documented starting value (128 KiB): left dynamic,
    # it rises with what the process happened to free before, and one CI run's control read 0
    # faults where others read 3,000-13,000. `steady_host_allocator` sets it itself (mallopt
    # overrides the variable), so only the control is made deterministic.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    done = subprocess.run(
        [sys.executable, "-c", FAULTS_PER_FORWARD, mode],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return float(done.stdout.strip().splitlines()[-1])


def test_a_steady_allocator_reuses_pages_that_glibc_would_fault_in_every_forward():
    """Timed forwards must not pay the kernel for fresh pages: with glibc's defaults a ViT
    forward at batch 8 faults thousands in each time (the control: the check can fail), after
    `steady_host_allocator` (measure_all calls it) next to none. Counts, not seconds: no CPU
    in it."""
    default, steady = _faults_per_forward("default"), _faults_per_forward("steady")
    assert default > 2000, f"the control faulted only {default} pages per forward"
    # a few pages may still come and go (Python's own arenas): 0-99 seen, 65,523 in the control
    assert steady < default / 10, f"{steady} page faults per forward, {default} by default"


# --- accuracy --------------------------------------------------------------------------------


class FirstFeatures(torch.nn.Module):
    """Logits = the first `k` input features, so its predictions are known in advance."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, : self.k]


def test_evaluate_counts_top1_hits():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(103, 1, 4, 4, generator=gen)
    pred = x.flatten(1)[:, :5].argmax(1)
    labels = pred.clone()
    labels[::3] = (labels[::3] + 1) % 5  # every third label is wrong on purpose
    expected = float((pred == labels).float().mean())
    acc = evaluate(FirstFeatures(5), CPU, TensorDataset(x, labels), batch_size=16)
    assert acc == pytest.approx(expected)
    assert 0.6 < acc < 0.7
    with pytest.raises(ValueError, match="empty"):
        evaluate(FirstFeatures(5), CPU, TensorDataset(x[:0], labels[:0]), batch_size=16)


def test_evaluate_runs_through_the_context_and_restores_the_mode():
    model = tiny_vit().train()
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(40, 3, 16, 16, generator=gen), torch.randint(0, 5, (40,), generator=gen)
    data = TensorDataset(x, y)
    bf16 = RunContext(autocast_dtype=torch.bfloat16)
    model.eval()
    with torch.inference_mode():
        fp32_logits = torch.cat([model(xb) for xb in x.split(8)])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16_logits = torch.cat([model(xb).float() for xb in x.split(8)])
    assert not torch.equal(fp32_logits, bf16_logits)  # the two contexts really differ
    model.train()
    assert evaluate(model, CPU, data, 8) == pytest.approx(
        float((fp32_logits.argmax(1) == y).float().mean())
    )
    assert model.training  # the caller's mode is restored
    assert evaluate(model, bf16, data, 8) == pytest.approx(
        float((bf16_logits.argmax(1) == y).float().mean())
    )


# --- lock and the whole protocol ---------------------------------------------------------------


def test_timing_lock_excludes_other_holders(tmp_path):
    path = str(tmp_path / "t.lock")
    with timing_lock(MeasureSpec(lock_path=path)) as waited:
        assert waited >= 0
        with pytest.raises(Timeout):
            FileLock(path, timeout=0.1).acquire()
    FileLock(path, timeout=0.1).acquire().lock.release()
    with timing_lock(MeasureSpec(lock=False, lock_path=str(tmp_path / "no.lock"))) as waited:
        assert waited == 0.0
    assert not (tmp_path / "no.lock").exists()


def short_spec(tmp_path, **overrides) -> MeasureSpec:
    """A whole measurement in about a second: batch 8, 1 thread, 3-5 short repeats, estimate."""
    fields = dict(
        batch_size=8,
        threads=1,
        warmup=1,
        min_repeats=3,
        max_repeats=5,
        time_cap_s=1.0,
        energy="estimate",
        lock_path=str(tmp_path / "m.lock"),
        repeat_s=0.01,
    )
    return MeasureSpec(**{**fields, **overrides})


def test_measure_all_reports_every_number(tmp_path):
    model = tiny_vit().train()
    spec = short_spec(tmp_path, watts=30.0)
    before = torch.get_num_threads()
    out = measure_all(model, CPU, (3, 16, 16), spec)
    assert torch.get_num_threads() == before and model.training  # state restored
    assert out["threads"] == 1 and out["batch_size"] == 8 and out["measure_device"] == "cpu"
    assert out["throughput"] > 0 and out["latency_ms"] > 0
    assert out["energy_source"] == "estimate"
    assert out["energy"] == pytest.approx(30.0 / out["throughput"])
    assert out["energy_power_w"] == 30.0 and out["energy_window_s"] == 0.0
    assert out["params"] == sum(p.numel() for p in model.parameters())
    assert out["flops"] == count_flops(model, CPU, (3, 16, 16)) > 0
    assert out["peak_mem_bytes"] > 0 and "allocator" in out["peak_mem_source"]
    assert 3 <= out["repeats"] <= 5 and isinstance(out["noisy"], bool)
    assert out["throughput_cv"] >= 0 and out["latency_cv"] >= 0


def test_measuring_a_compiled_runner_compiles_nothing_more(tmp_path):
    """Every forward the measurement runs reuses the graphs the warm-up compiled: the peak-memory
    forward once fed an input made outside inference mode, failed dynamo's dispatch-key guard
    and recompiled the whole program in every int8 trial (9 s of 45)."""
    from torch._dynamo.testing import CompileCounter

    from vitsweep.measure.compile import warm_up

    model = tiny_vit().eval()
    counter = CompileCounter()  # torch's own backend that counts the graphs dynamo compiles
    runner = torch.compile(model, backend=counter)
    spec = short_spec(tmp_path)
    torch._dynamo.reset()
    with thread_scope(spec.threads):  # as trial.runner does: the thread count is a guard too
        warm_up(runner, CPU, (3, 16, 16), [spec.batch_size, 1])
    compiled = counter.frame_count
    assert compiled >= 2  # the timing batch (dynamic) and batch 1
    out = measure_all(runner, CPU, (3, 16, 16), spec, cost_model=model)
    assert out["peak_mem_bytes"] > 0 and out["throughput"] > 0
    assert counter.frame_count == compiled
