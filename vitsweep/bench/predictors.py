"""The predictors of issue #30 checked against measurements they were not fitted on.

`python -m vitsweep.bench.predictors [--quick] [--collect N] [--root DIR]`

- Accuracy: candidates drawn from the experiment's own space (its `params` plus `space_hook`,
  sampled by Optuna's random sampler exactly as the sweeper samples), each built by the trial's
  own `trial.build` (the subnet with inherited supernet weights, ToMe, precision) and scored on
  the whole val split: no training, a few seconds each. `--collect N` appends N more to the
  committed data file (`vitsweep/predict/data/<experiment>_accuracy.json`, which names the CPU,
  threads and torch version it came from); the bench itself only reads that file, so it runs
  from a fresh clone without the supernet. Scored by k-fold cross-validation: every prediction
  is made by a predictor that never saw that candidate.
- Cost: the per-block table (`vitsweep.predict.cost`) is measured on this machine and calibrated
  on `REFERENCES` candidates per precision timed whole; then held-out candidates are built by
  `trial.build` and timed whole by the product's protocol (`measure.measure_throughput` /
  `measure_latency`); the table never sees them. Per precision, both the calibrated prediction
  and the plain sum of parts.

Both: share within +/-10%, Kendall tau (`scipy.stats.kendalltau`), the worst misses with their
configs. JSON goes to `<root>/bench/predictors.json` (`--quick`: `predictors-quick.json`: one
held-out candidate per precision, timed with `measure=quick`, 1 thread at batch 32; the plumbing,
in minutes). The held-out candidates are built from the study's supernet: cached under `--root`
(`multirun/supernets/`), else trained first. Sized for about 15 minutes on an idle 2-core machine
with the supernet cached (`--per-precision 6`; int8 parts compile for seconds each).
Timings taken beside other CPU work are not evidence for the +/-10% claim: the JSON records the
load average before and after.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vitsweep.predict.accuracy import DATA_DIR, AccuracyPredictor, accuracy_records
from vitsweep.predict.candidate import Candidate, candidate
from vitsweep.predict.cost import BlockModel, Cost, CostPredictor, CostTable, Geometry
from vitsweep.search.space import SearchSpace, format_override, parse_space
from vitsweep.spec import TrialSpec

REFERENCES = 3  # candidates per precision the cost predictor is calibrated on (timed whole)
BYTES_SAMPLES = 10  # candidates per precision counted for the surrogate's bytes model

Point = dict[str, Any]


def machine() -> dict[str, Any]:
    """What measured a figure: CPU, threads, torch (as `measure.host.machine_key` keys it)."""
    import torch

    from vitsweep.measure.host import describe

    return {
        "cpu": describe(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ----------------------------------------------------------------------------- the space


@dataclasses.dataclass(frozen=True)
class Study:
    """The experiment's search space and how a point becomes the trial's spec."""

    overrides: tuple[str, ...]
    space: SearchSpace
    base: TrialSpec

    def spec(self, point: Point) -> TrialSpec:
        from vitsweep import config

        lines = [*self.overrides, *(format_override(k, v) for k, v in point.items())]
        return config.trial_spec(config.compose(lines))


def make_study(experiment: str, overrides: Sequence[str] = ()) -> Study:
    from vitsweep import config

    base = (f"experiment={experiment}", "tracking=none", *overrides)
    cfg = config.compose(list(base))
    sweeper = config.sweeper_spec(cfg.hydra.sweeper)
    space = parse_space(sweeper.params, sweeper.space_hook)
    return Study(base, space, config.trial_spec(cfg))


def sample_points(study: Study, n: int, seed: int) -> list[Point]:
    """`n` points as the sweeper's random sampler would propose them (repeats dropped)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out: dict[str, Point] = {}
    while len(out) < n:
        trial = s.ask()
        point = study.space.sample(trial, study.base)
        s.tell(trial, 0.0)
        out.setdefault(json.dumps(point, sort_keys=True, default=str), point)
    return list(out.values())


# -------------------------------------------------------------------------- accuracy data


def val_accuracy(spec: TrialSpec) -> float:
    """The trial's val accuracy, computed as `measure.mode=predicted` computes it (inherited
    weights, uncompiled; int8 as its PT2E program's eager simulation, the same values)."""
    from vitsweep import precision, trial

    built = trial.build(spec, evaluate_only=True)
    judged = precision.accuracy_model(built.model, built.model)
    return trial.accuracy(judged, built.ctx, built.splits.val, spec.measure)


