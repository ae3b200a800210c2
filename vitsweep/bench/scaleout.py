"""Scale-out: trials per minute with 1, 2 and 4 local workers, and what storage costs a trial.

Workers: the real `vitsweep -m experiment=smoke` started together on one SQLite study (what
`make workers` does). The smoke models are trained once beforehand and copied into every run's
root, so the rate is the steady search rate, not N workers racing to train the same 4 models.
Each worker gets cores/N torch threads: N workers x all cores would oversubscribe the machine.

Storage: one worker's storage calls per trial, timed through the real `StudyLoop` with a launch
that returns at once: stale check, trial listings, ask, budget check, heartbeat stamp, params,
~20 metric user attrs, tell. Random sampler, so the sampler's own maths is not counted.
PostgreSQL is a throwaway cluster from `tests/pg.py` (the repo's test helper), or the server
at $VITSWEEP_BENCH_POSTGRES; without either, that row is left out and a note says why.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
from optuna.trial import TrialState

from vitsweep.bench.common import Section, Target

SMOKE = ("-m", "experiment=smoke")
SMOKE_PARAMS = {
    "arch.embed_dim": "choice(16,32)",
    "arch.depth": "choice(1,2)",
    "token.r": "choice(0,2)",
}


# ------------------------------------------------------------------------------ local workers


def _warm_models(root: Path) -> None:
    """Train every model the smoke space can ask for, once, into `root`/models."""
    from vitsweep import config, data, models
    from vitsweep.search.space import parse_space

    base = config.compose(["experiment=smoke", f"paths.root={root}"])
    space = parse_space(dict(base.hydra.sweeper.params))
    arch = {k: d.choices for k, d in space.distributions.items() if k.startswith("arch.")}
    for combo in itertools.product(*arch.values()):
        lines = [f"{k}={v}" for k, v in zip(arch, combo, strict=True)]
        spec = config.trial_spec(config.compose(["experiment=smoke", f"paths.root={root}", *lines]))
        splits = data.load(spec.data, data.data_dir(spec.root))
        models.build_model(spec.arch, spec.train, spec.data, splits, spec.root)


def _workers_run(n_workers: int, n_trials: int, models_dir: Path) -> dict[str, float]:
    """One study, `n_workers` processes started together; rates from wall clock and storage."""
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "VITSWEEP_"))}
    env.update(WANDB_SILENT="true", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    exe = str(Path(sys.executable).parent / "vitsweep")
    with tempfile.TemporaryDirectory(prefix="vitsweep-bench-") as tmp:
        root = Path(tmp) / "multirun"
        shutil.copytree(models_dir, root / "models")
        cmd = [exe, *SMOKE, f"hydra.sweeper.n_trials={n_trials}", f"paths.root={root}"]
        logs = [Path(tmp) / f"worker-{i}.log" for i in range(n_workers)]
        t0 = time.perf_counter()
        procs = []
        for log in logs:  # files, not pipes: a full pipe would stall a worker mid-trial
            with log.open("w") as out:
                procs.append(
                    subprocess.Popen(
                        cmd, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
                    )
                )
        for p in procs:
            p.wait()
        wall = time.perf_counter() - t0
        for p, log in zip(procs, logs, strict=True):
            if p.returncode != 0:
                raise RuntimeError(f"worker failed ({p.returncode}): {log.read_text()[-2000:]}")
        study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{root / 'vitsweep.db'}")
        done = study.get_trials(states=(TrialState.COMPLETE,))
    first = min(t.datetime_start for t in done)
    last = max(t.datetime_complete for t in done)
    span = (last - first).total_seconds()
    return {
        "complete": len(done),
        "wall_s": wall,
        "trials_per_min_wall": 60.0 * len(done) / wall,
        "trials_per_min_steady": 60.0 * len(done) / span,
        "threads": threads,
    }


def workers_section(quick: bool) -> Section:
    # Quick is a smoke check of the machinery; the full run is what the README quotes.
    counts, n_trials, repeats = ((1, 2), 2, 1) if quick else ((1, 2, 4), 6, 2)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vitsweep-bench-models-") as tmp:
        _warm_models(Path(tmp))
        for n in counts:
            runs = [_workers_run(n, n_trials, Path(tmp) / "models") for _ in range(repeats)]
            rows.append(
                {
                    "workers": n,
                    "torch threads each": runs[0]["threads"],
                    "trials": n_trials,
                    "trials/min (wall, incl. startup)": statistics.median(
                        r["trials_per_min_wall"] for r in runs
                    ),
                    "trials/min (steady, from storage)": statistics.median(
                        r["trials_per_min_steady"] for r in runs
                    ),
                    "runs": repeats,
                }
            )
    base = rows[0]["trials/min (wall, incl. startup)"]
    for r in rows:
        r["speedup vs 1"] = r["trials/min (wall, incl. startup)"] / base
    two = rows[1]["speedup vs 1"]
    targets = [Target("2 workers / 1 worker, trials per minute", two, ">= 1.3", two >= 1.3)]
    if len(rows) > 2:
        ratio = rows[2]["speedup vs 1"] / two
        targets.append(Target("4 workers / 2 workers (no collapse)", ratio, ">= 0.9", ratio >= 0.9))
    return Section(
        title="Local workers on one study (smoke experiment, SQLite, W&B offline)",
        rows=rows,
        targets=targets,
        notes=[
            f"{os.cpu_count()} CPU cores; medians of {repeats} run(s) per row; models trained "
            "beforehand, so every trial here is measure + bookkeeping",
        ],
    )


# ------------------------------------------------------------------------------ storage calls


@contextlib.contextmanager
def _postgres_url() -> Iterator[tuple[str | None, str]]:
    """(url or None, how): the configured server, else a throwaway cluster, else nothing."""
    url = os.environ.get("VITSWEEP_BENCH_POSTGRES")
    if url:
        yield url, "$VITSWEEP_BENCH_POSTGRES"
        return
    try:
        from tests.pg import PgUnavailable, start_server, stop_server
    except ImportError:
        yield None, "tests/pg.py not importable (run from the repository root)"
        return
    try:
        server = start_server(durable=True)
    except (PgUnavailable, RuntimeError) as e:
        yield None, str(e).splitlines()[0]
        return
    try:
        yield server.create_database("bench"), f"throwaway cluster {server.bin_dir.parent.name}"
    finally:
        stop_server(server)


def _metrics() -> dict[str, float | str]:
    """A smoke trial's metrics dict: the user attrs a real tell writes."""
    keys = ("test_accuracy", "latency_ms", "params", "flops", "model_bytes", "peak_mem_bytes")
    extra = ("throughput_cv", "latency_cv", "repeats", "threads", "batch_size", "build_s")
    out: dict[str, float | str] = {k: 1.0 for k in (*keys, *extra)}
    out.update(accuracy=0.5, throughput=1000.0, energy=0.01, energy_source="estimate")
    return out


