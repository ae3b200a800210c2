"""`deploy_bytes`: what a station has to carry to run a candidate, the model file(s) plus the
runtime's installed packages with everything they require (numpy included), summed from each
distribution's own file list (`importlib.metadata`), as installed on this machine."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from functools import cache
from importlib import metadata
from pathlib import Path

from filelock import FileLock
from packaging.requirements import Requirement

from vitsweep.files import write_text


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
def installed_bytes(names: tuple[str, ...], cache_dir: str | Path | None = None) -> int:
    """Bytes on disk of `names` and their requirement closure. With `cache_dir`, kept there
    (`installed-bytes.json`) per installed versions of the closure: every trial runs in a fresh
    process, which otherwise walked the files of torch and its CUDA wheels again (0.5-1 s of
    each trial, a third of a predicted one)."""
    closure = requirement_closure(names)
    if cache_dir is None:
        return sum(_distribution_bytes(n) for n in closure)
    path = Path(cache_dir) / "installed-bytes.json"
    key = " ".join(f"{n}=={metadata.version(n)}" for n in closure)
    if isinstance(found := _kept(path).get(key), int):
        return found
    total = sum(_distribution_bytes(n) for n in closure)
    with FileLock(str(path.with_suffix(".lock"))):  # workers of one study add to one file
        write_text(path, json.dumps({**_kept(path), key: total}, indent=1, sort_keys=True) + "\n")
    return total


def _kept(path: Path) -> dict[str, object]:
    """The sums kept in `path`; {} when it is missing or damaged (it is counted again)."""
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return kept if isinstance(kept, dict) else {}
