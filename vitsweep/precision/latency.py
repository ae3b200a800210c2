"""Mixed precision's latency table: each searched layer's batch-1 time at each bit-width, as it
executes, measured on this machine and kept per machine.

How a layer executes decides what it costs, so each entry is that layer alone, run the way the
trial runs it: at 8 bits its own PT2E int8 program; below 8 bits as `precision.low_bit_kernel`
has it run (`mixed.low_bit_layer`: packed codes widened to int8 for `_int_mm`, aten's int4
kernel, or dequantized into an fp32 GEMM); all compiled by inductor, as the trial compiles its
whole program. The input is the rows the layer really sees
at batch 1 (after ToMe, when it merges).

One program runs `REPEATS` copies of the layer, each on its own input, and the time is divided
by that: a compiled call costs about 200 us of guards and dispatch here, more than a 192x192
layer's work, so a program of one layer measured mostly the call. The copies must be distinct
modules: with one module applied 16 times, inductor computed its weight-only work once for all
16 (common subexpressions), and a packed layer's unpacking, which inductor's freezing does not
fold (it keeps integer-to-float weight conversions unfolded), was priced at 1/16 of its cost.
Each copy takes its own input tensor, all of equal values, and its output is returned as is:
then every copy compiles to the same C++ kernels, which inductor writes and builds once. Slices
of one input (as before) baked each slice's offset, and calibration on different values baked
each copy's activation scale, into kernels of their own: an 8-bit layer program built 23
kernels in 22 s on a cold inductor cache, against 2 kernels (and ~8 s, most of it inductor's
once-per-process ISA checks) this way (AMD EPYC, 2026-12-06); it also no longer times a stack
of the outputs that the layer never does in the model.
Measured on the Xeon @2.80GHz, load 0.4-1.3, 65 rows: packed 4-bit 192x768 read 217 us shared,
564 us distinct; 768x192 202 against 613 us; int8 barely moved (238/224, 232/193): a large part
of why plans with 4-bit layers ran 62% slower than predicted. Timings use the product's protocol
(`measure.speed.timed_repeats`) and are cached by (CPU, threads, torch) and layer shape under
`<root>/latency/`, like the supernets under `<root>/supernets/`.

The plan's predicted latency = the all-8-bit model measured whole at batch 1 + for each layer
(its option's time - its 8-bit time) + its group's correction in context. The anchor is
measured, so what the table cannot see (attention, norms, token merging, the glue between
layers) is measured too; only the layers' differences are modelled. HAWQ-V3 prices latency the
same way, per layer, on the target.

A layer alone misses what its neighbours do with it inside the program. In the int8 program
inductor fuses a layer's output quantization, and fc1's GELU, into its oneDNN kernel; an
`int_mm` layer ends that fusion (an `onednn` one keeps it: it is not timed here at all).
Measured on the AMD EPYC (xray baseline, 2 threads, 2026-12-05,
whole programs timed side by side at batch 1, load 1.7-2.0 from the run itself), switching all
6 of a kind to 6 bits cost per layer: qkv +197 us (alone +103), proj +16 (alone -22), fc1 +234
(alone +11), fc2 +21 (alone +19); in two later processes within the hour fc2 +72 and +190,
proj +95: how much moves with the host's regime (README), the sign does not. So each group of
layers (the same place in every block) is
also switched whole once, at the highest bit-width below 8, timed beside the all-8-bit program,
and the difference per layer beyond the table's is added to every member at every bit-width.
Cached with the table, per model (its layers' shapes and rows). The wide options (bf16, fp32:
`float_layers.py`) have no rows here at all: each group is switched whole to each, in the
program, and that whole difference per layer is their price.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from vitsweep.files import write_text
from vitsweep.measure.compile import compile_program
from vitsweep.measure.host import machine_file, read_table
from vitsweep.measure.speed import thread_scope, timed_repeats
from vitsweep.precision.mixed import low_bit_kind, low_bit_layer, macs_per_image
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


def interleaved_seconds(
    fns: dict[str, Callable[[], object]], timing: MeasureSpec, rounds: int = 5
) -> dict[str, float]:
    """Median batch-1 seconds of each call, timed in turn for `rounds` rounds, the order
    rotating: this host's speed moves in regimes of seconds to minutes, so a difference between
    two programs is only worth its salt timed side by side."""
    names = list(fns)
    seen: dict[str, list[float]] = {n: [] for n in names}
    for i in range(rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            seen[name].append(batch1_seconds(fns[name], timing))
    return {n: statistics.median(v) for n, v in seen.items()}


def layer_group(name: str) -> str:
    """A searched layer's place in its block ("blocks.3.attn.qkv" -> "attn.qkv"): the layers of
    a group sit between the same neighbours in every block."""
    return re.sub(r"^.*?\.\d+\.", "", name)


def model_signature(layers: list[tuple[str, nn.Linear, int]], extra: str) -> str:
    """What a context correction holds for: every searched layer's name, shape and rows, and
    `extra` (kernel, bits, scheme)."""
    parts = [f"{n}:{m.in_features}x{m.out_features}:{m.bias is not None}:{r}" for n, m, r in layers]
    return hashlib.sha256(";".join([*parts, extra]).encode()).hexdigest()[:16]


REPEATS = 16  # layer executions (distinct copies) per timed program call; see the docstring


def equal_inputs(x: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    """`n` inputs of a timed program's copies: equal values, storage of their own, so that
    every copy compiles to the same C++ kernels (the module docstring says why)."""
    return tuple(x.clone() for _ in range(n))


def quantized_copies(module: nn.Module, xs: tuple[torch.Tensor, ...]) -> nn.Module:
    """The PT2E int8 program of a timed part that takes the inputs `xs`, calibrated on them and
    on their negation, so that every activation's range spans both signs."""
    return quantize_pt2e(module, [(xs,), (tuple(x.neg() for x in xs),)])


