"""Hutchinson trace estimates against exact Hessians from torch.autograd.functional.hessian."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from vitsweep.precision.hessian import hutchinson_trace, rademacher
from vitsweep.precision.mixed import layer_traces

pytestmark = pytest.mark.usefixtures("one_thread")


def _exact_trace(model: nn.Module, name: str, x: torch.Tensor, y: torch.Tensor) -> float:
    """tr(d^2 CE / dW^2) for parameter `name`, from the full Hessian of that parameter."""
    w0 = dict(model.named_parameters())[name].detach().clone()

    def loss(w: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, {name: w}, (x,)), y)

    with sdpa_kernel(SDPBackend.MATH):
        h = torch.autograd.functional.hessian(loss, w0)
    return float(h.reshape(w0.numel(), w0.numel()).diagonal().sum())


def test_rademacher_is_plus_minus_one():
    v = rademacher(torch.empty(1000), torch.Generator().manual_seed(0))
    assert set(v.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(v.mean())) < 0.1


def test_hutchinson_within_10_percent_on_an_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
    x, y = torch.randn(32, 6), torch.randint(0, 4, (32,))
    names = ["0.weight", "2.weight"]
    exact = [_exact_trace(model, n, x, y) for n in names]
    params = [dict(model.named_parameters())[n] for n in names]
    loss = F.cross_entropy(model(x), y)
    est = hutchinson_trace(loss, params, samples=400, generator=torch.Generator().manual_seed(1))
    for e, h in zip(est.tolist(), exact, strict=True):
        assert h > 0
        assert abs(e - h) <= 0.10 * abs(h), (e, h)


def test_layer_traces_within_10_percent_on_a_tiny_vit():
    """The production path (math SDPA, batches, requires_grad handling) on a real timm ViT.

    One layer at a time: the per-sample relative spread here is ~0.5 (sqrt(2 sum_ij H_ij^2) /
    tr H, from the exact Hessian), so 500 samples put 10% at about four standard deviations.
    """
    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=8, patch_size=4, num_classes=5, embed_dim=16, depth=1, num_heads=2, mlp_ratio=2
    ).eval()
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,))
    fc2 = model.get_submodule("blocks.0.mlp.fc2")
    exact = _exact_trace(model, "blocks.0.mlp.fc2.weight", x, y)
    fc2.weight.requires_grad_(False)  # a frozen weight is measured, then left frozen
    est = layer_traces(model, [fc2], [(x[:8], y[:8]), (x[8:], y[8:])], samples=250, seed=3)
    assert fc2.weight.requires_grad is False
    # two half batches averaged = the full batch's mean-reduced loss
    assert exact > 0
    assert abs(float(est[0]) - exact) <= 0.10 * exact, (float(est[0]), exact)
