"""The hardware-aware ToMe schedule check (#35): its planner is exact (against enumerating
every schedule), moves rows off a slow side when one exists, and the bench's smoke run reports
the planned and constant schedules timed whole. The smoke run is tiny (DeiT-Ti at 112 px,
batch 2, one thread, one round): no figure in it is evidence of speed."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from vitsweep.bench import tome_schedule
from vitsweep.bench.tome_schedule import WINDOW, plan
from vitsweep.tome.merge import max_merge
from vitsweep.tome.schedule import token_counts_for


def _cost(rs: tuple[int, ...], attn: np.ndarray, mlp: np.ndarray, tokens: int) -> float:
    kept = token_counts_for(rs, tokens, 1)
    return sum(attn[n] for n in (tokens, *kept[:-1])) + sum(mlp[n] for n in kept)


def _every_schedule(tokens: int, depth: int):  # type: ignore[no-untyped-def]
    """Every per-block merge list within ToMe's cap (with the class token)."""

    def rec(n: int, prefix: tuple[int, ...]):  # type: ignore[no-untyped-def]
        if len(prefix) == depth:
            yield prefix
            return
        for r in range(max_merge(n, 1) + 1):
            yield from rec(n - r, (*prefix, r))

    yield from rec(tokens, ())


@pytest.mark.parametrize("seed", range(12))
def test_the_plan_is_the_cheapest_schedule_within_its_bounds(seed: int) -> None:
    rng = np.random.default_rng(seed)
    tokens, depth = int(rng.integers(6, 12)), int(rng.integers(1, 4))
    attn, mlp = rng.random(tokens + 1), rng.random(tokens + 1)
    lowest = tuple(int(v) for v in rng.integers(1, tokens // 2, depth))
    highest = tuple(int(lo + rng.integers(0, tokens)) for lo in lowest)
    least = tuple(int(v) for v in rng.integers(0, 2, depth))
    keep = int(rng.integers(depth, depth * tokens // 2 + 1))

    def allowed(rs: tuple[int, ...]) -> bool:
        kept = token_counts_for(rs, tokens, 1)
        return sum(kept) >= keep and all(
            lo <= n <= hi and r >= m
            for n, r, lo, hi, m in zip(kept, rs, lowest, highest, least, strict=True)
        )

    feasible = [rs for rs in _every_schedule(tokens, depth) if allowed(rs)]
    if not feasible:
        with pytest.raises(ValueError, match="no schedule"):
            plan(attn, mlp, tokens, keep, lowest, highest, least)
        return
    got = plan(attn, mlp, tokens, keep, lowest, highest, least)
    assert allowed(got)
    best = min(_cost(rs, attn, mlp, tokens) for rs in feasible)
    assert _cost(got, attn, mlp, tokens) == pytest.approx(best, abs=1e-12)


def test_a_row_count_cliff_moves_the_planned_rows_to_its_fast_side() -> None:
    """MLP half speed below 34 tokens (as oneDNN's AMX bf16 fc2 below 960 rows): the plan, at
    the constant schedule's token-blocks and within the window, runs fewer blocks below it."""
    tokens, depth, r = 50, 12, 2
    n = np.arange(tokens + 1, dtype=float)
    attn = n.copy()
    mlp = np.where(n < 34, 2.0, 1.0) * n
    kept = token_counts_for((r,) * depth, tokens, 1)
    lowest = tuple(k - WINDOW for k in kept)
    highest = tuple(k + WINDOW for k in kept)
    least = tuple(int(a > b) for a, b in itertools.pairwise((tokens, *kept)))
    got = plan(attn, mlp, tokens, sum(kept), lowest, highest, least)
    planned = token_counts_for(got, tokens, 1)
    assert sum(planned) >= sum(kept)
    assert sum(k < 34 for k in planned) < sum(k < 34 for k in kept)
    assert _cost(got, attn, mlp, tokens) < _cost((r,) * depth, attn, mlp, tokens)
    # with no cliff (cost in proportion to tokens) equal token-blocks cost the same but for the
    # last block's output, which no attention reads: a plan can only save that, within the window
    flat = plan(attn, n, tokens, sum(kept), lowest, highest, least)
    saved = _cost((r,) * depth, attn, n, tokens) - _cost(flat, attn, n, tokens)
    assert 0 <= saved <= WINDOW


def test_smoke_run_reports_planned_and_constant_timed_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the figure goes under ./multirun/bench/quick
    plans, curve = tome_schedule.run(
        quick=True, model="DeiT-Ti", batch=2, img=112, threads=1, levels=(2,)
    )
    assert [(r["precision"], r["constant r"]) for r in plans.rows] == [("fp32", 2), ("bf16", 2)]
    constant = token_counts_for((2,) * 12, 50, 1)
    for row in plans.rows:
        kept = [int(v) for v in row["tokens kept per block (planned)"].split(",")]
        rs = [int(v) for v in row["planned r per block"].split(",")]
        assert kept == token_counts_for(rs, 50, 1)
        assert sum(kept) >= sum(constant) and row["token-blocks planned / constant"] >= 1.0
        assert all(abs(a - b) <= WINDOW for a, b in zip(kept, constant, strict=True))
        assert all(r >= 1 for r in rs)  # merges wherever the constant schedule merges
        assert row["ms constant"] > 0 and row["ms planned"] > 0
        ratio = row["ms constant"] / row["ms planned"]
        assert row["measured constant / planned"] == pytest.approx(ratio, rel=0.01, abs=0.01)
    assert {(r["precision"], r["half"]) for r in curve.rows} == {
        (p, h) for p in ("fp32", "bf16") for h in ("attention", "mlp")
    }
    assert all(r["us/row at 50 tokens"] > 0 for r in curve.rows)
    assert (tmp_path / "multirun/bench/quick/tome-rows.png").stat().st_size > 0
    assert any("planned schedules ran" in n for n in plans.notes)
    low, high = (float(v) for v in plans.rows[0]["per round (min-max)"].split("-"))
    assert 0 < low <= high
