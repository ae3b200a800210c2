"""The one shape every dataset loader returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset, TensorDataset

from vitsweep.spec import DataSpec


@dataclass(frozen=True)
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    in_chans: int
    image_size: int
    class_names: tuple[str, ...]

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """One image's shape (channels, height, width): what timing and FLOP counts feed."""
        return (self.in_chans, self.image_size, self.image_size)


def stratified_tensor_splits(
    images: torch.Tensor, labels: torch.Tensor, spec: DataSpec
) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """Train/val/test by `spec.val_fraction`/`spec.test_fraction`, stratified and seeded."""
    y = labels.numpy()
    rest, test = train_test_split(
        np.arange(len(y)), test_size=spec.test_fraction, stratify=y, random_state=spec.seed
    )
    val_share = spec.val_fraction / (1.0 - spec.test_fraction)
    train, val = train_test_split(
        rest, test_size=val_share, stratify=y[rest], random_state=spec.seed
    )

    def part(i: np.ndarray) -> TensorDataset:
        t = torch.from_numpy(i)
        return TensorDataset(images[t].contiguous(), labels[t])

    return part(train), part(val), part(test)
