"""Shared fixtures: run the real console scripts in a throwaway root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from filelock import FileLock

BIN = Path(sys.executable).parent
# Set in each pytest-xdist worker (`make test` runs the suite on two: pyproject's addopts).
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER:
    # Two workers share the 2 cores: one intra-op thread each, or OpenMP's barriers spin
    # against the other worker's threads (see `one_thread`). A test that wants more sets them
    # itself; the console scripts a test starts inherit one thread too, as scale-out workers
    # are given.
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


# The longest modules first (seconds of one worker in a fresh-clone `make test` of 2026-12-06 on
# the AMD EPYC, both workers busy; test_scaleout and test_confirm less what their trims saved;
# the order is what counts): each worker takes whole modules (`--dist loadfile`) in this order,
# so that no long one starts last while the other worker has nothing left; unlisted modules
# follow, most tests first.
LONGEST_FIRST = {
    "test_scaleout.py": 250,
    "test_hostile.py": 244,
    "test_sweep.py": 204,
    "test_export.py": 191,
    "test_confirm.py": 130,
    "test_precision_latency.py": 115,
    "test_precision_wide.py": 53,
    "test_runtime.py": 49,
    "test_hydra_apps.py": 48,
    "test_precision_pt2e.py": 44,
    "test_precision_int4.py": 41,
    "test_tome_published.py": 34,
    "test_predicted_mode.py": 27,
    "test_browser.py": 20,
}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadfile`, longest module first (LONGEST_FIRST) instead of most tests first."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class LongestFirst(LoadFileScheduling):
        def _assign_work_unit(self, node: Any) -> None:
            longest = max(self.workqueue, key=lambda s: LONGEST_FIRST.get(Path(s).name, 0))
            self.workqueue.move_to_end(longest, last=False)
            super()._assign_work_unit(node)

    return LongestFirst(config, log)


# A supernet small enough for a whole study in seconds (digits at 16 px, smoke experiment).
TINY_SUPERNET_SPACE = (
    "arch=supernet",
    "arch.head_dim=8",
    "arch.space.head_dim=8",
    "arch.space.embed_dim=[16,32]",
    "arch.space.depth=[1,2]",
    "arch.space.num_heads=[1,2]",
    "arch.space.mlp_ratio=[2.0,4.0]",
    "arch.embed_dim=32",
    "arch.depth=2",
    "arch.num_heads=2",
    "arch.mlp_ratio=4.0",
)


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


def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of this run that every xdist worker sees (the workers' temp dirs' parent), for
    artefacts worth making once per run rather than once per module."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if WORKER else base


@pytest.fixture(scope="session")
def trained_vit_state(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """`tiny_vit()` trained 12 epochs on 16 px digits at one thread, as its weights: the model
    that test_precision_modes and test_precision_tq each trained for themselves, bit for bit.
    Trained once per run; a worker that needs it while another trains it waits for the file."""
    from vitsweep.data import load
    from vitsweep.models.train import train_briefly
    from vitsweep.spec import DataSpec

    path = shared_dir(tmp_path_factory) / "tiny-vit-digits16-12ep.pt"
    with FileLock(f"{path}.lock"):
        if not path.exists():
            model = tiny_vit()
            before = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                train_briefly(model, load(DataSpec(image_size=16)).train, epochs=12, lr=3e-3,
                              amp=False)  # fmt: skip
            finally:
                torch.set_num_threads(before)
            torch.save(model.state_dict(), path.with_suffix(".tmp"))
            path.with_suffix(".tmp").replace(path)
        return torch.load(path, weights_only=True)
