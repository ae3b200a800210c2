"""`RuntimeModule`: a model compiled by another runtime behind `nn.Module`'s call.

Why a module: accuracy (`measure.accuracy.predict`), the timing protocol (`measure.speed`) and
energy all take an `nn.Module` run through a `RunContext`; wrapping the runtime's session keeps
one evaluation loop and one timing protocol for every runtime, so their numbers compare.
"""

from __future__ import annotations

import shutil
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Deployed:
    """What a runtime made of one candidate, and what it cost."""

    runtime: str  # runtime.name
    files: tuple[Path, ...]  # the model file(s) a station loads (ONNX, or IR .xml + .bin)
    precision_exec: str  # what runs, in the runtime's words
    seconds: float  # export + quantization + session creation: the trial's compile_s
    distributions: tuple[str, ...]  # the installed packages a station needs to run `files`
    threads: int  # intra-op threads the session runs (the trial's measure.threads)
    mode: str  # precision.mode it was made for (OpenVINO's precision hint follows it)


class RuntimeModule(nn.Module):
    """Logits from a runtime session for a float32 NCHW batch.

    Modifications: none to `source` (the float, token-merged torch model it was exported from,
    kept outside the module's state for params and FLOPs). `forward` hands the batch to the
    runtime as a numpy view and wraps the runtime's output without a copy.
    """

    foreign_runtime: str  # read by measure.cost: this model allocates outside torch

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        deployed: Deployed,
        source: nn.Module | None,
        workdir: Path | None = None,
    ) -> None:
        super().__init__()
        self._run = run
        self.deployed = deployed
        self.foreign_runtime = deployed.runtime
        object.__setattr__(self, "source", source)  # not a submodule: not this model's state
        # the exported files live as long as the session does, or until `discard_files`
        self._cleanup = (
            weakref.finalize(self, shutil.rmtree, str(workdir), True) if workdir else None
        )

    def discard_files(self) -> None:
        """Delete the exported files now (the session keeps running): a sweep's trials run in
        processes that exit without finalizers, and a ViT-S/16 ONNX file is 88 MB."""
        if self._cleanup is not None:
            self._cleanup()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(np.asarray(self._run(array)))

    def extra_repr(self) -> str:
        return f"{self.deployed.runtime}: {self.deployed.precision_exec}"


def file_bytes(files: tuple[Path, ...]) -> int:
    """Bytes of the model files as stored: what `model_bytes` is for a runtime's model."""
    return sum(f.stat().st_size for f in files)
