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
import importlib.util
from typing import Any


def __getattr__(name: str) -> Any:
    """`from vitsweep.precision import apply_precision` and the like (PEP 562). A submodule
    not imported yet (`from vitsweep.precision import transform`) is imported itself, not
    looked for in `apply`: `apply` imports `tq`, which imports `transform` that way."""
    if name.startswith("__"):  # import machinery probing (__path__ is set; __file__ too)
        raise AttributeError(name)
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    apply = importlib.import_module(f"{__name__}.apply")
    try:
        value = getattr(apply, name)
    except AttributeError:
        raise AttributeError(f"module 'vitsweep.precision' has no attribute {name!r}") from None
    globals()[name] = value  # found once: later imports of the name read it here directly
    return value
