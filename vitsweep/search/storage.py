"""Optuna storages from a URL, and URLs that are safe to print.

Any Optuna RDB URL works (sqlite, postgresql, mysql); `journal:<path>` selects Optuna's file
journal (one machine or a shared filesystem). Passwords never leave this module unmasked.
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from vitsweep.spec import ConfigError

_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?P<tail>@)")


def mask_url(text: str) -> str:
    """`postgresql://u:secret@h/db` -> `postgresql://u:***@h/db`, anywhere inside `text`."""
    return _PASSWORD.sub(lambda m: f"{m['head']}***{m['tail']}", text)


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


def open_storage(url: str) -> BaseStorage:
    """An Optuna storage for `url`; a bad URL is a one-line error with the password masked."""
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:")).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
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


def _lost_schema_race(e: Exception) -> bool:
    """Workers started together on an empty database all run Optuna's CREATE TABLE and version
    stamp; the losers fail with a duplicate key (PostgreSQL's pg_type, SQLite's alembic_version)
    or 'already exists'. The schema is there by then, so opening again succeeds."""
    from sqlalchemy.exc import IntegrityError

    return isinstance(e, IntegrityError) or "already exists" in str(e)


def create_or_load(
    storage: BaseStorage, name: str, directions: list[str], sampler
) -> tuple[optuna.Study, bool]:
    """(study, created): only the process that really created the study learns `created`,
    so that exactly one worker enqueues the baseline even when many start together."""
    try:
        study = optuna.create_study(
            storage=storage, study_name=name, directions=directions, sampler=sampler
        )
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=name, sampler=sampler)
        have = [d.name.lower() for d in study.directions]
        if have != directions:
            raise ConfigError(
                f"hydra.sweeper.objectives: study {name!r} exists with directions {have}, "
                f"not {directions}; use a new hydra.sweeper.study_name"
            ) from None
        return study, False
