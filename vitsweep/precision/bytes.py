"""`model_bytes`: what the model stores, each tensor at its own precision.

Counted from the state_dict because that is the one view every layer kind agrees on: plain
parameters and buffers (fp32/bf16/fp16), packed low-bit codes (uint8) with their scales, and
torch.ao's dynamic int8 layers, whose weights hide in a packed C++ object that the state_dict
unpacks into a qint8 tensor (1 byte per weight) plus per-channel scales and zero points.
Transform-quantized layers (`tq.TQLayer`) store a packed bitstream of their coefficient codes
(uint8, exactly sum of bits / 8 bytes), the int8 transform and fp32 steps/scales, all plain
buffers, so they count at their true size with no special case.
Non-persistent buffers are left out: they are recomputed, never shipped (TQLayer's rebuilt fp32
`weight` is one: a runtime copy, seen by peak memory, not by the bytes a deployment stores).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


def tensor_bytes(t: torch.Tensor) -> int:
    """Storage of one tensor; a quantized tensor adds its scales and zero points."""
    if not t.is_quantized:
        return t.numel() * t.element_size()
    n = t.numel() * t.element_size()
    if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        s, z = t.q_per_channel_scales(), t.q_per_channel_zero_points()
        return n + s.numel() * s.element_size() + z.numel() * z.element_size()
    return n + 8 + 8  # per-tensor: one double scale, one int64 zero point


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """Tensors inside a state_dict value (torch.ao packs (weight, bias) as a tuple)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, tuple | list):
        for v in value:
            yield from _tensors(v)


def _key(t: torch.Tensor) -> tuple[int, int, int, torch.dtype] | None:
    """Identity of a tensor's bytes, so tied weights count once (None: never shared)."""
    if t.is_quantized:
        return None
    return (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel(), t.dtype)


def model_bytes(model: nn.Module) -> int:
    """Bytes of every tensor `model` stores, each at its own dtype, shared tensors once."""
    seen: set[tuple[int, int, int, torch.dtype]] = set()
    total = 0
    for value in model.state_dict(keep_vars=True).values():
        for t in _tensors(value):
            key = _key(t)
            if key is not None:
                if key in seen:
                    continue
                seen.add(key)
            total += tensor_bytes(t)
    return total
