"""What is searched on the architecture axis: timm ViTs, the weight-sharing supernet, training.

`build_model` is what a trial calls; `supernet_file` is what `vitsweep-train` calls;
`architecture` + `skeleton` rebuild a trial's module tree without weights (exports).

The names resolve on first use (PEP 562), each from the submodule `_WHERE` names: a module that
needs one light submodule (`checkpoint`, to read a file at launch) does not import timm and
torchvision with `build` (3.4 s of `vitsweep -m arch.checkpoint=<a bad file>`'s 6.7 s).
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Geometry": "build",
    "architecture": "build",
    "build_model": "build",
    "check_checkpoint_fits": "build",
    "load_supernet": "build",
    "skeleton": "build",
    "supernet_file": "build",
    "weights_file": "build",
    "CheckpointError": "checkpoint",
    "Supernet": "supernet",
    "train_supernet": "train",
    "ViTShape": "vit",
    "build_vit": "vit",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    """A public name, imported from its submodule and kept here; anything else is not ours
    (an AttributeError lets `from vitsweep.models import <submodule>` import that module)."""
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{where}"), name)
    globals()[name] = value
    return value
