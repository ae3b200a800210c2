"""Accuracy predictor: a candidate's val accuracy from its config, fitted on real supernet
evaluations (inherited weights, whole val split; `python -m vitsweep.bench.predictors
--collect N` measures them into `data/<experiment>_accuracy.json`).

The features are the sweeper's fixed-length encoding (embed dim, depth, heads and MLP ratio of
every layer up to the deepest, 0 past the candidate's depth), ToMe's per-block merges, the
precision one-hot, and three sizes the dims imply (params, tokens left, token-blocks): trees
split on a sum only with many leaves, so the sums are given.
"""

from __future__ import annotations

import dataclasses
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
    fitted_on: int = 0  # evaluations

    def fit(
        self,
        candidates: Sequence[Candidate],
        accuracy: Sequence[float],
        layers: int | None = None,
    ) -> AccuracyPredictor:
        """`layers`: the deepest depth it will be asked about (default: the deepest fitted)."""
        if len(candidates) < 5:
            raise ConfigError(
                f"accuracy predictor: {len(candidates)} evaluations; need at least 5 to fit"
            )
        self.layers = max([c.depth for c in candidates] + [layers or 0])
        self.fitted_on = len(candidates)
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


# ------------------------------------------------------------------ one supernet's evaluations


class Evaluations:
    """Every real val accuracy of one supernet's subnets, kept beside its weights
    (`<supernet>.accuracy.json`, the committed data file's format): what `measure.mode=predicted`
    fits its accuracy predictor on, as OFA fits its predictor on a supernet's evaluated subnets.
    Every trial that evaluates a subnet adds to it, in either mode, so a measured study leaves
    what a later predicted study of the same supernet starts from. `setting` keeps apart what
    the candidate does not say (precision and token options other than the searched ones);
    `weights` (the weights file's sha256) what a retrained file would change: records of other
    weights are left out (records kept before the digest was, with none, are read)."""

    def __init__(self, path: Path, setting: str, weights: str | None = None) -> None:
        self.path, self.setting, self.weights = Path(path), setting, weights

    def _read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"records": []}
        try:
            data = json.loads(self.path.read_text())
            records = data["records"]
            for r in records:
                float(r["accuracy"]), candidate_of(r)
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError(
                f"{self.path}: not a file of subnet evaluations ({type(err).__name__}); delete "
                "it and the next trials evaluate again"
            ) from None
        return data

    def records(self) -> tuple[list[Candidate], np.ndarray]:
        """(candidates, val accuracies) evaluated under this setting."""
        mine = self._mine()
        return [candidate_of(r) for r in mine], np.array([float(r["accuracy"]) for r in mine])

    def _mine(self) -> list[dict[str, Any]]:
        return [
            r
            for r in self._read()["records"]
            if r.get("setting") == self.setting and r.get("weights") in (None, self.weights)
        ]

    def lookup(self, c: Candidate) -> tuple[float, int] | None:
        """(val accuracy, images) of `c` itself, where it was evaluated before: an evaluation
        of the same weights, setting and split, so it is reused rather than repeated."""
        want = json.loads(json.dumps(dataclasses.asdict(c)))  # as JSON gives it back
        for r in self._mine():
            if r["candidate"] == want:
                return float(r["accuracy"]), int(r.get("n", 0))
        return None

    def add(self, c: Candidate, accuracy: float, n: int) -> None:
        """Keep one evaluation (a candidate evaluated before keeps its first). Workers of one
        study write the same file: the read-modify-write is under a file lock."""
        from filelock import FileLock

        from vitsweep.files import write_text

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path.with_suffix(".lock"))):
            data = self._read()
            # as JSON gives it back (tuples come back as lists)
            entry = json.loads(
                json.dumps(
                    {
                        "candidate": dataclasses.asdict(c),
                        "setting": self.setting,
                        **({"weights": self.weights} if self.weights else {}),
                    }
                )
            )
            if any({k: r.get(k) for k in entry} == entry for r in data["records"]):
                return
            data["records"].append({**entry, "accuracy": round(float(accuracy), 6), "n": n})
            data["how"] = "val split, one record per subnet evaluated by a trial (vitsweep.trial)"
            write_text(self.path, json.dumps(data, indent=1) + "\n")

    def predictor(self, c: Candidate, after: int, layers: int) -> AccuracyPredictor | None:
        """A predictor fitted on this setting's evaluations once there are `after` of them,
        `MIN_SAME_PRECISION` at `c`'s precision among them (the precision's own offset is
        learnt from those); None before, when the trial evaluates for real."""
        cands, acc = self.records()
        same = sum(x.runs_as == c.runs_as for x in cands)
        if not after or len(cands) < after or same < min(MIN_SAME_PRECISION, after):
            return None
        return AccuracyPredictor().fit(cands, acc, layers=layers)


# A precision's accuracy differs from another's by an offset the GP learns from its one-hot:
# it needs some evaluations at that precision to see it
MIN_SAME_PRECISION = 3
