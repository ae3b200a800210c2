"""Sampler benchmark (issue #10): which sampler, and how many trials, does `make sweep` need?

`python -m vitsweep.bench.search [--quick] [--experiment xray]` (the `make bench-search` target).

The product's space is conditional (heads and MLP ratio per layer, up to the sampled depth): far
too many points to enumerate. The bench therefore uses a documented, flat sub-grid of it that
every axis of the study spans:

- supernet experiments: every `arch.embed_dim` x every `arch.depth` x one `arch.num_heads` for
  all layers (every choice) x one `arch.mlp_ratio` for all layers (the space's smallest and
  largest choice only: the middle one costs a third more evaluations and adds no new corner);
- x every choice of the experiment's own `hydra.sweeper.params` (xray: `token.r` 0/2/4/8 x
  `precision` fp32/bf16/int8).

For xray that is 3 x 4 x 3 x 2 x 4 x 3 = 864 points. Every point, and the experiment's baseline
trial, is evaluated once with `trial.run` (the supernet is trained once and cached by
`vitsweep.models`) and cached as a line of JSON under `<paths.root>/bench/search_cache/`, so a
repeated or interrupted run evaluates only what is missing. Throughput is measured, so every
evaluation uses `measure=quick` (1 thread, short timing windows): the cached numbers are the
ground truth of the bench, not the product's careful measurements.

The samplers search the *same* grid (one categorical Optuna param per axis), so the exact front
of the grid is the best any of them can reach. Each one is the sampler the sweeper builds
(`vitsweep.search.samplers.make_sampler`, with the experiment's startup trials and population),
driven by ask/tell as `StudyLoop` drives it: the baseline is enqueued as trial 0 without params,
as `open_study` does, and counts towards the budget. Score after n complete trials: hypervolume
of the trials so far (baseline-normalized, `vitsweep.hypervolume`) / hypervolume of the
whole grid plus the baseline.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import itertools
import json
import os
import random
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution

from vitsweep import record
from vitsweep.bench.common import Section, Target, save_figure
from vitsweep.hypervolume import hypervolume, normalized_losses
from vitsweep.search.samplers import make_sampler
from vitsweep.search.space import SearchSpace, format_override, parse_space
from vitsweep.search.spec import SamplerSpec
from vitsweep.spec import ConfigError, TrialSpec

SAMPLERS = ("tpe", "nsga2", "gp", "random")
BUDGETS = (10, 20, 40, 80)
SEEDS = 5
TARGET_FRACTION = 0.95  # of the exact front's hypervolume ...
TARGET_GRID_SHARE = 0.15  # ... within this share of the grid's size
# Every evaluation is timed with the quick protocol (1 thread, lock off; measured: 865 in 14 min,
# median 0.9 s); trial.run is the product's, so accuracy and cost are computed as in a study.
BENCH_OVERRIDES = ("measure=quick", "tracking=none")
# Variant rows: the same sampler with the baseline kept out of the study (see `run_sampler`).
NO_BASELINE_SUFFIX = " (baseline not told)"

# ----------------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class Grid:
    """The enumerable sub-grid of one experiment's study, and how to evaluate a point of it."""

    experiment: str
    overrides: tuple[str, ...]  # composed before every point's own overrides
    axes: dict[str, tuple[Any, ...]]  # Optuna param name (a Hydra key) -> choices, sampling order
    baseline: dict[str, Any]  # overrides of the study's trial 0
    objectives: dict[str, str]
    sampler: SamplerSpec  # the experiment's sampler settings (startup trials, population)
    base: TrialSpec  # the composed config without any point's overrides
    root: Path  # paths.root: the cache lives under <root>/bench/search_cache/

    @property
    def size(self) -> int:
        return int(np.prod([len(c) for c in self.axes.values()]))

    def points(self) -> list[dict[str, Any]]:
        """Every grid point, as the overrides a sweeper trial would get."""
        names = list(self.axes)
        return [
            dict(zip(names, combo, strict=True)) for combo in itertools.product(*self.axes.values())
        ]

    def space(self) -> SearchSpace:
        """The flat Optuna space of the grid: one categorical param per axis, no hook."""
        return SearchSpace(
            {name: CategoricalDistribution(list(c)) for name, c in self.axes.items()}, {}, None
        )

    @functools.cached_property
    def context(self) -> dict[str, Any]:
        """What besides the point decides its metrics: the composed config (data, train, space,
        measure protocol, seed) and the bench's overrides. Part of every cache key."""
        spec = dataclasses.asdict(self.base)
        spec.pop("root")
        spec.pop("trial_number")
        return {"experiment": self.experiment, "overrides": list(self.overrides), "spec": spec}

    def key(self, point: dict[str, Any]) -> str:
        text = json.dumps({"context": self.context, "point": point}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:20]


