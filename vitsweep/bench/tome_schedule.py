"""Does a ToMe schedule that knows the hardware pay on this CPU? (#35)

ToMe's speed comes from the rows its blocks' GEMMs see (batch x tokens), and a GEMM kernel can
run a row count at a different speed per FLOP than its neighbours: on the Xeon, oneDNN's AMX
bf16 fc2 fell to half speed below 960 rows. A schedule that knows that would spend its merges
where they buy the most time. This section measures what it could buy, on this CPU:

1. the curve: DeiT-S's block halves at every token count a schedule can reach, batch 16, fp32
   and bf16 eager, timed by the product's protocol (`measure.speed.time_forward`) in rotating
   rounds: the attention half (norm, qkv, attention as ToMe's merging blocks run it, proj) at the
   tokens a block receives and the MLP half (norm, fc1, fc2) at the tokens it keeps;
2. the plan: from that curve, the per-block merge counts that minimise the predicted time while
   keeping at least the constant schedule's token-blocks (the sum over blocks of the tokens each
   keeps: what its FLOPs follow), each block within `WINDOW` tokens of the constant schedule's
   count and merging wherever it merges (equal token-blocks alone let a plan merge half the
   tokens at once and skip later merges: another ToMe, not another row count), solved exactly
   by dynamic programming over (tokens, token-blocks so far);
3. the check: the planned schedule and the constant one timed end to end as a trial runs them
   (`apply_tome` with the per-block list, `token.r` accepts one), same rounds.

If the planned schedule is not clearly faster at equal token-blocks, no schedule built from row
counts can move the front here, and `token.schedule` does not offer one.
"""

from __future__ import annotations

import copy
import functools
import itertools
import os
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vitsweep.bench.common import Section, save_figure
from vitsweep.bench.tome import MODELS, Variant, _dtype, _float_model, _round_robin, _spec
from vitsweep.measure.cost import count_flops
from vitsweep.measure.speed import thread_scope, time_forward
from vitsweep.runctx import RunContext
from vitsweep.tome import apply_tome
from vitsweep.tome.merge import max_merge
from vitsweep.tome.patch import _attention
from vitsweep.tome.schedule import token_counts_for

BATCH = 16
PRECISIONS = ("fp32", "bf16")
LEVELS = (8, 13)  # the constant schedules (r) whose token-blocks a plan must keep
# a plan keeps each block within this many tokens of the constant schedule's count: far enough
# to cross a kernel's row-count threshold (128 rows at batch 16), near enough that what ToMe
# merges, and so its accuracy, stays the constant schedule's (equal token-blocks besides)
WINDOW = 8
STEP = 6  # the curve's grid in tokens; the plan reads it linearly interpolated
PAYS = 1.03  # planned over constant, measured (median over the rows), to be worth offering
NUM_PREFIX = 1  # the class token, never merged


class _Half(nn.Module):
    """One half of a DeiT block as ToMe's merging blocks run it (bf16 keys padded)."""

    def __init__(self, blk: nn.Module, half: str) -> None:
        super().__init__()
        self.blk, self.half = blk, half

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.blk
        if self.half == "attention":
            return x + b.ls1(_attention(b.attn, b.norm1(x), None)[0])
        return x + b.ls2(b.mlp(b.norm2(x)))


