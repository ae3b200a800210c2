"""Public import path of the weight-sharing supernet: `from vitsweep.supernet import Supernet`."""

from __future__ import annotations

from vitsweep.models.checkpoint import CheckpointError
from vitsweep.models.spaces import SPACES
from vitsweep.models.supernet import Supernet
from vitsweep.models.vit import ViTShape

__all__ = ["SPACES", "CheckpointError", "Supernet", "ViTShape"]
