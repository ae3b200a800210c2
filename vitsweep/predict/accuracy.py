"""Accuracy predictor: a candidate's val accuracy from its config, fitted on real supernet
evaluations (inherited weights, whole val split; `python -m vitsweep.bench.predictors
--collect N` measures them into `data/<experiment>_accuracy.json`).

The features are the sweeper's fixed-length encoding (embed dim, depth, heads and MLP ratio of
every layer up to the deepest, 0 past the candidate's depth), ToMe's per-block merges, the
precision one-hot, and three sizes the dims imply (params, tokens left, token-blocks): trees
split on a sum only with many leaves, so the sums are given.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from vitsweep.predict.candidate import Candidate
from vitsweep.spec import ConfigError

DATA_DIR = Path(__file__).resolve().parent / "data"
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "mixed", "tq")
KINDS = ("gp", "gbt")
# Why a GP (scikit-learn's, Matern 5/2 with one length scale per feature, plus white noise):
# measured by 5-fold cross-validation on the committed xray evaluations (`python -m
# vitsweep.bench.predictors`), it ranked held-out candidates far better than gradient-boosted
# trees on the same features: Kendall tau 0.84 against 0.75, mean error 0.14 against 0.25
# points (64 evaluations, 2026-12-03; at 36 evaluations 0.83 against 0.59). The accuracies span
# 3 points and most features move them smoothly (width, depth, merges), which a smooth kernel with
# per-feature scales fits from tens of points; trees need many more to find those slopes.
DEFAULT_KIND = "gp"


def features(c: Candidate, layers: int) -> list[float]:
    """One fixed-length row per candidate (`layers`: the deepest depth of the space)."""
    if c.depth > layers:
        raise ConfigError(f"arch.depth={c.depth}: the accuracy predictor knows depths <= {layers}")
    pad = layers - c.depth
    tokens = [b.tokens_in - b.merged for b in c.blocks()]
    return [
        float(c.embed_dim),
        float(c.depth),
        *(float(h) for h in c.heads),
        *([0.0] * pad),
        *c.mlp_ratio,
        *([0.0] * pad),
        *(float(r) for r in c.r),
        *([0.0] * pad),
        *(1.0 if c.precision == p else 0.0 for p in PRECISIONS),
        math.log(c.params()),
        float(tokens[-1]),
        float(sum(tokens)),
    ]


def candidate_of(record: dict[str, Any]) -> Candidate:
    """A data file's candidate (stored as `dataclasses.asdict`) back as a `Candidate`."""
    d = dict(record["candidate"])
    for key in ("heads", "mlp_ratio", "r"):
        d[key] = tuple(d[key])
    return Candidate(**d)


def accuracy_records(path: str | Path) -> tuple[list[Candidate], np.ndarray, dict[str, Any]]:
    """(candidates, val accuracies, the machine they were measured on) of a data file."""
    data = json.loads(Path(path).read_text())
    records = data["records"]
    return (
        [candidate_of(r) for r in records],
        np.array([float(r["accuracy"]) for r in records]),
        data.get("machine", {}),
    )


def _model(kind: str, seed: int, width: int) -> Any:
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "gbt":
        return GradientBoostingRegressor(
            n_estimators=400,
            learning_rate=0.03,
            max_depth=3,
            subsample=0.8,
            loss="squared_error",
            random_state=seed,
        )
    if kind == "gp":
        # one length scale per feature (ARD): a dim that does not matter gets a long one
        kernel = ConstantKernel(1.0) * Matern(
            length_scale=np.full(width, 3.0), length_scale_bounds=(1e-2, 1e3), nu=2.5
        ) + WhiteKernel(1e-2, noise_level_bounds=(1e-8, 1.0))
        gp = GaussianProcessRegressor(
            kernel=kernel, normalize_y=True, n_restarts_optimizer=2, random_state=seed
        )
        return make_pipeline(StandardScaler(), gp)
    raise ConfigError(f"predictor kind={kind!r}: valid: {', '.join(KINDS)}")


@dataclass
class AccuracyPredictor:
    """Val accuracy (0..1) of a candidate; `fit` on real evaluations, then `predict`."""

    kind: str = DEFAULT_KIND
    seed: int = 0
    layers: int = 0  # fixed width of the encoding, the deepest depth fitted on
    model: Any = None

    def fit(self, candidates: Sequence[Candidate], accuracy: Sequence[float]) -> AccuracyPredictor:
        if len(candidates) < 5:
            raise ConfigError(
                f"accuracy predictor: {len(candidates)} evaluations; need at least 5 to fit"
            )
        self.layers = max(c.depth for c in candidates)
        x = np.array([features(c, self.layers) for c in candidates])
        model = _model(self.kind, self.seed, x.shape[1])
        with warnings.catch_warnings():  # a length scale at its bound is an answer, not an error
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model = model.fit(x, np.asarray(accuracy, dtype=float))
        return self

    def predict(self, candidates: Sequence[Candidate]) -> np.ndarray:
        if self.model is None:
            raise ValueError("AccuracyPredictor.predict before fit")
        x = np.array([features(c, self.layers) for c in candidates])
        return np.clip(self.model.predict(x), 0.0, 1.0)
