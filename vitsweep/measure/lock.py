"""One inter-process lock around timed sections.

Several workers on one machine would otherwise time their candidates while competing for the
same cores (or GPU), and every number would be slower and noisier than the candidate deserves.
The lock serializes only the timed parts; accuracy evaluation and FLOP counting run freely.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator

from filelock import FileLock

from vitsweep.spec import MeasureSpec

DEFAULT_LOCK_NAME = "vitsweep-measure.lock"


def lock_path(spec: MeasureSpec) -> str:
    """`spec.lock_path`, or one file in the temp dir that every worker of this user agrees on."""
    if spec.lock_path:
        return os.path.expanduser(spec.lock_path)
    return os.path.join(tempfile.gettempdir(), DEFAULT_LOCK_NAME)


@contextlib.contextmanager
def timing_lock(spec: MeasureSpec) -> Iterator[float]:
    """Hold the machine-wide timing lock when `spec.lock`; yields the seconds spent waiting."""
    if not spec.lock:
        yield 0.0
        return
    path = lock_path(spec)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    t0 = time.perf_counter()
    with FileLock(path):
        yield time.perf_counter() - t0
