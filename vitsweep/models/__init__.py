"""What is searched on the architecture axis: timm ViTs, the weight-sharing supernet, training.

`build_model` is what a trial calls; `train_supernet` is what `vitsweep-train` calls.
"""

from __future__ import annotations

from vitsweep.models.build import build_model, load_supernet
from vitsweep.models.checkpoint import CheckpointError
from vitsweep.models.spaces import SPACE_INPUT, SPACES
from vitsweep.models.supernet import Supernet
from vitsweep.models.train import train_supernet
from vitsweep.models.vit import ViTShape, build_vit

__all__ = [
    "SPACES",
    "SPACE_INPUT",
    "CheckpointError",
    "Supernet",
    "ViTShape",
    "build_model",
    "build_vit",
    "load_supernet",
    "train_supernet",
]
