"""Quantization-aware retraining, one loop for every coded layer kind (tq's and the uniform
baseline's), so that two codings retrained are compared like for like.

A coded layer takes part when it has `begin_finetune()` (returns its float latent, quantized in
its forward through a straight-through estimator) and `end_finetune()` (stores Q(latent)): the
model evaluated after retraining is the one stored, at the same rate.
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset


@dataclass(frozen=True)
class Recipe:
    """How to retrain. The defaults are the ones measured best (see DEFAULT_RECIPE)."""

    steps: int
    lr: float = 1e-3
    schedule: Literal["cosine", "constant"] = "constant"
    distill: bool = False  # soft targets of the float model instead of the labels
    batch_size: int = 64


# Chosen on val (2026-12-03, xray baseline e192 d6, tq with transform=auto, budget=stored, 50
# steps of batch 64, every fifth val image: 1,470; fp32 93.33%). At 1 stored bit (+ scales),
# post-training 79.66%: lr 1e-4 cosine 81.09%, lr 1e-3 cosine 89.80%, lr 1e-3 constant 91.84%;
# at 1e-4 the latents barely leave their quantization cells in 50 steps, and a cosine decay
# spends half of them at a rate too small to cross one. Distillation from the fp32 model (KL to
# its softmax), lr 1e-3 cosine: 90.48% against 89.80% on the labels, within the noise of 1,470
# images (+-1.5 pts) for a teacher forward per step: off. At 2 stored bits, post-training
# 91.36%: lr 1e-3 constant 91.16% (it shakes a model that is nearly right), lr 1e-4 constant
# 92.59%. Hence the rate decides the lr (`recipe_for`). 50 steps is what this comparison could
# afford on a shared 2-core machine, not a measured optimum.
LOW_RATE_LR, HIGH_RATE_LR, LOW_RATE_BELOW = 1e-3, 1e-4, 2.0
DEFAULT_RECIPE = Recipe(steps=0)


def recipe_for(rate: float, steps: int, batch_size: int = 64) -> Recipe:
    """The measured recipe for `steps` at `rate` stored bits per weight (see above)."""
    lr = LOW_RATE_LR if rate < LOW_RATE_BELOW else HIGH_RATE_LR
    return replace(DEFAULT_RECIPE, steps=steps, lr=lr, batch_size=batch_size)


def _cycle(loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for _ in itertools.count():
        yield from loader


def coded(model: nn.Module) -> list[nn.Module]:
    """The layers that speak the fine-tuning protocol, in module order."""
    return [m for m in model.modules() if hasattr(m, "begin_finetune")]


def retrain(
    model: nn.Module,
    data: Dataset,
    recipe: Recipe,
    *,
    teacher: nn.Module | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> float:
    """`recipe.steps` AdamW steps through the quantized forward (STE); returns the seconds spent.

    Trained: every coded layer's latent, and the float parameters left (biases, norms,
    embeddings), which are stored fp32 anyway. The model stays in eval mode, so BatchNorm keeps
    its running statistics and dropout stays off: a few hundred small-batch steps would make
    running statistics noisy, and the point is to correct quantization error, not to regularise.
    No weight decay (the steps move values across quantization cells where the loss asks, not
    shrink them). `recipe.distill`: the loss is the KL divergence to `teacher`'s softmax (the
    float model before coding) rather than cross-entropy on the labels.
    """
    if recipe.distill and teacher is None:
        raise ValueError("retrain: recipe.distill needs the float model as `teacher`")
    start = time.perf_counter()
    layers = coded(model)
    latents = [layer.begin_finetune() for layer in layers]
    others = [p for p in model.parameters() if p.requires_grad and all(p is not q for q in latents)]
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(data, batch_size=recipe.batch_size, shuffle=True, generator=gen)
    opt = torch.optim.AdamW([*latents, *others], lr=recipe.lr, weight_decay=0.0)
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(recipe.steps, 1))
        if recipe.schedule == "cosine"
        else torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    )
    model.eval()
    try:
        with torch.enable_grad():
            for (x, y), _ in zip(_cycle(loader), range(recipe.steps), strict=False):
                x = x.to(device)
                logits = model(x).float()
                if recipe.distill:
                    assert teacher is not None
                    with torch.no_grad():
                        target = F.softmax(teacher(x).float(), dim=-1)
                    loss = F.kl_div(F.log_softmax(logits, dim=-1), target, reduction="batchmean")
                else:
                    loss = F.cross_entropy(logits, y.to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    finally:
        for layer in layers:
            layer.end_finetune()
        for p in others:
            p.grad = None
    return time.perf_counter() - start


def frozen_copy(model: nn.Module) -> nn.Module:
    """The float model as a teacher: a copy in eval mode whose parameters take no gradient."""
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
