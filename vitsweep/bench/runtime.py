"""Runtime bench (issue #34): runtime x precision on this CPU, against torch fp32 eager.

Section 1: ViT-S/16 at 224 (random weights), batch 16 and batch 1, every (runtime, precision)
this CPU runs, timed in one interleaved run (load drift hits every row alike), with
`deploy_bytes` and the export (or convert + compile) seconds. Section 2: the xray study's
headline member (the one `make sweep` reports; the baseline when no study is there), every row
a real `trial.run` on the same test images, accuracy paired with torch fp32; fp32 rows of the
other runtimes count the test images whose correctness differs from torch fp32 (near-ties).
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from typing import Any

import torch
from torch.utils.data import TensorDataset

from vitsweep.bench.common import Section
from vitsweep.bench.precision import _interleaved, vit_s
from vitsweep.spec import ConfigError, PrecisionSpec, RuntimeSpec, TrialSpec

ROWS = (
    ("torch", "fp32"),
    ("torch", "bf16"),
    ("torch", "int8"),
    ("onnxruntime", "fp32"),
    ("onnxruntime", "int8"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
    ("openvino", "int8"),
)
REFERENCE = ("torch", "fp32")


def _torch_variant(base: torch.nn.Module, mode: str, calib: TensorDataset, batch: int) -> tuple:
    """(what runs, ctx, seconds to get it, deploy_bytes) on torch, as a trial runs `mode`."""
    from vitsweep.measure import installed_bytes
    from vitsweep.measure.compile import compile_model
    from vitsweep.precision import apply_precision, model_bytes
    from vitsweep.runtime import distributions
    from vitsweep.spec import MeasureSpec

    spec = PrecisionSpec(mode=mode, cast="full") if mode == "bf16" else PrecisionSpec(mode=mode)
    start = time.perf_counter()
    model, ctx = apply_precision(copy.deepcopy(base), spec, calib=calib, calib_batch_size=16)
    shape = tuple(calib.tensors[0].shape[1:])
    runner, ctx, _ = compile_model(model, ctx, MeasureSpec(batch_size=batch), shape, (batch, 1))
    seconds = time.perf_counter() - start
    packages = distributions("torch", ctx.precision_exec)
    return runner, ctx, seconds, model_bytes(model) + installed_bytes(packages)


def _runtime_variant(base: torch.nn.Module, name: str, mode: str, calib: TensorDataset) -> tuple:
    from vitsweep.measure import installed_bytes
    from vitsweep.runtime import deploy, stored_bytes

    model, ctx = deploy(
        copy.deepcopy(base), RuntimeSpec(name=name), PrecisionSpec(mode=mode), calib=calib,
        threads=torch.get_num_threads(),
    )  # fmt: skip
    nbytes = stored_bytes(model) + installed_bytes(model.deployed.distributions)
    return model, ctx, model.deployed.seconds, nbytes


def speed_section(quick: bool = False, batch: int = 16) -> Section:
    """Images/s at `batch` and batch-1 latency of ViT-S/16 per (runtime, precision)."""
    base, x, calib = vit_s(batch)
    prepared: dict[tuple[str, str], tuple] = {}
    skipped = []
    for name, mode in ROWS:
        try:
            if name == "torch":
                prepared[name, mode] = _torch_variant(base, mode, calib, batch)
            else:
                prepared[name, mode] = _runtime_variant(base, name, mode, calib)
        except ConfigError as e:  # a precision this CPU has no units for
            skipped.append(f"{name} {mode}: {e}")
    repeats = 3 if quick else 7
    big = _interleaved({k: (p[0], p[1], x) for k, p in prepared.items()}, repeats)
    one = _interleaved({k: (p[0], p[1], x[:1]) for k, p in prepared.items()}, repeats)
    ref_ips = batch / statistics.median(big[REFERENCE])
    ref_ms = 1e3 * statistics.median(one[REFERENCE])
    rows = []
    for (name, mode), (_, ctx, seconds, deploy) in prepared.items():
        ips = batch / statistics.median(big[name, mode])
        ms = 1e3 * statistics.median(one[name, mode])
        rows.append(
            {
                "runtime": name,
                "precision": mode,
                "executes": ctx.precision_exec,
                f"images_per_s (b{batch})": round(ips, 1),
                "x torch fp32": round(ips / ref_ips, 2),
                "latency_ms (b1)": round(ms, 2),
                "latency x torch fp32": round(ms / ref_ms, 2),
                "deploy_bytes": deploy,
                "export_s": round(seconds, 1),
            }
        )
    notes = [
        f"vit_small_patch16_224, random weights, {torch.get_num_threads()} threads everywhere, "
        f"{repeats} interleaved repeats, medians; x torch fp32: against torch fp32 eager",
        "export_s: torch: precision surgery + inductor compile (int8); onnxruntime/openvino: "
        "ONNX export + quantization + session compile (the trial's compile_s)",
        *[f"skipped: {s}" for s in skipped],
    ]
    return Section("Runtime: ViT-S/16 224 per runtime and precision", rows, [], notes)


def _member(quick: bool, root: str | None) -> tuple[TrialSpec, str]:
    """The xray study's headline member as a TrialSpec (the baseline when there is none)."""
    from pathlib import Path

    import optuna
    import yaml
    from omegaconf import OmegaConf

    from vitsweep import config, record
    from vitsweep.bench.common import quick_overrides

    cfg = config.compose(quick_overrides(root) if quick and root else [])
    results = Path(str(cfg.paths.root)) / str(cfg.name) / "report" / "results.yaml"
    if results.exists() and not quick:
        headline = yaml.safe_load(results.read_text()).get("headline") or []
        if headline:
            number = int(headline[0]["number"])
            ctx = config.sweep_context(cfg, cfg.hydra.sweeper)
            study = optuna.load_study(study_name=ctx.sweeper.study_name, storage=ctx.storage_url)
            stored = study.trials[number].user_attrs[record.CONFIG]
            spec = config.trial_spec(OmegaConf.create(stored))
            return dataclasses.replace(spec, root=str(ctx.root)), f"headline member trial {number}"
    baseline = [f"{k}={v}" for k, v in cfg.hydra.sweeper.baseline.items() if k != "precision"]
    over = quick_overrides(root) if quick and root else []
    return config.trial_spec(config.compose([*over, *baseline])), "baseline (no headline found)"


