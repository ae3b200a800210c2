"""Read W&B run files back from disk (offline runs), without the W&B service.

The `.wandb` transaction log is a LevelDB-style record log (32 KiB blocks, 7-byte record
headers: crc32, length, type) after a 7-byte ':W&B' header; each record is a protobuf
`wandb_internal_pb2.Record`. wandb ships no public reader for it, hence this one; used by tests
and by anyone auditing what a study logged before `wandb sync`.

A run reopened offline (`resume="allow"`, see `wandb_log`) leaves one directory per opening
with the same run id; `read_runs` merges them in order of start time, as `wandb sync` does.
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
    """One run as W&B would show it after `wandb sync`; `segments` > 1 for a resumed run."""

    path: Path  # the first segment's .wandb file
    run_id: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # rows with `_step`
    metrics: dict[str, str] = field(default_factory=dict)  # defined metric -> its x (step metric)
    exit_code: int | None = None
    start_time: float = 0.0  # seconds since the epoch, of the first segment
    resume: bool = False  # the last segment was opened with `resume` (reopens the same run)
    segments: int = 1


def _nested_set(d: dict[str, Any], item: Any) -> None:
    keys = list(item.nested_key) or [item.key]
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = json.loads(item.value_json)


def _set_tags(out: RunRecord, tags: list[str]) -> None:
    """W&B replaces a run's tags only with a non-empty set (an empty one leaves them)."""
    if tags:
        out.tags = tags


def read_run(path: Path) -> RunRecord:
    """One .wandb file: one run, or one segment of a resumed run."""
    from wandb.proto import wandb_internal_pb2 as pb

    out = RunRecord(path=path)
    for raw in _records(path):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run = rec.run
            out.run_id = run.run_id or out.run_id
            out.name = run.display_name or out.name
            out.group = run.run_group or out.group
            out.job_type = run.job_type or out.job_type
            out.resume = out.resume or run.resume
            if run.HasField("start_time") and not out.start_time:
                out.start_time = run.start_time.seconds + run.start_time.nanos / 1e9
            _set_tags(out, list(run.tags))
            for item in run.config.update:
                _nested_set(out.config, item)
        elif kind == "config":
            for item in rec.config.update:
                _nested_set(out.config, item)
        elif kind == "summary":
            for item in rec.summary.update:
                _nested_set(out.summary, item)
        elif kind == "history":
            row: dict[str, Any] = {"_step": rec.history.step.num}
            for item in rec.history.item:
                _nested_set(row, item)
            out.history.append(row)
        elif kind == "metric" and rec.metric.name:
            out.metrics[rec.metric.name] = rec.metric.step_metric
        elif kind == "exit":
            out.exit_code = rec.exit.exit_code
    for key, value in list(out.config.items()):  # W&B wraps config values as {"value": v}
        if isinstance(value, dict) and set(value) <= {"value", "desc"}:
            out.config[key] = value.get("value")
    return out


def merge_segments(segments: list[RunRecord]) -> RunRecord:
    """The segments of one run id, in order of start time, as `wandb sync` uploads them:
    config and summary updated, history appended, tags replaced by a later non-empty set."""
    first, *rest = sorted(segments, key=lambda r: r.start_time)
    out = RunRecord(
        path=first.path,
        run_id=first.run_id,
        start_time=first.start_time,
        segments=len(segments),
    )
    for seg in (first, *rest):
        out.name = seg.name or out.name
        out.group = seg.group or out.group
        out.job_type = seg.job_type or out.job_type
        _set_tags(out, seg.tags)
        out.config.update(seg.config)
        out.summary.update(seg.summary)
        out.history += seg.history
        out.metrics.update(seg.metrics)
        out.exit_code = seg.exit_code if seg.exit_code is not None else out.exit_code
        out.resume = seg.resume
    return out


def read_segments(wandb_dir: Path) -> list[RunRecord]:
    """Every .wandb file under a W&B directory (offline-run-* and run-* folders), unmerged."""
    return [read_run(p) for p in sorted(Path(wandb_dir).glob("*run-*/run-*.wandb"))]


def read_runs(wandb_dir: Path) -> list[RunRecord]:
    """Every run under a W&B directory, the segments of a resumed run merged into one."""
    by_id: dict[str, list[RunRecord]] = {}
    for seg in read_segments(wandb_dir):
        by_id.setdefault(seg.run_id or str(seg.path), []).append(seg)
    runs = [merge_segments(segs) for segs in by_id.values()]
    return sorted(runs, key=lambda r: r.start_time)
