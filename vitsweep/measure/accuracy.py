"""Top-1 accuracy, run exactly the way speed is measured (the same RunContext), with the
statistics a 1-point decision needs: a Wilson interval per accuracy, and per-image correctness
flags so two models can be compared on the same images (exact McNemar, a paired difference)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vitsweep.measure.speed import eval_mode
from vitsweep.runctx import RunContext
from vitsweep.stats import (  # noqa: F401 - re-exported: where measuring code has found them
    CONFIDENCE,
    TEST_FLAGS_KEY,
    Paired,
    accuracy_summary,
    pack_flags,
    paired_difference,
    unpack_flags,
    wilson,
)


def predict(
    model: torch.nn.Module, ctx: RunContext, dataset: Dataset, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """(arg-max class, label) for every (image, label) pair of `dataset`, in dataset order, run
    the way `ctx` says: the one evaluation loop every accuracy comes from."""
    if batch_size < 1:
        raise ValueError(f"measure.eval_batch_size={batch_size}: must be >= 1")
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("evaluate: the dataset is empty; check data.val_size/test_size")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    preds, labels = [], []
    with torch.inference_mode(), eval_mode(model):
        for x, y in loader:
            preds.append(ctx.forward(model, x).argmax(dim=1).cpu())
            labels.append(torch.as_tensor(y))
    return torch.cat(preds), torch.cat(labels)


def correct_flags(
    model: torch.nn.Module, ctx: RunContext, dataset: Dataset, batch_size: int
) -> np.ndarray:
    """One bool per (image, label) pair of `dataset`, in dataset order: arg-max logit == label."""
    pred, label = predict(model, ctx, dataset, batch_size)
    return (pred == label).numpy().astype(bool)


def evaluate(model: torch.nn.Module, ctx: RunContext, dataset: Dataset, batch_size: int) -> float:
    """Fraction (0..1) of `dataset`'s (image, label) pairs whose arg-max logit is the label."""
    return float(correct_flags(model, ctx, dataset, batch_size).mean())