def accuracy_section(quick: bool = False) -> Section:
    """Every (runtime, precision) of the xray headline member through `trial.run`, paired with
    torch fp32 on the same test images."""
    import tempfile

    from vitsweep import trial
    from vitsweep.measure.accuracy import TEST_FLAGS_KEY, paired_difference, unpack_flags

    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="vitsweep-bench-") as tmp:
        base, which = _member(quick, tmp)
        flags: dict[tuple[str, str], Any] = {}
        ref: dict[str, Any] = {}
        for name, mode in ROWS:
            spec = dataclasses.replace(
                base,
                runtime=RuntimeSpec(name=name),
                precision=dataclasses.replace(base.precision, mode=mode, cast="full"),
            )
            try:
                m = trial.run(spec).as_dict()
            except ConfigError as e:
                notes.append(f"skipped {name} {mode}: {e}")
                continue
            flags[name, mode] = unpack_flags(m[TEST_FLAGS_KEY], m["test_accuracy_n"])
            if (name, mode) == REFERENCE:
                ref = m
            vs = paired_difference(flags[name, mode], flags[REFERENCE])
            rows.append(
                {
                    "runtime": name,
                    "precision": mode,
                    "test top-1 %": round(100 * m["test_accuracy"], 2),
                    "vs torch fp32 (pts) [95% CI]": f"{100 * vs.diff:+.2f} "
                    f"[{100 * vs.lo:+.2f}, {100 * vs.hi:+.2f}]",
                    "differing images": vs.a_only + vs.b_only,
                    "x throughput": round(m["throughput"] / ref["throughput"], 2),
                    "x latency": round(m["latency_ms"] / ref["latency_ms"], 2),
                    "deploy_bytes": m["deploy_bytes"],
                    "compile_s": m["compile_s"],
                }
            )
    notes = [
        f"experiment=xray, {which}; {len(flags[REFERENCE])} test images; every row is "
        "`trial.run` with runtime/precision replaced; paired: exact McNemar 95% interval",
        "differing images: test images whose correctness differs from torch fp32 (for fp32 "
        "rows: near-ties, the logits agree to ~1e-6 relative)",
        *notes,
    ]
    if quick:
        notes.append("quick: a small slice trained for 1 epoch: plumbing, not calibration")
    return Section("Runtime: xray headline member per runtime and precision", rows, [], notes)


def run(quick: bool = False) -> list[Section]:
    return [speed_section(quick), accuracy_section(quick)]
