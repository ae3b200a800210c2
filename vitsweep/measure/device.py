"""Which device measures, how to wait for it, and what to call it in the results."""

from __future__ import annotations

from collections.abc import Callable

import torch

from vitsweep.spec import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; asking for a GPU that is absent fails."""
    if name not in DEVICES and not name.startswith("cuda:"):
        raise ConfigError(f"measure.device={name!r}: unknown device; valid: {', '.join(DEVICES)}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"measure.device={name!r}: no CUDA GPU is visible here; valid: auto, cpu")
    return name


def synchronizer(device: str) -> Callable[[], None]:
    """A no-argument barrier: timestamps mean 'work finished' only after the device is drained."""
    if torch.device(device).type == "cuda":
        dev = torch.device(device)
        return lambda: torch.cuda.synchronize(dev)
    return lambda: None


def device_name(device: str) -> str:
    """Human name of the measuring device, recorded beside every number it produced."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({torch.get_num_threads()} threads)"


def is_cuda(device: str) -> bool:
    return torch.device(device).type == "cuda"