def _choices(name: str, dist: Any) -> tuple[Any, ...]:
    if isinstance(dist, CategoricalDistribution):
        return tuple(dist.choices)
    if isinstance(dist, IntDistribution) and not dist.log:
        return tuple(range(dist.low, dist.high + 1, dist.step))
    raise ConfigError(
        f"hydra.sweeper.params.{name}: the search bench needs choice() or range(), not interval()"
    )


def make_grid(experiment: str = "xray", overrides: Sequence[str] = ()) -> Grid:
    """The sub-grid of `experiment` (see the module docstring for its definition)."""
    from vitsweep import config  # composing with Hydra is the doorway's job

    bench = (f"experiment={experiment}", *BENCH_OVERRIDES, *overrides)
    cfg = config.compose(list(bench))
    sweeper = config.sweeper_spec(cfg.hydra.sweeper)
    base = config.trial_spec(cfg)
    axes: dict[str, tuple[Any, ...]] = {}
    space = base.arch.space
    if base.arch.kind == "supernet" and space is not None:
        mlp = sorted({min(space.mlp_ratio), max(space.mlp_ratio)})
        axes["arch.embed_dim"] = tuple(space.embed_dim)
        axes["arch.depth"] = tuple(space.depth)
        axes["arch.num_heads"] = tuple(space.num_heads)
        axes["arch.mlp_ratio"] = tuple(float(m) for m in mlp)
    flat = parse_space(sweeper.params)  # the study's own params (no hook: the grid is flat)
    for name, dist in flat.distributions.items():
        axes[name] = _choices(name, dist)
    fixed = tuple(format_override(k, v) for k, v in flat.fixed.items())
    return Grid(
        experiment=experiment,
        overrides=(*bench, *fixed),
        axes=axes,
        baseline=dict(sweeper.baseline),
        objectives=dict(sweeper.objectives),
        sampler=sweeper.sampler,
        base=base,
        root=Path(base.root),
    )


# ----------------------------------------------------------------------------------- the cache


class EvalCache:
    """Evaluations as JSON lines, one appended (flushed and fsynced) as each one completes.

    Append-only so that an interrupted run loses at most the evaluation in progress: a torn
    last line is skipped when reading and closed with a newline before the next append.
    Keys hash the point and its context (`Grid.key`), so one file can hold several configs.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                    self.entries[entry["key"]] = entry
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line torn by an interruption

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def put(self, key: str, entry: dict[str, Any]) -> None:
        entry = {"key": key, **entry}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
            f.write((json.dumps(entry, default=str) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
        self.entries[key] = entry


def cache_path(grid: Grid) -> Path:
    return grid.root / "bench" / "search_cache" / f"{grid.experiment}.jsonl"


@dataclass
class Evaluations:
    """The grid's metrics (and the baseline's), and what this call had to compute."""

    baseline: dict[str, Any]  # the baseline trial's cache entry
    points: list[dict[str, Any]]  # one cache entry per grid point asked for, in grid order
    evaluated: int  # evaluations run by this call
    reused: int  # evaluations found in the cache
    seconds: float  # wall time of this call's evaluations

    def trial_seconds(self) -> float:
        """Evaluation time of every point and the baseline, whenever they were evaluated."""
        return sum(float(e.get("seconds", 0.0)) for e in [self.baseline, *self.points])

    def median_seconds(self) -> float:
        return statistics.median(
            float(e.get("seconds", 0.0)) for e in [self.baseline, *self.points]
        )

    def table(self) -> dict[str, dict[str, Any]]:
        """Cache entries by the JSON of their point: what a sampler's trial looks up."""
        return {point_id(e["point"]): e for e in self.points}


