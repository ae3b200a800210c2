"""Cost predictor: a candidate's throughput (at `measure.batch_size`) and batch-1 latency on
this machine, summed from per-block timings, as hardware-aware NAS prices candidates (OFA and
HAT sum per-block latency tables measured on the target).

A candidate's forward = the fixed parts (patch embedding, position embedding, class token,
final norm, head: one entry per embed dim) + one entry per block, keyed by what decides its
time: precision, batch, embed dim, heads, MLP ratio, tokens in, tokens merged, and whether ToMe
sizes flow in yet (the first merging block has none, so no size bias). Each entry is that part
alone, run as the trial runs it: the block through ToMe's own `block_forward`; fp32/bf16/fp16
eager under the precision's autocast and casts (`apply_precision`); int8 as its own PT2E
program compiled by inductor (the trial compiles the whole model's). One program runs the part
`REPEATS` times on distinct inputs at batch 1 and the time is divided by that, as the latency
table of mixed precision does (`precision.latency`): a compiled call costs about 200 us of
guards, more than a small block's work at batch 1. That call's own cost (timed once, on a
program that does nearly nothing) is taken off every compiled part and counted once per forward,
as a whole int8 program pays it once. Timed by the product's protocol
(`precision.latency.batch1_seconds` -> `measure.speed.timed_repeats`) at `measure.threads`,
measured on first use and kept per machine (`measure.host.machine_key`: CPU, threads, torch)
under `<root>/cost/`, like the latency table under `<root>/latency/`.

What the sum cannot see: inductor fusing across block boundaries in a whole int8 program, and
the glue between blocks. `vitsweep.bench.predictors` reports how far the sum lands from whole
candidates timed by the trial's own protocol.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vitsweep.files import write_text
from vitsweep.measure.compile import compile_program
from vitsweep.measure.host import machine_file, read_table
from vitsweep.measure.speed import thread_scope
from vitsweep.models.vit import ViTShape, build_vit
from vitsweep.precision import apply_precision
from vitsweep.precision.latency import batch1_seconds
from vitsweep.precision.pt2e import quantize_pt2e
from vitsweep.predict.candidate import NUM_PREFIX, Block, Candidate
from vitsweep.spec import ConfigError, MeasureSpec, PrecisionSpec
from vitsweep.tome import block_forward

REPEATS = 8  # part executions per timed call at batch 1 (see the module docstring)


def repeats(batch: int) -> int:
    """Part executions per timed call: at batch 8 and above one execution is long enough that
    the call costs little beside it, and an int8 program of 8 copies compiles 8 times longer."""
    return max(1, REPEATS // batch)


PRECISIONS = ("fp32", "fp16", "bf16", "int8")  # what the table can time (mixed, tq: not yet)


@dataclass(frozen=True)
class Geometry:
    """The input every candidate of a study shares."""

    img_size: int
    patch_size: int
    in_chans: int
    num_classes: int


class _BlockRuns(nn.Module):
    """The block applied to each of its token inputs in one call; the ToMe sizes flowing
    in (None before the first merge) are a constant of the part, not an input."""

    def __init__(self, blk: nn.Module, merged: int, prop: bool, sizes: torch.Tensor | None) -> None:
        super().__init__()
        self.blk, self.merged, self.prop = blk, merged, prop
        self.register_buffer("sizes", sizes)

    def forward(self, xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = []
        for k in range(xs.shape[0]):
            size = None if self.sizes is None else self.sizes[k]
            out.append(block_forward(self.blk, xs[k], size, self.merged, NUM_PREFIX, self.prop)[0])
        return tuple(out)


class _FixedRuns(nn.Module):
    """The ViT without blocks (embedding in, norm and head out) on each of its inputs,
    one copy per input (PT2E's x86 quantizer annotates a conv called twice as one partition
    with two outputs, and refuses it)."""

    def __init__(self, vit: nn.Module, n: int) -> None:
        super().__init__()
        self.vits = nn.ModuleList(copy.deepcopy(vit) for _ in range(n))

    def forward(self, xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(vit(xs[k]) for k, vit in enumerate(self.vits))


class _AddOne(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1


class CostTable:
    """Seconds per timed call of each part at each (precision, batch), measured once per
    machine; `block_s` and `fixed_s` turn them into seconds inside one whole forward."""

    def __init__(
        self,
        root: str | Path | None,
        timing: MeasureSpec,
        geometry: Geometry,
        prop_attn: bool = True,
    ) -> None:
        self.timing, self.geometry, self.prop_attn = timing, geometry, prop_attn
        self.path = machine_file(root, "cost", timing.threads)
        self.entries = read_table(
            self.path, "cost table", "delete it and the next prediction measures it again"
        )
        self.measured = 0  # entries this table timed (the rest came from the file)

    # -- entries -------------------------------------------------------------------------------

    def _geometry_key(self) -> str:
        g = self.geometry
        return f"img={g.img_size},patch={g.patch_size},chans={g.in_chans},classes={g.num_classes}"

    def block_s(self, block: Block, precision: str, batch: int) -> float:
        """Seconds of one execution of `block` inside a whole forward."""
        key = (
            f"block|{precision}|batch={batch}|embed={block.embed_dim}|heads={block.heads}x"
            f"{block.head_dim}|mlp={block.mlp_ratio:g}|tokens={block.tokens_in}|merged="
            f"{block.merged}|sizes={not block.first}|prop={self.prop_attn}|repeats={repeats(batch)}"
        )
        call = self._entry(key, lambda: self._time_block(block, precision, batch))
        return self._part(call, precision, batch)

    def fixed_s(self, embed_dim: int, head_dim: int, precision: str, batch: int) -> float:
        """Seconds of the fixed parts of one forward, the call into a compiled program included
        (a whole forward pays it once)."""
        key = (
            f"fixed|{precision}|batch={batch}|embed={embed_dim}|{self._geometry_key()}|"
            f"repeats={repeats(batch)}"
        )
        call = self._entry(key, lambda: self._time_fixed(embed_dim, head_dim, precision, batch))
        return self._part(call, precision, batch) + self.call_s(precision)

    def call_s(self, precision: str) -> float:
        """What calling a compiled program costs besides its kernels (guards, dispatch): a
        program that adds 1 to 8 numbers, timed. 0 for the eager precisions, whose per-block
        Python is in every block's entry as it is in the model."""
        if precision != "int8":
            return 0.0
        return self._entry("call|compiled", self._time_call)

    def _part(self, call: float, precision: str, batch: int) -> float:
        """One part's seconds from a timed call of `repeats(batch)` of them."""
        return max(call - self.call_s(precision), 0.0) / repeats(batch)

    def _entry(self, key: str, measure: Callable[[], float]) -> float:
        if key not in self.entries:
            self.entries[key] = measure()
            self.measured += 1
            if self.path is not None:
                write_text(self.path, json.dumps(self.entries, indent=1, sort_keys=True) + "\n")
        return self.entries[key]

    # -- timing --------------------------------------------------------------------------------

    def _vit(self, embed_dim: int, head_dim: int, heads: int, mlp: float) -> nn.Module:
        g = self.geometry
        shape = ViTShape(embed_dim, 1, (heads,), (mlp,), head_dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return build_vit(
                shape,
                img_size=g.img_size,
                patch_size=g.patch_size,
                in_chans=g.in_chans,
                num_classes=g.num_classes,
            ).eval()

    def _time_block(self, block: Block, precision: str, batch: int) -> float:
        vit = self._vit(block.embed_dim, block.head_dim, block.heads, block.mlp_ratio)
        gen = torch.Generator().manual_seed(0)
        n = repeats(batch)
        xs = torch.randn(n, batch, block.tokens_in, block.embed_dim, generator=gen)
        sizes = None
        if not block.first:  # merged tokens stand for 1..3 patches
            sizes = torch.randint(1, 4, (n, batch, block.tokens_in, 1), generator=gen)
            sizes = sizes.float()
        module = _BlockRuns(copy.deepcopy(vit.blocks[0]), block.merged, self.prop_attn, sizes)
        return self._time(module.eval(), xs, precision)

    def _time_fixed(self, embed_dim: int, head_dim: int, precision: str, batch: int) -> float:
        vit = self._vit(embed_dim, head_dim, 1, 1.0)
        vit.blocks = nn.Sequential()
        g = self.geometry
        gen = torch.Generator().manual_seed(0)
        n = repeats(batch)
        xs = torch.randn(n, batch, g.in_chans, g.img_size, g.img_size, generator=gen)
        return self._time(_FixedRuns(vit, n).eval(), xs, precision)

    def _time_call(self) -> float:
        run = compile_program(_AddOne().eval())
        x = torch.zeros(8)
        with thread_scope(self.timing.threads), torch.inference_mode():
            return batch1_seconds(lambda: run(x), self.timing)

    def _time(self, module: nn.Module, xs: torch.Tensor, precision: str) -> float:
        """Seconds per call of `module` (all its repeats) at `precision`, timed as a trial
        times it."""
        if precision not in PRECISIONS:
            raise ConfigError(
                f"precision={precision}: the cost predictor times {', '.join(PRECISIONS)}"
            )
        if precision == "int8":  # exported and calibrated outside inference mode, as a trial
            run = compile_program(quantize_pt2e(module, [xs, xs.neg()]))
            with thread_scope(self.timing.threads), torch.inference_mode():
                return batch1_seconds(lambda: run(xs), self.timing)
        module, ctx = apply_precision(module, PrecisionSpec(mode=precision))
        with thread_scope(self.timing.threads), torch.inference_mode():
            x = ctx.prepare(xs)

            def step() -> object:
                with ctx.autocast():
                    return module(x)

            return batch1_seconds(step, self.timing)


@dataclass(frozen=True)
class Cost:
    throughput: float  # images/s at the batch size
    latency_ms: float  # batch 1


class CostPredictor:
    """Throughput and latency of a candidate: the sum of its parts from a `CostTable`."""

    def __init__(self, table: CostTable, batch_size: int) -> None:
        self.table, self.batch_size = table, batch_size

    def step_s(self, c: Candidate, batch: int) -> float:
        """Predicted seconds of one forward of `batch` images."""
        t = self.table
        return t.fixed_s(c.embed_dim, c.head_dim, c.precision, batch) + sum(
            t.block_s(b, c.precision, batch) for b in c.blocks()
        )

    def predict(self, c: Candidate) -> Cost:
        return Cost(
            throughput=self.batch_size / self.step_s(c, self.batch_size),
            latency_ms=1e3 * self.step_s(c, 1),
        )