def storage_cycle(url: str, n_trials: int, flat: bool = False) -> dict[str, float]:
    """Seconds per trial of one worker's storage calls, and of opening the study. `flat`: also
    write every metric as its own user attribute, as trials did before the metrics became one
    attribute (vitsweep.record): the "before" of that change, measured in the same run."""
    from vitsweep.search.loop import Outcome, StudyLoop
    from vitsweep.search.space import parse_space
    from vitsweep.search.spec import SweeperSpec
    from vitsweep.search.storage import create_or_load, open_storage
    from vitsweep.spec import TrialSpec

    name = "bench-flat" if flat else "bench"  # two studies side by side in one storage
    spec = SweeperSpec(
        study_name=name,
        n_trials=n_trials,
        enqueue_baseline=False,
        params=SMOKE_PARAMS,
    )
    directions = list(spec.objectives.values())
    t0 = time.perf_counter()
    study, _ = create_or_load(
        open_storage(url), name, directions, optuna.samplers.RandomSampler(seed=0)
    )
    open_s = time.perf_counter() - t0
    stamps: list[float] = []

    def launch(batch: list[list[str]]) -> list[Outcome]:
        stamps.append(time.perf_counter())
        return [Outcome(metrics=_metrics()) for _ in batch]

    class FlatLoop(StudyLoop):
        def _tell(self, trial, outcome):  # type: ignore[no-untyped-def]
            for key, value in (outcome.metrics or {}).items():
                trial.set_user_attr(key, value)
            return super()._tell(trial, outcome)

    loop = FlatLoop if flat else StudyLoop
    loop(spec, study, parse_space(spec.params), TrialSpec(), launch).run()
    cycles = [b - a for a, b in itertools.pairwise(stamps)]
    return {"open_s": open_s, "per_trial_s": statistics.median(cycles), "max_s": max(cycles)}


def storage_section(quick: bool) -> Section:
    n_trials = 10 if quick else 40
    rows, notes = [], []
    with (
        tempfile.TemporaryDirectory(prefix="vitsweep-bench-storage-") as tmp,
        _postgres_url() as pg,
    ):
        pg_url, how = pg
        urls = {
            "sqlite": f"sqlite:///{Path(tmp) / 'bench.db'}",
            "journal": f"journal:{Path(tmp) / 'bench.journal'}",
        }
        if pg_url is not None:
            urls["postgresql"] = pg_url
            notes.append(f"PostgreSQL: {how}, loopback TCP, password auth, default fsync")
        else:
            notes.append(f"PostgreSQL row left out: {how}")
        for name, url in urls.items():
            for layout, flat in (("one attribute (now)", False), ("per metric (before)", True)):
                r = storage_cycle(url, n_trials, flat=flat)
                rows.append(
                    {
                        "storage": name,
                        "metrics stored as": layout,
                        "ms per trial (median)": 1000 * r["per_trial_s"],
                        "ms per trial (max)": 1000 * r["max_s"],
                        "open study ms": 1000 * r["open_s"],
                        "trials": n_trials,
                    }
                )
    ms = {(r["storage"], r["metrics stored as"]): r["ms per trial (median)"] for r in rows}
    now = {k[0]: v for k, v in ms.items() if "now" in k[1]}
    old = {k[0]: v for k, v in ms.items() if "before" in k[1]}
    targets = [Target("SQLite storage ms per trial", now["sqlite"], "<= 100", now["sqlite"] <= 100)]
    if "postgresql" in now:
        pg_ms = now["postgresql"]
        targets.append(Target("PostgreSQL storage ms per trial", pg_ms, "<= 100", pg_ms <= 100))
    for name in now:
        targets.append(
            Target(f"{name}: ms per trial now / per-metric layout", now[name] / old[name], "< 1",
                   now[name] < old[name])
        )  # fmt: skip
    notes.append(
        "the cycle grows with the study: each cycle lists the study's trials (stale check, "
        "budget count, over-budget check)"
    )
    notes.append(
        "per metric (before): each of the trial's metrics also written as its own user "
        "attribute, as trials were stored before vitsweep.record (one extra write on top, so "
        "the before figure is at most one write pessimistic); both layouts in one storage, "
        "two studies, run one after the other"
    )
    return Section(
        title="Storage calls per trial, one worker (ask/tell cycle with heartbeat and metrics)",
        rows=rows,
        targets=targets,
        notes=notes,
    )


def run(quick: bool = False) -> list[Section]:
    return [storage_section(quick), workers_section(quick)]