def point_id(point: dict[str, Any]) -> str:
    return json.dumps(point, sort_keys=True)


def evaluate_point(grid: Grid, point: dict[str, Any]) -> dict[str, Any]:
    """One evaluation: compose the point's overrides as the sweeper's job would, run the trial."""
    from vitsweep import config, trial

    lines = [*grid.overrides, *(format_override(k, v) for k, v in point.items())]
    t0 = time.perf_counter()
    try:
        metrics = trial.run(config.trial_spec(config.compose(lines))).as_dict()
    except (ConfigError, RuntimeError, ValueError) as e:
        return {"point": point, "error": f"{type(e).__name__}: {e}", "seconds": 0.0}
    return {"point": point, "metrics": metrics, "seconds": round(time.perf_counter() - t0, 3)}


def evaluate_grid(
    grid: Grid,
    points: Sequence[dict[str, Any]] | None = None,
    cache: EvalCache | None = None,
    progress: Callable[[str], None] | None = None,
) -> Evaluations:
    """Evaluate the baseline and `points` (default: the whole grid), reusing the cache.

    Missing points are evaluated in a shuffled (seeded) order, so that load from other
    processes drifting over the run spreads over all axes instead of biasing one corner.
    """
    cache = cache if cache is not None else EvalCache(cache_path(grid))
    points = list(grid.points() if points is None else points)
    todo = [p for p in [grid.baseline, *points] if cache.get(grid.key(p)) is None]
    order = list(range(len(todo)))
    random.Random(0).shuffle(order)
    t0 = time.perf_counter()
    for done, i in enumerate(order, 1):
        entry = evaluate_point(grid, todo[i])
        cache.put(grid.key(todo[i]), entry)
        if progress is not None:
            took = time.perf_counter() - t0
            eta = took / done * (len(todo) - done)
            progress(f"evaluated {done}/{len(todo)} ({took:.0f} s, ~{eta:.0f} s left)")
    entries = [cache.get(grid.key(p)) for p in points]
    base = cache.get(grid.key(grid.baseline))
    assert base is not None and all(e is not None for e in entries)
    return Evaluations(
        baseline=base,
        points=entries,  # type: ignore[arg-type]
        evaluated=len(todo),
        reused=len(points) + 1 - len(todo),
        seconds=time.perf_counter() - t0,
    )


# ------------------------------------------------------------------------ front and samplers


def objective_values(grid: Grid, entry: dict[str, Any]) -> tuple[float, ...] | None:
    if "metrics" not in entry:
        return None
    return tuple(float(entry["metrics"][name]) for name in grid.objectives)


@dataclass
class Front:
    """The exact front of the grid plus the baseline, and the hypervolume every run is scored by."""

    baseline: tuple[float, ...]
    directions: list[str]
    hypervolume: float
    points: list[dict[str, Any]]  # the Pareto-optimal grid points (the baseline may be too)
    baseline_on_front: bool

    def fraction(self, values: list[tuple[float, ...]]) -> float:
        return hypervolume(values, self.baseline, self.directions) / self.hypervolume


def pareto_mask(losses: np.ndarray) -> np.ndarray:
    """Rows no other row dominates (all objectives minimized); duplicates all stay."""
    keep = np.ones(len(losses), dtype=bool)
    for i, row in enumerate(losses):
        dominated = np.all(losses <= row, axis=1) & np.any(losses < row, axis=1)
        keep[i] = not dominated.any()
    return keep


