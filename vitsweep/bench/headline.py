"""The default study's headline table (from the last `make sweep`), for the README.

Reads `multirun/<study>/report/results.yaml`, which `vitsweep-report` rebuilds from storage; the
target is the paper's claim on the built-in task: one Pareto-optimal candidate with >= 10x
throughput and >= 10x fewer params and FLOPs than the baseline, within 1 accuracy point.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from vitsweep.bench.common import Section, Target


def _study() -> tuple[str, Path]:
    from vitsweep import config

    cfg = config.compose([])
    return str(cfg.name), Path(str(cfg.paths.root))


def run(quick: bool = False) -> list[Section]:
    name, root = _study()
    path = root / name / "report" / "results.yaml"
    if not path.exists():
        return [
            Section(
                title=f"Headline ({name} study)",
                rows=[],
                notes=[f"{path} not found: run `make sweep` first"],
            )
        ]
    results = yaml.safe_load(path.read_text())
    rows = [
        {
            k: r[k]
            for k in (
                "number",
                "accuracy",
                "accuracy_delta_pts",
                "throughput_x",
                "params_x",
                "flops_x",
                "energy_x",
                "energy_source",
            )
        }
        for r in results["headline"]
    ]

    def wins(r: dict) -> bool:
        ratios = [
            r[k] if r[k] is not None else 0.0 for k in ("throughput_x", "params_x", "flops_x")
        ]
        delta = r["accuracy_delta_pts"]
        return min(ratios) >= 10 and delta is not None and delta >= -1.0

    best = max(rows, key=lambda r: (wins(r), r["throughput_x"] or 0), default=None)
    targets = []
    if best is not None:
        targets.append(
            Target(
                f"best front trial {best['number']}: throughput x / params x / FLOPs x / Δacc pts",
                best["throughput_x"] or 0.0,
                ">= 10x, >= 10x, >= 10x, >= -1 pt",
                wins(best),
            )
        )
    return [
        Section(
            title=f"Headline: Pareto front of the `{name}` study vs its baseline (trial "
            f"{results['baseline']})",
            rows=rows,
            targets=targets,
            notes=[
                f"{results['n_complete']} complete trials; energy is "
                f"{', '.join(sorted({r['energy_source'] for r in rows}))}"
            ],
        )
    ]
