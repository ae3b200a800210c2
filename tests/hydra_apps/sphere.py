"""hydra-optuna-sweeper's example/sphere.py: one objective, a float."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="sphere-conf", config_name="config", version_base="1.3")
def sphere(cfg: DictConfig) -> float:
    x: float = cfg.x
    y: float = cfg.y
    if cfg.get("error", False):
        raise RuntimeError("cfg.error is True")
    return x**2 + y**2


if __name__ == "__main__":
    sphere()