def exact_front(grid: Grid, ev: Evaluations) -> Front:
    base = objective_values(grid, ev.baseline)
    if base is None:
        raise RuntimeError(f"the baseline trial failed: {ev.baseline.get('error')}")
    directions = list(grid.objectives.values())
    ok = [(e["point"], v) for e in ev.points if (v := objective_values(grid, e)) is not None]
    values = [base, *(v for _, v in ok)]
    mask = pareto_mask(normalized_losses(values, base, directions))
    return Front(
        baseline=base,
        directions=directions,
        hypervolume=hypervolume(values, base, directions),
        points=[p for (p, _), on in zip(ok, mask[1:], strict=True) if on],
        baseline_on_front=bool(mask[0]),
    )


@dataclass
class Run:
    """One sampler, one seed: the hypervolume fraction after each complete trial."""

    sampler: str
    seed: int
    tell_baseline: bool
    fractions: list[float]  # fractions[n-1]: after n complete trials, the baseline included
    sampler_s: float  # time spent inside Optuna (ask + suggest + tell), lookups excluded
    distinct: int  # distinct grid points visited

    @property
    def label(self) -> str:
        return self.sampler + ("" if self.tell_baseline else NO_BASELINE_SUFFIX)

    def at(self, budget: int) -> float:
        return self.fractions[min(budget, len(self.fractions)) - 1]


def run_sampler(
    grid: Grid,
    ev: Evaluations,
    front: Front,
    name: str,
    seed: int,
    n_trials: int,
    tell_baseline: bool = True,
) -> Run:
    """Drive the product's sampler over the cached grid for `n_trials` complete trials.

    tell_baseline=True is what the product does: the baseline is enqueued as trial 0 without
    params and counts towards the budget. False keeps it out of the study (the sampler sees grid
    points only) while still counting it in the budget and the hypervolume. The two give the
    same trials since `make_sampler` hides the baseline from model-based samplers
    (`BaselineBlind`); before that, gp and nsga2 with the baseline told were random search.
    """
    spec = dataclasses.replace(grid.sampler, name=name, seed=seed)
    space = grid.space()
    table = ev.table()
    values: list[tuple[float, ...]] = []
    fractions: list[float] = []
    seen: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-feature warnings of gp and friends
        sampler = make_sampler(spec, space)
        study = optuna.create_study(directions=front.directions, sampler=sampler)
        if tell_baseline:
            study.enqueue_trial({}, user_attrs={record.BASELINE: True})
        else:
            values.append(front.baseline)
            fractions.append(front.fraction(values))
        busy = 0.0  # seconds inside Optuna: ask, suggest, tell (not lookups or hypervolumes)
        while len(values) < n_trials:
            t0 = time.perf_counter()
            trial = study.ask()
            baseline = record.is_baseline(trial)
            point = None if baseline else space.sample(trial, grid.base)
            busy += time.perf_counter() - t0
            value = (
                front.baseline if point is None else objective_values(grid, table[point_id(point)])
            )
            t0 = time.perf_counter()
            if value is None:  # a failed evaluation: FAIL, as the sweeper records it
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, list(value))
            busy += time.perf_counter() - t0
            if value is None:
                continue
            if point is not None:
                seen.add(point_id(point))
            values.append(value)
            fractions.append(front.fraction(values))
    return Run(name, seed, tell_baseline, fractions, busy, len(seen))


# ------------------------------------------------------------------------------- the summary


def summarize(runs: list[Run], budgets: Sequence[int]) -> dict[str, dict[int, dict[str, float]]]:
    """label -> budget -> median/min/max of the fraction over seeds."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for label in dict.fromkeys(r.label for r in runs):
        mine = [r for r in runs if r.label == label]
        out[label] = {
            b: {
                "median": statistics.median(r.at(b) for r in mine),
                "min": min(r.at(b) for r in mine),
                "max": max(r.at(b) for r in mine),
            }
            for b in budgets
        }
    return out


def beats(a: float, b: float) -> bool:
    """Better than random's median, or both at the exact front (nothing left to beat)."""
    return a > b or (a >= 1 - 1e-12 and b >= 1 - 1e-12)


@dataclass
class Verdict:
    sampler: str | None  # the recommended default; None: nobody met the target
    n_trials: int | None  # the smallest budget at which its median reaches the target
    meets: dict[str, bool]  # per sampler: target met (fraction within the grid share, > random)
    reason: str


