"""The bootstrap bench (#29) on a small slice: three supernets (bootstrapped from the study's
teacher, reordered or not, and from scratch), their subnets on the test split, and the front
each gives after the same sweep, scored on the test split with paired intervals. Plumbing and
properties only: one epoch on 140 images calibrates nothing."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from vitsweep.bench import bootstrap
from vitsweep.hypervolume import hypervolume

pytestmark = pytest.mark.slow


def _interval(text: str) -> tuple[float, float, float]:
    value, lo, hi = (float(x) for x in re.findall(r"[-+]?\d+\.\d+", text))
    return value, lo, hi


def test_quick_run_compares_three_supernets_on_test_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the plot goes under ./multirun/bench/quick
    subnets, fronts = bootstrap.run(quick=True)
    assert [r["subnet"].split()[0] for r in subnets.rows] == ["smallest", "middle", "largest"]
    for row in subnets.rows:
        for v in bootstrap.VARIANTS:
            assert 0 <= row[f"{v} %"] <= 100
        diff, lo, hi = _interval(row["reordered - scratch (pts) [95% CI]"])
        assert diff == pytest.approx(row["reordered %"] - row["scratch %"], abs=0.02)
        assert lo <= diff <= hi
    assert [r["supernet"] for r in fronts.rows] == list(bootstrap.VARIANTS)
    for row in fronts.rows:
        assert 1 <= row["front (chosen on val)"] <= row["distinct candidates"] <= 4
        hv, lo, hi = _interval(row["test hypervolume [95% CI]"])
        assert hv > 0 and lo <= hi
    assert fronts.rows[-1]["minus scratch's [95% CI]"] == "-"
    assert (tmp_path / "multirun" / "bench" / "quick" / "bootstrap.png").stat().st_size > 0


def test_resampled_test_images_move_only_the_accuracies() -> None:
    rng = np.random.default_rng(1)
    flags = [rng.random(200) < p for p in (0.9, 0.7)]
    base_flags = rng.random(200) < 0.8
    values = [(float(flags[0].mean()), 300.0, 40.0), (float(flags[1].mean()), 900.0, 40.0)]
    swept = bootstrap.Swept(
        epochs=1,
        variant="scratch",
        directions=["maximize", "maximize", "minimize"],
        base=(float(base_flags.mean()), 100.0, 80.0),
        base_flags=base_flags,
        points=[{}, {}],
        values=values,
        flags=flags,
        distinct=2,
        seconds=0.0,
    )
    assert swept.hypervolume(np.arange(200)) == pytest.approx(swept.hypervolume())
    idx = rng.integers(0, 200, 200)
    by_hand = hypervolume(
        [(float(flags[0][idx].mean()), 300.0, 40.0), (float(flags[1][idx].mean()), 900.0, 40.0)],
        (float(base_flags[idx].mean()), 100.0, 80.0),
        swept.directions,
    )
    assert swept.hypervolume(idx) == pytest.approx(by_hand)
