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
`REPEATS` times on inputs of its own at batch 1 and the time is divided by that, as the latency
table of mixed precision does (`precision.latency`): a compiled call costs about 200 us of
guards, more than a small block's work at batch 1. That call's own cost (timed once, on a
program that does nearly nothing) is taken off every compiled part and counted once per forward,
as a whole int8 program pays it once. Timed by the product's protocol
(`precision.latency.batch1_seconds` -> `measure.speed.timed_repeats`) at `measure.threads`,
measured on first use and kept per machine (`measure.host.machine_key`: CPU, threads, torch)
under `<root>/cost/`, like the latency table under `<root>/latency/`.

What the sum cannot see: inductor fusing across block boundaries in a whole int8 program, the
glue between blocks, and what one whole call costs beside its kernels. Measured quiet on the
Xeon @2.80GHz (no AMX; 6 held-out candidates per precision, load 0.7-1.8): the sum of parts
missed int8 batch-1 latency by a near-constant 0.5-1.2 ms (0 of 6 within 10%) and read bf16
batch-1 latency up to 16% high (median 10%), while fp32 latency was within 4%. So, as nn-Meter
and HAT check their sums against whole models, `CostPredictor` can be calibrated: a few
reference candidates per precision are built whole (random weights: time does not depend on
their values) and timed exactly as a trial times them (`measure.compile_model`,
`measure.speed.time_forward`), and the median of what each whole took beyond its parts is added
per (precision, batch). The references are entries of the same table, so they too are measured
once per machine.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vitsweep.files import write_text
from vitsweep.measure.compile import compile_model, compile_program
from vitsweep.measure.host import machine_file, read_table
from vitsweep.measure.speed import thread_scope, time_forward
from vitsweep.models.vit import ViTShape, build_vit
from vitsweep.precision import apply_precision
from vitsweep.precision.latency import batch1_seconds, equal_inputs, quantized_copies
from vitsweep.predict.candidate import NUM_PREFIX, Block, Candidate
from vitsweep.runctx import RunContext
from vitsweep.spec import ConfigError, MeasureSpec, PrecisionSpec
from vitsweep.tome import apply_tome, block_forward

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


def precision_spec(runs_as: str) -> PrecisionSpec:
    """The precision a table label (`Candidate.runs_as`: "int8", "bf16", "bf16-full") names."""
    mode, _, cast = runs_as.partition("-")
    if mode not in PRECISIONS or cast not in ("", "full"):
        raise ConfigError(
            f"precision={runs_as}: the cost predictor times {', '.join(PRECISIONS)} "
            "(fp16/bf16 under autocast or a full cast)"
        )
    return PrecisionSpec(mode=mode, cast="full" if cast else "autocast")


