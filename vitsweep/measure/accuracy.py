"""Top-1 accuracy, run exactly the way speed is measured (the same RunContext)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from vitsweep.measure.speed import eval_mode
from vitsweep.runctx import RunContext


def evaluate(model: torch.nn.Module, ctx: RunContext, dataset: Dataset, batch_size: int) -> float:
    """Fraction (0..1) of `dataset`'s (image, label) pairs whose arg-max logit is the label."""
    if batch_size < 1:
        raise ValueError(f"measure.eval_batch_size={batch_size}: must be >= 1")
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("evaluate: the dataset is empty; check data.val_fraction/test_fraction")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    correct = 0
    total = 0
    with torch.inference_mode(), eval_mode(model):
        for x, y in loader:
            pred = ctx.forward(model, x).argmax(dim=1).cpu()
            correct += int((pred == torch.as_tensor(y)).sum())
            total += len(pred)
    return correct / total
