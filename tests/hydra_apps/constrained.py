"""A user's app returning named metrics: a loss, a cost, and a size that a constraint bounds."""

from __future__ import annotations

import os

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="constrained-conf", config_name="config", version_base="1.3")
def train(cfg: DictConfig) -> dict[str, float]:
    x, y = float(cfg.x), float(cfg.y)
    return {
        "loss": (x - 1) ** 2 + y**2,
        "cost": (x + 1) ** 2 + (y - 1) ** 2,
        "size": x + y,
        "trial": int(os.environ["VITSWEEP_TRIAL_NUMBER"]),  # the sweeper tells the job its number
    }


if __name__ == "__main__":
    train()