def recommend(
    table: dict[str, dict[int, dict[str, float]]], budgets: Sequence[int], grid_size: int
) -> Verdict:
    """The target of issue #10: >= 95% of the exact hypervolume within 15% of the grid's size,
    and a better median than random at every budget. Among samplers that meet it, the one that
    gets there with the fewest trials wins (ties: the higher median there, then over budgets)."""
    allowed = [b for b in budgets if b <= TARGET_GRID_SHARE * grid_size]
    meets: dict[str, bool] = {}
    first: dict[str, int] = {}
    for label, row in table.items():
        if label == "random" or NO_BASELINE_SUFFIX in label:
            continue
        reach = [b for b in allowed if row[b]["median"] >= TARGET_FRACTION]
        over_random = all(beats(row[b]["median"], table["random"][b]["median"]) for b in budgets)
        meets[label] = bool(reach) and over_random
        if meets[label]:
            first[label] = reach[0]
    if not first:
        best = max(meets, key=lambda s: sum(table[s][b]["median"] for b in budgets))
        return Verdict(
            None,
            None,
            meets,
            f"no sampler met the target; the best over all budgets is {best}",
        )

    def rank(s: str) -> tuple:
        return (
            first[s],
            -table[s][first[s]]["median"],
            -sum(table[s][b]["median"] for b in budgets),
        )

    pick = min(first, key=rank)
    return Verdict(
        pick,
        first[pick],
        meets,
        f"{pick} reaches a median {table[pick][first[pick]]['median']:.3f} of the exact "
        f"hypervolume after {first[pick]} trials ({first[pick] / grid_size:.1%} of the grid) and "
        "beats random at every budget",
    )


def first_reaching(runs: list[Run], label: str, goal: float) -> int | None:
    """The smallest n at which the median over seeds reaches `goal` (None: never)."""
    mine = [r for r in runs if r.label == label]
    n_max = min(len(r.fractions) for r in mine)
    for n in range(1, n_max + 1):
        if statistics.median(r.fractions[n - 1] for r in mine) >= goal:
            return n
    return None


