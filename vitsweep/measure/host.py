"""Which CPU measured a figure, in words a reader can compare.

Why our own: `platform.processor()` answers "x86_64" on Linux, and the speed figures of this
project move with the CPU's matrix units (AMX, AVX512-BF16, AVX512-FP16), which the model name
alone does not say (the same "Intel Xeon Processor @ 2.80GHz" has come with and without AMX).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
from pathlib import Path

# cpuinfo flag -> how speed figures name it
_UNITS = {
    "amx_bf16": "AMX-BF16",
    "amx_int8": "AMX-INT8",
    "avx512_bf16": "AVX512-BF16",
    "avx512_fp16": "AVX512-FP16",
    "avx512_vnni": "AVX512-VNNI",
}


def _cpuinfo(text: str) -> tuple[str, set[str]]:
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = " ".join(value.split())
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def describe(cpuinfo: str | None = None) -> str:
    """This machine's CPU (or the one `cpuinfo` text describes), e.g.
    "Intel(R) Xeon(R) Processor @ 2.80GHz (AVX512-VNNI; no AMX, no AVX512-BF16), 2 cores"."""
    if cpuinfo is None:
        return _describe_this()
    return _describe(cpuinfo, os.cpu_count() or 1)


@functools.cache
def _describe_this() -> str:
    path = Path("/proc/cpuinfo")
    text = path.read_text() if path.exists() else ""
    return _describe(text, os.cpu_count() or 1)


def _describe(text: str, cores: int) -> str:
    model, flags = _cpuinfo(text)
    has = [name for flag, name in _UNITS.items() if flag in flags]
    lacks = []  # the units whose absence changes the ratios (x86 only)
    if "avx2" in flags and not flags & {"amx_bf16", "amx_int8"}:
        lacks.append("AMX")
    if "avx2" in flags and "avx512_bf16" not in flags:
        lacks.append("AVX512-BF16")
    units = "; ".join(p for p in (", ".join(has), ", ".join(f"no {x}" for x in lacks)) if p)
    name = model or platform.machine()
    return f"{name} ({units}), {cores} cores" if units else f"{name}, {cores} cores"


def machine_key(threads: int) -> str:
    """A short stable name for (CPU, threads, torch): the files measured once per machine
    (host-speed reference, mixed precision's latency table) are kept under it."""
    import torch

    key = f"{describe()}|threads={threads}|torch={torch.__version__}"
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def machine_file(root: str | Path | None, folder: str, threads: int) -> Path | None:
    """`<root>/<folder>/<machine key>.json`: where a table measured once per machine (at
    `threads`, 0: torch's default) is kept; None without a root (kept in memory only)."""
    from vitsweep.measure.speed import thread_scope

    with thread_scope(threads) as used:
        key = machine_key(used)
    return None if root is None else Path(root) / folder / f"{key}.json"


def read_table(path: Path | None, what: str, remedy: str) -> dict[str, float]:
    """The seconds a per-machine table holds ({} when there is none yet); a damaged file is
    named in one line with what to do (`remedy`), never silently measured over."""
    if path is None or not path.exists():
        return {}
    try:
        return {k: float(v) for k, v in json.loads(path.read_text()).items()}
    except (ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: not a {what} ({type(err).__name__}); {remedy}") from None
