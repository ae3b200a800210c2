"""ToMe speed on this CPU: ViT-S/16 at 224 (random weights), batch 16, fp32, stock vs our patch
at r = 0, 8, 13, 16 and the published patch's algorithm at r = 13, all in one run.

Variants are timed round-robin (the order rotating each round), so a neighbour's load drift hits
all of them alike; each figure is the median over rounds, ratios come from those medians.
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from collections.abc import Callable

import timm
import torch

from vitsweep.bench.common import Section, Target
from vitsweep.bench.tome_reference import apply_reference_tome
from vitsweep.tome import apply_tome, remove_tome, token_counts

MODEL = "vit_small_patch16_224"
BATCH = 16
OUR_R = (0, 8, 13, 16)
REF_R = 13


def _variants(seed: int = 0) -> dict[str, tuple[Callable[[], torch.nn.Module], int | None]]:
    """name -> (a function making that variant current, r). Ours share one model whose schedule
    is switched with apply_tome/remove_tome; the reference needs its own copy."""
    torch.manual_seed(seed)
    ours = timm.create_model(MODEL, pretrained=False).eval()
    ref = apply_reference_tome(copy.deepcopy(ours), REF_R)
    out: dict[str, tuple[Callable[[], torch.nn.Module], int | None]] = {
        "stock": (lambda: remove_tome(ours), None)
    }
    for r in OUR_R:
        out[f"tome r={r}"] = (lambda r=r: apply_tome(ours, r), r)
    out[f"reference r={REF_R}"] = (lambda: ref, REF_R)
    return out


def _time_forward(model: torch.nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x)
    return time.perf_counter() - start


def run(quick: bool = False) -> list[Section]:
    rounds, warmup = (3, 1) if quick else (10, 2)
    variants = _variants()
    x = torch.randn(BATCH, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    names = list(variants)
    load_before = os.getloadavg()[0]
    seconds: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        stock_out = variants["stock"][0]()(x)
        r0_diff = (variants["tome r=0"][0]()(x) - stock_out).abs().max().item()
        for name in names:
            model = variants[name][0]()
            for _ in range(warmup):
                model(x)
        for i in range(rounds):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                seconds[name].append(_time_forward(variants[name][0](), x))

    ours = variants["tome r=0"][0]()
    ips = {n: BATCH / statistics.median(s) for n, s in seconds.items()}
    rows = []
    for name in names:
        r = variants[name][1]
        final = token_counts(apply_tome(ours, r), 197)[-1] if r is not None else 197
        rows.append(
            {
                "variant": name,
                "final_tokens": final,
                "images_per_s": round(ips[name], 2),
                "ms_per_batch": round(1e3 * statistics.median(seconds[name]), 1),
                "spread_ms": f"{1e3 * min(seconds[name]):.0f}-{1e3 * max(seconds[name]):.0f}",
                "x_stock": round(ips[name] / ips["stock"], 3),
            }
        )
    remove_tome(ours)
    r0 = ips["tome r=0"] / ips["stock"]
    r13 = ips["tome r=13"] / ips["stock"]
    vs_ref = ips["tome r=13"] / ips[f"reference r={REF_R}"]
    targets = [
        Target("tome r=0 / stock", round(r0, 3), ">= 0.97", r0 >= 0.97),
        Target("tome r=13 / stock", round(r13, 3), ">= 1.7", r13 >= 1.7),
        Target(f"tome r=13 / reference r={REF_R}", round(vs_ref, 3), "> 1.0", vs_ref > 1.0),
    ]
    notes = [
        f"{MODEL}, random weights, batch {BATCH}, 224 px, fp32, CPU, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, timm {timm.__version__}",
        f"median of {rounds} round-robin rounds after {warmup} warm-up forward(s) per variant",
        f"r=0 output vs stock: max abs diff {r0_diff:.2e}",
        f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
        f"({os.cpu_count()} cores): above the core count, timings are contention, not ToMe",
        "reference = the published ToMe patch's algorithm (eager attention, timm-0.4.12 blocks)",
    ]
    return [Section("ToMe token merging: images/s", rows, targets, notes)]


if __name__ == "__main__":
    for section in run(quick=True):
        print(section.title)
        for row in section.rows:
            print(row)
        for t in section.targets:
            print(t)
        print(*section.notes, sep="\n")
