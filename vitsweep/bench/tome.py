"""ToMe speed on this CPU, per precision: DeiT-Ti and DeiT-S (timm, random weights), 224 px,
2 threads, stock (r=0) vs ToMe r=13, in fp32 and bf16 (weights cast), each eager and compiled,
and int8 (torchao PT2E static, X86InductorQuantizer, then torch.compile), at batch 16
(throughput) and batch 1 (latency, fp32 and bf16, eager and compiled); the pruned ceiling
(`x_pruned`, the same token counts kept by position) at batch 16; and ours vs the published
patch's algorithm at r=13 in fp32 (both eager).

int8 goes through the flow the product uses (torch.export -> prepare_pt2e -> calibrate ->
convert_pt2e -> inductor with freezing), so ToMe must trace through it. fp32 and bf16 run eager,
as a study runs them by default (`measure.compile=auto` compiles PT2E int8 only), and compiled
(`measure.compile=always`, through `measure.compile`: the batch dimension dynamic, batch 1 its
own graph). Eager ToMe merges as a trial does by default (the C++ kernel of `tome.fused`,
issue #35); at batch 1, where the difference shows, a "merge_step" row runs the same model
merging op by op, and a "compiled region" row through the compiled merge region
(`token.compile_merge`).
A ratio "x same precision" compares like with like.

Every variant is timed by the product's protocol (`measure.speed.time_forward`: warm-up, the
fastest of a few Python call depths, repeats until the spread settles), one call per variant per
round, the order rotating each round, so a neighbour's load drift hits all of them alike; each
figure is the median over rounds, ratios come from those medians.

`merge_op_counts` (a second section) counts, per merging block, what ToMe's own work dispatches:
torch calls from Python and top-level ATen ops, for the readable formulation, the eager
`merge_step`, the C++ kernel and the compiled region; the kernels inductor generates for each
formulation; and the whole ToMe model's graphs and graph breaks under torch.compile. Counts do
not depend on load.
"""

from __future__ import annotations

import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import timm
import torch
from torch.overrides import TorchFunctionMode

from vitsweep.bench.common import Section, Target
from vitsweep.measure.compile import compile_program, warm_up
from vitsweep.measure.cost import count_flops
from vitsweep.measure.speed import steady_host_allocator, thread_scope, time_forward
from vitsweep.runctx import RunContext
from vitsweep.spec import MeasureSpec
from vitsweep.tome import apply_tome, bipartite_soft_matching, merge_wavg, remove_tome, token_counts
from vitsweep.tome.fused import fused_merge, kernel, merge_step, regional

# the attention ToMe's merging blocks run (padded bf16 keys), for the pruned ceiling
from vitsweep.tome.patch import KEY_ALIGN, _attention
from vitsweep.tome.reference import apply_reference_tome

MODELS = {"DeiT-Ti": "deit_tiny_patch16_224", "DeiT-S": "deit_small_patch16_224"}
BATCH = 16
R = 13
THREADS = 2
IMG = 224
PRECISIONS = ("fp32", "fp32 compiled", "bf16", "bf16 compiled", "int8")
# batch 1 (latency) for the float precisions: int8's batch 1 is not what the issue asks for
LATENCY_PRECISIONS = ("fp32", "fp32 compiled", "bf16", "bf16 compiled")


def _float_model(name: str, r: int, img: int = IMG) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, img_size=img).eval()
    return apply_tome(model, r) if r else model


def _int8(model: torch.nn.Module, calib: list[torch.Tensor]) -> torch.nn.Module:
    """torchao PT2E static int8 through the product's flow (`precision.pt2e.quantize_pt2e`:
    export with a dynamic batch, X86InductorQuantizer on every Linear, calibrate, convert, the
    runnable module that accepts eval()), then compiled as `measure.compile` compiles it."""
    from vitsweep.precision.pt2e import quantize_pt2e

    return compile_program(quantize_pt2e(model, calib))


