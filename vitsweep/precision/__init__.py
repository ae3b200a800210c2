"""The precision axis: fp32, fp16/bf16 (autocast or full cast), int8 kernels, mixed bit-width,
transform quantization.

The surgery (`apply_precision`, `model_bytes`, ...) lives in `apply.py` and is read from here
on first use. Why not imported here: `knobs.py` (what each mode adds to the search space, plain
data) is read by every config check, and importing a submodule runs this file first; the
surgery would pull torch into a command that fails on a bad key in a second (2.2 s of 5.3 s of
`vitsweep -m hydra.sweeper.storage=foo://bar`).
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    """`from vitsweep.precision import apply_precision` and the like (PEP 562)."""
    if name.startswith("__"):  # import machinery probing (__path__ is set; __file__ too)
        raise AttributeError(name)
    apply = importlib.import_module("vitsweep.precision.apply")
    try:
        return getattr(apply, name)
    except AttributeError:
        raise AttributeError(f"module 'vitsweep.precision' has no attribute {name!r}") from None
