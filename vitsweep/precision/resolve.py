"""The ONE place a precision string becomes dtypes, and where a device that cannot run it says so.

Modelled on timm's `benchmark.resolve_precision`: (amp dtype, model dtype, data dtype).
Quantized modes (int8, mixed, tq) keep the float parts of the model in fp32; their integer layers
are swapped in by surgery, not by a dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vitsweep.spec import ConfigError

MODES = ("fp32", "fp16", "bf16", "int8", "mixed", "tq")
CASTS = ("autocast", "full")
FLOAT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Resolved:
    amp_dtype: torch.dtype | None  # autocast dtype, None: no autocast
    model_dtype: torch.dtype  # dtype the float parameters are cast to
    data_dtype: torch.dtype  # dtype the inputs are fed in
    label: str  # what executes, for RunContext.precision_exec (quantized modes refine it)


def resolve_precision(mode: str, cast: str = "autocast") -> Resolved:
    """Map `precision.mode` / `precision.cast` to dtypes; a bad string fails naming the key."""
    if mode not in MODES:
        raise ConfigError(f"precision.mode={mode!r}: unknown; valid: {', '.join(MODES)}")
    if cast not in CASTS:
        raise ConfigError(f"precision.cast={cast!r}: unknown; valid: {', '.join(CASTS)}")
    if mode in ("fp16", "bf16"):
        dtype = FLOAT_DTYPES[mode]
        if cast == "autocast":
            return Resolved(dtype, torch.float32, torch.float32, f"{mode} autocast")
        return Resolved(None, dtype, dtype, f"{mode} full")
    return Resolved(None, torch.float32, torch.float32, mode)


def resolve_device(device: str) -> str:
    """`auto` -> cuda when present, else cpu; anything else must be a torch device string."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError as err:
        raise ConfigError(
            f"measure.device={device!r}: not a device; valid: auto, cpu, cuda"
        ) from err
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"measure.device={device!r}: no CUDA device here; valid: auto, cpu")
    return device


def _cpu_has(dtype: torch.dtype) -> bool:
    """Whether oneDNN runs `dtype` matmuls natively on this CPU (torch's own dispatch test).

    bf16 needs AVX512-BW/VL/DQ (native with AVX512-BF16/AMX); fp16 needs AVX512-FP16 or AMX-FP16.
    Without them torch still computes, but by conversion loops several times slower than fp32.
    """
    probe = {
        torch.bfloat16: "_is_mkldnn_bf16_supported",
        torch.float16: "_is_mkldnn_fp16_supported",
    }[dtype]
    try:
        return bool(getattr(torch.ops.mkldnn, probe)())
    except (AttributeError, RuntimeError):
        return False


def check_supported(mode: str, device: str) -> None:
    """Refuse a precision the device cannot run natively, instead of timing an emulation.

    fp16 on a CPU without fp16 units measured 4.7 img/s vs 17 img/s fp32 (ViT-S/16, this machine):
    an fp16 label on that number would mislead, so it is an error that points to bf16 or cuda.
    """
    kind = torch.device(device).type
    if mode in ("fp16", "bf16"):
        dtype = FLOAT_DTYPES[mode]
        if kind == "cpu" and not _cpu_has(dtype):
            other = "bf16" if mode == "fp16" and _cpu_has(torch.bfloat16) else "fp32"
            raise ConfigError(
                f"precision.mode={mode!r}: this CPU has no native {mode} matmul (it would run "
                f"emulated, slower than fp32); use precision.mode={other} or measure.device=cuda"
            )
        if kind == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise ConfigError(
                "precision.mode='bf16': this GPU has no bf16 support; use precision.mode=fp16"
            )
