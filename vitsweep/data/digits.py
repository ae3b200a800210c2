"""scikit-learn's handwritten digits (real data shipped with the package, 1797 8x8 images)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits as _sk_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from vitsweep.data.splits import Splits
from vitsweep.spec import DataSpec


def load_digits(spec: DataSpec) -> Splits:
    """Stratified train/val/test split, upsampled to `image_size`, grey replicated to `in_chans`."""
    bunch = _sk_digits()
    x = bunch.images.astype(np.float32) / 16.0
    y = bunch.target.astype(np.int64)
    idx = np.arange(len(y))
    rest, test = train_test_split(
        idx, test_size=spec.test_fraction, stratify=y, random_state=spec.seed
    )
    val_share = spec.val_fraction / (1.0 - spec.test_fraction)
    train, val = train_test_split(
        rest, test_size=val_share, stratify=y[rest], random_state=spec.seed
    )
    images = torch.from_numpy(x)[:, None]
    images = F.interpolate(images, size=spec.image_size, mode="bilinear", align_corners=False)
    images = ((images - 0.5) / 0.5).repeat(1, spec.in_chans, 1, 1)
    labels = torch.from_numpy(y)

    def part(i: np.ndarray) -> TensorDataset:
        t = torch.from_numpy(i)
        return TensorDataset(images[t].contiguous(), labels[t])

    return Splits(
        train=part(train),
        val=part(val),
        test=part(test),
        num_classes=10,
        in_chans=spec.in_chans,
        image_size=spec.image_size,
        class_names=tuple(str(d) for d in range(10)),
    )