class _Copies(nn.Module):
    """Copy k of the layer applied to input k, in one graph (the module docstring says why
    inputs apart and outputs as they come)."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, xs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(layer(x) for layer, x in zip(self.layers, xs, strict=True))


class LatencyTable:
    """Seconds per layer execution by (shape, rows, bits), measured once per machine."""

    def __init__(self, root: str | Path | None, timing: MeasureSpec) -> None:
        self.timing = timing
        self.path = machine_file(root, "latency", timing.threads)
        self.entries = read_table(
            self.path, "latency table", "delete it and the next mixed trial measures it again"
        )

    def seconds(self, layer: nn.Linear, rows: int, bits: int, low_bit_kernel: str) -> float:
        """One batch-1 execution of `layer` on `rows` rows at `bits` (8: PT2E int8; below:
        as `low_bit_kernel` runs it)."""
        bias = layer.bias is not None
        low = None if bits == 8 else low_bit_kind(layer, bits, "cpu", low_bit_kernel)
        kind = "pt2e" if low is None else getattr(low, "table_name", low.__name__)
        key = (
            f"in={layer.in_features},out={layer.out_features},bias={bias},rows={rows},"
            f"bits={bits},kernel={kind},copies={REPEATS},inputs=apart"
        )
        if key not in self.entries:
            self.entries[key] = self._measure(layer, rows, bits, low_bit_kernel)
            self._save()
        return self.entries[key]

    def _save(self) -> None:
        if self.path is not None:
            write_text(self.path, json.dumps(self.entries, indent=1, sort_keys=True) + "\n")

    def context(self, signature: str, group: str) -> float | None:
        """The group's per-layer correction in context for the model `signature` names."""
        return self.entries.get(f"context={signature},group={group}")

    def set_context(self, signature: str, corrections: dict[str, float]) -> None:
        for group, seconds in corrections.items():
            self.entries[f"context={signature},group={group}"] = seconds
        self._save()

    @staticmethod
    def _low(layer: nn.Linear, bits: int, low_bit_kernel: str) -> nn.Module:
        return low_bit_layer(copy.deepcopy(layer).float().cpu(), bits, "cpu", low_bit_kernel)

    def program(
        self, layer: nn.Linear, rows: int, bits: int, low_bit_kernel: str
    ) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        """(module, inputs): `REPEATS` distinct copies of the layer as it executes at `bits`,
        each on its own input (equal values, own storage); what `seconds` compiles and times."""
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(1, rows, layer.in_features, generator=gen)
        xs = equal_inputs(x, REPEATS)
        if bits == 8:
            copies = [copy.deepcopy(layer).float().cpu() for _ in range(REPEATS)]
            return quantized_copies(_Copies(copies).eval(), xs), xs
        low = [self._low(layer, bits, low_bit_kernel) for _ in range(REPEATS)]
        return _Copies(low).eval(), xs

    def _measure(self, layer: nn.Linear, rows: int, bits: int, low_bit_kernel: str) -> float:
        module, xs = self.program(layer, rows, bits, low_bit_kernel)
        run = compile_program(module)
        with thread_scope(self.timing.threads), torch.inference_mode():
            return batch1_seconds(lambda: run(xs), self.timing) / REPEATS
