"""The study's files under `<root>/<study>/report/`: trials.csv, pareto.csv, pareto.png,
results.yaml. Rebuilt from storage alone, so it can run at any time, for any study."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import yaml

from vitsweep.files import atomic_path, write_text
from vitsweep.track.html import LOG_AXES, _number, write_html
from vitsweep.track.pareto import (
    INTERVAL_KEYS,
    REPORTED_ON,
    SELECTED_ON,
    StudyTable,
    notes,
    panel_pairs,
)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def _label(table: StudyTable, name: str) -> str:
    direction = table.objectives.get(name)
    return f"{name} ({direction})" if direction else ("trial" if name == "number" else name)


def plot_front(table: StudyTable, path: Path) -> None:
    """One panel per objective pair, in a grid of at most 3 columns (readable on a slide): all
    complete trials, the front on top, the baseline marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    pairs = panel_pairs(table)
    ncols = min(3, len(pairs))
    nrows = math.ceil(len(pairs) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.8 * ncols, 4.0 * nrows), squeeze=False)
    done = [r for r in table.rows if r["state"] == "COMPLETE"]
    cells = [ax for row in axes for ax in row]
    for ax in cells[len(pairs) :]:
        ax.set_visible(False)
    for ax, (x, y) in zip(cells, pairs, strict=False):
        rest = [r for r in done if not r["is_pareto"]]
        front = sorted((r for r in done if r["is_pareto"]), key=lambda r: r[x])
        ax.scatter([r[x] for r in rest], [r[y] for r in rest], c="0.7", s=18, label="trials")
        ax.scatter([r[x] for r in front], [r[y] for r in front], c="C3", s=30, label="Pareto front")
        for r in front:
            ax.annotate(
                str(r["number"]),
                (r[x], r[y]),
                fontsize=8,
                xytext=(3, 3),
                textcoords="offset points",
            )
        for r in done:
            if r["baseline"]:
                edge = "C3" if r["is_pareto"] else "none"
                ax.scatter(
                    [r[x]], [r[y]], marker="*", s=180, c="C0", edgecolors=edge, label="baseline"
                )
        ax.set_xlabel(_label(table, x), fontsize=11)
        ax.set_ylabel(_label(table, y), fontsize=11)
        for axis, name, scale in ((ax.xaxis, x, ax.set_xscale), (ax.yaxis, y, ax.set_yscale)):
            if name in LOG_AXES:  # 1-2-5 ticks as 2k, 5k: matplotlib's 2x10^3 labels collided
                scale("log")
                axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                axis.set_major_formatter(FuncFormatter(lambda v, _: _number(v)))
                axis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3)
    cells[0].legend(loc="best", fontsize=9)
    if table.energy_derived and "energy" in table.objectives and len(table.hv_objectives) > 1:
        fig.suptitle("energy is an estimate (watts / throughput): no panel of its own", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


# A mixed plan under a latency budget predicts its batch-1 latency: the front shows that beside
# what the trial measured, so a user sees how far the per-machine table can be trusted; and both
# again as timed side by side with the all-8-bit program the prediction rests on, which the
# host's drift between planning and measuring does not reach.
PREDICTED_KEYS = (
    "predicted_latency_ms",
    "latency_ms",
    "side_by_side_predicted_ms",
    "side_by_side_latency_ms",
)


def _known(value: Any) -> Any:
    """None (YAML null) for a number not measured: NaN, as a predicted trial's test accuracy
    (left to `vitsweep-confirm`), read as `.nan` beside the null intervals, in the front's
    entries and the headline's alike."""
    return None if isinstance(value, float) and math.isnan(value) else value


def write_report(table: StudyTable, out_dir: Path, study_name: str, extra: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(out_dir / "trials.csv", table.rows)
    _write_csv(out_dir / "pareto.csv", [r for r in table.rows if r["is_pareto"]])
    if any(r["state"] == "COMPLETE" for r in table.rows):
        plot_front(table, out_dir / "pareto.png")
        write_html(table, table.hypervolume, out_dir / "report.html", f"vitsweep: {study_name}")
    results = {
        "study": study_name,
        **extra,
        "objectives": table.objectives,
        "n_trials": len(table.rows),
        "n_complete": sum(r["state"] == "COMPLETE" for r in table.rows),
        "baseline": table.baseline,
        **({"baseline_note": table.baseline_note} if table.baseline_note else {}),
        "n_infeasible": sum(r["feasible"] is False for r in table.rows),
        # what the budget bought: COMPLETE trials that measured a configuration of their own
        "n_candidates": sum(
            r["state"] == "COMPLETE" and r["duplicate_of"] is None for r in table.rows
        ),
        # COMPLETE trials that repeated an earlier one's configuration: told, not run, not
        # counted toward the budget
        "n_duplicates": sum(r["duplicate_of"] is not None for r in table.rows),
        "pareto": [
            {
                **{
                    k: _known(r.get(k))
                    for k in ("number", *table.objectives, *INTERVAL_KEYS, *PREDICTED_KEYS)
                    if k in r
                    and (k not in PREDICTED_KEYS or r.get("predicted_latency_ms") is not None)
                },
                **({"predicted": r["predicted"]} if r.get("predicted") else {}),
                # a mixed member's plan, as `precision.layer_bits` takes it
                **({"mixed_bits": r["mixed_bits"]} if r.get("mixed_bits") is not None else {}),
            }
            for r in table.rows
            if r["is_pareto"]
        ],
        "selected_on": SELECTED_ON,
        "reported_on": REPORTED_ON,
        "headline": [{k: _known(v) for k, v in row.items()} for row in table.headline],
        "hypervolume": table.hypervolume[-1] if table.hypervolume else None,
        "hypervolume_objectives": table.hv_objectives,
        "energy_derived": table.energy_derived,
        "notes": notes(table),
    }
    write_text(out_dir / "results.yaml", yaml.safe_dump(results, sort_keys=False))
    return out_dir


def write_confirmed(
    rows: list[dict[str, Any]], out_dir: Path, summary: dict[str, Any] | None = None
) -> Path:
    """The confirmation pass beside the front: confirmed.csv and confirmed.yaml (`summary`:
    what is said of the whole front, its confirmed hypervolume)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(out_dir / "confirmed.csv", rows)
    doc = {
        "reported_on": REPORTED_ON,
        "notes": [
            "Front members rebuilt from their stored configs and measured again: test accuracy "
            "with a 95% Wilson interval, paired with the baseline on the same test images (exact "
            "McNemar 95% interval), throughput with more repeats, its ratio (throughput_x) "
            "against the baseline timed again just before and after it "
            "(baseline_throughput_beside); standalone_*: the same shape "
            "trained from scratch with the same recipe (retrain=K)."
        ],
        **(summary or {}),
        "confirmed": rows,
    }
    write_text(out_dir / "confirmed.yaml", yaml.safe_dump(doc, sort_keys=False))
    return out_dir / "confirmed.yaml"


def confirmed_ratios(report: Path, results: dict[str, Any]) -> dict[int, float]:
    """Each front member's throughput ratio from `confirmed.yaml`, when that file was made from
    this very study (its sweep throughputs are the front's); else nothing."""
    path = report / "confirmed.yaml"
    if not path.exists():
        return {}
    rows = yaml.safe_load(path.read_text()).get("confirmed") or []
    swept = {p["number"]: p.get("throughput") for p in results.get("pareto", [])}
    by_number = {r["number"]: r for r in rows}
    members = [n for n in swept if n != results.get("baseline")]
    if not members or any(
        n not in by_number or by_number[n].get("sweep_throughput") != swept[n] for n in members
    ):
        return {}
    return {n: by_number[n]["throughput_x"] for n in members}