def plot(runs: list[Run], front_share: int, path: Path, title: str) -> Path:
    """Median fraction vs trials per sampler, min-max over seeds shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label in dict.fromkeys(r.label for r in runs):
        curves = np.array([r.fractions for r in runs if r.label == label])
        n = np.arange(1, curves.shape[1] + 1)
        style = "--" if NO_BASELINE_SUFFIX in label else "-"
        (line,) = ax.plot(n, np.median(curves, axis=0), style, label=label, lw=1.6)
        ax.fill_between(
            n, curves.min(axis=0), curves.max(axis=0), color=line.get_color(), alpha=0.12
        )
    ax.axhline(TARGET_FRACTION, color="grey", lw=0.8, ls=":")
    n_max = max(len(r.fractions) for r in runs)
    if front_share <= n_max:
        ax.axvline(front_share, color="grey", lw=0.8, ls=":")
    title += f"; {TARGET_GRID_SHARE:.0%} of the grid = {front_share} trials"
    ax.set_xlim(1, n_max)
    ax.set_xlabel("complete trials (baseline included)")
    ax.set_ylabel("fraction of the exact front's hypervolume")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{title}\n(median, min–max shaded; dotted: {TARGET_FRACTION:.0%})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


# ------------------------------------------------------------------------------------ the run


@dataclass
class Result:
    grid: Grid
    evaluations: Evaluations
    front: Front
    runs: list[Run]
    budgets: tuple[int, ...]
    table: dict[str, dict[int, dict[str, float]]]
    verdict: Verdict
    sampler_seconds: dict[str, float] = field(default_factory=dict)  # label -> s per trial
    seeds: int = SEEDS

    def sections(self) -> list[Section]:
        g, ev = self.grid, self.evaluations
        rows = []
        for label, row in self.table.items():
            cells: dict[str, Any] = {"sampler": label}
            for b in self.budgets:
                c = row[b]
                cells[f"n={b}"] = f"{c['median']:.3f} ({c['min']:.2f}–{c['max']:.2f})"
            cells["first n at 95% (median)"] = (
                first_reaching(self.runs, label, TARGET_FRACTION) or "—"
            )
            cells["sampler ms/trial"] = round(1000 * self.sampler_seconds[label], 1)
            rows.append(cells)
        share = int(TARGET_GRID_SHARE * g.size)
        targets = []
        v = self.verdict
        for label, ok in v.meets.items():
            allowed = [b for b in self.budgets if b <= share]
            best = max((self.table[label][b]["median"] for b in allowed), default=0.0)
            targets.append(
                Target(
                    f"{label}: median fraction within {share} trials ({TARGET_GRID_SHARE:.0%} of "
                    "the grid), and above random at every budget",
                    best,
                    f">= {TARGET_FRACTION}, > random at {', '.join(map(str, self.budgets))}",
                    ok,
                )
            )
        axes = " x ".join(f"{k} {{{', '.join(map(str, c))}}}" for k, c in g.axes.items())
        base = " ".join(format_override(k, x) for k, x in g.baseline.items()) or "the base config"
        notes = [
            f"grid: {axes} = {g.size} points"
            + (
                " (one heads and one MLP ratio for all layers)"
                if "arch.num_heads" in g.axes
                else ""
            )
            + ", "
            f"each evaluated once with {', '.join(g.overrides)}; baseline = "
            f"{base}",
            f"exact front: {len(self.front.points)} grid points"
            + (" plus the baseline" if self.front.baseline_on_front else "")
            + f", hypervolume {self.front.hypervolume:.4g} (baseline alone: 1)",
            f"cells: median fraction of the exact hypervolume over seeds 0–{self.seeds - 1} "
            "(min–max), after n complete trials, the enqueued baseline trial 0 included",
            f"evaluations: {ev.evaluated} run now ({ev.seconds:.0f} s), {ev.reused} from the cache "
            f"({cache_path(g)}); trial.run took {ev.trial_seconds():.0f} s for all "
            f"{len(ev.points) + 1} (median {ev.median_seconds():.2f} s)",
            f"recommendation: {v.reason}"
            + (f"; default sampler `{v.sampler}`, `n_trials: {v.n_trials}`" if v.sampler else ""),
        ]
        startup = g.sampler.n_startup_trials
        notes += [
            f"tpe and gp draw their first {startup} trials after the baseline at random, nsga2 its "
            f"first generation ({g.sampler.population_size}): up to n={startup + 1} a lead over "
            "random is seed luck",
            "the product's space is conditional (heads and MLP ratio per layer), far larger than "
            "this grid; the recommendation assumes the samplers' ranking carries over",
        ]
        if any(NO_BASELINE_SUFFIX in r.label for r in self.runs):
            notes.append(
                f"rows marked '{NO_BASELINE_SUFFIX.strip()}': the same sampler with the baseline "
                "kept out of the Optuna study (still counted in n and the hypervolume)"
            )
        return [
            Section(
                title=f"Sampler benchmark: fraction of the exact front's hypervolume "
                f"({g.experiment}, {g.size}-point grid)",
                rows=rows,
                targets=targets,
                notes=notes,
            )
        ]

    def data(self) -> dict[str, Any]:
        return {
            "experiment": self.grid.experiment,
            "grid": {k: list(c) for k, c in self.grid.axes.items()},
            "grid_size": self.grid.size,
            "baseline": self.grid.baseline,
            "objectives": self.grid.objectives,
            "exact_hypervolume": self.front.hypervolume,
            "front": self.front.points,
            "baseline_on_front": self.front.baseline_on_front,
            "evaluated": self.evaluations.evaluated,
            "reused": self.evaluations.reused,
            "evaluation_seconds": self.evaluations.seconds,
            "trial_run_seconds_total": self.evaluations.trial_seconds(),
            "budgets": list(self.budgets),
            "table": {k: {str(b): c for b, c in v.items()} for k, v in self.table.items()},
            "recommendation": dataclasses.asdict(self.verdict),
            "sampler_seconds_per_trial": self.sampler_seconds,
            "runs": [dataclasses.asdict(r) for r in self.runs],
        }


def benchmark(
    experiment: str = "xray",
    overrides: Sequence[str] = (),
    samplers: Sequence[str] = SAMPLERS,
    seeds: int = SEEDS,
    budgets: Sequence[int] = BUDGETS,
    variants: Sequence[str] = (),
    progress: Callable[[str], None] | None = None,
) -> Result:
    """Evaluate (or reuse) the grid, then run every sampler x seed up to the largest budget.

    `variants`: samplers also run with the baseline kept out of the study (see `run_sampler`).
    """
    grid = make_grid(experiment, overrides)
    ev = evaluate_grid(grid, progress=progress)
    front = exact_front(grid, ev)
    n = max(budgets)
    runs, seconds = [], {}
    plan = [(s, True) for s in samplers] + [(s, False) for s in variants]
    for name, tell in plan:
        t0 = time.perf_counter()
        mine = [run_sampler(grid, ev, front, name, seed, n, tell) for seed in range(seeds)]
        runs += mine
        seconds[mine[0].label] = sum(r.sampler_s for r in mine) / (seeds * n)
        if progress is not None:
            progress(
                f"{mine[0].label}: {seeds} seeds x {n} trials in {time.perf_counter() - t0:.0f} s"
            )
    table = summarize(runs, budgets)
    verdict = recommend(table, budgets, grid.size)
    return Result(grid, ev, front, runs, tuple(budgets), table, verdict, seconds, seeds)


def run(quick: bool = False) -> list[Section]:
    """The `python -m vitsweep.bench` interface (`--only search`)."""
    return _main_result(quick, "smoke" if quick else "xray", None).sections()


def _main_result(quick: bool, experiment: str, out_dir: Path | None) -> Result:
    if quick:
        res = benchmark(
            experiment, samplers=SAMPLERS, seeds=2, budgets=(4, 8), variants=(), progress=print
        )
    else:
        res = benchmark(experiment, progress=print)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "search_data.json").write_text(json.dumps(res.data(), indent=1, default=str))
        plot(
            res.runs,
            int(TARGET_GRID_SHARE * res.grid.size),
            out_dir / "search.png",
            f"{res.grid.experiment}: {res.grid.size}-point grid, {res.seeds} seeds",
        )
    return res


def main(argv: Sequence[str] | None = None) -> None:
    from vitsweep.bench.__main__ import machine, markdown, regenerate_readme

    ap = argparse.ArgumentParser(
        prog="python -m vitsweep.bench.search", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--quick", action="store_true", help="experiment=smoke, 8 points, 2 seeds")
    ap.add_argument("--experiment", default=None, help="default: xray (smoke with --quick)")
    ap.add_argument("--no-readme", action="store_true", help="do not touch README.md")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # the measure protocol times on 1 thread; the GP fits on 1 too
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    experiment = args.experiment or ("smoke" if args.quick else "xray")
    t0 = time.perf_counter()
    out_dir = Path("multirun") / "bench" / ("quick" if args.quick else "")
    res = _main_result(args.quick, experiment, out_dir)
    sections = res.sections()
    for s in sections:
        s.notes.append(f"search: {time.perf_counter() - t0:.0f} s on {machine()}")
        s.notes.append(
            f"plot: {out_dir / 'search.png'}; per-run curves: {out_dir / 'search_data.json'}"
        )
    (out_dir / "search.json").write_text(
        json.dumps([dataclasses.asdict(s) for s in sections], indent=2, default=str)
    )
    print(markdown(sections), flush=True)
    v = res.verdict
    if v.sampler:
        print(
            f"recommended: hydra.sweeper.sampler.name={v.sampler} "
            f"hydra.sweeper.n_trials={v.n_trials}"
        )
    else:
        print(f"recommended: none ({v.reason})")
    if not args.no_readme and not args.quick:
        regenerate_readme(out_dir)


if __name__ == "__main__":
    main()
