"""Static and executed cost: parameters, FLOPs as executed, peak memory of one batch.

FLOPs come from `torch.utils.flop_counter.FlopCounterMode` on a real batch-1 forward through
`ctx.forward`, so whatever really runs is what gets counted: ToMe's merged tokens shrink the
matmuls, a subnet's sliced weights count at their sliced size. Two gaps in torch's formula table
are filled here: the CPU flash-attention kernel (which is what `F.scaled_dot_product_attention`
dispatches to on a CPU and would otherwise count as zero) and dynamic int8 linear layers.
"""

from __future__ import annotations

import gc
import os
import resource
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


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux >= 4.0); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_bytes(model: torch.nn.Module, ctx: RunContext, x: torch.Tensor) -> int:
    """Peak memory of one forward on batch `x`.

    CUDA: max allocated bytes (weights included). CPU: the growth of the process's resident
    set over its level before the forward (VmHWM after a reset); allocator caching can hide
    reused memory, so this is a lower bound of what a fresh process would need.
    """
    with torch.inference_mode(), eval_mode(model):
        if is_cuda(ctx.device):
            dev = torch.device(ctx.device)
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            ctx.forward(model, x)
            torch.cuda.synchronize(dev)
            return int(torch.cuda.max_memory_allocated(dev))
        gc.collect()
        if _reset_rss_peak():
            base = _status_kb("VmRSS")
            ctx.forward(model, x)
            peak = _status_kb("VmHWM")
            if base is not None and peak is not None:
                return max(0, peak - base) * 1024
        # Fallback: lifetime maximum RSS (kB on Linux) only shows growth beyond earlier peaks.
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        ctx.forward(model, x)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        scale = 1 if os.uname().sysname == "Darwin" else 1024
        return max(0, after - before) * scale
