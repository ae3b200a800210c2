"""Plain description of where results are recorded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class TrackingSpec:
    backend: Literal["wandb", "none"] = "wandb"
    project: str = "vitsweep"
    entity: str | None = None
    mode: Literal["auto", "online", "offline"] = "auto"  # auto: online only with an API key