class _Pruned(torch.nn.Module):
    """ToMe's token counts without ToMe: each block keeps the first tokens between attention and
    MLP, as many as the ToMe model keeps, with no matching, merging or size bias, and attention
    run as ToMe's blocks run it (bf16 keys padded). The fastest any merging at these shapes could
    be: the ceiling a ToMe speed-up is read against, beside the FLOPs one."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.keep = tuple(token_counts(model))
        self.model = remove_tome(model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
        for blk, n in zip(m.blocks, self.keep, strict=True):
            x = x + blk.ls1(_attention(blk.attn, blk.norm1(x), None)[0])
            x = x[:, :n]
            x = x + blk.ls2(blk.mlp(blk.norm2(x)))
        return m.forward_head(m.norm(x))


class _Within(torch.nn.Module):
    """The same ToMe model run inside a context: merging through its compiled region
    (`regional(True)`, `token.compile_merge`) or op by op (`kernel(False)`, `merge_step`, not the
    C++ kernel)."""

    def __init__(self, model: torch.nn.Module, context: Callable[[], Any]) -> None:
        super().__init__()
        self.model, self.context = model, context

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.context():
            return self.model(x)


def _dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision.startswith("bf16") else torch.float32


def _build(
    precision: str, name: str, r: int, calib: list[torch.Tensor], kind: str = "tome"
) -> torch.nn.Module:
    img = calib[0].shape[-1]
    """The runner a trial would time: eager, compiled by `measure.compile`, or PT2E int8."""
    model = _float_model(name, 0 if kind == "reference" else r, img)
    if kind == "reference":
        model = apply_reference_tome(model, r)
    elif kind == "pruned":
        model = _Pruned(model)
    elif kind == "merge compiled":
        model = _Within(model, partial(regional, True))
    elif kind == "op by op":
        model = _Within(model, partial(kernel, False))
    if precision == "int8":
        return _int8(model, calib)
    model = model.to(_dtype(precision))
    return compile_program(model) if precision.endswith(" compiled") else model


class Variant:
    """One timed runner: what it is (the table's columns) and how it is fed."""

    def __init__(
        self, label: str, precision: str, r: int, batch: int, kind: str, runner: torch.nn.Module
    ) -> None:
        self.label, self.precision, self.r, self.batch, self.kind = label, precision, r, batch, kind
        self.runner = runner
        dtype = torch.float32 if precision == "int8" else _dtype(precision)
        self.ctx = RunContext(input_dtype=dtype)
        self.steps_s: list[float] = []
        self.build_s = 0.0

    @property
    def key(self) -> tuple[str, str, int, int, str]:
        return (self.label, self.precision, self.r, self.batch, self.kind)


def _spec(batch: int, quick: bool) -> MeasureSpec:
    """The product's protocol, sized for one call per variant per round: a few repeats of at
    least 0.1 s (batch 1 at 0.25 s: more steps per repeat, less timer jitter)."""
    return MeasureSpec(
        batch_size=batch,
        threads=0,  # set once for the whole run
        warmup=1,
        min_repeats=3,
        max_repeats=3 if quick else 7,
        max_cv=0.03,
        time_cap_s=2.0 if quick else 6.0,
        repeat_s=0.02 if quick else (0.25 if batch == 1 else 0.1),
        lock=False,
        host_probe="off",
    )


def _round_robin(variants: list[Variant], rounds: int, quick: bool, shape: tuple) -> None:
    """Each round times every variant once with the product's protocol, the order rotating."""
    for i in range(rounds):
        order = variants[i % len(variants) :] + variants[: i % len(variants)]
        for v in order:
            stats = time_forward(v.runner, v.ctx, shape, v.batch, _spec(v.batch, quick))
            v.steps_s.append(stats.median_step_s)


class _Calls(TorchFunctionMode):
    """Counts torch calls made from Python (what each costs a dispatcher round trip)."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        self.n += 1
        return func(*args, **(kwargs or {}))


def _top_level_aten_ops(fn: Callable[[], object]) -> int:
    """ATen ops `fn` dispatches at top level (not those an op runs inside itself), by the
    profiler, which sees ops run from a compiled region too (a dispatch mode would turn it off)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    n = 0
    for e in prof.events():
        parent = e.cpu_parent
        if e.name.startswith("aten::") and (parent is None or not parent.name.startswith("aten::")):
            n += 1
    return n


def _readable(metric, x, size, r, p):  # type: ignore[no-untyped-def]
    return merge_wavg(bipartite_soft_matching(metric, r, p), x, size)


def _fast(metric, x, size, r, p):  # type: ignore[no-untyped-def]
    return merge_step(metric, x, size, r, p)[:2]


def _kernels(fn: Callable[..., object], *args: object) -> dict[str, int]:
    """Kernels inductor generates for `fn` compiled alone at these shapes (as the whole-model
    compile inlines it): fused C++ kernels and calls to ATen/extern kernels in the wrapper."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    _, codes = run_and_get_code(torch.compile(fn, dynamic=False), *args)
    code = "\n".join(codes)
    lines = [ln.strip() for ln in code[code.find("def call(") :].splitlines()]
    calls = [ln for ln in lines if not ln.startswith(("#", "assert"))]  # no comments, checks
    return {
        "fused_kernels": sum(bool(re.match(r"cpp_fused_\w+\(", ln)) for ln in calls),
        "extern_calls": sum(
            bool(re.search(r"\b(?:extern_kernels|torch\.ops\.aten)\.", ln)) for ln in calls
        ),
    }


def merge_op_counts(
    tokens: int = 184,
    dim: int = 384,
    metric_dim: int = 64,
    r: int = R,
    compiled: bool = True,
    region: bool = True,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Per merging block (DeiT-S's second block by default: 184 tokens, 384 channels, keys of
    64 features, class token): torch calls from Python and top-level ATen ops dispatched by the
    readable formulation, `merge_step` eager, the C++ kernel and the compiled region, at batch
    1 and 16, fp32 and bf16 (the region only with `region`: a compile per shape); with
    `compiled`, also the kernels inductor generates for each formulation and the whole model's
    graph breaks."""
    rows: list[dict[str, Any]] = []
    g = torch.Generator().manual_seed(0)
    for dtype, batch in ((torch.float32, 1), (torch.float32, BATCH), (torch.bfloat16, 1)):
        metric = torch.randn(batch, tokens, metric_dim, generator=g).to(dtype)
        x = torch.randn(batch, tokens, dim, generator=g).to(dtype)
        size = torch.randint(1, 3, (batch, tokens, 1), generator=g).float()
        args = (metric, x, size, r, 1)
        with torch.inference_mode():
            for name, fn in (("readable (merge_wavg)", _readable), ("merge_step eager", _fast)):
                with _Calls() as calls:
                    fn(*args)
                rows.append(
                    {
                        "formulation": name,
                        "dtype": str(dtype).removeprefix("torch."),
                        "batch": batch,
                        "torch_calls": calls.n,
                        "aten_ops": _top_level_aten_ops(partial(fn, *args)),
                    }
                )
            rows.append(
                {
                    "formulation": "C++ kernel (fused_merge)",
                    "dtype": str(dtype).removeprefix("torch."),
                    "batch": batch,
                    "torch_calls": 1,
                    "aten_ops": _top_level_aten_ops(partial(fused_merge, *args)),
                }
            )
            if not region:
                continue
            with regional(True):
                fused_merge(*args)  # compile (or reuse) the region's graph for these shapes
                region = _top_level_aten_ops(partial(fused_merge, *args))
            rows.append(
                {
                    "formulation": "compiled region (fused_merge)",
                    "dtype": str(dtype).removeprefix("torch."),
                    "batch": batch,
                    "torch_calls": 1,
                    "aten_ops": region,
                }
            )
    notes = [
        f"per merging block, {tokens} tokens, {dim} channels, metric {metric_dim} features, "
        f"r={r}, class token; torch_calls: torch functions called from Python (TorchFunctionMode)"
        "; aten_ops: top-level ATen ops in the profiler (inside a compiled region: its extern "
        "calls such as sort and baddbmm, the rest runs as generated C++ kernels)"
    ]
    if compiled:
        with torch.inference_mode():
            metric = torch.randn(BATCH, tokens, metric_dim, generator=g)
            x = torch.randn(BATCH, tokens, dim, generator=g)
            size = torch.randint(1, 3, (BATCH, tokens, 1), generator=g).float()
            for name, fn in (("readable (merge_wavg)", _readable), ("merge_step", _fast)):
                k = _kernels(fn, metric, x, size, r, 1)
                notes.append(
                    f"inductor, {name} compiled alone (fp32, batch {BATCH}, static): "
                    f"{k['fused_kernels']} fused C++ kernels, {k['extern_calls']} ATen/extern calls"
                )
            torch._dynamo.reset()
            model = _float_model(MODELS["DeiT-S"], r)
            explained = torch._dynamo.explain(model)(torch.randn(1, 3, IMG, IMG, generator=g))
            notes.append(
                f"torch.compile of DeiT-S r={r} (torch._dynamo.explain): "
                f"{explained.graph_count} graph(s), {explained.graph_break_count} graph break(s)"
            )
            torch._dynamo.reset()
    return rows, notes


def _variants(
    models: dict[str, str],
    precisions: tuple[str, ...],
    batch: int,
    calib: list[torch.Tensor],
    region: bool,
) -> list[Variant]:
    """Build (and warm: compile) every runner; batch 1 shares the batch-16 runner. With
    `region`, the "merge compiled" rows too (a compile per shape)."""
    shape = tuple(calib[0].shape[1:])
    out: list[Variant] = []

    def add(label: str, precision: str, r: int, kind: str, batches: tuple[int, ...]) -> None:
        start = time.perf_counter()
        runner = _build(precision, models[label], r, calib, kind)
        ctx = RunContext(input_dtype=torch.float32 if precision == "int8" else _dtype(precision))
        warm_up(runner, ctx, shape, batches)  # compiles: batch dynamic, then batch 1
        built = time.perf_counter() - start
        print(f"  {label} {precision} r={r} {kind}: {built:.0f} s", file=sys.stderr, flush=True)
        for b in batches:
            v = Variant(label, precision, r, b, kind, runner)
            v.build_s = built
            out.append(v)

    for label in models:
        for precision in precisions:
            batches = (batch, 1) if precision in LATENCY_PRECISIONS else (batch,)
            for r in (0, R):
                add(label, precision, r, "tome", batches)
            if label == "DeiT-S":  # the pruned ceiling, at the throughput batch
                add(label, precision, R, "pruned", (batch,))
            if precision in ("fp32", "bf16"):  # the kernel's worth, at batch 1 where it shows
                add(label, precision, R, "op by op", (1,))
            if region and precision in ("fp32", "bf16"):  # and the region's
                add(label, precision, R, "merge compiled", (1,))
    if "DeiT-S" in models:
        add("DeiT-S", "fp32", R, "reference", (batch, 1))
    return out


def run(
    quick: bool = False,
    *,
    models: tuple[str, ...] = tuple(MODELS),
    precisions: tuple[str, ...] = PRECISIONS,
    batch: int = BATCH,
    img: int = IMG,
    counts: bool = True,
    threads: int = THREADS,
) -> list[Section]:
    """The ToMe section (and the op-count section with `counts`). `quick`: one round of short
    repeats; with `models`/`precisions`/`batch`/`img`/`threads` narrowed it is the test suite's
    smoke run. Runs with `threads` intra-op threads, the caller's count restored after."""
    import torch._dynamo.config as dynamo_config

    # dynamo keeps at most `recompile_limit` graphs per code object, and every compiled model of
    # one class shares its forward's: DeiT-Ti and DeiT-S x fp32/bf16 x batch 16 and batch 1 is 8
    # graphs of `VisionTransformer.forward` alone, and past the limit a runner silently falls
    # back to eager. A trial compiles one model per process; this bench compiles ~20 in one.
    before = dynamo_config.recompile_limit
    dynamo_config.recompile_limit = max(before, 64)
    try:
        with thread_scope(threads):
            return _run(quick, models, precisions, batch, img, counts)
    finally:
        dynamo_config.recompile_limit = before


def _run(
    quick: bool,
    models: tuple[str, ...],
    precisions: tuple[str, ...],
    batch: int,
    img: int,
    counts: bool,
) -> list[Section]:
    rounds = 1 if quick else 5
    steady = steady_host_allocator()
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(batch, 3, img, img, generator=g) for _ in range(2)]
    chosen = {k: MODELS[k] for k in models}
    load_before = os.getloadavg()[0]

    variants = _variants(chosen, precisions, batch, calib, region=not quick)
    shape = (3, img, img)
    for b in (batch, 1):  # each batch its own round-robin: like is compared with like
        part = [v for v in variants if v.batch == b]
        _round_robin(part, rounds if b > 1 else 2 * rounds, quick, shape)
    med = {v.key: statistics.median(v.steps_s) for v in variants}

    x = torch.randn(batch, 3, img, img, generator=g)
    notes_diff = []
    if "DeiT-S" in chosen:
        with torch.inference_mode():
            ours = _float_model(MODELS["DeiT-S"], R, img)(x)
            ref = apply_reference_tome(_float_model(MODELS["DeiT-S"], 0, img), R)(x)
            stock = _float_model(MODELS["DeiT-S"], 0, img)(x)
            at_r0 = apply_tome(_float_model(MODELS["DeiT-S"], 0, img), 0)(x)
        ref_diff = ((ours - ref).abs().max() / ref.abs().max()).item()
        notes_diff.append(
            f"DeiT-S r={R} ours vs reference, fp32: relative max diff {ref_diff:.1e}; "
            f"r=0 vs stock: max abs diff {(stock - at_r0).abs().max().item():.1e}"
        )
    flops = {
        (label, r): count_flops(_float_model(name, r, img), RunContext(), shape)
        for label, name in chosen.items()
        for r in (0, R)
    }

    def base(v: Variant) -> float:
        """Stock (r=0) at the same precision and batch (fp32 for the reference)."""
        precision = "fp32" if v.kind == "reference" else v.precision
        return med[(v.label, precision, 0, v.batch, "tome")]

    rows = []
    for v in variants:
        if v.kind == "pruned":  # read as a column of its ToMe row
            continue
        pruned = med.get((v.label, v.precision, v.r, v.batch, "pruned"))
        model = _float_model(MODELS[v.label], v.r, img)
        n = token_counts(model)[-1] if v.r else (img // 16) ** 2 + 1
        step = med[v.key]
        merge = {
            "tome": "eager (C++ kernel)",
            "op by op": "eager (merge_step)",
            "merge compiled": "compiled region",
        }.get(v.kind, "")
        if v.kind == "tome" and (v.precision == "int8" or v.precision.endswith(" compiled")):
            merge = "in the model's graph"
        rows.append(
            {
                "model": v.label,
                "precision": "reference" if v.kind == "reference" else v.precision,
                "r": v.r,
                "batch": v.batch,
                "merge": "-" if v.r == 0 else (merge or "published"),
                "final_tokens": n,
                "images_per_s": round(v.batch / step, 1),
                "ms_per_batch": round(1e3 * step, 2),
                "spread_ms": f"{1e3 * min(v.steps_s):.1f}-{1e3 * max(v.steps_s):.1f}",
                "x_same_precision_r0": round(base(v) / step, 3),
                "x_fp32_stock": round(med[(v.label, "fp32", 0, v.batch, "tome")] / step, 3),
                "x_flops": round(flops[v.label, 0] / flops[v.label, v.r], 3),
                "x_pruned": round(pruned / step, 3) if pruned and v.kind == "tome" else "-",
                "build_plus_warmup_s": round(v.build_s, 1),
            }
        )

    targets = []
    for v in variants:  # ToMe / x_pruned >= 0.95 (batch 16), ToMe / stock >= 1.0 (batch 1)
        if v.kind != "tome" or v.r == 0:
            continue
        if v.batch == batch and (v.label, v.precision, v.r, batch, "pruned") in med:
            share = med[(v.label, v.precision, v.r, batch, "pruned")] / med[v.key]
            name = f"{v.label} {v.precision} r={R} b={batch}: ToMe / x_pruned"
            targets.append(Target(name, round(share, 3), ">= 0.95", share >= 0.95))
        if v.batch == 1:
            ratio = base(v) / med[v.key]
            name = f"{v.label} {v.precision} b=1: ToMe r={R} / stock"
            targets.append(Target(name, round(ratio, 3), ">= 1.0", ratio >= 1.0))
    ref_key = ("DeiT-S", "fp32", R, batch, "reference")
    if ref_key in med:
        vs_ref = med[ref_key] / med[("DeiT-S", "fp32", R, batch, "tome")]
        name = f"DeiT-S fp32 r={R} ours / reference r={R}"
        targets.append(Target(name, round(vs_ref, 3), ">= 1.0", vs_ref >= 1.0))

    notes = [
        f"timm {'/'.join(chosen.values())}, random weights, {img} px, batch {batch} (throughput)"
        f" and 1 (latency), CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"timm {timm.__version__}",
        "fp32: eager; bf16: weights cast, eager; eager ToMe merges in its C++ kernel (the "
        "default), 'merge_step' rows op by op, 'compiled region' rows through the compiled "
        "merge region (`token.compile_merge`); compiled: "
        "torch.compile (inductor, freezing; `measure.compile=always`, batch dynamic, batch 1 its "
        "own graph), stock compiled alike; int8: torchao PT2E static (X86InductorQuantizer on "
        "every Linear, 2 calibration batches, batch dim dynamic), convert_pt2e, torch.compile "
        "(inductor, freezing); reference: the published patch's algorithm, fp32 eager",
        f"ToMe's merging blocks pad bf16 keys to a multiple of {KEY_ALIGN} (masked out) for the "
        "CPU flash-attention kernel's fast path; stock blocks run as timm runs them",
        f"timing: `measure.speed.time_forward` (the product's protocol) once per variant per "
        f"round, {rounds} round(s) at batch {batch} and {2 * rounds} at batch 1, the order "
        "rotating; median over rounds; build_plus_warmup_s: building, compiling and the first "
        "forward per batch size (`measure.compile.warm_up`)",
        "x_flops: the model's FLOPs at r=0 over this variant's (fp32 count): what a run that "
        "scaled with FLOPs would reach",
        f"x_pruned (DeiT-S, batch {batch}): the same model keeping as many tokens per block as "
        "ToMe does, by position, with no matching, merging or size bias: the fastest any merging"
        " at these token counts could run with these kernels; ToMe's own cost is the gap to it",
        "host allocator: "
        + ("steady (glibc mallopt: freed pages stay mapped)" if steady else "the C library's"),
        *notes_diff,
        f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
        f"({os.cpu_count()} cores): above the core count, timings are contention, not ToMe",
    ]
    sections = [Section("ToMe token merging per precision: images/s", rows, targets, notes)]
    if counts:
        count_rows, count_notes = merge_op_counts(compiled=not quick, region=not quick)
        sections.append(
            Section("ToMe's own work per merging block: ops", count_rows, [], count_notes)
        )
    return sections


if __name__ == "__main__":
    for section in run(quick=True):
        print(section.title)
        for row in section.rows:
            print(row)
        for t in section.targets:
            print(t)
        print(*section.notes, sep="\n")
