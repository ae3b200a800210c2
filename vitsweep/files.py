"""Atomic file writes, the one way every vitsweep output reaches disk.

A worker killed mid-write, or two workers writing the same report, must never leave a half file
where a reader looks: write a temp file beside the target (same filesystem), flush it to disk,
then `os.replace` it over the target (atomic on POSIX). The temp name is unique per process and
thread and keeps the target's suffix, for writers that infer the format from it (matplotlib,
numpy), and files get the default permissions (not mkstemp's 0600).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp path to write; it becomes `path` when the block ends without an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
