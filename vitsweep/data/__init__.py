"""Datasets that need no download: scikit-learn digits, synthetic X-ray, ImageFolder trees."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from vitsweep.data.splits import Splits
from vitsweep.spec import ConfigError, DataSpec

__all__ = ["Splits", "data_dir", "generator_version", "load"]


def data_dir(root: str | Path) -> Path:
    """Where generated datasets are cached: `<paths.root>/data`."""
    return Path(root) / "data"


def generator_version(spec: DataSpec) -> int:
    """Which renderer draws `spec`'s images: part of the cache key of every model trained on
    them, so a changed renderer retrains instead of reusing weights fitted to other images."""
    if spec.name == "xray_synth":
        from vitsweep.data.xray import GENERATOR_VERSION

        return GENERATOR_VERSION
    return 0  # digits ships with scikit-learn; a folder is the user's own


@lru_cache(maxsize=4)
def load(spec: DataSpec, cache_dir: str | Path | None = None) -> Splits:
    """The train/val/test splits of `spec`, cached per process (trials in one worker share them)
    and, for generated sets, on disk under `cache_dir` (`<paths.root>/data`) across processes."""
    if spec.name == "digits":
        from vitsweep.data.digits import load_digits

        return load_digits(spec)
    if spec.name == "xray_synth":
        from vitsweep.data.xray import load_xray

        return load_xray(spec, cache_dir)
    if spec.name == "folder":
        from vitsweep.data.folder import load_folder

        return load_folder(spec)
    raise ConfigError(
        f"data.name={spec.name!r}: unknown dataset; valid: digits, xray_synth, folder"
    )
