"""What every benchmark section returns, so `python -m vitsweep.bench` can print, save and
put it in the README the same way."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Target:
    name: str  # e.g. "tome r=13 / stock"
    value: float
    goal: str  # e.g. ">= 1.7"
    met: bool


@dataclass
class Section:
    title: str
    rows: list[dict[str, Any]]  # the table: one dict per row, same keys
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # machine, settings, caveats
    summary: str = ""  # one sentence for the README's first paragraph (the headline section's)


def save_figure(fig: Any, path: Path) -> Path:
    """Write a matplotlib figure as a PNG (parents created) and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def median_over(fn: Callable[[], float], repeats: int) -> tuple[float, list[float]]:
    """Median of `repeats` calls of `fn` and the raw values (quote medians, keep the spread)."""
    values = [fn() for _ in range(repeats)]
    return statistics.median(values), values


def quick_overrides(root: str) -> list[str]:
    """`--quick` for sections that run the default study's setting: a small slice of the data,
    one epoch, in a scratch root, so the plumbing runs without the calibration's cost."""
    return [
        f"paths.root={root}",
        "data.samples_per_class=20",
        "data.val_size=140",
        "data.test_size=350",
        "train.epochs=1",
        "train.progress=false",
    ]
