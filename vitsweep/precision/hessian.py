"""Hutchinson estimate of Hessian traces, per parameter tensor (pure autograd maths).

tr(H) = E[v^T H v] for Rademacher v (entries +-1). One Hessian-vector product, the gradient of
(g . v), serves every tensor at once: the per-tensor sum v_i^T (H v)_i also picks up cross terms
v_i^T H_ij v_j, whose expectation is zero because v_i and v_j are independent. That is the
PyHessian / HAWQ trick: cost per sample = one double backward, whatever the number of layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def rademacher(like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random +-1 tensor shaped and placed like `like`."""
    bits = torch.randint(0, 2, like.shape, generator=generator, device=like.device)
    return bits.to(like.dtype) * 2 - 1


def hutchinson_trace(
    loss: torch.Tensor,
    params: Sequence[torch.Tensor],
    samples: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Estimated tr(d^2 loss / d p^2) for each tensor in `params` (float64, len(params)).

    `loss` must be a scalar still attached to the graph of `params`; the graph is consumed.
    """
    if samples < 1:
        raise ValueError(f"samples={samples}: need at least 1 Rademacher vector")
    grads = torch.autograd.grad(loss, list(params), create_graph=True)
    total = torch.zeros(len(params), dtype=torch.float64)
    for s in range(samples):
        vs = [rademacher(p, generator) for p in params]
        hvs = torch.autograd.grad(
            grads, list(params), grad_outputs=vs, retain_graph=s < samples - 1
        )
        total += torch.stack([(hv * v).sum().double().cpu() for hv, v in zip(hvs, vs, strict=True)])
    return total / samples
