"""What is searched on the architecture axis: timm ViTs, the weight-sharing supernet, training.

`build_model` is what a trial calls; `supernet_file` is what `vitsweep-train` calls;
`architecture` + `skeleton` rebuild a trial's module tree without weights (exports).
"""

from __future__ import annotations

from vitsweep.models.build import (
    Geometry,
    architecture,
    build_model,
    load_supernet,
    skeleton,
    supernet_file,
    weights_file,
)
from vitsweep.models.checkpoint import CheckpointError
from vitsweep.models.supernet import Supernet
from vitsweep.models.train import train_supernet
from vitsweep.models.vit import ViTShape, build_vit

__all__ = [
    "CheckpointError",
    "Geometry",
    "Supernet",
    "ViTShape",
    "architecture",
    "build_model",
    "build_vit",
    "load_supernet",
    "skeleton",
    "supernet_file",
    "train_supernet",
    "weights_file",
]
