"""Read W&B run files back from disk (offline runs), without the W&B service.

The `.wandb` transaction log is a LevelDB-style record log (32 KiB blocks, 7-byte record
headers: crc32, length, type) after a 7-byte ':W&B' header; each record is a protobuf
`wandb_internal_pb2.Record`. wandb ships no public reader for it, hence this one; used by tests
and by anyone auditing what a study logged before `wandb sync`.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_BLOCK = 32768
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file")
    pos, chunks = _HEADER, []
    while pos + _HEADER <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < _HEADER:
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        payload = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 0 and length == 0:
            pos += _BLOCK - pos % _BLOCK if pos % _BLOCK else 0
            continue
        if kind == _FULL:
            yield payload
        elif kind == _FIRST:
            chunks = [payload]
        elif kind == _MIDDLE:
            chunks.append(payload)
        elif kind == _LAST:
            chunks.append(payload)
            yield b"".join(chunks)


@dataclass
class RunRecord:
    path: Path
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None


def _nested_set(d: dict[str, Any], item: Any) -> None:
    keys = list(item.nested_key) or [item.key]
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = json.loads(item.value_json)


def read_run(path: Path) -> RunRecord:
    from wandb.proto import wandb_internal_pb2 as pb

    out = RunRecord(path=path)
    for raw in _records(path):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out.name, out.group, out.job_type = (
                rec.run.display_name,
                rec.run.run_group,
                rec.run.job_type,
            )
            out.tags = list(rec.run.tags)
            for item in rec.run.config.update:
                _nested_set(out.config, item)
        elif kind == "config":
            for item in rec.config.update:
                _nested_set(out.config, item)
        elif kind == "summary":
            for item in rec.summary.update:
                _nested_set(out.summary, item)
        elif kind == "exit":
            out.exit_code = rec.exit.exit_code
    for key, value in list(out.config.items()):  # W&B wraps config values as {"value": v}
        if isinstance(value, dict) and set(value) <= {"value", "desc"}:
            out.config[key] = value.get("value")
    return out


def read_runs(wandb_dir: Path) -> list[RunRecord]:
    """Every run under a W&B directory (offline-run-* and run-* folders)."""
    return [read_run(p) for p in sorted(Path(wandb_dir).glob("*run-*/run-*.wandb"))]
