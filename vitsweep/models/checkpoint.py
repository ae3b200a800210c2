"""Checkpoint files: atomic writes, safe loads, cache keys.

A worker killed mid-write must never leave a half file where the next one looks (temp file in
the same directory + `os.replace`, which is atomic on POSIX); loading never unpickles code
(`weights_only=True`); every failure is one line naming the file. Every file also gets a
`<name>.sha256` beside it, so that a cache damaged after the fact (a truncated copy, a disk
error, a stray edit) is recognised before it is trusted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from vitsweep.files import atomic_path, write_text
from vitsweep.spec import ConfigError

FORMAT_VERSION = 1


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used; the message names the file and what to do (a
    ConfigError, so every command reports it in one line)."""


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:200]


def atomic_save(obj: Any, path: str | Path) -> Path:
    """`torch.save` to a temp file beside `path`, then rename over it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    write_text(checksum_path(path), f"{file_sha256(path)}  {path.name}\n")
    return path


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def recorded_sha256(path: Path) -> str | None:
    """The sha256 written beside `path` with it (`<name>.sha256`: the digest, then the name);
    None when there is none, as for files written before checksums were."""
    side = checksum_path(path)
    words = side.read_text().split() if side.is_file() else []
    return words[0] if words else None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def damage(path: str | Path, kind: str) -> str | None:
    """None when `path` is an intact vitsweep `kind` file, else what is wrong with it: its
    checksum (when one was written) must match, and it must load as that kind."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    if checksum_path(path).is_file():
        if (recorded_sha256(path) or "") != file_sha256(path):
            return "checksum mismatch (truncated or modified after it was written)"
        return None
    try:  # written before checksums: a load check instead
        safe_load(path, kind)
    except CheckpointError as e:
        return str(e).removeprefix(f"{path}: ")
    return None


def quarantine(path: Path, why: str) -> Path:
    """Move a damaged file aside (never delete what a user may want to inspect); one line."""
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, aside)
    checksum_path(path).unlink(missing_ok=True)
    print(f"vitsweep: {path}: {why}; moved to {aside.name}, rebuilding it", file=sys.stderr)
    return aside


def safe_load(path: str | Path, kind: str) -> dict[str, Any]:
    """Load a checkpoint written by `atomic_save` holding `{"kind": kind, ...}`, tensors only."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{path}: unreadable checkpoint ({one_line(e)}); delete it to retrain"
        ) from None
    return checked(obj, path, kind)


def checked(obj: Any, path: str | Path, kind: str) -> dict[str, Any]:
    """`obj`, loaded from `path`, if it is a vitsweep `kind` checkpoint of this format."""
    if not isinstance(obj, dict) or obj.get("kind") != kind:
        found = obj.get("kind") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: not a vitsweep {kind} checkpoint (found {found!r})")
    if obj.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {obj.get('format')!r}, expected {FORMAT_VERSION}; "
            "delete it to retrain"
        )
    return obj


def readable(path: Path, key: str) -> Any:
    """What `path` holds (tensors only), or the one-line error naming the key and the file."""
    if not path.is_file():
        raise CheckpointError(f"{key}={str(path)!r}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({one_line(e)})") from None


def load_state(
    module: torch.nn.Module, state: Any, path: str | Path, *, assign: bool = False
) -> None:
    """`load_state_dict(strict=True)` with a one-line error naming the file on any mismatch.
    `assign`: the module's tensors become the file's (a module on the meta device, checked
    for names and shapes only, would otherwise warn at every copy into it)."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: checkpoint holds no state dict")
    try:
        module.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else "")
        raise CheckpointError(f"{path}: weights do not match the model ({detail[:160]})") from None


def plain(obj: Any) -> Any:
    """A JSON-able copy of specs (dataclasses, tuples) for hashing and for `weights_only` files."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    return obj


def cache_key(**parts: Any) -> str:
    """A short stable hash of everything that changes the trained weights."""
    text = json.dumps(
        {"format": FORMAT_VERSION, **plain(parts)}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]
