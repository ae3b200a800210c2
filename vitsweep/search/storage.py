"""Optuna storages from a URL, and URLs that are safe to print.

Any Optuna RDB URL works (sqlite, postgresql, mysql); `journal:<path>` selects Optuna's file
journal (one machine or a shared filesystem). Passwords never leave this module unmasked.
"""

from __future__ import annotations

import json
import os
import random
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import get_lock_file

from vitsweep.errors import mask_url
from vitsweep.files import write_bytes
from vitsweep.spec import ConfigError


def default_url(root: str | Path) -> str:
    return f"sqlite:///{Path(root).resolve() / 'vitsweep.db'}"


def _with_installed_driver(url: str) -> str:
    """`postgresql://` -> `postgresql+psycopg2://` when only psycopg2 is installed.

    SQLAlchemy 2.1 maps a driverless `postgresql://` to psycopg 3, while the driver this package
    depends on is psycopg2; users write the plain URL, so pick the driver that is really there.
    """
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2"):
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


_RECORD_START = b'{"op_code":'


class RepairingJournal(JournalFileBackend):
    """Optuna's file journal that survives a worker killed in the middle of an append.

    Optuna writes each batch of records as one `write` + fsync; a kill during it leaves a last
    line without its newline. Optuna's reader skips that fragment, but the next append lands
    right after it, the joined line is not JSON, and from then on every reader raises
    (JSONDecodeError). The records of a torn write were never acknowledged to their writer,
    so dropping them is what an unbroken run would hold: under the journal's own lock, the
    tail is cut back to the last complete record before every append, and a file that already
    has fragment+record lines (written by plain Optuna or an older vitsweep) has each such line
    cut back to its record when it is opened. What is cut is kept in `<journal>.torn`.
    """

    def __init__(self, file_path: str) -> None:
        super().__init__(file_path)
        with get_lock_file(self._lock):
            self._cut_joined_lines()  # first: a foreign file is refused before any cut
            self._cut_torn_tail()

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        # Optuna's append with the repair inside the same lock (the lock is not reentrant, so
        # super().append_logs cannot be wrapped): write format identical to Optuna's.
        text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
        with get_lock_file(self._lock):
            self._cut_torn_tail()
            with open(self._file_path, "ab") as f:
                f.write(text.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())

    def _keep(self, fragment: bytes) -> None:
        with open(self._file_path + ".torn", "ab") as f:
            f.write(fragment + b"\n")

    def _cut_torn_tail(self) -> None:
        with open(self._file_path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            # Walk back to the last newline: the fragment is what follows it.
            pos = size
            while pos > 0:
                step = min(1 << 16, pos)
                f.seek(pos - step)
                chunk = f.read(step)
                cut = chunk.rfind(b"\n")
                if cut >= 0:
                    pos = pos - step + cut + 1
                    break
                pos -= step
            f.seek(pos)
            self._keep(f.read())
            f.truncate(pos)
            f.flush()
            os.fsync(f.fileno())

    def _cut_joined_lines(self) -> None:
        with open(self._file_path, "rb") as f:
            lines = f.read().split(b"\n")
        bad = False
        for i, line in enumerate(lines[:-1]):  # the last piece is a torn tail (or empty)
            if not line or _is_record(line):
                continue
            start = line.rfind(_RECORD_START)
            if start <= 0 or not _is_record(line[start:]):
                raise ConfigError(  # not a torn write: refuse, and touch nothing
                    f"hydra.sweeper.storage=journal:{self._file_path}: line {i + 1} is not an "
                    "Optuna journal record (not a journal file, or damaged beyond a torn "
                    "write); the file is left as it is"
                )
            self._keep(line[:start])
            lines[i] = line[start:]
            bad = True
        if bad:
            write_bytes(self._file_path, b"\n".join(lines))


def _is_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def open_storage(url: str, create: bool = True) -> BaseStorage:
    """An Optuna storage for `url`; a bad URL is a one-line error with the password masked.

    `create=False` (reports, exports: readers of a study that must exist) refuses a SQLite or
    journal file that is not there instead of leaving an empty one behind.
    """
    local = _local_file(url)
    if not create and local is not None and not local.is_file():
        raise ConfigError(
            f"hydra.sweeper.storage={url}: no such file; run the study first "
            "(vitsweep -m ...) or point paths.root / hydra.sweeper.storage at it"
        )
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:")).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = RepairingJournal(str(path))  # raises ConfigError for a foreign file
        except OSError as e:
            raise ConfigError(
                f"hydra.sweeper.storage={url}: cannot open the journal file ({e.strerror or e}); "
                "give a writable path, e.g. journal:multirun/study.log"
            ) from None
        return JournalStorage(backend)
    if url.startswith("sqlite:///") and local is not None:
        try:
            local.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(
                f"hydra.sweeper.storage={mask_url(url)}: cannot create {local.parent} "
                f"({e.strerror or e}); set paths.root to a writable directory"
            ) from None
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    if url.startswith("postgresql"):
        engine_kwargs = {"pool_pre_ping": True}
    for attempt in range(_SCHEMA_ATTEMPTS):
        try:
            return RDBStorage(_with_installed_driver(url), engine_kwargs=engine_kwargs)
        except (ImportError, ValueError) as e:
            message = f"hydra.sweeper.storage={mask_url(url)}: {mask_url(str(e))}"
            raise ConfigError(message) from None
        except Exception as e:  # sqlalchemy.exc.OperationalError and friends: server down, auth
            if _lost_schema_race(e) and attempt + 1 < _SCHEMA_ATTEMPTS:
                time.sleep(random.uniform(0.1, 0.5))
                continue
            first = mask_url(str(e)).strip().splitlines()[0]
            raise ConfigError(
                f"hydra.sweeper.storage={mask_url(url)}: cannot connect: {first}"
            ) from None
    raise AssertionError("unreachable")


_SCHEMA_ATTEMPTS = 8


def _local_file(url: str) -> Path | None:
    if url.startswith("journal:"):
        return Path(url.removeprefix("journal:")).expanduser()
    if url.startswith("sqlite:///") and ":memory:" not in url:
        return Path(url.removeprefix("sqlite:///"))
    return None


def _lost_schema_race(e: Exception) -> bool:
    """Workers started together on an empty database all run Optuna's CREATE TABLE and version
    stamp; the losers fail with a duplicate key (PostgreSQL's pg_type, SQLite's alembic_version)
    or 'already exists'. The schema is there by then, so opening again succeeds."""
    from sqlalchemy.exc import IntegrityError

    return isinstance(e, IntegrityError) or "already exists" in str(e)


def create_or_load(
    storage: BaseStorage,
    name: str,
    directions: list[str],
    sampler,
    metric_names: list[str] | None = None,
) -> tuple[optuna.Study, bool]:
    """(study, created): only the process that really created the study learns `created`,
    so that exactly one worker enqueues the baseline even when many start together.
    `metric_names` are stored on a new study and must match an existing one's: with the same
    directions but other metrics (energy -> model_bytes) a resumed study would file the new
    metric's values beside the old one's under one objective."""
    try:
        study = optuna.create_study(
            storage=storage, study_name=name, directions=directions, sampler=sampler
        )
        if metric_names is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(metric_names)
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=name, sampler=sampler)
        have = [d.name.lower() for d in study.directions]
        if have != directions:
            raise ConfigError(
                f"hydra.sweeper.objectives: study {name!r} exists with directions {have}, "
                f"not {directions}; use a new hydra.sweeper.study_name"
            ) from None
        if metric_names is not None and study.metric_names not in (None, metric_names):
            raise ConfigError(
                f"hydra.sweeper.objectives: study {name!r} exists with objectives "
                f"{study.metric_names}, not {metric_names}; use a new hydra.sweeper.study_name"
            ) from None
        return study, False
