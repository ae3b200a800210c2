"""`deploy_bytes`: what a station has to carry to run a candidate, the model file(s) plus the
runtime's installed packages with everything they require (numpy included), summed from each
distribution's own file list (`importlib.metadata`), as installed on this machine."""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache
from importlib import metadata

from packaging.requirements import Requirement


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_closure(names: Iterable[str]) -> tuple[str, ...]:
    """`names` and every distribution they require here (markers evaluated for this Python and
    platform, no extras), sorted; a requirement not installed is left out (nothing to count)."""
    seen: set[str] = set()
    todo = [_norm(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for line in dist.requires or ():
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(_norm(req.name))
    return tuple(sorted(seen))


@cache
def _distribution_bytes(name: str) -> int:
    dist = metadata.distribution(name)
    total = 0
    for f in dist.files or ():
        path = dist.locate_file(f)
        if path.is_file():
            total += path.stat().st_size
    return total


@cache
def installed_bytes(names: tuple[str, ...]) -> int:
    """Bytes on disk of `names` and their requirement closure."""
    return sum(_distribution_bytes(n) for n in requirement_closure(names))
