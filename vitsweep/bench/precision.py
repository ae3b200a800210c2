"""Precision bench: what each precision really buys on this machine, and what mixed costs in top-1.

Section 1: ViT-S/16 at 224 (random weights), batch 16, fp32 / bf16 autocast / bf16 full / int8,
images/s (median over interleaved repeats, so load from other processes hits all variants alike)
and model_bytes. Section 2: a small ViT trained here on the built-in digits task, test top-1 of
fp32, int8 and mixed at budget_ratio 0.25 (a 4x size reduction).
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from vitsweep.bench.common import Section, Target, quick_overrides
from vitsweep.measure.compile import compile_model
from vitsweep.precision import apply_precision, model_bytes
from vitsweep.runctx import RunContext
from vitsweep.spec import MeasureSpec, PrecisionSpec

# name -> (precision, compiled): every row against fp32 eager, all timed in one interleaved run.
SPEED_VARIANTS: dict[str, tuple[PrecisionSpec, bool]] = {
    "fp32": (PrecisionSpec(mode="fp32"), False),
    "fp32 compiled": (PrecisionSpec(mode="fp32"), True),
    "bf16 autocast": (PrecisionSpec(mode="bf16", cast="autocast"), False),
    "bf16 full": (PrecisionSpec(mode="bf16", cast="full"), False),
    "bf16 full compiled": (PrecisionSpec(mode="bf16", cast="full"), True),
    "fp16 full": (PrecisionSpec(mode="fp16", cast="full"), False),
    "int8 torch.ao eager (old)": (PrecisionSpec(mode="int8", int8_backend="ao_dynamic"), False),
    "int8 pt2e dynamic compiled": (PrecisionSpec(mode="int8", int8_scheme="dynamic"), True),
    "int8 pt2e static compiled": (PrecisionSpec(mode="int8"), True),
}
QUICK_SKIP = ("fp32 compiled", "int8 pt2e dynamic compiled")  # compiles cost minutes on 2 cores


def _time_once(model: nn.Module, ctx: RunContext, x: torch.Tensor) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        ctx.forward(model, x)
        return time.perf_counter() - start


def _prepare(
    base: nn.Module, spec: PrecisionSpec, compiled: bool, x: torch.Tensor, calib: Dataset
) -> tuple[nn.Module, nn.Module, RunContext, float, float]:
    """(stored model, what runs, ctx, convert seconds, compile seconds) of one variant."""
    start = time.perf_counter()
    model, ctx = apply_precision(copy.deepcopy(base), spec, calib=calib, calib_batch_size=16)
    convert_s = time.perf_counter() - start
    measure = MeasureSpec(compile="always" if compiled else "never", batch_size=len(x))
    runner, ctx, compile_s = compile_model(model, ctx, measure, tuple(x.shape[1:]), (len(x),))
    return model, runner, ctx, convert_s, compile_s or 0.0


def _interleaved(
    runs: dict[str, tuple[nn.Module, RunContext, torch.Tensor]], repeats: int
) -> dict[str, list[float]]:
    """Seconds per forward of every variant, round-robin so load drift hits all alike."""
    for model, ctx, x in runs.values():
        _time_once(model, ctx, x)  # warm-up: oneDNN picks and caches kernels here
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (model, ctx, x) in runs.items():
            times[name].append(_time_once(model, ctx, x))
    return times


def vit_s(batch: int) -> tuple[nn.Module, torch.Tensor, TensorDataset]:
    """ViT-S/16 224 with random weights, the batch that is timed, and calibration data."""
    import timm

    torch.manual_seed(0)
    base = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 224, 224, generator=gen)
    # Random weights: calibrate on the distribution that is timed (2 batches of 16).
    calib = TensorDataset(torch.randn(32, 3, 224, 224, generator=gen), torch.zeros(32).long())
    return base, x, calib


def speed_section(quick: bool = False, batch: int = 16) -> Section:
    """Images/s, bytes and compile seconds of ViT-S/16 at every precision, from one run."""
    base, x, calib = vit_s(batch)
    prepared = {
        name: _prepare(base, spec, compiled, x, calib)
        for name, (spec, compiled) in SPEED_VARIANTS.items()
        if not (quick and name in QUICK_SKIP)
    }
    runs = {name: (p[1], p[2], x) for name, p in prepared.items()}
    times = _interleaved(runs, 3 if quick else 7)
    fp32_ips = batch / statistics.median(times["fp32"])
    fp32_bytes = model_bytes(prepared["fp32"][0])
    rows = []
    for name, (model, _, ctx, convert_s, compile_s) in prepared.items():
        ips = batch / statistics.median(times[name])
        nbytes = model_bytes(model)
        rows.append(
            {
                "precision": name,
                "executes": ctx.precision_exec,
                "images_per_s": round(ips, 2),
                "vs_fp32": round(ips / fp32_ips, 2),
                "spread_ips": f"{batch / max(times[name]):.1f}-{batch / min(times[name]):.1f}",
                "model_bytes": nbytes,
                "bytes_vs_fp32": round(nbytes / fp32_bytes, 3),
                "convert_s": round(convert_s, 1),
                "compile_s": round(compile_s, 1),
            }
        )
    by = {r["precision"]: r for r in rows}
    bf16 = max(by[k]["vs_fp32"] for k in by if k.startswith("bf16"))
    int8 = by["int8 pt2e static compiled"]
    targets = [
        Target("bf16 / fp32 eager images/s (best bf16 path)", bf16, ">= 4.0", bf16 >= 4.0),
        Target("int8 / fp32 eager images/s", int8["vs_fp32"], ">= 3.5", int8["vs_fp32"] >= 3.5),
        Target(
            "int8 / fp32 model_bytes", int8["bytes_vs_fp32"], "<= 0.3", int8["bytes_vs_fp32"] <= 0.3
        ),
    ]
    notes = [
        f"vit_small_patch16_224, random weights, batch {batch}, CPU, "
        f"{torch.get_num_threads()} threads, {len(times['fp32'])} interleaved repeats, medians; "
        "load average at the end "
        f"{os.getloadavg()[0]:.1f} (other processes share the cores: ratios, not absolutes)",
        "compile_s: torch.compile (inductor, freezing) of batch "
        f"{batch}, apart from the timing; convert_s: precision surgery (int8: export + calibrate)",
    ]
    return Section("Precision: ViT-S/16 224 throughput and bytes", rows, targets, notes)


def pair_section(quick: bool = False, batch: int = 16) -> Section:
    """The paper's pair on this CPU: DeiT-B/16 fp32 eager vs an AutoFormer-T-sized subnet with
    ToMe r=13 at bf16 (weights cast, eager) and int8 (PT2E, compiled), one interleaved run."""
    import timm

    from vitsweep.tome import apply_tome

    torch.manual_seed(0)
    deit_b = timm.create_model("deit_base_patch16_224", pretrained=False).eval()
    # AutoFormer-T's space: embed {192,216,240}, depth {12,13,14}, mlp {3.5,4}, heads {3,4}.
    small = VisionTransformer(embed_dim=192, depth=13, num_heads=3, mlp_ratio=4.0).eval()
    apply_tome(small, 13)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 224, 224, generator=gen)
    calib = TensorDataset(torch.randn(32, 3, 224, 224, generator=gen), torch.zeros(32).long())
    variants = {
        "DeiT-B/16 fp32 eager": (deit_b, PrecisionSpec(mode="fp32"), False),
        "AutoFormer-T-size + ToMe r=13, bf16 full": (small, PrecisionSpec("bf16", "full"), False),
    }
    if not quick:
        variants["AutoFormer-T-size + ToMe r=13, int8 pt2e compiled"] = (
            small, PrecisionSpec(mode="int8"), True
        )  # fmt: skip
    prepared = {n: _prepare(m, s, c, x, calib) for n, (m, s, c) in variants.items()}
    runs = {name: (p[1], p[2], x) for name, p in prepared.items()}
    times = _interleaved(runs, 3 if quick else 5)
    ref = batch / statistics.median(times["DeiT-B/16 fp32 eager"])
    rows = []
    for name, (_, _, ctx, _, compile_s) in prepared.items():
        ips = batch / statistics.median(times[name])
        rows.append(
            {
                "model": name,
                "executes": ctx.precision_exec,
                "params": sum(p.numel() for p in variants[name][0].parameters()),
                "images_per_s": round(ips, 2),
                "vs_deit_b_fp32": round(ips / ref, 1),
                "compile_s": round(compile_s, 1),
            }
        )
    best = max(rows[1:], key=lambda r: r["vs_deit_b_fp32"])
    notes = [
        f"random weights, batch {batch}, {torch.get_num_threads()} threads, 224 px; "
        "subnet: embed 192, depth 13, heads 3, mlp 4 (AutoFormer-T-sized), ToMe r=13 per block",
        f"best: {best['model']} at {best['vs_deit_b_fp32']}x DeiT-B fp32",
    ]
    return Section("Precision: the paper's pair on this CPU", rows, [], notes)


# The built-in task's baseline at each precision: (label, overrides on top of the baseline's).
ACCURACY_VARIANTS = {
    "fp32": ["precision=fp32"],
    "bf16 full": ["precision=bf16", "precision.cast=full"],
    "bf16 autocast": ["precision=bf16", "precision.cast=autocast"],
    "int8": ["precision=int8"],
    "mixed 0.25": ["precision=mixed", "precision.budget_ratio=0.25"],
}


def accuracy_section(quick: bool = False) -> Section:
    """Held-out test top-1 of the default study's baseline (experiment=xray, trained or found in
    the cache `make sweep` fills) at every precision, each run exactly as a trial runs it
    (`trial.run`: build, precision, compile per measure.compile, measure), each paired with fp32
    on the same test images."""
    import tempfile

    from vitsweep import config, trial
    from vitsweep.measure.accuracy import TEST_FLAGS_KEY, paired_difference, unpack_flags

    with tempfile.TemporaryDirectory(prefix="vitsweep-bench-") as tmp:
        common = quick_overrides(tmp) if quick else []
        cfg = config.compose(common)
        baseline = [f"{k}={v}" for k, v in cfg.hydra.sweeper.baseline.items() if k != "precision"]
        rows: list[dict[str, Any]] = []
        flags: dict[str, Any] = {}
        for name, overrides in ACCURACY_VARIANTS.items():
            spec = config.trial_spec(config.compose([*common, *baseline, *overrides]))
            m = trial.run(spec).as_dict()
            flags[name] = unpack_flags(m[TEST_FLAGS_KEY], m["test_accuracy_n"])
            vs = paired_difference(flags[name], flags["fp32"])
            rows.append(
                {
                    "precision": name,
                    "executes": m["precision_exec"],
                    "test top-1 % [95% CI]": f"{100 * m['test_accuracy']:.2f} "
                    f"[{100 * m['test_accuracy_lo']:.2f}, {100 * m['test_accuracy_hi']:.2f}]",
                    "vs fp32 (pts)": round(100 * vs.diff, 2),
                    "paired 95% CI (pts)": f"[{100 * vs.lo:.2f}, {100 * vs.hi:.2f}]",
                    "images_per_s": round(m["throughput"], 1),
                    "model_bytes": m["model_bytes"],
                    "compile_s": m["compile_s"],
                }
            )
    by = {r["precision"]: r for r in rows}
    fp32_bytes = by["fp32"]["model_bytes"]
    int8_loss = 0.0 - by["int8"]["vs fp32 (pts)"]  # 0.0 - x: never "-0"
    loss = 0.0 - by["mixed 0.25"]["vs fp32 (pts)"]
    mixed_bytes = round(by["mixed 0.25"]["model_bytes"] / fp32_bytes, 4)
    bf16_loss = 0.0 - by["bf16 full"]["vs fp32 (pts)"]
    targets = [
        Target("int8 top-1 loss vs fp32, points", int8_loss, "<= 0.5", int8_loss <= 0.5),
        Target("mixed(0.25) top-1 loss vs fp32, points", loss, "<= 1", loss <= 1),
        Target("mixed(0.25) bytes / fp32", mixed_bytes, "<= 0.25", mixed_bytes <= 0.25),
        Target("bf16 full top-1 loss vs fp32, points", bf16_loss, "<= 0.5", bf16_loss <= 0.5),
    ]
    notes = [
        f"experiment=xray baseline ({', '.join(baseline)}), "
        f"{len(flags['fp32'])} held-out test images; each row is `trial.run`, as "
        "`vitsweep ... precision=<row>` runs it",
        "vs fp32: paired on the same test images (exact McNemar 95% interval); a loss is "
        "minus that difference",
        "images_per_s: the trial's own throughput measurement (32 px, measure.batch_size)",
    ]
    if quick:
        notes.append("quick: a small slice trained for 1 epoch: plumbing, not calibration")
    return Section("Precision: accuracy on the built-in task (test split)", rows, targets, notes)


def run(quick: bool = False) -> list[Section]:
    return [speed_section(quick), pair_section(quick), accuracy_section(quick)]


if __name__ == "__main__":
    for section in run(quick=True):
        print(section.title)
        for row in section.rows:
            print("  ", row)
        for t in section.targets:
            print("   target", t)
        for n in section.notes:
            print("   note", n)