def seeded_vit(shape: ViTShape, g: Geometry) -> nn.Module:
    """A seeded ViT of `shape` at the study's geometry, in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_vit(
            shape,
            img_size=g.img_size,
            patch_size=g.patch_size,
            in_chans=g.in_chans,
            num_classes=g.num_classes,
        ).eval()


def build_whole(c: Candidate, g: Geometry, prop_attn: bool = True) -> tuple[nn.Module, RunContext]:
    """The candidate built whole with random weights (its time and storage do not depend on
    their values), ToMe and its precision applied as `trial.build` applies them, calibrated
    on random images."""
    from torch.utils.data import TensorDataset

    vit = seeded_vit(ViTShape(c.embed_dim, c.depth, c.heads, c.mlp_ratio, c.head_dim), g)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(32, g.in_chans, g.img_size, g.img_size, generator=gen)
    if any(c.r):
        apply_tome(vit, list(c.r), prop_attn=prop_attn)
    calib = TensorDataset(images, torch.zeros(len(images), dtype=torch.long))
    spec = precision_spec(c.runs_as)
    return apply_precision(vit, spec, calib=calib, calib_batch_size=16)


class _BlockRuns(nn.Module):
    """The block applied to each of its token inputs in one call; the ToMe sizes flowing
    in (None before the first merge) are constants of the part, one per input, not inputs."""

    def __init__(
        self, blk: nn.Module, merged: int, prop: bool, sizes: torch.Tensor | None, n: int
    ) -> None:
        super().__init__()
        self.blk, self.merged, self.prop = blk, merged, prop
        # a buffer each, not slices of one (`precision.latency.equal_inputs` says why); the
        # work timed is the same, so entries timed with slices stay valid
        for k in range(n):
            self.register_buffer(f"sizes_{k}", None if sizes is None else sizes.clone())

    def forward(self, xs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        out = []
        for k, x in enumerate(xs):
            size = getattr(self, f"sizes_{k}")
            # float32 as ToMe keeps them under any cast (a full cast casts these buffers too)
            size = None if size is None else size.float()
            out.append(block_forward(self.blk, x, size, self.merged, NUM_PREFIX, self.prop)[0])
        return tuple(out)


class _FixedRuns(nn.Module):
    """The ViT without blocks (embedding in, norm and head out) on each of its inputs,
    one copy per input (PT2E's x86 quantizer annotates a conv called twice as one partition
    with two outputs, and refuses it)."""

    def __init__(self, vit: nn.Module, n: int) -> None:
        super().__init__()
        self.vits = nn.ModuleList(copy.deepcopy(vit) for _ in range(n))

    def forward(self, xs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(vit(x) for vit, x in zip(self.vits, xs, strict=True))


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
        shipped: bool = False,
    ) -> None:
        """`shipped`: start from the committed tables of a machine like this one
        (`committed_entries`), as a study's predictions do; the predictors bench times its
        own."""
        self.timing, self.geometry, self.prop_attn = timing, geometry, prop_attn
        self.path = machine_file(root, "cost", timing.threads)
        self.entries = read_table(
            self.path, "cost table", "delete it and the next prediction measures it again"
        )
        self.seeded_from: list[str] = []  # committed tables measured on a machine like this
        if shipped and root is not None:
            committed, self.seeded_from = committed_entries(timing)
            self.entries = {**committed, **self.entries}
        self.measured = 0  # entries this table timed (the rest came from the file)
        self.model: BlockModel | None = None  # predicts the blocks the table lacks
        self.frozen: str | None = None  # read-only, from this source: a miss is an error

    @classmethod
    def committed(
        cls,
        entries: dict[str, float],
        source: str,
        timing: MeasureSpec,
        geometry: Geometry,
        prop_attn: bool = True,
    ) -> CostTable:
        """A table measured elsewhere (a committed data file, `source`): read-only, so that
        nothing is timed on a machine it does not describe."""
        table = cls(None, timing, geometry, prop_attn)
        table.entries = {k: float(v) for k, v in entries.items()}
        table.frozen = source
        return table

    # -- entries -------------------------------------------------------------------------------

    def _geometry_key(self) -> str:
        g = self.geometry
        return f"img={g.img_size},patch={g.patch_size},chans={g.in_chans},classes={g.num_classes}"

    def block_key(self, block: Block, precision: str, batch: int) -> str:
        return (
            f"block|{precision}|batch={batch}|embed={block.embed_dim}|heads={block.heads}x"
            f"{block.head_dim}|mlp={block.mlp_ratio:g}|tokens={block.tokens_in}|merged="
            f"{block.merged}|sizes={not block.first}|prop={self.prop_attn}|repeats={repeats(batch)}"
        )

    def block_s(self, block: Block, precision: str, batch: int) -> float:
        """Seconds of one execution of `block` inside a whole forward: timed (once per
        machine), or with a `model` set, predicted by it for a block the table lacks."""
        key = self.block_key(block, precision, batch)
        if (
            key not in self.entries
            and self.model is not None
            and self.model.covers(precision, batch)
        ):
            return self.model.predict(block, precision, batch)
        call = self._entry(key, lambda: self._time_block(block, precision, batch))
        return self._part(call, precision, batch)

    def timed_blocks(self) -> list[tuple[Block, str, int, float]]:
        """Every block part the table holds at this geometry's settings, as (block,
        precision, batch, seconds inside a whole forward): what a `BlockModel` is fitted on."""
        out = []
        for key in self.entries:
            parsed = parse_block_key(key)
            if parsed is not None and self.block_key(*parsed) == key:  # same prop, repeats
                out.append((*parsed, self.block_s(*parsed)))
        return out

    def fixed_s(self, embed_dim: int, head_dim: int, precision: str, batch: int) -> float:
        """Seconds of the fixed parts of one forward, the call into a compiled program included
        (a whole forward pays it once)."""
        key = self._fixed_key(embed_dim, precision, batch)
        call = None
        if key not in self.entries and self.frozen is not None:
            call = self._fixed_line(embed_dim, precision, batch)
        if call is None:  # timed, or (a committed table with < 2 widths) the one-line error
            call = self._entry(key, lambda: self._time_fixed(embed_dim, head_dim, precision, batch))
        return self._part(call, precision, batch) + self.call_s(precision)

    def _fixed_key(self, embed_dim: int, precision: str, batch: int) -> str:
        return (
            f"fixed|{precision}|batch={batch}|embed={embed_dim}|{self._geometry_key()}|"
            f"repeats={repeats(batch)}"
        )

    def _fixed_line(self, embed_dim: int, precision: str, batch: int) -> float | None:
        """A committed table's fixed parts at a width it was not timed at: the least-squares
        line through the widths it has (patch embedding, norm and head are linear in the
        width), never below the cheapest timed one; None with fewer than two widths."""
        head, _, tail = self._fixed_key(0, precision, batch).partition("|embed=0|")
        head, tail = f"{head}|embed=", f"|{tail}"
        timed = [
            (int(k[len(head) : -len(tail)]), v)
            for k, v in self.entries.items()
            if k.startswith(head) and k.endswith(tail)
        ]
        if len(timed) < 2:
            return None
        x, y = np.array(timed, dtype=float).T
        slope, intercept = np.polyfit(x, y, 1)
        return max(float(slope * embed_dim + intercept), float(y.min()))

    def whole_s(self, c: Candidate, batch: int) -> float:
        """Seconds of one forward of the whole candidate at `batch`, timed as a trial times it
        (both timed batches are measured by one build and compile)."""
        batches = sorted({batch, 1})
        keys = {b: self._whole_key(c, b) for b in batches}
        if keys[batch] not in self.entries:
            timed = self._time_whole(c, batches)
            for b, key in keys.items():
                self._entry(key, lambda b=b: timed[b])
        return self.entries[keys[batch]]

    def _whole_key(self, c: Candidate, batch: int) -> str:
        heads = ",".join(map(str, c.heads))
        mlp = ",".join(f"{m:g}" for m in c.mlp_ratio)
        r = ",".join(map(str, c.r))
        return (
            f"whole|{c.runs_as}|batch={batch}|{self._geometry_key()}|embed={c.embed_dim}|"
            f"heads={heads}x{c.head_dim}|mlp={mlp}|r={r}|prop={self.prop_attn}"
        )

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
        if key not in self.entries and self.frozen is not None:
            raise ConfigError(
                f"{self.frozen}: no entry {key!r}, and it is not timed here (measured on "
                "another machine); collect it again with python -m vitsweep.bench.predictors"
            )
        if key not in self.entries:
            self.entries[key] = measure()
            self.measured += 1
            if self.path is not None:
                write_text(self.path, json.dumps(self.entries, indent=1, sort_keys=True) + "\n")
        return self.entries[key]

    # -- timing --------------------------------------------------------------------------------

    def _vit(self, shape: ViTShape) -> nn.Module:
        return seeded_vit(shape, self.geometry)

    def _time_whole(self, c: Candidate, batches: Sequence[int]) -> dict[int, float]:
        """Median seconds per forward of the candidate built whole (random weights), its
        precision applied and compiled as `trial.build` and `measure.compile_model` do it."""
        g = self.geometry
        model, ctx = build_whole(c, g, self.prop_attn)
        sample = (g.in_chans, g.img_size, g.img_size)
        with thread_scope(self.timing.threads):
            run, ctx, _ = compile_model(model, ctx, self.timing, sample, tuple(batches))
            return {
                b: time_forward(run, ctx, sample, b, self.timing).median_step_s for b in batches
            }

    def _time_block(self, block: Block, precision: str, batch: int) -> float:
        b = block
        vit = self._vit(ViTShape(b.embed_dim, 1, (b.heads,), (b.mlp_ratio,), b.head_dim))
        gen = torch.Generator().manual_seed(0)
        n = repeats(batch)
        xs = equal_inputs(torch.randn(batch, block.tokens_in, block.embed_dim, generator=gen), n)
        sizes = None
        if not block.first:  # merged tokens stand for 1..3 patches
            sizes = torch.randint(1, 4, (batch, block.tokens_in, 1), generator=gen).float()
        module = _BlockRuns(copy.deepcopy(vit.blocks[0]), block.merged, self.prop_attn, sizes, n)
        return self._time(module.eval(), xs, precision)

    def _time_fixed(self, embed_dim: int, head_dim: int, precision: str, batch: int) -> float:
        vit = self._vit(ViTShape(embed_dim, 1, (1,), (1.0,), head_dim))
        vit.blocks = nn.Sequential()
        g = self.geometry
        gen = torch.Generator().manual_seed(0)
        n = repeats(batch)
        x = torch.randn(batch, g.in_chans, g.img_size, g.img_size, generator=gen)
        return self._time(_FixedRuns(vit, n).eval(), equal_inputs(x, n), precision)

    def _time_call(self) -> float:
        run = compile_program(_AddOne().eval())
        x = torch.zeros(8)
        with thread_scope(self.timing.threads), torch.inference_mode():
            return batch1_seconds(lambda: run(x), self.timing)

    def _time(self, module: nn.Module, xs: tuple[torch.Tensor, ...], precision: str) -> float:
        """Seconds per call of `module` (all its repeats) at `precision`, timed as a trial
        times it."""
        spec = precision_spec(precision)
        if precision == "int8":  # exported and calibrated outside inference mode, as a trial
            run = compile_program(quantized_copies(module, xs))
            with thread_scope(self.timing.threads), torch.inference_mode():
                return batch1_seconds(lambda: run(xs), self.timing)
        module, ctx = apply_precision(module, spec)
        with thread_scope(self.timing.threads), torch.inference_mode():
            x = tuple(ctx.prepare(x) for x in xs)

            def step() -> object:
                with ctx.autocast():
                    return module(x)

            return batch1_seconds(step, self.timing)


# The fields of `measure` that decide how a part is timed: a committed table timed otherwise
# does not seed this machine's
TIMING_KEYS = ("warmup", "warmup_s", "min_repeats", "max_repeats", "max_cv", "time_cap_s",
               "repeat_s", "host_probe")  # fmt: skip


def committed_entries(
    timing: MeasureSpec, data_dir: Path | None = None
) -> tuple[dict[str, float], list[str]]:
    """(entries, files) of the committed cost tables (`predict/data/*_cost.json`) measured on a
    machine like this one (the same CPU description, thread count and torch) by the same
    protocol: a fresh clone on such a machine prices from them at once instead of timing its
    parts first, as nn-Meter ships predictors for the devices it measured. Entries are keyed
    by everything that decides a part's time, so tables of other geometries add, never clash."""
    import dataclasses

    from vitsweep.measure.host import describe

    if data_dir is None:
        from vitsweep.predict import accuracy

        data_dir = accuracy.DATA_DIR
    with thread_scope(timing.threads) as used:
        machine = {"cpu": describe(), "threads": used, "torch": torch.__version__}
    mine = dataclasses.asdict(timing)
    entries: dict[str, float] = {}
    files = []
    for path in sorted(Path(data_dir).glob("*_cost.json")):
        try:
            data = json.loads(path.read_text())
            theirs, table = data["machine"], data["entries"]
            protocol = data["measure"]
        except (ValueError, KeyError, TypeError):
            continue  # not a table this can read: timing here is the safe answer
        if any(theirs.get(k) != v for k, v in machine.items()):
            continue
        if any(protocol[k] != mine[k] for k in TIMING_KEYS if k in protocol and k in mine):
            continue
        entries.update({k: float(v) for k, v in table.items()})
        files.append(path.name)
    return entries, files


