"""scikit-learn's handwritten digits (real data shipped with the package, 1797 8x8 images)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits as _sk_digits

from vitsweep.data.splits import Splits, stratified_tensor_splits
from vitsweep.spec import DataSpec


def load_digits(spec: DataSpec) -> Splits:
    """Stratified train/val/test split, upsampled to `image_size`, grey replicated to `in_chans`."""
    bunch = _sk_digits()
    x = bunch.images.astype(np.float32) / 16.0
    y = bunch.target.astype(np.int64)
    images = torch.from_numpy(x)[:, None]
    images = F.interpolate(images, size=spec.image_size, mode="bilinear", align_corners=False)
    images = ((images - 0.5) / 0.5).repeat(1, spec.in_chans, 1, 1)
    train, val, test = stratified_tensor_splits(images, torch.from_numpy(y), spec)

    return Splits(
        train=train,
        val=val,
        test=test,
        num_classes=10,
        in_chans=spec.in_chans,
        image_size=spec.image_size,
        class_names=tuple(str(d) for d in range(10)),
    )
