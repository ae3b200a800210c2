"""Static and executed cost: parameters, FLOPs as executed, peak memory of one batch.

FLOPs come from `torch.utils.flop_counter.FlopCounterMode` on a real batch-1 forward through
`ctx.forward`, so whatever really runs is what gets counted: ToMe's merged tokens shrink the
matmuls, a subnet's sliced weights count at their sliced size. Two gaps in torch's formula table
are filled here: the CPU flash-attention kernel (which is what `F.scaled_dot_product_attention`
dispatches to on a CPU and would otherwise count as zero) and dynamic int8 linear layers.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from vitsweep.measure.device import is_cuda
from vitsweep.measure.speed import eval_mode, make_input
from vitsweep.runctx import RunContext


def count_params(model: torch.nn.Module) -> int:
    """Parameters of the model as deployed.

    A model may define `active_params()` (a supernet subnet that still holds the full shared
    weights); int8 modules keep packed weights outside `parameters()`, and coded layers (mixed's
    packed, tq) say how many parameters they hold as buffers (`buffered_params`): both are added.
    """
    hook = getattr(model, "active_params", None)
    if callable(hook):
        return int(hook())
    total = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        total += int(getattr(m, "buffered_params", 0))
        packed = getattr(m, "_packed_params", None)
        if packed is not None and callable(getattr(m, "weight", None)):
            total += m.weight().numel()
            bias = m.bias() if callable(getattr(m, "bias", None)) else None
            total += bias.numel() if bias is not None else 0
    return total


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args: Any, **kwargs: Any) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _linear_dynamic_flop(x: torch.Tensor, packed: Any, *args: Any, **kwargs: Any) -> int:
    weight = packed.unpack()[0]  # (out_features, in_features)
    return 2 * (x.numel() // x.shape[-1]) * weight.shape[0] * weight.shape[1]


_linear_dynamic_flop._get_raw = True  # type: ignore[attr-defined]  # gets tensors, not shapes


def _extra_formulas() -> dict[Any, Any]:
    aten = torch.ops.aten
    extra: dict[Any, Any] = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        extra[aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flop
    quantized = getattr(torch.ops, "quantized", None)
    for name in ("linear_dynamic", "linear_dynamic_fp16"):
        op = getattr(quantized, name, None) if quantized is not None else None
        if op is not None:
            extra[op] = _linear_dynamic_flop
    return extra


def count_flops(model: torch.nn.Module, ctx: RunContext, sample_shape: tuple[int, ...]) -> int:
    """FLOPs of one image as executed (a multiply-add counts 2), from a batch-1 forward."""
    with torch.inference_mode(), eval_mode(model):
        x = make_input(1, sample_shape, ctx)
        with FlopCounterMode(display=False, custom_mapping=_extra_formulas()) as counter:
            ctx.forward(model, x)
    return int(counter.get_total_flops())


def peak_memory_bytes(
    model: torch.nn.Module, ctx: RunContext, x: torch.Tensor
) -> tuple[float, str]:
    """(bytes, source): the most memory one forward on batch `x` holds above what was
    allocated before it (activations and workspaces; the weights, already resident, excluded),
    and how that was measured. NaN bytes with the reason when it cannot be measured: never 0.

    CUDA: the caching allocator's own peak statistics. CPU: the CPU allocator's allocation and
    free events as torch's profiler records them (`profile_memory`), summed in time order; the
    process's resident set cannot be used, since after the warm-up forwards the allocator (and
    glibc) reuse freed pages and a second forward shows no growth at all.
    """
    foreign = getattr(model, "foreign_runtime", None)
    if foreign is not None:  # its arena is invisible to torch's allocator and profiler
        return math.nan, f"unmeasured: {foreign} allocates outside torch"
    with torch.inference_mode(), eval_mode(model):
        if is_cuda(ctx.device):
            dev = torch.device(ctx.device)
            torch.cuda.synchronize(dev)
            before = torch.cuda.memory_allocated(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            ctx.forward(model, x)
            torch.cuda.synchronize(dev)
            peak = torch.cuda.max_memory_allocated(dev) - before
            return float(peak), "cuda allocator peak above the weights"
        return _cpu_forward_peak(model, ctx, x)


def _cpu_forward_peak(
    model: torch.nn.Module, ctx: RunContext, x: torch.Tensor
) -> tuple[float, str]:
    from torch.profiler import ProfilerActivity, profile

    # kineto prints its stage, start/stop ("USDT", level 5 since torch 2.14) and, on a machine
    # without a GPU, a "gpuGetDeviceCount failed" error (level 4) to stderr on every profile:
    # the level past them all keeps trial output to what the user asked for
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    ctx.forward(model, x)  # lazy initialisation (packing, caches) is not the forward's memory
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            ctx.forward(model, x)
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except Exception as e:  # a profiler that cannot run here: say so, do not guess
        return math.nan, f"unmeasured: torch profiler failed ({type(e).__name__})"
    if not events:
        return math.nan, "unmeasured: the profiler recorded no CPU allocations"
    current = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        current += e.nbytes()
        peak = max(peak, current)
    return float(peak), "cpu allocator peak above the weights (torch profiler)"
