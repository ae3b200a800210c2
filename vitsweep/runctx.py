"""How a (possibly converted) model is fed: device, input dtype and autocast.

Produced by `vitsweep.precision.apply_precision`, consumed by every measurement, so that
accuracy, speed and energy all run the model exactly the same way.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RunContext:
    device: str = "cpu"
    input_dtype: torch.dtype = torch.float32
    autocast_dtype: torch.dtype | None = None
    precision_exec: str = (
        "fp32"  # what really executes, e.g. "int8 static pt2e x86-inductor, 49 Linear, compiled"
    )
    # The model reaches its precision's speed only compiled (a PT2E program): measure.compile=auto
    wants_compile: bool = False

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=self.autocast_dtype)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(device=self.device, dtype=self.input_dtype, non_blocking=True)

    def forward(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Logits as float32, whatever precision ran."""
        with self.autocast():
            return model(self.prepare(x)).float()