def plan(
    attn_s: np.ndarray,
    mlp_s: np.ndarray,
    tokens: int,
    keep_at_least: int,
    lowest: tuple[int, ...],
    highest: tuple[int, ...],
    least: tuple[int, ...],
) -> tuple[int, ...]:
    """Per-block merge counts minimising sum_i attn_s[n_{i-1}] + mlp_s[n_i] (n_0 = `tokens`,
    n_i the tokens block i keeps; block i merges at least least[i] and at most ToMe's cap, n_i
    within [lowest[i], highest[i]]) subject to sum_i n_i >= `keep_at_least`. Exact: dynamic
    programming over (n_i, the sum so far), the sum capped at `keep_at_least` (more is never
    needed)."""
    top = keep_at_least
    inf = float("inf")
    best = np.full((tokens + 1, top + 1), inf)
    best[tokens, 0] = 0.0
    steps: list[tuple[np.ndarray, np.ndarray]] = []  # per block: (previous n, previous sum)
    for lo, hi, at_least in zip(lowest, highest, least, strict=True):
        new = np.full_like(best, inf)
        prev_n = np.full(best.shape, -1, dtype=np.int64)
        prev_s = np.full(best.shape, -1, dtype=np.int64)
        for p in np.flatnonzero(np.isfinite(best).any(axis=1)):
            row = best[p] + attn_s[p]
            for n in range(max(lo, p - max_merge(int(p), NUM_PREFIX)), min(hi, p - at_least) + 1):
                cand = np.full(top + 1, inf)
                src = np.full(top + 1, -1, dtype=np.int64)
                if n < top:  # below the cap: sum s' came from s' - n
                    cand[n:top] = row[: top - n]
                    src[n:top] = np.arange(top - n)
                k = max(top - n, 0) + int(np.argmin(row[max(top - n, 0) :]))  # reach the cap
                cand[top], src[top] = row[k], k
                cand += mlp_s[n]
                better = cand < new[n]
                new[n, better] = cand[better]
                prev_n[n, better] = p
                prev_s[n, better] = src[better]
        best = new
        steps.append((prev_n, prev_s))
    n = int(np.argmin(best[:, top]))
    if not np.isfinite(best[n, top]):
        raise ValueError(f"no schedule within the bounds keeps {keep_at_least} token-blocks")
    kept, s = [n], top
    for prev_n, prev_s in reversed(steps[1:]):
        n, s = int(prev_n[n, s]), int(prev_s[n, s])
        kept.append(n)
    kept.reverse()
    return tuple(a - b for a, b in zip((tokens, *kept[:-1]), kept, strict=True))


def _grid(tokens: int, fewest: int, step: int) -> list[int]:
    return sorted({*range(max(fewest, 1), tokens, step), tokens})


def _curve(
    blk: nn.Module, grid: list[int], batch: int, rounds: int, quick: bool
) -> dict[tuple[str, str, int], float]:
    """Median seconds of each half at each token count, per precision: every (precision, half,
    tokens) timed once per round by the product's protocol, the order rotating."""
    dim = blk.norm1.normalized_shape[0]
    jobs = []
    for precision in PRECISIONS:
        dtype = _dtype(precision)
        block = copy.deepcopy(blk).to(dtype)
        for half in ("attention", "mlp"):
            for n in grid:
                jobs.append(((precision, half, n), _Half(block, half).eval(), dtype))
    times: dict[tuple[str, str, int], list[float]] = {key: [] for key, _, _ in jobs}
    for i in range(rounds):
        for key, part, dtype in jobs[i % len(jobs) :] + jobs[: i % len(jobs)]:
            stats = time_forward(
                part, RunContext(input_dtype=dtype), (key[2], dim), batch, _spec(batch, quick)
            )
            times[key].append(stats.median_step_s)
    return {key: statistics.median(v) for key, v in times.items()}


def _dense(
    curve: dict[tuple[str, str, int], float], precision: str, half: str, tokens: int
) -> np.ndarray:
    """The curve at every token count 0..tokens, linearly interpolated (inf below the grid)."""
    grid = sorted(n for p, h, n in curve if (p, h) == (precision, half))
    values = np.interp(np.arange(tokens + 1), grid, [curve[precision, half, n] for n in grid])
    values[: grid[0]] = np.inf
    return values


def _seconds(rs: tuple[int, ...], attn_s: np.ndarray, mlp_s: np.ndarray, tokens: int) -> float:
    """The curve's prediction for a schedule: each block's attention half at the tokens it
    receives plus its MLP half at the tokens it keeps."""
    kept = token_counts_for(rs, tokens, NUM_PREFIX)
    return float(sum(attn_s[n] for n in (tokens, *kept[:-1])) + sum(mlp_s[n] for n in kept))


def run(
    quick: bool = False,
    *,
    model: str = "DeiT-S",
    batch: int = BATCH,
    img: int = 224,
    threads: int = 2,
    levels: tuple[int, ...] = LEVELS,
) -> list[Section]:
    """The section: the planned schedule against the constant one, and the curve it was planned
    on. `quick` (one round of short repeats, a coarse grid) with a small `model`/`img`/`batch` is
    the test suite's smoke run."""
    with thread_scope(threads):
        return _run(quick, model, batch, img, levels)