def collect_accuracy(
    experiment: str, n: int, seed: int, root: str, path: Path | None = None
) -> Path:
    """Append `n` new real evaluations to the data file (created with its machine on first use).

    int8 is scored uncompiled (`val_accuracy`: the same quantized maths as the compiled
    program, without minutes of compiling per candidate)."""
    path = path or DATA_DIR / f"{experiment}_accuracy.json"
    study = make_study(experiment, [f"paths.root={root}", "measure.threads=1"])
    data = (
        json.loads(path.read_text())
        if path.exists()
        else {"experiment": experiment, "machine": machine(), "records": []}
    )
    seen = {json.dumps(r["point"], sort_keys=True) for r in data["records"]}
    fresh = [
        p
        for p in sample_points(study, n + len(seen), seed)
        if json.dumps(p, sort_keys=True) not in seen
    ][:n]
    for i, point in enumerate(fresh):
        t0 = time.perf_counter()
        spec = study.spec(point)
        acc = val_accuracy(spec)
        cand = dataclasses.asdict(candidate(spec))
        data["records"].append({"point": point, "candidate": cand, "accuracy": round(acc, 6)})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        print(f"[{i + 1}/{n}] {acc:.4f} in {time.perf_counter() - t0:.1f} s: {point}", flush=True)
    return path


# ------------------------------------------------------------------------------ scoring


def agreement(
    measured: Sequence[float], predicted: Sequence[float], labels: Sequence[Any], worst: int = 5
) -> dict[str, Any]:
    """Share of predictions within +/-10% of the measurement, Kendall tau, and the worst misses
    (relative error, with what was predicted: the config)."""
    from scipy.stats import kendalltau

    m, p = np.asarray(measured, dtype=float), np.asarray(predicted, dtype=float)
    rel = p / m - 1
    order = np.argsort(-np.abs(rel))[:worst]
    tau = float(kendalltau(m, p).statistic) if len(m) > 1 else float("nan")
    return {
        "n": len(m),
        "within_10pct": round(float(np.mean(np.abs(rel) <= 0.10)), 4),
        "kendall_tau": round(tau, 4),
        "median_abs_error_pct": round(100 * float(np.median(np.abs(rel))), 2),
        "worst": [
            {
                "measured": round(float(m[i]), 6),
                "predicted": round(float(p[i]), 6),
                "error_pct": round(100 * float(rel[i]), 2),
                "config": labels[i],
            }
            for i in order
        ],
    }


