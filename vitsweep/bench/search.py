"""Sampler benchmark (issues #10, #19, #30): which sampler, and how many trials, does
`make sweep` need?

`python -m vitsweep.bench.search [--real] [--quick] [--experiment xray] [--until HH:MM]` (the
`make bench-search` target).

The samplers search the product's own space: the experiment's `hydra.sweeper.params` plus its
`space_hook` (xray: `token.r` x `precision` x the supernet's conditional space, depth first and
heads and MLP ratio per layer), sampled by `SearchSpace.sample` exactly as the sweeper does.
That space cannot be enumerated (xray: about 3 x 12 x 9^6 configs), so the yardstick is a
*reference front*, plus the baseline. Score after n complete trials: hypervolume of the trials
so far (baseline-normalized, `vitsweep.hypervolume`) / the reference's. As in the product, a
proposal that repeats a visited configuration is told its values and costs no trial.

By default every configuration is priced on the study's predictors
(`vitsweep.predict.surrogate`: the accuracy predictor and the per-block cost table, fitted on
real measurements committed with the machine they came from), as NAS-Bench-301 and YAHPO Gym
compare optimizers on validated surrogates: 10 seeds x 4 samplers x 80 trials, and a reference
front streamed from `PREDICTED_REFERENCE` random configurations plus long runs, in minutes,
from a fresh clone. `--real` evaluates every configuration for real instead (the check of
the chosen default against random): the reference front is then every configuration this
bench has ever evaluated for the experiment (the table's runs plus long reference runs of a
mix of samplers, at least `REFERENCE_MIN` evaluations).

With `--real`, every configuration (the overrides a sweeper trial would get) is evaluated once with
`trial.run` and cached as a line of JSON under `<paths.root>/bench/search_cache/`; a sampler's
replay looks a configuration up there and evaluates (and appends) only what is new, so a
repeated or interrupted run evaluates only what is missing and the reference keeps growing.
Configurations that differ only in values the trial ignores (per-layer choices past its depth)
are one configuration. Throughput is measured, so every evaluation uses `measure=quick` (1
thread, short timing windows, compiled as the product compiles; see `BENCH_OVERRIDES`): the
cached numbers are the ground truth of the bench, not the product's careful measurements, and
each is one noisy measurement, reused, never repeated.

Each sampler is the one the sweeper builds (`vitsweep.search.samplers.make_sampler`, with the
experiment's startup trials and population), driven by ask/tell as `StudyLoop` drives it: the
baseline is enqueued as trial 0 without params, as `open_study` does, and counts towards the
budget. `stop_when` is judged on the same runs: where the loop's rule would have stopped each
run before the recommended budget, and how much hypervolume that gave up.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import hashlib
import json
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from vitsweep import record
from vitsweep.bench.common import Section, Target, save_figure
from vitsweep.hypervolume import hypervolume, normalized_losses, plateaued
from vitsweep.search.samplers import make_sampler
from vitsweep.search.space import SearchSpace, format_override, parse_space
from vitsweep.search.spec import SamplerSpec, StopSpec
from vitsweep.spec import ConfigError, TrialSpec

SAMPLERS = ("tpe", "nsga2", "gp", "random")
BUDGETS = (10, 20, 40, 80)
SEEDS = 5
TARGET_FRACTION = 0.95  # of the reference front's hypervolume ...
TARGET_BUDGET = 40  # ... within this many complete trials (median over seeds)
# stop_when goes on by default only if it saves this share of the budget ...
STOP_SAVING = 0.25
STOP_LOSS = 0.02  # ... for at most this loss of hypervolume (medians over seeds)
REFERENCE_MIN = 1000  # evaluations behind the reference front
# On the predictors (the default): configurations priced for the reference front, at random,
# beside every sampler's visits and these long runs ...
PREDICTED_REFERENCE = 100_000
PREDICTED_REFERENCE_RUNS = (("nsga2", 100, 3000), ("tpe", 100, 600))
PREDICTED_SEEDS = 10
# The long runs that build the reference, after the table's own: (sampler, seed, trials).
# Seeds the table never uses; a mix, so that the reference is no one sampler's home ground.
# GP's runs are short: its model fits cost seconds per trial once a study has a hundred.
REFERENCE_RUNS = (
    ("tpe", 100, 400),
    ("nsga2", 100, 400),
    ("random", 100, 300),
    ("gp", 100, 80),
)
# Every evaluation is trial.run, the product's, so accuracy and cost are computed as in a study,
# timed with the quick protocol (1 thread, short windows, lock off) but compiled as the product
# compiles (measure.compile=auto: int8 runs inductor's oneDNN kernels; uncompiled it runs PT2E's
# reference q/dq ops at a third of the speed, a landscape where int8 is the slowest precision
# rather than the fastest).
BENCH_OVERRIDES = ("measure=quick", "measure.compile=auto", "tracking=none")
# The price (2-core Xeon, 1 thread, measured 2026-12-01): an fp32 trial 1.7 s, an int8 trial
# with ToMe 75-98 s, nearly all of it compiling (the study's own int8 trials compile in 6-19 s
# at r=0 and 20-61 s with ToMe at 2 threads). The table's ~1,400 distinct trials are hours of
# compiling here: run it with several `--work` processes on a machine with more cores.
# Where the data draws val and test apart (xray), accuracy on 2,000 val images of their own and
# a token test split (the samplers see val only): an fp32 or bf16 trial costs 1-2 s instead of
# 5-9 s on 7,350 + 7,350. The models are trained once more for this data config (the cache key
# covers it); training reads neither split, so their weights are the study's.
HELD_OUT_OVERRIDES = ("data.val_size=2000", "data.test_size=250")

Point = dict[str, Any]  # the overrides one trial gets (a Hydra key -> value)

# ---------------------------------------------------------------------------------- the space


@dataclass(frozen=True)
class Bench:
    """One experiment's study as the bench sees it: its space, and how to evaluate a point."""

    experiment: str
    overrides: tuple[str, ...]  # composed before every point's own overrides
    space: SearchSpace  # the sweeper's: params + space_hook, sampled as the sweeper does
    baseline: Point  # overrides of the study's trial 0
    objectives: dict[str, str]
    sampler: SamplerSpec  # the experiment's sampler settings (startup trials, population)
    stop: StopSpec  # the experiment's stop_when (patience, min_improvement)
    n_trials: int  # the experiment's budget today
    max_repeats: int  # proposals in a row that repeat a measured config end a study
    base: TrialSpec  # the composed config without any point's overrides
    root: Path  # paths.root: the cache lives under <root>/bench/search_cache/

    @functools.cached_property
    def context(self) -> dict[str, Any]:
        """What besides the point decides its metrics: the composed config (data, train, space,
        measure protocol, seed) and the bench's overrides. Part of every cache key."""
        spec = dataclasses.asdict(self.base)
        spec.pop("root")
        spec.pop("trial_number")
        # trial.run here times alone: a baseline beside a trial is the sweep's (it needs the
        # study), so `measure.beside` decides nothing the cache holds
        spec.pop("beside")
        spec["measure"].pop("beside")
        return {"experiment": self.experiment, "overrides": list(self.overrides), "spec": spec}

    @functools.cached_property
    def context_id(self) -> str:
        text = json.dumps(self.context, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def key(self, point: Point) -> str:
        text = json.dumps({"context": self.context, "point": point}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:20]


def make_bench(experiment: str = "xray", overrides: Sequence[str] = ()) -> Bench:
    """The study of `experiment` (its params and space hook), to be benchmarked."""
    from vitsweep import config  # composing with Hydra is the doorway's job

    base: tuple[str, ...] = (f"experiment={experiment}", *BENCH_OVERRIDES)
    cfg = config.compose([*base, *overrides])
    if cfg.data.val_size > 0:
        base = (*base, *HELD_OUT_OVERRIDES)  # the user's overrides still have the last word
        cfg = config.compose([*base, *overrides])
    composed = (*base, *overrides)
    sweeper = config.sweeper_spec(cfg.hydra.sweeper)
    space = parse_space(sweeper.params, sweeper.space_hook)
    for name, dist in space.distributions.items():
        if not isinstance(dist, optuna.distributions.CategoricalDistribution | _IntDist):
            raise ConfigError(
                f"hydra.sweeper.params.{name}: the search bench needs choice() or range(), "
                "not interval()"
            )
    return Bench(
        experiment=experiment,
        overrides=composed,
        space=space,
        baseline=dict(sweeper.baseline),
        objectives=dict(sweeper.objectives),
        sampler=sweeper.sampler,
        stop=sweeper.stop_when,
        n_trials=sweeper.n_trials,
        max_repeats=sweeper.max_repeats,
        base=config.trial_spec(cfg),
        root=Path(cfg.paths.root),
    )


_IntDist = optuna.distributions.IntDistribution

# ----------------------------------------------------------------------------------- the cache


class EvalCache:
    """Evaluations as JSON lines, one appended (flushed and fsynced) as each one completes.

    Append-only so that an interrupted run loses at most the evaluation in progress: a torn
    last line is skipped when reading and closed with a newline before the next append.
    Keys hash the point and its context (`Bench.key`), so one file can hold several configs.
    Several processes may append to one file (each line is one write to a file opened for
    appending): `refresh` reads what the others added, and the first entry of a key wins, so
    every reader sees the same value for a point.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.entries: dict[str, dict[str, Any]] = {}
        self._offset = 0
        self.refresh()

    def refresh(self) -> None:
        """Read the lines appended since the last read (by this process or another)."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a last line without newline may still be being written
        for line in data[:end].splitlines():
            try:
                entry = json.loads(line)
                if entry.get("replace"):
                    self.entries[entry["key"]] = entry
                else:
                    self.entries.setdefault(entry["key"], entry)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line torn by an interruption
        self._offset += end

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def put(self, key: str, entry: dict[str, Any], replace: bool = False) -> dict[str, Any]:
        """Append `entry` unless the key is there already; return the entry that counts.
        `replace`: append anyway, and the new entry counts (the last such line wins)."""
        self.refresh()
        if key in self.entries and not replace:
            return self.entries[key]
        entry = {"key": key, **entry, **({"replace": True} if replace else {})}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as f:
            f.seek(0, os.SEEK_END)
            head = b""
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    head = b"\n"  # close a torn line of an interrupted writer
            f.write(head + (json.dumps(entry, default=str) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
        self.entries[key] = entry
        return entry


def cache_path(bench: Bench) -> Path:
    return bench.root / "bench" / "search_cache" / f"{bench.experiment}.jsonl"


def point_id(point: Point) -> str:
    return json.dumps(point, sort_keys=True, default=str)


def evaluate_point(bench: Bench, point: Point) -> dict[str, Any]:
    """One evaluation: compose the point's overrides as the sweeper's job would, run the trial."""
    from vitsweep import config, trial

    lines = [*bench.overrides, *(format_override(k, v) for k, v in point.items())]
    t0 = time.perf_counter()
    try:
        metrics = trial.run(config.trial_spec(config.compose(lines))).as_dict()
    except (ConfigError, RuntimeError, ValueError) as e:
        return {"point": point, "error": f"{type(e).__name__}: {e}", "seconds": 0.0}
    return {"point": point, "metrics": metrics, "seconds": round(time.perf_counter() - t0, 3)}


class Evaluator:
    """Looks a point up in the cache, or evaluates and appends it; counts what it did."""

    def __init__(
        self,
        bench: Bench,
        cache: EvalCache | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.bench = bench
        self.cache = cache if cache is not None else EvalCache(cache_path(bench))
        self.progress = progress
        self.evaluated = 0
        self.reused = 0
        self.seconds = 0.0

    def __call__(self, point: Point, by: str = "") -> dict[str, Any]:
        key = self.bench.key(point)
        entry = self.cache.get(key)
        if entry is None:
            self.cache.refresh()
            entry = self.cache.get(key)
        if entry is not None:
            self.reused += 1
            return entry
        t0 = time.perf_counter()
        fresh = evaluate_point(self.bench, point)
        self.seconds += time.perf_counter() - t0
        self.evaluated += 1
        entry = self.cache.put(key, {**fresh, "context": self.bench.context_id, "by": by})
        if self.progress is not None and self.evaluated % 25 == 0:
            self.progress(
                f"evaluated {self.evaluated} ({self.seconds:.0f} s); "
                f"{len(self.entries())} in the cache"
            )
        return entry

    def baseline(self) -> dict[str, Any]:
        return self(self.bench.baseline, by="baseline")

    def entries(self) -> list[dict[str, Any]]:
        """Every cached evaluation of this bench's context but the baseline's."""
        base = self.bench.key(self.bench.baseline)
        return [
            e
            for k, e in self.cache.entries.items()
            if e.get("context") == self.bench.context_id and k != base
        ]


class PredictedEvaluator:
    """Points priced on the study's surrogate (`vitsweep.predict.surrogate`): microseconds
    each, so nothing is cached on disk and the table can afford 10 seeds and a reference front
    of 100,000 configurations. Each point's `TrialSpec` comes from `config.PointSpecs` (the
    composition the sweeper's job would make, without composing each point)."""

    def __init__(
        self,
        bench: Bench,
        surrogate: Any = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        from vitsweep import config
        from vitsweep.predict.surrogate import METRICS, Surrogate

        missing = [m for m in bench.objectives if m not in METRICS]
        if missing:
            raise ConfigError(
                f"hydra.sweeper.objectives.{missing[0]}: the search bench on predictors "
                f"prices {', '.join(METRICS)}; run it with --real for other metrics"
            )
        self.bench = bench
        self.surrogate = surrogate if surrogate is not None else Surrogate.load(bench.experiment)
        self.specs = config.PointSpecs(bench.overrides)
        self.progress = progress
        self.kept: dict[str, dict[str, Any]] = {}  # every point the samplers visited
        self.evaluated = self.reused = 0
        self.seconds = 0.0

    def evaluate(self, points: Sequence[Point], by: str = "") -> list[dict[str, Any]]:
        """Entries as `Evaluator` makes them, priced in one batch; not kept."""
        from vitsweep.predict.candidate import candidate

        t0 = time.perf_counter()
        out: list[dict[str, Any]] = [{"point": p, "by": by} for p in points]
        cands, where = [], []
        for i, p in enumerate(points):
            try:
                cands.append(candidate(self.specs.spec(p)))
                where.append(i)
            except ConfigError as e:
                out[i]["error"] = f"ConfigError: {e}"
        for i, metrics in zip(where, self.surrogate.metrics(cands), strict=True):
            out[i]["metrics"] = metrics
        self.seconds += time.perf_counter() - t0
        self.evaluated += len(points)
        return out

    def __call__(self, point: Point, by: str = "") -> dict[str, Any]:
        key = point_id(point)
        if key in self.kept:
            self.reused += 1
            return self.kept[key]
        entry = self.kept[key] = self.evaluate([point], by)[0]
        return entry

    def baseline(self) -> dict[str, Any]:
        from vitsweep.predict.candidate import candidate

        point = self.bench.baseline
        c = candidate(self.specs.spec(point))
        return {"point": point, "metrics": self.surrogate.baseline_metrics(c), "by": "baseline"}

    def entries(self) -> list[dict[str, Any]]:
        return list(self.kept.values())


def random_points(bench: Bench, n: int, seed: int, chunk: int = 5000) -> Iterator[list[Point]]:
    """`n` points of the space as the sweeper's random sampler draws them, in chunks (a fresh
    in-memory study per chunk keeps each ask as cheap as the first)."""
    sampler = optuna.samplers.RandomSampler(seed=seed)
    for start in range(0, n, chunk):
        study = optuna.create_study(sampler=sampler)
        points = []
        for _ in range(min(chunk, n - start)):
            trial = study.ask()
            points.append(bench.space.sample(trial, bench.base))
            study.tell(trial, 0.0)
        yield points


def predicted_front(
    bench: Bench,
    ev: PredictedEvaluator,
    n_random: int = PREDICTED_REFERENCE,
    seed: int = 10**6,
    progress: Callable[[str], None] | None = None,
    reference_runs: Sequence[tuple[str, int, int]] = PREDICTED_REFERENCE_RUNS,
) -> Front:
    """The reference front of the predicted space: every point the samplers visited, the
    long reference runs (`PREDICTED_REFERENCE_RUNS`), and `n_random` random configurations,
    streamed (only the non-dominated ones are kept between chunks)."""
    base = objective_values(bench, ev.baseline())
    assert base is not None
    directions = list(bench.objectives.values())
    for name, run_seed, n in reference_runs:
        t0 = time.perf_counter()
        run_sampler(bench, ev, name, run_seed, n)
        if progress is not None:
            progress(
                f"reference run {name}/{run_seed}: {n} trials in {time.perf_counter() - t0:.0f} s"
            )
    kept = [(e["point"], v) for e in ev.entries() if (v := objective_values(bench, e)) is not None]
    by = first_by(ev.entries())
    evaluations = len(ev.entries())
    front = _nondominated(kept, base, directions)
    seen = {point_id(p) for p, _ in kept}
    t0 = time.perf_counter()
    for points in random_points(bench, n_random, seed):
        fresh = []
        for p in points:  # configurations not priced yet, each once
            if (key := point_id(p)) not in seen:
                seen.add(key)
                fresh.append(p)
        entries = ev.evaluate(fresh, by="random-reference")
        rows = [(e["point"], v) for e in entries if (v := objective_values(bench, e)) is not None]
        evaluations += len(fresh)
        by["random-reference"] = by.get("random-reference", 0) + len(fresh)
        front = _nondominated(front + rows, base, directions)
        if progress is not None:
            progress(
                f"reference: {evaluations} configurations priced, {len(front)} on the front "
                f"({time.perf_counter() - t0:.0f} s)"
            )
    values = [base, *(v for _, v in front)]
    mask = pareto_mask(normalized_losses(values, base, directions))
    return Front(
        baseline=base,
        directions=directions,
        hypervolume=hypervolume(values, base, directions),
        points=[p for p, _ in front],
        baseline_on_front=bool(mask[0]),
        evaluations=evaluations,
        by=dict(sorted(by.items())),
    )


_WORKER: dict[str, Any] = {}  # a predicted-run worker process's bench and evaluator


def _worker_init(experiment: str, overrides: tuple[str, ...]) -> None:
    import torch

    torch.set_num_threads(1)  # one sampler per core
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    bench = make_bench(experiment, overrides)
    _WORKER.update(bench=bench, ev=PredictedEvaluator(bench))


def _worker_run(name: str, seed: int, n: int) -> tuple[Run, list[dict[str, Any]], int, float]:
    bench, ev = _WORKER["bench"], _WORKER["ev"]
    before, evaluated, seconds = set(ev.kept), ev.evaluated, ev.seconds
    run = run_sampler(bench, ev, name, seed, n)
    fresh = [e for k, e in ev.kept.items() if k not in before]
    return run, fresh, ev.evaluated - evaluated, ev.seconds - seconds


def predicted_runs(
    bench: Bench,
    ev: PredictedEvaluator,
    overrides: Sequence[str],
    samplers: Sequence[str],
    seeds: int,
    n: int,
    workers: int = 1,
    progress: Callable[[str], None] | None = None,
) -> list[Run]:
    """Every sampler x seed on the surrogate, in `workers` processes (each its own surrogate;
    a GP run at 4 objectives spends minutes in its model fits, the rest is milliseconds).
    The points each run visited join `ev`, for the reference front."""
    jobs = [(name, seed) for name in samplers for seed in range(seeds)]
    t0 = time.perf_counter()
    if workers <= 1:
        runs = {}
        for name, seed in jobs:
            runs[(name, seed)] = run_sampler(bench, ev, name, seed, n)
            if progress is not None and seed == seeds - 1:
                progress(f"{name}: {seeds} seeds x {n} trials ({time.perf_counter() - t0:.0f} s)")
        return [runs[j] for j in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    runs = {}
    # spawn: a clean interpreter per worker (forking a process that has run torch can hang)
    with ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init,
        initargs=(bench.experiment, tuple(overrides)),
    ) as pool:
        slow_first = sorted(jobs, key=lambda j: j[0] != "gp")  # gp runs take the longest
        futures = {pool.submit(_worker_run, *job, n): job for job in slow_first}
        for done, future in enumerate(as_completed(futures), 1):
            run, fresh, evaluated, seconds = future.result()
            runs[futures[future]] = run
            for entry in fresh:
                ev.kept.setdefault(point_id(entry["point"]), entry)
            ev.evaluated += evaluated
            ev.seconds += seconds
            if progress is not None:
                progress(
                    f"{run.sampler}/{run.seed}: {len(run.values)} trials, {run.repeats} repeats "
                    f"({done}/{len(jobs)}, {time.perf_counter() - t0:.0f} s)"
                )
    return [runs[j] for j in jobs]


def _nondominated(
    rows: list[tuple[Point, tuple[float, ...]]], base: tuple[float, ...], directions: list[str]
) -> list[tuple[Point, tuple[float, ...]]]:
    if not rows:
        return rows
    mask = pareto_mask(normalized_losses([v for _, v in rows], base, directions))
    return [r for r, on in zip(rows, mask, strict=True) if on]


# ------------------------------------------------------------------------ front and samplers


def objective_values(bench: Bench, entry: dict[str, Any]) -> tuple[float, ...] | None:
    if "metrics" not in entry:
        return None
    return tuple(float(entry["metrics"][name]) for name in bench.objectives)


@dataclass
class Front:
    """The reference front (every cached evaluation plus the baseline) and its hypervolume."""

    baseline: tuple[float, ...]
    directions: list[str]
    hypervolume: float
    points: list[Point]  # the Pareto-optimal evaluated points (the baseline may be too)
    baseline_on_front: bool
    evaluations: int  # configurations behind it (failed ones included)
    by: dict[str, int]  # who first evaluated them: sampler name -> count

    def fraction(self, values: list[tuple[float, ...]]) -> float:
        return hypervolume(values, self.baseline, self.directions) / self.hypervolume


def pareto_mask(losses: np.ndarray) -> np.ndarray:
    """Rows no other row dominates (all objectives minimized); duplicates all stay."""
    keep = np.ones(len(losses), dtype=bool)
    for i, row in enumerate(losses):
        dominated = np.all(losses <= row, axis=1) & np.any(losses < row, axis=1)
        keep[i] = not dominated.any()
    return keep


def first_by(entries: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Who first evaluated the entries: sampler name -> count."""
    by: dict[str, int] = {}
    for e in entries:
        name = str(e.get("by", "")).split("/")[0] or "?"
        by[name] = by.get(name, 0) + 1
    return by


def reference_front(bench: Bench, ev: Evaluator) -> Front:
    base = objective_values(bench, ev.baseline())
    if base is None:
        raise RuntimeError(f"the baseline trial failed: {ev.baseline().get('error')}")
    directions = list(bench.objectives.values())
    entries = ev.entries()
    ok = [(e["point"], v) for e in entries if (v := objective_values(bench, e)) is not None]
    values = [base, *(v for _, v in ok)]
    mask = pareto_mask(normalized_losses(values, base, directions))
    by = first_by(entries)
    return Front(
        baseline=base,
        directions=directions,
        hypervolume=hypervolume(values, base, directions),
        points=[p for (p, _), on in zip(ok, mask[1:], strict=True) if on],
        baseline_on_front=bool(mask[0]),
        evaluations=len(entries),
        by=dict(sorted(by.items())),
    )


@dataclass
class Run:
    """One sampler, one seed: the objective values of its complete trials, in order."""

    sampler: str
    seed: int
    # values[n-1]: the n-th complete trial; None: the baseline (trial 0), whose values the
    # samplers never see (`BaselineBlind`), so a replay need not wait for its evaluation
    values: list[tuple[float, ...] | None]
    sampler_s: float  # time spent inside Optuna (ask + suggest + tell), evaluations excluded
    distinct: int  # distinct configurations visited
    repeats: int = 0  # proposals that repeated a visited configuration: told, not counted
    fractions: list[float] = field(default_factory=list)  # set by `score`

    @property
    def label(self) -> str:
        return self.sampler

    def score(self, front: Front, length: int = 0) -> None:
        """Fractions after 1, 2, ... complete trials; a run its sampler ended early (repeats
        only) keeps its last fraction up to `length`, as the study it replays would have."""
        values = [front.baseline if v is None else v for v in self.values]
        self.fractions = [front.fraction(values[:n]) for n in range(1, len(values) + 1)]
        self.fractions += self.fractions[-1:] * (length - len(self.fractions))

    def at(self, budget: int) -> float:
        return self.fractions[min(budget, len(self.fractions)) - 1]


def run_sampler(
    bench: Bench,
    ev: Evaluator,
    name: str,
    seed: int,
    n_trials: int,
    deadline: float | None = None,
) -> Run:
    """Drive the product's sampler over the product's space for `n_trials` complete trials
    (fewer if `deadline`, a `time.time()`, passes), each configuration looked up in the cache
    or evaluated; the baseline is the study's param-less trial 0, as in the product. As in
    the product (`StudyLoop`), a proposal that repeats a visited configuration is told its
    values but costs no budget, and `max_repeats` of them in a row end the run."""
    spec = dataclasses.replace(bench.sampler, name=name, seed=seed)
    values: list[tuple[float, ...] | None] = []
    seen: set[str] = set()
    repeats = in_a_row = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-feature warnings of gp and friends
        sampler = make_sampler(spec, bench.space)
        study = optuna.create_study(directions=list(bench.objectives.values()), sampler=sampler)
        study.enqueue_trial({}, user_attrs={record.BASELINE: True})
        busy = 0.0  # seconds inside Optuna: ask, suggest, tell (not evaluations)
        while len(values) < n_trials and (deadline is None or time.time() < deadline):
            t0 = time.perf_counter()
            trial = study.ask()
            baseline = record.is_baseline(trial)
            point = None if baseline else bench.space.sample(trial, bench.base)
            busy += time.perf_counter() - t0
            value: tuple[float, ...] | None = None
            repeat = False
            if point is not None:
                value = objective_values(bench, ev(point, by=f"{name}/{seed}"))
                repeat = point_id(point) in seen
                seen.add(point_id(point))
            t0 = time.perf_counter()
            if baseline:  # hidden from the samplers: any values do; scored as the baseline's
                study.tell(trial, [1.0] * len(bench.objectives))
                values.append(None)
            elif value is None:  # a failed evaluation: FAIL, as the sweeper records it
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, list(value))
                if not repeat:
                    values.append(value)
            busy += time.perf_counter() - t0
            repeats += repeat
            in_a_row = in_a_row + 1 if repeat else 0
            if in_a_row >= bench.max_repeats:
                break  # converged: the product's loop ends the study here
    return Run(name, seed, values, busy, len(seen), repeats)


def run_key(bench: Bench, name: str, seed: int) -> str:
    """What decides a replay's trials besides the cache: the sampler as built, Optuna's version."""
    spec = dataclasses.replace(bench.sampler, name=name, seed=seed)
    text = json.dumps(
        [bench.context_id, dataclasses.asdict(spec), optuna.__version__, "repeats-free"],
        default=str,
    )
    return "run-" + hashlib.sha256(text.encode()).hexdigest()[:20]


def table_run(bench: Bench, ev: Evaluator, runs: EvalCache, name: str, seed: int, n: int) -> Run:
    """`run_sampler`, or its record: a finished replay is stored (in `runs`), because replaying
    it is deterministic given the cache, and a GP replay costs minutes of model fits. A record
    of a longer run serves a shorter one (its first n trials are the same)."""
    key = run_key(bench, name, seed)
    rec = runs.get(key)
    if rec is None or len(rec["values"]) < n:
        runs.refresh()
        rec = runs.get(key)
    if rec is not None and len(rec["values"]) >= n:
        values = [None if v is None else tuple(v) for v in rec["values"][:n]]
        share = n / len(rec["values"])
        return Run(
            name, seed, values, rec["sampler_s"] * share, rec["distinct"], rec.get("repeats", 0)
        )
    run = run_sampler(bench, ev, name, seed, n)
    if len(run.values) == n:
        keys = ("sampler", "seed", "values", "sampler_s", "distinct", "repeats")
        entry = {k: getattr(run, k) for k in keys}
        runs.put(key, entry, replace=True)
    return run


def runs_path(bench: Bench) -> Path:
    return cache_path(bench).with_suffix(".runs.jsonl")


def build_reference(
    bench: Bench,
    ev: Evaluator,
    goal: int = REFERENCE_MIN,
    deadline: float | None = None,
    progress: Callable[[str], None] | None = None,
    seed_offset: int = 0,
) -> int:
    """Run `REFERENCE_RUNS` (replays first: each is cheap once cached) until the cache holds
    `goal` evaluations or `deadline` passes; return how many it holds. Processes that build
    the reference side by side give each a different `seed_offset`."""
    for name, seed, n in REFERENCE_RUNS:
        seed += seed_offset
        if len(ev.entries()) >= goal or (deadline is not None and time.time() >= deadline):
            break
        t0 = time.perf_counter()
        run = run_sampler(bench, ev, name, seed, n, deadline)
        if progress is not None:
            progress(
                f"reference run {name}/{seed}: {len(run.values)} trials in "
                f"{time.perf_counter() - t0:.0f} s; {len(ev.entries())} evaluations cached"
            )
    return len(ev.entries())


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
    """Better than random's median, or both at the reference front (nothing left to beat)."""
    return a > b or (a >= 1 - 1e-12 and b >= 1 - 1e-12)


@dataclass
class Verdict:
    sampler: str  # the recommended default (the best over all budgets if none met the target)
    n_trials: int  # the smallest budget at which its median reaches the target (else the largest)
    met: bool  # whether it met the target
    meets: dict[str, bool]  # per sampler: target met (fraction within the budget, > random)
    reason: str


def recommend(table: dict[str, dict[int, dict[str, float]]], budgets: Sequence[int]) -> Verdict:
    """The target of issue #19: a median >= 95% of the reference hypervolume within 40 trials,
    and a better median than random at every budget. Among samplers that meet it, the one that
    gets there with the fewest trials wins (ties: the higher median there, then over budgets).
    If none does, the best over all budgets is named, with the verdict that it missed."""
    allowed = [b for b in budgets if b <= TARGET_BUDGET]
    meets: dict[str, bool] = {}
    first: dict[str, int] = {}
    for label, row in table.items():
        if label == "random":
            continue
        reach = [b for b in allowed if row[b]["median"] >= TARGET_FRACTION]
        over_random = all(beats(row[b]["median"], table["random"][b]["median"]) for b in budgets)
        meets[label] = bool(reach) and over_random
        if meets[label]:
            first[label] = reach[0]

    def total(s: str) -> float:
        return sum(table[s][b]["median"] for b in budgets)

    if not first:
        over = [
            s
            for s in meets
            if all(beats(table[s][b]["median"], table["random"][b]["median"]) for b in budgets)
        ]
        best = max(over or list(meets), key=total)
        reach = [b for b in budgets if table[best][b]["median"] >= TARGET_FRACTION]
        n = reach[0] if reach else max(budgets)
        return Verdict(
            best,
            n,
            False,
            meets,
            f"no sampler met the target; the best over all budgets is {best} "
            f"({table[best][n]['median']:.3f} after {n} trials)",
        )
    pick = min(first, key=lambda s: (first[s], -table[s][first[s]]["median"], -total(s)))
    return Verdict(
        pick,
        first[pick],
        True,
        meets,
        f"{pick} reaches a median {table[pick][first[pick]]['median']:.3f} of the reference "
        f"hypervolume after {first[pick]} trials and beats random at every budget",
    )


def first_reaching(runs: list[Run], label: str, goal: float) -> int | None:
    """The smallest n at which the median over seeds reaches `goal` (None: never)."""
    mine = [r for r in runs if r.label == label]
    n_max = min(len(r.fractions) for r in mine)
    for n in range(1, n_max + 1):
        if statistics.median(r.fractions[n - 1] for r in mine) >= goal:
            return n
    return None


@dataclass
class StopCheck:
    """What `stop_when` would have done to one sampler's runs at budget `n_trials`."""

    sampler: str
    n_trials: int
    stopped_at: list[int]  # per seed: complete trials when the loop's rule stops (n: never)
    saving: float  # median share of the budget not spent
    loss: float  # median relative loss of hypervolume vs running the whole budget
    worth_it: bool  # saving >= STOP_SAVING at loss <= STOP_LOSS


def stop_check(runs: list[Run], label: str, n_trials: int, stop: StopSpec) -> StopCheck:
    """Replays the loop's rule (`StudyLoop._plateaued`: before asking for the next trial, stop
    if the hypervolume gained < min_improvement over the last `patience` complete trials)."""
    stops, savings, losses = [], [], []
    for r in (r for r in runs if r.label == label):
        hv = r.fractions[:n_trials]  # proportional to the study's own hypervolume
        at = next(
            (
                n
                for n in range(1, len(hv))
                if plateaued(hv[:n], stop.patience, stop.min_improvement)
            ),
            len(hv),
        )
        stops.append(at)
        savings.append(1 - at / n_trials)
        losses.append(1 - hv[at - 1] / hv[-1])
    saving, loss = statistics.median(savings), statistics.median(losses)
    return StopCheck(
        label, n_trials, stops, saving, loss, saving >= STOP_SAVING and loss <= STOP_LOSS
    )


def plot(runs: list[Run], path: Path, title: str) -> Path:
    """Median fraction vs trials per sampler, min-max over seeds shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label in dict.fromkeys(r.label for r in runs):
        curves = np.array([r.fractions for r in runs if r.label == label])
        n = np.arange(1, curves.shape[1] + 1)
        (line,) = ax.plot(n, np.median(curves, axis=0), label=label, lw=1.6)
        ax.fill_between(
            n, curves.min(axis=0), curves.max(axis=0), color=line.get_color(), alpha=0.12
        )
    ax.axhline(TARGET_FRACTION, color="grey", lw=0.8, ls=":")
    n_max = max(len(r.fractions) for r in runs)
    if TARGET_BUDGET <= n_max:
        ax.axvline(TARGET_BUDGET, color="grey", lw=0.8, ls=":")
    ax.set_xlim(1, n_max)
    ax.set_xlabel("complete trials (baseline included)")
    ax.set_ylabel("fraction of the reference front's hypervolume")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{title}\n(median, min–max shaded; dotted: {TARGET_FRACTION:.0%})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


# ------------------------------------------------------------------------------------ the run


def describe(space: SearchSpace) -> str:
    flat = ", ".join(
        f"{k} {{{', '.join(map(str, d.choices))}}}"
        if isinstance(d, optuna.distributions.CategoricalDistribution)
        else f"{k} {d}"
        for k, d in space.distributions.items()
    )
    hook = space.hook.__module__ + "." + space.hook.__name__ if space.hook else "no hook"
    return f"{flat} + {hook}"


@dataclass
class Result:
    bench: Bench
    evaluator: Evaluator | PredictedEvaluator
    front: Front
    runs: list[Run]
    budgets: tuple[int, ...]
    table: dict[str, dict[int, dict[str, float]]]
    verdict: Verdict
    stops: dict[str, StopCheck]
    sampler_seconds: dict[str, float] = field(default_factory=dict)  # label -> s per trial
    seeds: int = SEEDS
    predicted: bool = False

    def sections(self) -> list[Section]:
        b, ev, f, v = self.bench, self.evaluator, self.front, self.verdict
        rows = []
        for label, row in self.table.items():
            cells: dict[str, Any] = {"sampler": label}
            for n in self.budgets:
                c = row[n]
                cells[f"n={n}"] = f"{c['median']:.3f} ({c['min']:.2f}–{c['max']:.2f})"
            cells["first n at 95% (median)"] = (
                first_reaching(self.runs, label, TARGET_FRACTION) or "—"
            )
            s = self.stops[label]
            cells[f"stop_when at n={s.n_trials}: saved / lost"] = f"{s.saving:.0%} / {s.loss:.1%}"
            cells["sampler ms/trial"] = round(1000 * self.sampler_seconds[label], 1)
            mine = [r for r in self.runs if r.label == label]
            cells["repeats avoided (median)"] = statistics.median(r.repeats for r in mine)
            rows.append(cells)
        targets = []
        allowed = [n for n in self.budgets if n <= TARGET_BUDGET]
        for label in v.meets:  # the two halves of the verdict's target, each shown
            best = max((self.table[label][n]["median"] for n in allowed), default=0.0)
            targets.append(
                Target(
                    f"{label}: best median fraction within {TARGET_BUDGET} trials",
                    best,
                    f">= {TARGET_FRACTION}",
                    best >= TARGET_FRACTION,
                )
            )
            random = self.table.get("random")
            if random is not None:
                lead = [self.table[label][n]["median"] - random[n]["median"] for n in self.budgets]
                over = all(
                    beats(self.table[label][n]["median"], random[n]["median"]) for n in self.budgets
                )
                targets.append(
                    Target(
                        f"{label}: median minus random's at n={', '.join(map(str, self.budgets))}"
                        f" ({', '.join(f'{d:+.3f}' for d in lead)}), smallest",
                        round(min(lead), 3),
                        "> 0 at every budget",
                        over,
                    )
                )
        chosen = self.stops[v.sampler]
        targets.append(
            Target(
                f"stop_when ({b.stop.patience} trials, {b.stop.min_improvement:.0%}) on "
                f"{v.sampler} at n={chosen.n_trials}: median share of trials saved, at median "
                f"hypervolume loss {chosen.loss:.1%}",
                round(chosen.saving, 3),
                f">= {STOP_SAVING} at loss <= {STOP_LOSS} (else stop_when stays off)",
                chosen.worth_it,
            )
        )
        base = " ".join(format_override(k, x) for k, x in b.baseline.items()) or "the base config"
        short = (
            f" (fewer than the {REFERENCE_MIN} asked for)" if f.evaluations < REFERENCE_MIN else ""
        )
        if isinstance(ev, PredictedEvaluator):
            judged = [
                f"every configuration priced on the predictors ({ev.surrogate.describe()}; "
                f"{Path(ev.surrogate.source).name}), {ev.evaluated:,} in {ev.seconds:.0f} s; "
                f"baseline = {base}, its accuracy as measured",
                "a repeat (a proposal equal to a visited configuration) is told its values and "
                f"costs no budget, as in the product; {b.max_repeats} in a row end a run",
            ]
        else:
            took = [float(e.get("seconds", 0.0)) for e in ev.entries()]
            judged = [
                f"evaluations: {len(took)} in the cache ({cache_path(b)}), {sum(took) / 60:.0f} "
                f"min of trial.run in all, median {statistics.median(took):.2f} s; this run "
                f"evaluated {ev.evaluated} ({ev.seconds:.0f} s) and looked up {ev.reused}",
                "throughput (and energy, an estimate from it) is one quick measurement per "
                "configuration on a shared 2-core machine: the reference front holds the lucky "
                "measurements of many configurations, so 100% is a high bar",
            ]
        notes = [
            f"space: {describe(b.space)}, as the sweeper samples it (per-layer heads and MLP "
            f"ratio up to the deepest depth, ignored past the trial's)"
            + (
                ""
                if self.predicted
                else f"; each configuration evaluated once with "
                f"{', '.join(b.overrides)}; baseline = {base}"
            ),
            f"reference front: {len(f.points)} of {f.evaluations} cached evaluations{short}"
            + (" plus the baseline" if f.baseline_on_front else "")
            + f", hypervolume {f.hypervolume:.4g} (baseline alone: 1); evaluated first by "
            + ", ".join(f"{k} {n}" for k, n in f.by.items()),
            f"cells: median fraction of the reference hypervolume over seeds 0–{self.seeds - 1} "
            "(min–max), after n complete trials, the enqueued baseline trial 0 included",
            *judged,
            f"recommendation: {v.reason}; default sampler `{v.sampler}`, `n_trials: {v.n_trials}`"
            f", `stop_when.enabled: {str(chosen.worth_it).lower()}` (per seed it stops after "
            f"{chosen.stopped_at} trials)",
            f"tpe and gp draw their first {b.sampler.n_startup_trials} trials after the baseline "
            f"at random, nsga2 its first generation ({b.sampler.population_size}): up to "
            f"n={b.sampler.n_startup_trials + 1} a lead over random is seed luck",
        ]
        return [
            Section(
                title=f"Sampler benchmark: fraction of the reference front's hypervolume "
                f"({b.experiment}, conditional space, "
                f"{'on the predictors' if self.predicted else 'real evaluations'})",
                rows=rows,
                targets=targets,
                notes=notes,
            )
        ]

    def data(self) -> dict[str, Any]:
        return {
            "experiment": self.bench.experiment,
            "predicted": self.predicted,
            "space": describe(self.bench.space),
            "baseline": self.bench.baseline,
            "objectives": self.bench.objectives,
            "reference_hypervolume": self.front.hypervolume,
            "reference_evaluations": self.front.evaluations,
            "reference_by": self.front.by,
            "front": self.front.points,
            "baseline_on_front": self.front.baseline_on_front,
            "evaluated": self.evaluator.evaluated,
            "reused": self.evaluator.reused,
            "evaluation_seconds": self.evaluator.seconds,
            "budgets": list(self.budgets),
            "table": {k: {str(n): c for n, c in v.items()} for k, v in self.table.items()},
            "recommendation": dataclasses.asdict(self.verdict),
            "stop_when": {k: dataclasses.asdict(s) for k, s in self.stops.items()},
            "sampler_seconds_per_trial": self.sampler_seconds,
            "runs": [dataclasses.asdict(r) for r in self.runs],
        }


def benchmark(
    experiment: str = "xray",
    overrides: Sequence[str] = (),
    samplers: Sequence[str] = SAMPLERS,
    seeds: int = SEEDS,
    budgets: Sequence[int] = BUDGETS,
    reference: int = REFERENCE_MIN,
    deadline: float | None = None,
    progress: Callable[[str], None] | None = None,
    predicted: bool = False,
    reference_runs: Sequence[tuple[str, int, int]] = PREDICTED_REFERENCE_RUNS,
    workers: int = 1,
) -> Result:
    """Run every sampler x seed up to the largest budget, then score every run against the
    reference front. `predicted`: every point priced on the surrogate, the reference front
    streamed from `reference` random configurations and long runs. Else every point evaluated
    for real (cached; what is new is evaluated), and the cache topped up to `reference`
    evaluations with the reference runs, whose whole front is the reference."""
    bench = make_bench(experiment, overrides)
    ev: Evaluator | PredictedEvaluator
    if predicted:
        ev = PredictedEvaluator(bench, progress=progress)
    else:
        ev = Evaluator(bench, progress=progress)
        records = EvalCache(runs_path(bench))
    ev.baseline()
    n = max(budgets)
    if isinstance(ev, PredictedEvaluator):
        runs = predicted_runs(bench, ev, overrides, samplers, seeds, n, workers, progress)
    else:
        runs = []
        for name in samplers:
            t0 = time.perf_counter()
            runs += [table_run(bench, ev, records, name, seed, n) for seed in range(seeds)]
            if progress is not None:
                progress(f"{name}: {seeds} seeds x {n} trials in {time.perf_counter() - t0:.0f} s")
    seconds = {}
    for name in samplers:
        mine = [r for r in runs if r.sampler == name]
        seconds[name] = sum(r.sampler_s for r in mine) / max(1, sum(len(r.values) for r in mine))
    if isinstance(ev, PredictedEvaluator):
        front = predicted_front(
            bench, ev, reference, progress=progress, reference_runs=reference_runs
        )
    else:
        build_reference(bench, ev, reference, deadline, progress)
        ev.cache.refresh()  # what a reference run beside this one appended meanwhile
        front = reference_front(bench, ev)
    for r in runs:
        r.score(front, n)
    table = summarize(runs, budgets)
    verdict = recommend(table, budgets)
    stops = {s: stop_check(runs, s, verdict.n_trials, bench.stop) for s in table}
    return Result(
        bench, ev, front, runs, tuple(budgets), table, verdict, stops, seconds, seeds, predicted
    )


def run(quick: bool = False) -> list[Section]:
    """The `python -m vitsweep.bench` interface (`--only search`): on the predictors (quick:
    real evaluations of the smoke experiment, which has no committed predictor data)."""
    experiment = "smoke" if quick else "xray"
    workers = os.cpu_count() or 1
    return _main_result(quick, experiment, None, predicted=not quick, workers=workers).sections()


def _main_result(
    quick: bool,
    experiment: str,
    out_dir: Path | None,
    deadline: float | None = None,
    overrides: Sequence[str] = (),
    seeds: int | None = None,
    budgets: Sequence[int] = BUDGETS,
    predicted: bool = True,
    samplers: Sequence[str] = SAMPLERS,
    reference: int | None = None,
    workers: int = 1,
) -> Result:
    if quick:
        res = benchmark(
            experiment, overrides, seeds=2, budgets=(4, 8), reference=0, progress=_print
        )
    else:
        res = benchmark(
            experiment,
            overrides,
            samplers=samplers,
            seeds=seeds or (PREDICTED_SEEDS if predicted else SEEDS),
            budgets=budgets,
            reference=(PREDICTED_REFERENCE if predicted else REFERENCE_MIN)
            if reference is None
            else reference,
            deadline=deadline,
            progress=_print,
            predicted=predicted,
            workers=workers,
        )
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        name = section_name(res.predicted or quick)
        (out_dir / f"{name}_data.json").write_text(json.dumps(res.data(), indent=1, default=str))
        how = "priced configurations" if res.predicted else "evaluations"
        plot(
            res.runs,
            out_dir / f"{name}.png",
            f"{res.bench.experiment}: conditional space, reference front of "
            f"{res.front.evaluations:,} {how}, {res.seeds} seeds",
        )
    return res


def section_name(predicted: bool) -> str:
    """The README block (and file stem under multirun/bench/) of a run of this bench."""
    return "search" if predicted else "search-real"


def _print(*args: Any) -> None:
    print(*args, flush=True)  # progress lines reach a log file as they happen


def _deadline(text: str | None) -> float | None:
    """`HH:MM` (UTC, today) -> a time.time()."""
    if not text:
        return None
    try:
        h, m = (int(x) for x in text.split(":"))
        now = dt.datetime.now(dt.UTC)
        return now.replace(hour=h, minute=m, second=0, microsecond=0).timestamp()
    except ValueError:
        raise SystemExit(f"--until={text}: expected HH:MM (UTC)") from None


def main(argv: Sequence[str] | None = None) -> None:
    from vitsweep.bench.__main__ import machine, markdown, regenerate_readme

    ap = argparse.ArgumentParser(
        prog="python -m vitsweep.bench.search", description=__doc__.split("\n")[0]
    )
    ap.add_argument(
        "--quick", action="store_true", help="experiment=smoke, real evaluations, 2 seeds, 8 trials"
    )
    ap.add_argument(
        "--real",
        action="store_true",
        help="evaluate every configuration for real (cached), not on the predictors: the check "
        "of the chosen default against random (e.g. --samplers gp,random --seeds 3 "
        "--budgets 10,20,40)",
    )
    ap.add_argument(
        "--samplers",
        type=lambda t: tuple(x for x in t.split(",") if x),
        default=SAMPLERS,
        help=f"comma-separated (default {','.join(SAMPLERS)})",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes for the sampler runs on the predictors (default: one per core)",
    )
    ap.add_argument(
        "--reference",
        type=int,
        default=None,
        help=f"configurations behind the reference front (default {PREDICTED_REFERENCE:,} "
        f"priced, {REFERENCE_MIN:,} real)",
    )
    ap.add_argument("--experiment", default=None, help="default: xray (smoke with --quick)")
    ap.add_argument("--no-readme", action="store_true", help="do not touch README.md")
    ap.add_argument(
        "--until", default=None, help="HH:MM UTC: stop building the reference front then"
    )
    ap.add_argument(
        "--work",
        default=None,
        help="comma-separated samplers: only run (and record) their table runs, then the "
        "reference runs until --until; no table. For several processes sharing the cache",
    )
    ap.add_argument(
        "--seeds",
        type=int,
        default=None,
        help=f"seeds 0..n-1 (default {PREDICTED_SEEDS}; --real {SEEDS})",
    )
    ap.add_argument(
        "--budgets",
        type=lambda t: tuple(int(x) for x in t.split(",")),
        default=BUDGETS,
        help="comma-separated trial budgets of the table (default 10,20,40,80)",
    )
    ap.add_argument("--seed-from", type=int, default=0, help="with --work: first seed to run")
    ap.add_argument(
        "--seed-list",
        type=lambda t: [int(x) for x in t.split(",")],
        default=None,
        help="with --work: these seeds, in this order (instead of --seed-from..--seeds)",
    )
    ap.add_argument("--with-baseline", action="store_true", help="with --work: baseline first")
    ap.add_argument(
        "--reference-seed",
        type=int,
        default=0,
        help="with --work: added to the reference runs' seeds (one per process)",
    )
    ap.add_argument(
        "overrides", nargs="*", help="config overrides of the experiment (e.g. train.epochs=8)"
    )
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # the measure protocol times on 1 thread; the GP fits on 1 too
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    experiment = args.experiment or ("smoke" if args.quick else "xray")
    deadline = _deadline(args.until)
    if args.work is not None:
        bench = make_bench(experiment, args.overrides)
        ev = Evaluator(bench, progress=_print)
        records = EvalCache(runs_path(bench))
        if args.with_baseline:
            ev.baseline()
        order = args.seed_list or range(args.seed_from, args.seeds or SEEDS)
        for seed in order:
            for name in filter(None, args.work.split(",")):
                run = table_run(bench, ev, records, name, seed, max(args.budgets))
                _print(f"{name}/{seed}: {len(run.values)} trials; {ev.evaluated} evaluated")
        total = build_reference(bench, ev, 10**9, deadline, _print, args.reference_seed)
        print(f"reference: {total} evaluations cached in {cache_path(bench)}")
        return
    t0 = time.perf_counter()
    out_dir = Path("multirun") / "bench" / ("quick" if args.quick else "")
    res = _main_result(
        args.quick,
        experiment,
        out_dir,
        deadline,
        args.overrides,
        args.seeds,
        args.budgets,
        predicted=not (args.real or args.quick),
        samplers=args.samplers,
        reference=args.reference,
        workers=args.workers,
    )
    sections = res.sections()
    name = section_name(res.predicted or args.quick)
    for s in sections:
        s.notes.append(f"search: {time.perf_counter() - t0:.0f} s on {machine()}")
        s.notes.append(
            f"plot: {out_dir / f'{name}.png'}; per-run curves: {out_dir / f'{name}_data.json'}"
        )
    (out_dir / f"{name}.json").write_text(
        json.dumps([dataclasses.asdict(s) for s in sections], indent=2, default=str)
    )
    print(markdown(sections), flush=True)
    v = res.verdict
    print(
        f"recommended{'' if v.met else ' (target missed)'}: hydra.sweeper.sampler.name="
        f"{v.sampler} hydra.sweeper.n_trials={v.n_trials} "
        f"hydra.sweeper.stop_when.enabled={str(res.stops[v.sampler].worth_it).lower()}"
    )
    if not args.no_readme and not args.quick:
        regenerate_readme(out_dir)


if __name__ == "__main__":
    main()