def _run(quick: bool, model: str, batch: int, img: int, levels: tuple[int, ...]) -> list[Section]:
    rounds = 1 if quick else 5
    load_before = os.getloadavg()[0]
    name = MODELS[model]
    stock = _float_model(name, 0, img)
    tokens, depth = (img // 16) ** 2 + NUM_PREFIX, len(stock.blocks)
    kept = {level: token_counts_for((level,) * depth, tokens, NUM_PREFIX) for level in levels}
    fewest = min(k[-1] for k in kept.values()) - WINDOW
    grid = _grid(tokens, fewest, STEP if not quick else 4 * STEP)
    curve = _curve(stock.blocks[depth // 2], grid, batch, rounds, quick)

    plans: dict[tuple[str, int], dict[str, tuple[int, ...]]] = {}
    predicted: dict[tuple[str, int, str], float] = {}
    variants = []
    for precision in PRECISIONS:
        attn_s = _dense(curve, precision, "attention", tokens)
        mlp_s = _dense(curve, precision, "mlp", tokens)
        for level in levels:
            constant = (level,) * depth  # capped per block as ToMe caps it
            planned = plan(
                attn_s,
                mlp_s,
                tokens,
                sum(kept[level]),
                tuple(n - WINDOW for n in kept[level]),
                tuple(n + WINDOW for n in kept[level]),
                # as many merging blocks as constant: only where the rows fall may change
                tuple(int(a > b) for a, b in itertools.pairwise((tokens, *kept[level]))),
            )
            plans[precision, level] = {"constant": constant, "planned": planned}
            for kind, rs in plans[precision, level].items():
                predicted[precision, level, kind] = _seconds(rs, attn_s, mlp_s, tokens)
                runner = apply_tome(_float_model(name, 0, img), rs).to(_dtype(precision))
                variants.append(Variant(model, precision, level, batch, kind, runner))
    _round_robin(variants, rounds, quick, (3, img, img))
    steps = {(v.precision, v.r, v.kind): v.steps_s for v in variants}
    measured = {key: statistics.median(v) for key, v in steps.items()}

    @functools.cache  # each schedule's count serves both precisions' rows
    def flops(rs: tuple[int, ...]) -> int:
        return count_flops(apply_tome(_float_model(name, 0, img), rs), RunContext(), (3, img, img))

    rows, gains = [], []
    for (precision, level), kinds in plans.items():
        const, planned = kinds["constant"], kinds["planned"]
        planned_kept = token_counts_for(planned, tokens, NUM_PREFIX)
        gain = measured[precision, level, "constant"] / measured[precision, level, "planned"]
        gains.append(gain)
        paired = [  # each round timed both: their ratio within a round, min-max over rounds
            c / p
            for c, p in zip(
                steps[precision, level, "constant"], steps[precision, level, "planned"], strict=True
            )
        ]
        rows.append({
            "precision": precision,
            "constant r": level,
            "planned r per block": ",".join(map(str, planned)),
            "tokens kept per block (planned)": ",".join(map(str, planned_kept)),
            "token-blocks planned / constant": round(sum(planned_kept) / sum(kept[level]), 3),
            "FLOPs planned / constant": round(flops(planned) / flops(const), 3),
            "predicted constant / planned": round(
                predicted[precision, level, "constant"]
                / predicted[precision, level, "planned"], 3),
            "ms constant": round(1e3 * measured[precision, level, "constant"], 2),
            "ms planned": round(1e3 * measured[precision, level, "planned"], 2),
            "measured constant / planned": round(gain, 3),
            "per round (min-max)": f"{min(paired):.3f}-{max(paired):.3f}",
        })  # fmt: skip

    curve_rows = _curve_rows(curve, batch, tokens, fewest + WINDOW)
    out_dir = Path("multirun") / "bench" / ("quick" if quick else "")
    figure = _plot(curve, batch, plans, tokens, out_dir / "tome-rows.png")
    typical = statistics.median(gains) if gains else 0.0
    decision = (
        f"on this CPU the planned schedules ran {typical:.3f}x the constant ones (median of the "
        f"{len(gains)} rows, {min(gains, default=0):.3f}-{max(gains, default=0):.3f}; at equal "
        "token-blocks): "
        + (
            f"at least {PAYS}x, so it pays: worth a `token.schedule` that plans per CPU"
            if typical >= PAYS
            else f"under {PAYS}x, so it does not move the front here; `token.schedule` offers "
            "constant and decreasing only"
        )
    )
    notes = [
        f"timm {name}, random weights, {img} px, batch {batch}, {torch.get_num_threads()} "
        f"threads, eager (fp32; bf16 weights cast), torch {torch.__version__}",
        f"curve: block {depth // 2}'s halves at {len(grid)} token counts ({grid[0]}..{tokens}, "
        f"every {grid[1] - grid[0]}), `measure.speed.time_forward`, {rounds} rotating round(s), "
        f"median; the plan reads it linearly interpolated; plot: {figure}",
        "planned: the per-block merge counts that minimise the curve's predicted time while "
        "keeping at least the constant schedule's token-blocks (sum over blocks of tokens "
        f"kept), each block within {WINDOW} tokens of its count and merging where it merges (so "
        "what is merged, and the accuracy, stay near the constant schedule's, and only where "
        "the rows fall changes), exact dynamic programming; both then timed whole as a trial "
        "runs them "
        f"(`apply_tome` with the per-block list; merging in the C++ kernel), {rounds} rotating "
        "round(s), median",
        decision,
        f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
        f"({os.cpu_count()} cores)",
    ]
    return [
        Section("ToMe: a schedule planned on this CPU's row costs vs constant", rows, [], notes),
        Section(
            f"ToMe block halves per row, batch {batch} (the curve the plan reads)",
            curve_rows,
            [],
            [
                "per row: the half's time over batch x tokens; the attention half grows "
                "faster than its rows (attention is quadratic in tokens); a GEMM cliff shows "
                "as a jump between neighbouring counts"
            ],
        ),
    ]


def _curve_rows(
    curve: dict[tuple[str, str, int], float], batch: int, tokens: int, low: int
) -> list[dict[str, Any]]:
    """Per precision and half: us per row at the grid's ends, the spread over `low`..`tokens`
    (the range the constant schedules visit), and the largest jump between neighbouring grid
    counts."""
    rows = []
    for precision in PRECISIONS:
        for half in ("attention", "mlp"):
            grid = sorted(n for p, h, n in curve if (p, h) == (precision, half))
            per_row = {n: 1e6 * curve[precision, half, n] / (batch * n) for n in grid}
            inside = [per_row[n] for n in grid if n >= low]
            jumps = [per_row[b] / per_row[a] for a, b in itertools.pairwise(grid)]
            rows.append({
                "precision": precision,
                "half": half,
                f"us/row at {grid[0]} tokens": round(per_row[grid[0]], 3),
                f"us/row at {tokens} tokens": round(per_row[tokens], 3),
                f"max/min us/row over {low}..{tokens}": round(max(inside) / min(inside), 3),
                "largest jump between neighbours": round(
                    max(jumps, key=lambda j: max(j, 1 / j)), 3),
            })  # fmt: skip
    return rows


def _plot(
    curve: dict[tuple[str, str, int], float],
    batch: int,
    plans: dict[tuple[str, int], dict[str, tuple[int, ...]]],
    tokens: int,
    path: Path,
) -> Path:
    """us per row against rows, per precision and half, with the rows each constant and
    planned schedule's blocks run their MLP on marked along the bottom."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PRECISIONS), figsize=(10, 3.8), sharex=True)
    for ax, precision in zip(np.atleast_1d(axes), PRECISIONS, strict=True):
        for half, color in (("attention", "tab:orange"), ("mlp", "tab:blue")):
            grid = sorted(n for p, h, n in curve if (p, h) == (precision, half))
            rows = [batch * n for n in grid]
            ax.plot(rows, [1e6 * curve[precision, half, n] / r for n, r in zip(grid, rows,
                    strict=True)], marker=".", color=color, label=f"{half} half")  # fmt: skip
        mine = [(level, kind, rs) for (p, level), ks in plans.items() if p == precision
                for kind, rs in ks.items()]  # fmt: skip
        for k, (level, kind, rs) in enumerate(mine):
            kept = [batch * n for n in token_counts_for(rs, tokens, NUM_PREFIX)]
            ax.plot(kept, [0.03 + 0.05 * k] * len(kept), "|", transform=ax.get_xaxis_transform(),
                    color="k" if kind == "constant" else "tab:green", markersize=8,
                    label=f"r={level} {kind}")  # fmt: skip
        ax.set_title(f"{precision}, batch {batch}", fontsize=10)
        ax.set_xlabel("rows (batch x tokens)")
        ax.set_ylabel("us per row")
        ax.set_ylim(0, 1.4 * ax.get_ylim()[1])  # room above the curves for the legend
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=7, loc="upper center", ncol=3)
    return save_figure(fig, path)