def accuracy_check(path: Path, folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """k-fold cross-validation of each predictor kind on the data file: every candidate is
    predicted by a predictor fitted on the other folds. Also per precision."""
    from sklearn.model_selection import KFold

    from vitsweep.predict.accuracy import KINDS

    cands, acc, mach = accuracy_records(path)
    points = [r["point"] for r in json.loads(path.read_text())["records"]]
    out: dict[str, Any] = {"data": str(path.name), "machine": mach, "n": len(cands), "kinds": {}}
    for kind in KINDS:
        pred = np.zeros(len(cands))
        t0 = time.perf_counter()
        for train, test in KFold(folds, shuffle=True, random_state=seed).split(acc):
            model = AccuracyPredictor(kind=kind, seed=seed)
            model.fit([cands[i] for i in train], acc[train])
            pred[test] = model.predict([cands[i] for i in test])
        row = agreement(acc, pred, points)
        row["mae_points"] = round(100 * float(np.mean(np.abs(pred - acc))), 3)
        row["fit_s"] = round(time.perf_counter() - t0, 2)
        row["per_precision"] = {}
        for prec in sorted({c.precision for c in cands}):
            idx = [i for i, c in enumerate(cands) if c.precision == prec]
            sub = agreement(acc[idx], pred[idx], [points[i] for i in idx], worst=0)
            row["per_precision"][prec] = {k: sub[k] for k in ("n", "kendall_tau")}
        out["kinds"][kind] = row
    out["accuracy_range"] = [round(float(acc.min()), 4), round(float(acc.max()), 4)]
    return out


# ---------------------------------------------------------------------------------- cost


def measure_whole(spec: TrialSpec) -> tuple[float, float]:
    """(throughput, latency_ms) of the trial's model timed whole by the product's protocol,
    compiled (int8) for the two timed batch sizes only."""
    from vitsweep import measure, trial

    built = trial.build(spec)
    ms = spec.measure
    shape = built.splits.sample_shape
    with measure.thread_scope(ms.threads):
        run_model, ctx, _ = measure.compile_model(
            built.model, built.ctx, ms, shape, (ms.batch_size, 1)
        )
        stats, batch = measure.measure_throughput(run_model, ctx, shape, ms)
        lat = measure.measure_latency(run_model, ctx, shape, ms)
    if batch != ms.batch_size:
        raise RuntimeError(f"measure.batch_size={ms.batch_size}: ran out of memory at it")
    return stats.rate, 1e3 * lat.median_step_s


def modelled_cost(table: CostTable, c: Candidate, batch_size: int) -> Cost:
    """`c`'s cost with each of its blocks predicted by a `BlockModel` fitted on every other
    block the table timed (none of `c`'s own, at either batch): how the model does on blocks
    it never saw. The fixed parts are the table's."""
    p = c.runs_as
    own = {table.block_key(b, p, n) for b in c.blocks() for n in (batch_size, 1)}
    model = BlockModel.fit([s for s in table.timed_blocks() if table.block_key(*s[:3]) not in own])

    def step(batch: int) -> float:
        fixed = table.fixed_s(c.embed_dim, c.head_dim, p, batch)
        return fixed + sum(model.predict(b, p, batch) for b in c.blocks())

    return Cost(throughput=batch_size / step(batch_size), latency_ms=1e3 * step(1))


def block_model_check(table: CostTable) -> dict[str, Any]:
    """Leave-one-out over the timed blocks: each predicted by a `BlockModel` fitted on the
    others, per (precision, batch)."""
    timed = table.timed_blocks()
    out = {}
    for precision, batch in sorted({(p, n) for _, p, n, _ in timed}):
        idx = [i for i, s in enumerate(timed) if s[1:3] == (precision, batch)]
        measured, predicted, labels = [], [], []
        for i in idx:
            model = BlockModel.fit([s for j, s in enumerate(timed) if j != i])
            if not model.covers(precision, batch):
                break  # too few timed blocks to fit without this one
            block = timed[i][0]
            measured.append(timed[i][3])
            predicted.append(model.predict(block, precision, batch))
            labels.append(table.block_key(block, precision, batch))
        if measured:
            out[f"{precision} batch={batch}"] = agreement(measured, predicted, labels, worst=3)
    return out


def study_table(study: Study, root: str) -> CostTable:
    """This machine's cost table for the study's geometry and timing protocol."""
    base = study.base
    geometry = Geometry(
        base.arch.img_size, base.arch.patch_size, base.data.in_chans, _classes(base)
    )
    return CostTable(root, base.measure, geometry, prop_attn=base.token.prop_attn)


def draw(
    study: Study, per_precision: int, seed: int
) -> dict[str, list[tuple[Point, TrialSpec, Candidate]]]:
    """`per_precision` distinct candidates of each precision the space holds, drawn as the
    sweeper's random sampler draws them (the same ones for the same seed)."""
    wanted: dict[str, list[tuple[Point, TrialSpec, Candidate]]] = {}
    seen: set[Candidate] = set()
    for point in sample_points(study, 40 * per_precision, seed):
        prec = str(point.get("precision", study.base.precision.mode))
        spec = study.spec(point)
        c = candidate(spec)
        if c not in seen and len(wanted.setdefault(prec, [])) < per_precision:
            wanted[prec].append((point, spec, c))
            seen.add(c)
    return wanted


def save_data(
    study: Study, experiment: str, root: str, seed: int, references: int, log: Any = print
) -> Path:
    """Write `data/<experiment>_cost.json` (what `Surrogate` prices the space with) from this
    machine's table, after timing what a surrogate cannot predict: the fixed parts of every
    embed dim of the space at every precision, and the baseline's own parts. With the bytes of
    `BYTES_SAMPLES` candidates per precision built whole and counted (their parts timed too, for
    the block model), and the baseline's val accuracy as a trial evaluates it."""
    from vitsweep import config
    from vitsweep.predict.surrogate import cost_file, count_bytes, save_cost_data

    table = study_table(study, root)
    base = study.base
    drawn = draw(study, max(references, BYTES_SAMPLES), seed)
    refs = [c for rows in drawn.values() for _, _, c in rows[:references]]
    CostPredictor(table, base.measure.batch_size, refs)  # the references' whole timings
    sweeper = config.sweeper_spec(config.compose(list(study.overrides)).hydra.sweeper)
    baseline_spec = study.spec(dict(sweeper.baseline))
    baseline = candidate(baseline_spec)
    space = base.arch.space
    assert space is not None  # a supernet study (candidate() checked it)
    for precision in sorted({c.runs_as for rows in drawn.values() for _, _, c in rows}):
        for embed in space.embed_dim:
            for batch in sorted({base.measure.batch_size, 1}):
                table.fixed_s(embed, space.head_dim, precision, batch)
    plain = CostPredictor(table, base.measure.batch_size)
    for c in [baseline, *(c for rows in drawn.values() for _, _, c in rows)]:
        plain.predict(c)  # times its parts: the baseline's, and blocks for the block model
    log(f"cost table: {len(table.entries)} entries ({table.measured} timed now)")
    samples = []
    for rows in drawn.values():
        for _, _, c in rows[:BYTES_SAMPLES]:
            samples.append((c, count_bytes(c, table.geometry, table.prop_attn)))
    samples.append((baseline, count_bytes(baseline, table.geometry, table.prop_attn)))
    acc = val_accuracy(baseline_spec)
    log(f"baseline: val accuracy {acc:.4f}; bytes of {len(samples)} candidates counted")
    return save_cost_data(
        cost_file(experiment),
        table,
        refs,
        samples,
        {"point": dict(sweeper.baseline), "accuracy": round(acc, 6)},
        machine(),
    )


def cost_check(
    study: Study,
    per_precision: int,
    seed: int,
    root: str,
    log: Any = print,
    references: int = REFERENCES,
) -> dict[str, Any]:
    """Held-out candidates (drawn from the space, `per_precision` of each precision the space
    holds), predicted from the per-block table, then timed whole. Predicted twice: as the plain
    sum of parts, and calibrated on `references` other candidates per precision (timed whole by
    the table, with random weights; `CostPredictor`)."""
    base = study.base
    table = study_table(study, root)
    wanted = draw(study, references + per_precision, seed)
    t0 = time.perf_counter()
    refs = [c for drawn in wanted.values() for _, _, c in drawn[:references]]
    plain = CostPredictor(table, base.measure.batch_size)
    calibrated = CostPredictor(table, base.measure.batch_size, refs)
    out: dict[str, Any] = {"per_precision": {}, "references_per_precision": references}
    out["offsets_s"] = {  # what a whole forward takes beyond its parts
        f"{p} batch={b}": round(v, 6) for (p, b), v in calibrated.offsets.items()
    }
    t_table, t_whole = time.perf_counter() - t0, 0.0
    by_precision: dict[str, list[tuple[Any, ...]]] = {}
    for prec, drawn in sorted(wanted.items()):
        rows = by_precision.setdefault(prec, [])
        for point, spec, c in drawn[references:]:
            t0 = time.perf_counter()
            raw, pred = plain.predict(c), calibrated.predict(c)
            t1 = time.perf_counter()
            thr, lat = measure_whole(spec)
            t_table, t_whole = t_table + t1 - t0, t_whole + time.perf_counter() - t1
            rows.append((point, thr, pred, lat, raw, c))
            log(
                f"{prec}: throughput {thr:.0f} predicted {pred.throughput:.0f} (sum "
                f"{raw.throughput:.0f}); latency {lat:.3f} predicted {pred.latency_ms:.3f} ms "
                f"(sum {raw.latency_ms:.3f})  {point}"
            )
        labels = [r[0] for r in rows]
        thr, lat = [r[1] for r in rows], [r[3] for r in rows]
        out["per_precision"][prec] = {
            "throughput": agreement(thr, [r[2].throughput for r in rows], labels),
            "latency_ms": agreement(lat, [r[2].latency_ms for r in rows], labels),
            "sum_of_parts": {
                "throughput": agreement(thr, [r[4].throughput for r in rows], labels),
                "latency_ms": agreement(lat, [r[4].latency_ms for r in rows], labels),
            },
        }
    # Once every held-out candidate's parts are in the table: each candidate again, its blocks
    # predicted by the block model fitted on the other candidates' blocks.
    for prec, row in out["per_precision"].items():
        done = by_precision[prec]
        modelled = [modelled_cost(table, r[5], base.measure.batch_size) for r in done]
        labels = [r[0] for r in done]
        row["block_model"] = {
            "throughput": agreement([r[1] for r in done], [m.throughput for m in modelled], labels),
            "latency_ms": agreement([r[3] for r in done], [m.latency_ms for m in modelled], labels),
        }
    out["block_model_loo"] = block_model_check(table)
    out["table_entries"] = len(table.entries)
    out["table_measured_s"] = round(t_table, 1)
    out["whole_measured_s"] = round(t_whole, 1)
    out["table"] = str(table.path)
    return out


def _classes(spec: TrialSpec) -> int:
    from vitsweep import data

    return data.load(spec.data, data.data_dir(spec.root)).num_classes


# ---------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m vitsweep.bench.predictors", description=__doc__)
    ap.add_argument("--experiment", default="xray")
    ap.add_argument("--root", default="multirun", help="paths.root (bench JSON, cost table)")
    ap.add_argument("--quick", action="store_true", help="1 held-out candidate per precision")
    ap.add_argument("--per-precision", type=int, default=6, help="held-out cost candidates")
    ap.add_argument(
        "--references", type=int, default=REFERENCES, help="cost calibration candidates"
    )
    ap.add_argument("--seed", type=int, default=1000, help="held-out draw (collection: 1)")
    ap.add_argument("--collect", type=int, default=0, help="first measure N more accuracies")
    ap.add_argument("--no-cost", action="store_true", help="the accuracy check alone")
    ap.add_argument(
        "--save",
        action="store_true",
        help="then write data/<experiment>_cost.json from this machine's table (the surrogate "
        "that make bench-search searches)",
    )
    args = ap.parse_args(argv)
    if args.references < 0 or args.per_precision < 1:
        ap.error("--references must be >= 0 and --per-precision >= 1")
    data_file = DATA_DIR / f"{args.experiment}_accuracy.json"
    if args.collect:
        collect_accuracy(args.experiment, args.collect, 1, args.root, data_file)
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average_before": load_average(),
    }
    if data_file.exists():
        result["accuracy"] = accuracy_check(data_file)
        for kind, row in result["accuracy"]["kinds"].items():
            print(
                f"accuracy {kind}: tau {row['kendall_tau']}, MAE {row['mae_points']} pts, "
                f"within 10% {row['within_10pct']} (n={row['n']})"
            )
    if not args.no_cost:
        overrides = [f"paths.root={args.root}"]
        if args.quick:
            overrides += ["measure=quick", "measure.compile=auto"]
        study = make_study(args.experiment, overrides)
        per = 1 if args.quick else args.per_precision
        refs = 1 if args.quick else args.references
        result["cost"] = cost_check(study, per, args.seed, args.root, references=refs)
        result["cost"]["measure"] = dataclasses.asdict(study.base.measure)
        for prec, row in result["cost"]["per_precision"].items():
            for metric in ("throughput", "latency_ms"):
                got, plain = row[metric], row["sum_of_parts"][metric]
                mod = row["block_model"][metric]
                print(
                    f"cost {prec} {metric}: within 10% {got['within_10pct']} (sum of parts "
                    f"{plain['within_10pct']}, block model {mod['within_10pct']}), tau "
                    f"{got['kendall_tau']} ({plain['kendall_tau']}, {mod['kendall_tau']})"
                )
        for group, row in result["cost"]["block_model_loo"].items():
            print(
                f"block model, leave-one-out, {group}: within 10% {row['within_10pct']}, "
                f"tau {row['kendall_tau']} (n={row['n']})"
            )
    result["load_average_after"] = load_average()
    if args.save:
        study = make_study(args.experiment, [f"paths.root={args.root}"])
        print(f"wrote {save_data(study, args.experiment, args.root, args.seed, args.references)}")
    name = "predictors-quick.json" if args.quick else "predictors.json"
    path = Path(args.root) / "bench" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
