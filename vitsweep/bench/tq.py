"""Transform quantization bench: test top-1 against bits per weight, tq vs plain uniform.

The small ViT of the precision bench, trained here on the built-in digits task, then every
nn.Linear / nn.Conv coded at 2, 3, 4 and 8 bits per weight two ways:
- uniform: `quantizers.fake_quantize`, symmetric per-output-channel with a searched clip (what
  int8 and mixed use), weights replaced in place;
- tq: `apply_precision(precision=tq)` as a trial runs it (bits allocated on the output variances
  seen on the train split), plus tq with weights-only allocation (no data) and tq fine-tuned a
  few steps (quantization-aware, same rate).
Bits are the coefficients' average; tq also stores its 8-bit transforms, so `tq_stored_bits`
(everything the coded layers store, per weight) is printed and plotted beside the nominal rate:
at equal *bytes* the comparison is another one, and the plot shows both.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vitsweep.bench.common import Section, Target, save_figure
from vitsweep.data import load
from vitsweep.measure.accuracy import predict
from vitsweep.models.train import train_briefly
from vitsweep.precision import apply_precision, model_bytes
from vitsweep.precision.quantizers import fake_quantize
from vitsweep.precision.tq import coded_layers, tq_stats
from vitsweep.runctx import RunContext
from vitsweep.spec import DataSpec, PrecisionSpec

BITS = (2, 3, 4, 8)
TARGET_BITS = 3
TARGET_GAIN = 2.0  # points: tq must lose at least this much less top-1 than uniform


@dataclass(frozen=True)
class Point:
    bits: int
    uniform_top1: float
    tq_top1: float  # as a trial runs it (output-weighted allocation)
    tq_weights_top1: float  # weights-only allocation
    tq_stored_bits: float  # coefficients + transforms + scales, per coded weight
    tq_bytes: int
    uniform_bytes: int  # what per-channel codes + fp32 scales would store


def digits_vit(seed: int = 0) -> VisionTransformer:
    """The small ViT of the digits task (32 px, 8x8 patches of 4 px)."""
    torch.manual_seed(seed)
    return VisionTransformer(
        img_size=32, patch_size=4, in_chans=3, num_classes=10, embed_dim=192, depth=6, num_heads=3
    )


def _top1(model: nn.Module, data, ctx: RunContext | None = None) -> float:
    pred, label = predict(model, ctx or RunContext(), data)
    return round(float((pred == label).float().mean()) * 100, 2)


def uniform_model(base: nn.Module, bits: int) -> tuple[nn.Module, int]:
    """(copy of `base` with every coded layer's weight replaced by its per-channel `bits`-bit
    quantization, the bytes that model would store: packed codes + an fp32 scale per channel)."""
    model = copy.deepcopy(base)
    nbytes = model_bytes(base)
    with torch.no_grad():
        for _, layer in coded_layers(model):
            w = layer.weight
            w.copy_(fake_quantize(w, bits))
            nbytes += math.ceil(w.numel() * bits / 8) + 4 * w.shape[0] - 4 * w.numel()
    return model, nbytes


def plot(points: list[Point], fp32_top1: float, tuned: dict[int, float], path: Path) -> Path:
    """Top-1 vs bits per weight: uniform and tq at their nominal bits, tq again at the bits it
    really stores (transforms included), fine-tuned tq as markers, fp32 as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    bits = [p.bits for p in points]
    ax.plot(bits, [p.uniform_top1 for p in points], "o-", label="uniform per-channel")
    (tq_line,) = ax.plot(
        bits, [p.tq_top1 for p in points], "s-", label="tq (rate = coefficient bits)"
    )
    ax.plot(
        [p.tq_stored_bits for p in points],
        [p.tq_top1 for p in points],
        "s--",
        color=tq_line.get_color(),
        alpha=0.45,
        label="tq at stored bits (transforms included)",
    )
    if tuned:
        ax.plot(list(tuned), list(tuned.values()), "*", ms=11, label="tq + fine-tuning")
    ax.axhline(fp32_top1, color="grey", lw=0.8, ls=":", label="fp32")
    ax.set_xlabel("bits per weight")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("digits ViT: transform vs uniform quantization", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


def run(quick: bool = False) -> list[Section]:
    splits = load(DataSpec())
    epochs = 2 if quick else 15
    finetune_steps = 10 if quick else 100
    tuned_bits = (2,) if quick else (2, 3)
    base = digits_vit()
    start = time.perf_counter()
    train_briefly(base, splits.train, epochs)
    train_s = time.perf_counter() - start
    fp32_top1 = _top1(base, splits.test)
    fp32_bytes = model_bytes(base)

    points = []
    convert_s = 0.0
    for bits in BITS:
        uniform, uniform_bytes = uniform_model(base, bits)
        start = time.perf_counter()
        tq, ctx = apply_precision(
            copy.deepcopy(base), PrecisionSpec(mode="tq", rate=float(bits)), calib=splits.train
        )
        convert_s = max(convert_s, time.perf_counter() - start)
        plain, plain_ctx = apply_precision(
            copy.deepcopy(base), PrecisionSpec(mode="tq", rate=float(bits))
        )
        points.append(
            Point(
                bits=bits,
                uniform_top1=_top1(uniform, splits.test),
                tq_top1=_top1(tq, splits.test, ctx),
                tq_weights_top1=_top1(plain, splits.test, plain_ctx),
                tq_stored_bits=round(tq_stats(tq).effective_bits, 2),
                tq_bytes=model_bytes(tq),
                uniform_bytes=uniform_bytes,
            )
        )
    tuned: dict[int, float] = {}
    tune_s = 0.0
    for bits in tuned_bits:
        start = time.perf_counter()
        spec = PrecisionSpec(mode="tq", rate=float(bits), finetune_steps=finetune_steps)
        model, ctx = apply_precision(copy.deepcopy(base), spec, calib=splits.train)
        tune_s = max(tune_s, time.perf_counter() - start)
        tuned[bits] = _top1(model, splits.test, ctx)

    rows = [
        {
            "bits": p.bits,
            "uniform_top1": p.uniform_top1,
            "tq_top1": p.tq_top1,
            "tq_weights_only_top1": p.tq_weights_top1,
            f"tq_finetuned_{finetune_steps}_top1": tuned.get(p.bits, ""),
            "tq_stored_bits": p.tq_stored_bits,
            "uniform_bytes_vs_fp32": round(p.uniform_bytes / fp32_bytes, 4),
            "tq_bytes_vs_fp32": round(p.tq_bytes / fp32_bytes, 4),
        }
        for p in points
    ]
    at = next(p for p in points if p.bits == TARGET_BITS)
    gain = round((fp32_top1 - at.uniform_top1) - (fp32_top1 - at.tq_top1), 2)
    targets = [
        Target(
            f"{TARGET_BITS}-bit top-1 loss, uniform minus tq (points)",
            gain,
            f">= {TARGET_GAIN:g}",
            gain >= TARGET_GAIN,
        )
    ]
    path = plot(
        points, fp32_top1, tuned, Path("multirun") / "bench" / ("quick" if quick else "") / "tq.png"
    )
    notes = [
        f"fp32 test top-1 {fp32_top1}%, {fp32_bytes} bytes; digits 32 px, ViT embed 192 depth 6 "
        f"heads 3 patch 4, {epochs} epochs AdamW ({train_s:.0f} s), test split of "
        f"{len(splits.test)} images (one image = {100 / len(splits.test):.2f} points)",
        "coded layers: every nn.Linear and nn.Conv (patch embedding and head included), both "
        "methods; bits = average coefficient bits (tq) or bit-width (uniform)",
        "tq_top1: bits allocated on output variances from 2 train batches (as a trial runs it); "
        "tq_weights_only_top1: on the weights' own variances, no data",
        "tq_stored_bits: coefficients + 8-bit transforms + steps/scales per coded weight; at "
        "equal stored bytes compare tq at rate r with uniform at about tq_stored_bits",
        f"tq_finetuned: {finetune_steps} AdamW steps (lr 1e-4, batch 64) with a straight-through "
        f"quantizer on the coefficients, same rate ({tune_s:.0f} s each, slowest); "
        f"tq conversion {convert_s:.1f} s at most",
        f"plot: {path}",
    ]
    return [Section("TQ: top-1 vs bits per weight on the built-in task", rows, targets, notes)]
