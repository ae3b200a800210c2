"""Mixed precision's latency table: each searched layer's batch-1 time at each bit-width, as it
executes, measured on this machine and kept per machine.

How a layer executes decides what it costs, so each entry is that layer alone, run the way the
trial runs it: at 8 bits its own PT2E int8 program, below 8 bits packed and dequantized into an
fp32 GEMM; both compiled by inductor, as the trial compiles its whole program. The input is the
rows the layer really sees at batch 1 (after ToMe, when it merges). One program runs the layer
`REPEATS` times on distinct slices and the time is divided by that: a compiled call costs about
200 us of guards and dispatch here, more than a 192x192 layer's work, so a program of one layer
measured mostly the call (4-bit 192x192 read faster than its 8-bit; measured on the Xeon @2.80GHz,
the per-layer times fell from 390-450 us to 160-230 us with 16 repeats). Timings use the product's
protocol (`measure.speed.timed_repeats`) and are cached by (CPU, threads, torch) and layer
shape under `<root>/latency/`, like the supernets under `<root>/supernets/`.

The plan's predicted latency = the all-8-bit model measured whole at batch 1 + for each layer
(its option's time - its 8-bit time). The anchor is measured, so what the table cannot see
(attention, norms, token merging, the glue between layers) is measured too; only the layers'
differences are modelled. HAWQ-V3 prices latency the same way, per layer, on the target.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from vitsweep.files import write_text
from vitsweep.measure.compile import compile_program
from vitsweep.measure.host import machine_file, read_table
from vitsweep.measure.speed import thread_scope, timed_repeats
from vitsweep.precision.mixed import macs_per_image
from vitsweep.precision.packed import PackedLinear
from vitsweep.precision.pt2e import quantize_pt2e
from vitsweep.spec import MeasureSpec


def rows_per_layer(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, int]:
    """Input rows per image each named Linear sees in a forward of `x` (tokens, as merged)."""
    macs = macs_per_image(model, x)
    out = {}
    for name in names:
        layer = model.get_submodule(name)
        out[name] = round(macs[name] / (layer.in_features * layer.out_features))
    return out


def batch1_seconds(fn: Callable[[], object], timing: MeasureSpec) -> float:
    """Median seconds of one call, by the product's repeats (after a warm-up that compiles)."""
    return timed_repeats(fn, lambda: None, timing, 1).median_step_s


REPEATS = 16  # layer executions per timed program call (see the module docstring)


class _Repeated(nn.Module):
    """The layer applied to each slice of a (REPEATS, 1, rows, in) input, in one graph."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.layer(x[k]) for k in range(x.shape[0])])


class LatencyTable:
    """Seconds per layer execution by (shape, rows, bits), measured once per machine."""

    def __init__(self, root: str | Path | None, timing: MeasureSpec) -> None:
        self.timing = timing
        self.path = machine_file(root, "latency", timing.threads)
        self.entries = read_table(
            self.path, "latency table", "delete it and the next mixed trial measures it again"
        )

    def seconds(self, layer: nn.Linear, rows: int, bits: int) -> float:
        """One batch-1 execution of `layer` on `rows` rows at `bits` (8: PT2E int8)."""
        bias = layer.bias is not None
        key = (
            f"in={layer.in_features},out={layer.out_features},bias={bias},rows={rows},"
            f"bits={bits},repeats={REPEATS}"
        )
        if key not in self.entries:
            self.entries[key] = self._measure(layer, rows, bits)
            if self.path is not None:
                write_text(self.path, json.dumps(self.entries, indent=1, sort_keys=True) + "\n")
        return self.entries[key]

    def _measure(self, layer: nn.Linear, rows: int, bits: int) -> float:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(REPEATS, 1, rows, layer.in_features, generator=gen)
        one = copy.deepcopy(layer).float().cpu()
        module = (
            quantize_pt2e(_Repeated(one).eval(), [x, x.neg()])
            if bits == 8
            else _Repeated(PackedLinear.from_linear(one, bits)).eval()
        )
        run = compile_program(module)
        with thread_scope(self.timing.threads), torch.inference_mode():
            return batch1_seconds(lambda: run(x), self.timing) / REPEATS
