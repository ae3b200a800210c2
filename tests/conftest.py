"""Shared fixtures: run the real console scripts in a throwaway root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BIN = Path(sys.executable).parent


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_SILENT="true", PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="0")
    return env


def run_cli(
    tool: str, *args: str, cwd: Path, timeout: float = 300, check: bool = True
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(BIN / tool), *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A launch directory: outputs go to <workdir>/multirun like a user's checkout."""
    return tmp_path


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core box: with 2 intra-op threads OpenMP stalls under load
    (measured here: 139 s vs 1.3 s for the same resume test). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits16():
    """scikit-learn's digits (real data) at 16 px: the precision tests' calibration and test set."""
    from vitsweep.data import load
    from vitsweep.spec import DataSpec

    return load(DataSpec(image_size=16))


def tiny_vit(depth: int = 2):
    """A timm ViT for 16 px digits (16 patches + the class token), seeded, in eval mode."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(img_size=16, patch_size=4, num_classes=10, embed_dim=32,
                             depth=depth, num_heads=2).eval()  # fmt: skip
