"""`measure.compile`: run a candidate through `torch.compile` (inductor, freezing), compile
time measured apart.

Why inductor with freezing: it is what lowers a PT2E int8 program to oneDNN int8 GEMMs (without
it the program runs reference quantize/dequantize ops in fp32), and it fuses and pre-packs the
float weights of every other precision (bf16 weights: 3.9x -> 4.5x fp32 on ViT-S/16 here).
Freezing folds the weights into the program as constants, so it needs inference (no autograd).

Compile time is a cost of its own, not of throughput: every shape a trial will run (the timing
batch, batch 1 for latency, the evaluation batch) is compiled here, before anything is timed,
and the seconds this takes are `compile_s`. Shapes recur: the batch dimension is marked dynamic
on the first call, so one graph serves every batch size > 1 (the evaluation batch, its tail and
the timing batch) and batch 1 gets its own specialization (size 1 is always specialized):
two compiles per trial instead of one per shape.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from vitsweep.runctx import RunContext
from vitsweep.spec import ConfigError, MeasureSpec

COMPILE_MODES = ("auto", "always", "never")


def should_compile(mode: str, ctx: RunContext) -> bool:
    """`measure.compile`: always, never, or auto (where the precision needs it)."""
    if mode not in COMPILE_MODES:
        raise ConfigError(f"measure.compile={mode!r}: unknown; valid: {', '.join(COMPILE_MODES)}")
    return mode == "always" or (mode == "auto" and ctx.wants_compile)


def compile_program(model: nn.Module) -> nn.Module:
    """`torch.compile` with inductor and weight freezing (compiles lazily, on the first call).

    Freezing is switched on process-wide (`torch._inductor.config.freezing`), not through
    `torch.compile(options={"freezing": True})`: with torch 2.14.1 the options route fails to
    lower a PT2E program ("onednn.qlinear_prepack is not an OpOverload"), the global does not
    (tried on a tiny ViT here). Nothing else in vitsweep compiles, so the global is harmless.
    """
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    return torch.compile(model, backend="inductor")


def _batches(sizes: Sequence[int]) -> list[int]:
    """Distinct batch sizes, largest first: the first call (batch marked dynamic) compiles the
    shared graph, so it should not be the batch-1 special case."""
    return sorted({int(b) for b in sizes if b >= 1}, reverse=True)


def warm_up(
    runner: nn.Module,
    ctx: RunContext,
    sample_shape: tuple[int, ...],
    batch_sizes: Sequence[int],
) -> float:
    """Run `runner` once per batch size (compiling each new graph); seconds it took."""
    from vitsweep.measure.speed import eval_mode, make_input

    start = time.perf_counter()
    with torch.inference_mode(), eval_mode(runner), warnings.catch_warnings():
        # inductor's oneDNN int8 lowering (torch 2.14.1, mkldnn_lowerings.py) warns twice per
        # compile about its own `torch.tensor(tensor)`: noise in every int8 trial's console
        warnings.filterwarnings(
            "ignore", message="To copy construct from a tensor", category=UserWarning
        )
        for i, batch in enumerate(_batches(batch_sizes)):
            x = make_input(batch, sample_shape, ctx)
            if i == 0 and batch > 1:
                torch._dynamo.mark_dynamic(x, 0)
            ctx.forward(runner, x)
    return time.perf_counter() - start


def compile_model(
    model: nn.Module,
    ctx: RunContext,
    spec: MeasureSpec,
    sample_shape: tuple[int, ...],
    batch_sizes: Sequence[int] | None = None,
) -> tuple[nn.Module, RunContext, float | None]:
    """(runner, ctx, compile_s): the model as accuracy and speed will run it.

    Compiled (per `measure.compile`): every batch size in `batch_sizes` (default: the timing
    batch, 1 and the evaluation batch) is compiled now, `compile_s` is those seconds and
    `precision_exec` ends in ", compiled". Not compiled: the model itself, compile_s None.
    """
    import dataclasses

    if not should_compile(spec.compile, ctx):
        if ctx.wants_compile:  # a PT2E program run eagerly: say what that really is
            note = ", not compiled: reference q/dq ops in fp32"
            ctx = dataclasses.replace(ctx, precision_exec=ctx.precision_exec + note)
        return model, ctx, None
    if batch_sizes is None:
        batch_sizes = (spec.batch_size, 1, spec.eval_batch_size)
    runner = compile_program(model)
    start = time.perf_counter()
    try:
        compile_s = warm_up(runner, ctx, sample_shape, batch_sizes)
    except Exception as err:  # inductor's lowering failures have no common type
        # Seen here: PT2E int8 + ToMe r>0, inductor's qlinear+add fusion meets ToMe's scatter
        # ("FakeTensorUpdater cannot recompute metadata ... qlinear_binary"). The model still
        # runs uncompiled; the label says what ran and why, the seconds spent stay on record.
        first = (str(err).strip().splitlines() or [""])[0][:160]
        how = "reference q/dq ops in fp32" if ctx.wants_compile else "eager"
        note = f", compile failed ({type(err).__name__}: {first}): {how}"
        torch._dynamo.reset()
        return (
            model,
            dataclasses.replace(ctx, precision_exec=ctx.precision_exec + note),
            (time.perf_counter() - start),
        )
    ctx = dataclasses.replace(ctx, precision_exec=f"{ctx.precision_exec}, compiled")
    return runner, ctx, compile_s
