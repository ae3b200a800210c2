"""Many workers on one study: real PostgreSQL, Optuna's journal file, real processes killed.

Workers are the real console script started together; each is its own process group, so that
SIGKILL takes the worker and its W&B service down at once, like a machine that dies.
"""

from __future__ import annotations

import csv
import os
import random
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from tests import pg
from tests.conftest import BIN, cli_env
from vitsweep import record
from vitsweep.search.loop import Outcome, StudyLoop
from vitsweep.search.space import parse_space
from vitsweep.search.spec import SweeperSpec
from vitsweep.search.storage import create_or_load, open_storage
from vitsweep.spec import TrialSpec
from vitsweep.track.wandb_files import read_runs

SMOKE = ("-m", "experiment=smoke")
postgres, pg_url = pg.postgres, pg.pg_url  # the fixtures, by name, for this module
STARTED = re.compile(r"\] trial (\d+) \(\d+/\d+ complete\)")
TOLD = re.compile(r"\] trial (\d+) (?:COMPLETE|FAIL)")


# ----------------------------------------------------------------------------- worker handling


@dataclass
class Worker:
    proc: subprocess.Popen
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def current_trial(self) -> int | None:
        """The trial this worker has started and not yet told, from its own log."""
        text = self.text()
        started = STARTED.findall(text)
        if not started or started[-1] in TOLD.findall(text) or f"[trial {started[-1]}]" in text:
            return None
        return int(started[-1])

    def kill(self) -> None:
        """SIGKILL the whole process group: the worker and anything it spawned (W&B service)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def start_worker(workdir: Path, log: Path, *overrides: str, env: dict[str, str]) -> Worker:
    out = log.open("w")
    proc = subprocess.Popen(
        [str(BIN / "vitsweep"), *SMOKE, *overrides],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    out.close()
    return Worker(proc, log)


def worker_env(storage_url: str | None = None) -> dict[str, str]:
    env = cli_env()
    env.pop("VITSWEEP_STORAGE", None)
    if storage_url is not None:
        env["VITSWEEP_STORAGE"] = storage_url  # the way users pass a secret: not on the CLI
    # One thread per worker: several workers on 2 cores would otherwise oversubscribe them.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def wait_all(workers: list[Worker], timeout: float) -> None:
    deadline = time.time() + timeout
    for w in workers:
        try:
            w.proc.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            for v in workers:
                v.kill()
            raise AssertionError(
                f"workers still running after {timeout:.0f} s:\n{w.text()}"
            ) from None


def kill_mid_trial(workers: list[Worker], study: optuna.Study, timeout: float) -> int:
    """Wait until some worker is inside a non-baseline trial, SIGKILL it, return the trial."""
    deadline = time.time() + timeout
    seen: dict[int, int] = {}
    while time.time() < deadline:
        for i, w in enumerate(workers):
            n = w.current_trial()
            if n is not None and n >= 1 and seen.get(i) == n:  # same trial two polls apart
                w.kill()
                state = next(t.state for t in study.get_trials() if t.number == n)
                assert state == TrialState.RUNNING, f"trial {n} was {state.name} when killed"
                return n
            seen[i] = n if n is not None else -1
        time.sleep(0.5)
    raise AssertionError("no worker was ever caught inside a trial")


def files_holding(root: Path, secret: str) -> list[Path]:
    needle = secret.encode()
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


# ---------------------------------------------------------------------------- study checks


def check_study(study: optuna.Study, budget: int, killed: list[int]) -> list[FrozenTrial]:
    """Exactly `budget` measured candidates (COMPLETE, not a repeat told its twin's values),
    unique numbers, one baseline, every kill recovered."""
    trials = study.get_trials()
    table = "\n".join(f"{t.number} {t.state.name} {t.params} {t.user_attrs}" for t in trials)
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(trials))), table  # unique, no gaps
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len([t for t in complete if record.duplicate_of(t) is None]) == budget, table
    left = [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert not left, f"trials left RUNNING/WAITING: {left}"
    # One baseline. Not always number 0: a worker that loads the study between its creation and
    # the creator's enqueue asks a sampled trial first; the report finds the baseline by its attr.
    baselines = [t for t in complete if record.is_baseline(t)]
    assert len(baselines) == 1 and baselines[0].params == {}, table
    for t in trials:
        if t.state == TrialState.PRUNED:  # a claim over budget, given back before it ran
            assert t.user_attrs["skip_reason"].startswith("budget") and not t.params
        elif t.state == TrialState.FAIL:
            assert t.user_attrs["fail_reason"].startswith("stale"), t.user_attrs
    for n in killed:
        dead = trials[n]
        assert dead.state == TrialState.FAIL and dead.user_attrs["fail_reason"].startswith("stale")
        retries = [t for t in trials if t.user_attrs.get(record.RETRY_OF) == n]
        assert len(retries) == 1, f"trial {n} re-queued {len(retries)} times"
        assert retries[0].state == TrialState.COMPLETE and retries[0].params == dead.params
    return complete


def check_wandb(workdir: Path, complete: list[FrozenTrial]) -> None:
    runs = [r for r in read_runs(workdir / "multirun" / "smoke" / "wandb") if r.job_type == "trial"]
    assert sorted(r.name for r in runs) == sorted(f"trial-{t.number}" for t in complete)
    by_number = {t.number: t for t in complete}
    for run in runs:
        t = by_number[int(run.name.removeprefix("trial-"))]
        assert run.summary["state"] == "COMPLETE"
        assert run.summary["accuracy"] == pytest.approx(t.values[0])


def sweep_with_a_kill(workdir: Path, overrides: list[str], env: dict, study: optuna.Study):
    """3 workers started together; one SIGKILLed mid-trial and started again, as a user would."""
    logs = workdir / "logs"
    logs.mkdir()
    args = [*overrides, "hydra.sweeper.n_trials=12"]
    workers = [start_worker(workdir, logs / f"w{i}.log", *args, env=env) for i in range(3)]
    try:
        killed = kill_mid_trial(workers, study, timeout=240)
        workers.append(start_worker(workdir, logs / "w3.log", *args, env=env))
        wait_all(workers, timeout=300)
    finally:
        for w in workers:
            w.kill()
    for w in workers:
        if w.proc.returncode != -signal.SIGKILL:
            assert w.proc.returncode == 0, w.text()
    return workers, killed


# ----------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgresql"])
def test_racing_workers_never_overshoot_the_budget(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Four workers that finish trials at the same moments: exactly n COMPLETE, never n+1."""
    url = {
        "sqlite": lambda: f"sqlite:///{tmp_path / 'db.sqlite'}",
        "journal": lambda: f"journal:{tmp_path / 'journal.log'}",
        "postgresql": lambda: request.getfixturevalue("pg_url"),
    }[kind]()
    spec = SweeperSpec(
        study_name="race", n_trials=16, enqueue_baseline=False, params={"x": "interval(1, 3)"}
    )
    directions = ["maximize", "maximize", "minimize"]
    create_or_load(open_storage(url), "race", directions, optuna.samplers.RandomSampler(seed=0))
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            study, created = create_or_load(
                open_storage(url), "race", directions, optuna.samplers.RandomSampler(seed=seed)
            )
            assert not created
            rng = random.Random(seed)

            def launch(batch: list[list[str]]) -> list[Outcome]:
                time.sleep(rng.uniform(0.0, 0.01))
                x = float(batch[0][0].split("=")[1])
                return [Outcome(metrics={"accuracy": x, "throughput": x, "energy": x})]

            StudyLoop(spec, study, parse_space(spec.params), TrialSpec(), launch).run()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    study = optuna.load_study(study_name="race", storage=open_storage(url))
    trials = study.get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 16
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_workers_started_together_on_an_empty_database_all_connect(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Every worker runs Optuna's CREATE TABLE on a fresh database; none may die of it."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    else:
        url = request.getfixturevalue("pg_url")
    errors: list[BaseException] = []
    opened = []

    def worker() -> None:
        try:
            opened.append(open_storage(url))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(opened) == 6


@pytest.mark.slow
def test_three_workers_on_postgresql_with_one_killed(
    pg_url: str, postgres: pg.PgServer, tmp_path: Path
) -> None:
    workdir = tmp_path
    storage = open_storage(pg_url)
    watcher = _Lazy(lambda: optuna.load_study(study_name="smoke", storage=storage))
    workers, killed = sweep_with_a_kill(workdir, [], worker_env(pg_url), watcher)

    complete = check_study(watcher(), 12, [killed])
    check_wandb(workdir, complete)
    # The password: in no worker log, saved Hydra config, W&B file or report.
    assert postgres.password in pg_url
    assert not files_holding(workdir, postgres.password)
    assert any("vitsweep:***@127.0.0.1" in w.text() for w in workers)
    saved = list((workdir / "multirun").rglob(".hydra/hydra.yaml"))
    ran = [t for t in complete if record.duplicate_of(t) is None]  # repeats launch no job
    assert (
        len(saved) >= len(ran)
        and (workdir / "multirun" / "smoke" / "report" / "trials.csv").exists()
    )


@pytest.mark.slow
def test_three_workers_on_the_journal_file_with_one_killed(tmp_path: Path) -> None:
    workdir = tmp_path
    journal = workdir / "multirun" / "journal.log"
    url = f"journal:{journal}"
    storage = open_storage(url)
    watcher = _Lazy(lambda: optuna.load_study(study_name="smoke", storage=storage))
    _, killed = sweep_with_a_kill(workdir, [f"hydra.sweeper.storage={url}"], worker_env(), watcher)
    complete = check_study(watcher(), 12, [killed])
    check_wandb(workdir, complete)


class _Lazy:
    """The study, loaded once some worker has created it (the watcher polls before that)."""

    def __init__(self, load) -> None:
        self._load, self._study = load, None

    def __call__(self) -> optuna.Study:
        deadline = time.time() + 120
        while self._study is None:
            try:
                self._study = self._load()
            except KeyError:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
        return self._study

    def get_trials(self, *args, **kwargs) -> list[FrozenTrial]:
        """The trials so far; none while no worker has created the study yet."""
        if self._study is None:
            try:
                self._study = self._load()
            except KeyError:
                return []
        return self._study.get_trials(*args, **kwargs)


# -------------------------------------------------------------------------------- launchers


def test_parallel_launcher_runs_n_jobs_trials_at_once(tmp_path: Path) -> None:
    """`hydra/launcher=parallel` (Hydra's joblib launcher, conf/hydra/launcher/parallel.yaml):
    the sweeper hands it n_jobs trials at a time and the budget still holds exactly."""
    w = start_worker(
        tmp_path,
        tmp_path / "joblib.log",
        "hydra/launcher=parallel",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=4",
        "tracking=none",
        env=worker_env(),
    )
    wait_all([w], timeout=300)
    assert w.proc.returncode == 0, w.text()
    study = optuna.load_study(
        study_name="smoke", storage=open_storage(f"sqlite:///{tmp_path / 'multirun/vitsweep.db'}")
    )
    trials = study.get_trials()
    assert [t.number for t in trials] == list(range(len(trials)))
    assert len([t for t in trials if record.duplicate_of(t) is None]) == 4
    # Batches of two: both trials of a batch are started before either is told.
    order = re.findall(r"\] trial (\d+) (\(\d+/\d+ complete\)|COMPLETE)", w.text())
    kinds = ["start" if what.startswith("(") else "told" for _, what in order]
    assert kinds == ["start", "start", "told", "told"] * 2, order
    (saved,) = tmp_path.glob("multirun/smoke/*/trial-0/.hydra/hydra.yaml")
    assert "JoblibLauncher" in saved.read_text()


def test_slurm_launcher_config_composes_for_the_study() -> None:
    """`hydra/launcher=slurm`: submitit's SLURM launcher, one array task per trial of a batch."""
    from omegaconf import OmegaConf

    from vitsweep import config

    cfg = config.compose(["experiment=smoke", "hydra/launcher=slurm", "hydra.sweeper.n_jobs=8"])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert launcher["array_parallelism"] == "${hydra.sweeper.n_jobs}"
    assert (launcher["gpus_per_node"], launcher["tasks_per_node"]) == (1, 1)


# ----------------------------------------------------------------------------------- chaos


def complete_rows(report_dir: Path) -> int:
    """The report's measured candidates: COMPLETE rows that repeat no other."""
    with (report_dir / "trials.csv").open() as f:
        return sum(r["state"] == "COMPLETE" and not r["duplicate_of"] for r in csv.DictReader(f))


@pytest.mark.slow
def test_chaos_kill_and_restart(pg_url: str, tmp_path: Path) -> None:
    """Four SIGKILLs, each kind of point at least once (startup, mid-trial, right after a tell)
    in a seeded order with seeded delays, restarts, then one run to the end: nothing finished
    is lost, nothing counted twice, nothing stale."""
    budget = 4
    rng = random.Random(20240)
    chaos_dir, ref_dir = tmp_path / "chaos", tmp_path / "ref"
    chaos_dir.mkdir()
    ref_dir.mkdir()
    args = [f"hydra.sweeper.n_trials={budget}"]
    # The uninterrupted reference runs beside the chaos (SQLite, its own tree): 2 cores.
    ref = start_worker(ref_dir, tmp_path / "ref.log", *args, env=worker_env())
    storage = open_storage(pg_url)
    study = _Lazy(lambda: optuna.load_study(study_name="smoke", storage=storage))
    env = worker_env(pg_url)
    finished: dict[int, tuple[float, ...]] = {}
    # Every kind once, and one more drawn: seven drawn kills (the test's first form) cost 50 s
    # more of the suite and could miss a kind, which the seed alone decided.
    kinds = ["startup", "mid-trial", "after-tell"]
    phases = [*kinds, rng.choice(kinds)]
    rng.shuffle(phases)
    try:
        for i, phase in enumerate(phases):
            w = start_worker(chaos_dir, tmp_path / f"chaos{i}.log", *args, env=env)
            _wait_for_phase(w, phase, rng, timeout=60)
            w.kill()
            for t in study.get_trials(states=(TrialState.COMPLETE,)):
                finished.setdefault(t.number, tuple(t.values))
        final = start_worker(chaos_dir, tmp_path / "final.log", *args, env=env)
        wait_all([final, ref], timeout=300)
    finally:
        ref.kill()
    assert final.proc.returncode == 0, final.text()
    assert ref.proc.returncode == 0, ref.text()

    trials = study.get_trials()
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(trials)))
    by_number = {t.number: t for t in trials}
    for n, values in finished.items():  # every trial finished before a kill is still there
        assert by_number[n].state == TrialState.COMPLETE and tuple(by_number[n].values) == values
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    stale = [t for t in trials if t.state == TrialState.FAIL]
    for t in stale:  # each killed trial was re-run exactly once, under a new number
        assert t.user_attrs["fail_reason"].startswith("stale")
        assert sum(u.user_attrs.get(record.RETRY_OF) == t.number for u in trials) == 1
    assert stale, "a mid-trial kill must leave a trial to recover"
    measured = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len([t for t in measured if record.duplicate_of(t) is None]) == budget

    for workdir, storage_env in ((chaos_dir, env), (ref_dir, worker_env())):
        subprocess.run(
            [str(BIN / "vitsweep-report"), "experiment=smoke", *args],
            cwd=workdir, env=storage_env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    report = Path("multirun") / "smoke" / "report"
    assert complete_rows(chaos_dir / report) == complete_rows(ref_dir / report) == budget


def _wait_for_phase(w: Worker, phase: str, rng: random.Random, timeout: float) -> None:
    """Block until `w` is at the chosen kind of point, plus a seeded random delay."""
    if phase == "startup":
        time.sleep(rng.uniform(0.5, 5.0))
        return
    deadline = time.time() + timeout
    pattern = STARTED if phase == "mid-trial" else TOLD
    # a smoke trial lasts about a second once its model is cached: killed within half of one
    delay = rng.uniform(0.0, 0.5) if phase == "mid-trial" else rng.uniform(0.0, 0.3)
    while time.time() < deadline and w.proc.poll() is None:
        if pattern.search(w.text()):
            time.sleep(delay)
            return
        time.sleep(0.1)