_BLOCK_KEY = re.compile(
    r"block\|(?P<precision>[\w-]+)\|batch=(?P<batch>\d+)\|embed=(?P<embed>\d+)\|heads=(?P<heads>\d+)x"
    r"(?P<head_dim>\d+)\|mlp=(?P<mlp>[\d.e+-]+)\|tokens=(?P<tokens>\d+)\|merged=(?P<merged>\d+)\|"
    r"sizes=(?P<sizes>True|False)\|"
)


def parse_block_key(key: str) -> tuple[Block, str, int] | None:
    """(block, precision, batch) of a table key written by `CostTable.block_key`; None for
    any other entry."""
    m = _BLOCK_KEY.match(key)
    if m is None:
        return None
    block = Block(
        embed_dim=int(m["embed"]),
        heads=int(m["heads"]),
        head_dim=int(m["head_dim"]),
        mlp_ratio=float(m["mlp"]),
        tokens_in=int(m["tokens"]),
        merged=int(m["merged"]),
        first=m["sizes"] == "False",
    )
    return block, m["precision"], int(m["batch"])


def block_features(b: Block, batch: int) -> np.ndarray:
    """What one block's time grows with, nn-Meter's kernel features summed to the block: the
    calls every block dispatches, the multiply-adds of its projections, MLP (run on the tokens
    left after the merge) and attention, the elementwise work (norms, residuals, GELU), and
    ToMe's merge: its ~60 small calls and its bipartite matching (keys of half the tokens
    against the other half)."""
    n, kept = b.tokens_in, b.tokens_in - b.merged
    e, inner, hidden = b.embed_dim, b.heads * b.head_dim, int(b.mlp_ratio * b.embed_dim)
    merging = float(b.merged > 0)
    return np.array(
        [
            1.0,
            batch * n * e * 4 * inner,
            batch * kept * 2 * e * hidden,
            batch * b.heads * n * n * b.head_dim * 2,
            batch * (n * e + kept * hidden),
            merging,
            merging * batch * (n // 2) ** 2 * b.head_dim,
            float(not b.first),
        ],
        dtype=float,
    )


@dataclass
class BlockModel:
    """A block's seconds inside a whole forward, for blocks never timed: per (precision,
    batch), non-negative weights on `block_features`, fitted to timed blocks by least squares
    on the relative error (`scipy.optimize.nnls` on rows divided by their time), so a
    1 ms block counts as much as a 20 ms one. Non-negative because no feature makes a block
    faster; linear because each feature is work done once per unit (a call, a multiply-add).

    Why our own: nn-Meter (the kernel-level predictors the issue names) is not a dependency
    here and predicts kernels of TFLite/OpenVINO graphs, not PyTorch eager blocks with ToMe."""

    coef: dict[tuple[str, int], np.ndarray]
    # predictions made: a search bench prices 100,000 candidates built of a few hundred blocks
    memo: dict[tuple[Block, str, int], float] = field(default_factory=dict, repr=False)

    @classmethod
    def fit(cls, samples: Sequence[tuple[Block, str, int, float]], min_rows: int = 0) -> BlockModel:
        """Weights per (precision, batch) with at least `min_rows` timed blocks (and at least
        as many as there are weights); the other groups are left out (`covers` is False)."""
        from scipy.optimize import nnls

        groups: dict[tuple[str, int], list[tuple[Block, float]]] = {}
        for block, precision, batch, seconds in samples:
            if seconds > 0:
                groups.setdefault((precision, batch), []).append((block, seconds))
        coef = {}
        width = len(block_features(samples[0][0], 1)) if samples else 0
        for (precision, batch), rows in groups.items():
            if len(rows) < max(width, min_rows):
                continue  # too few timings to determine the weights: left to the table
            x = np.array([block_features(b, batch) for b, _ in rows])
            t = np.array([s for _, s in rows])
            scale = x.max(axis=0)
            scale[scale == 0] = 1.0  # a feature no timed block has: weight 0
            w, _ = nnls(x / scale / t[:, None], np.ones(len(t)))
            coef[(precision, batch)] = w / scale
        return cls(coef)

    def covers(self, precision: str, batch: int) -> bool:
        return (precision, batch) in self.coef

    def predict(self, block: Block, precision: str, batch: int) -> float:
        key = (block, precision, batch)
        if key not in self.memo:
            self.memo[key] = self._predict(block, precision, batch)
        return self.memo[key]

    def _predict(self, block: Block, precision: str, batch: int) -> float:
        w = self.coef.get((precision, batch))
        if w is None:
            raise ConfigError(
                f"precision={precision}, batch {batch}: the block model was fitted on "
                f"{sorted(self.coef) or 'nothing'}; time at least {len(block_features(block, 1))} "
                "blocks of it first"
            )
        return float(block_features(block, batch) @ w)


@dataclass(frozen=True)
class Cost:
    throughput: float  # images/s at the batch size
    latency_ms: float  # batch 1


class CostPredictor:
    """Throughput and latency of a candidate: the sum of its parts from a `CostTable`, plus
    what a whole forward costs beyond them per (precision, batch), from `references` timed whole
    (the module docstring and `fit_offset` say why). A precision without references: the sum."""

    def __init__(
        self, table: CostTable, batch_size: int, references: Sequence[Candidate] = ()
    ) -> None:
        self.table, self.batch_size = table, batch_size
        self.offsets: dict[tuple[str, int], float] = {}
        for precision in sorted({c.runs_as for c in references}):
            refs = [c for c in references if c.runs_as == precision]
            for batch in sorted({batch_size, 1}):
                parts = [self.parts_s(c, batch) for c in refs]
                whole = [table.whole_s(c, batch) for c in refs]
                self.offsets[(precision, batch)] = fit_offset(parts, whole)

    def parts_s(self, c: Candidate, batch: int) -> float:
        """Seconds of one forward of `batch` images as the sum of its parts."""
        t, p = self.table, c.runs_as
        return t.fixed_s(c.embed_dim, c.head_dim, p, batch) + sum(
            t.block_s(b, p, batch) for b in c.blocks()
        )

    def step_s(self, c: Candidate, batch: int) -> float:
        """Predicted seconds of one forward of `batch` images."""
        return self.parts_s(c, batch) + self.offsets.get((c.runs_as, batch), 0.0)

    def predict(self, c: Candidate) -> Cost:
        return Cost(
            throughput=self.batch_size / self.step_s(c, self.batch_size),
            latency_ms=1e3 * self.step_s(c, 1),
        )


def fit_offset(parts: Sequence[float], whole: Sequence[float]) -> float:
    """Seconds the whole takes beyond its parts: the median over the references.

    One parameter, not a line: chosen by leave-one-out over the candidates measured whole on the
    Xeon (2026-12-04, two quiet runs, 6-9 per precision), share within 10% for the plain sum /
    offset / ratio / line: int8 batch-1 latency 0.00/0.67/0.50/0.67, fp32 latency
    0.67/0.89/1.00/0.89, fp32 throughput 0.56/0.78/0.67/0.56, bf16 alike but the line (worse). A
    line through 3 references, each read with the host's drift, extrapolated: int8 latency
    4.7 ms predicted for 2.6. What no calibration removes is that drift: the same candidates
    timed whole 10-15 minutes apart read 1-14% slower the second time (median 9% in latency),
    and references timed in a slower minute than the table move every prediction with them
    (bf16 throughput within 10%: 0.83 as the plain sum, 0.33 calibrated in the second run)."""
    if len(parts) == 0 or len(parts) != len(whole):
        raise ValueError("fit_offset: needs one whole timing per reference, and at least one")
    return float(np.median(np.asarray(whole, dtype=float) - np.asarray(parts, dtype=float)))
