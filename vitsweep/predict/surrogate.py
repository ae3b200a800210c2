"""A study priced on its predictors: the metrics a sweep's objectives name, for any candidate
of its space, in microseconds, from real measurements committed with the machine they came from.

What `make bench-search` searches (issue #30 item 5), as NAS-Bench-301 and YAHPO Gym benchmark
optimizers on validated surrogates: a sampler's ranking needs thousands of evaluations and a
reference front of 100,000, which real trials (seconds to minutes each on 2 cores) cannot buy.

- accuracy: `AccuracyPredictor` fitted on `data/<experiment>_accuracy.json` (real supernet
  evaluations on the val split);
- throughput and batch-1 latency: `CostPredictor` on the per-block table in
  `data/<experiment>_cost.json` (timed on the machine it names, read-only here: nothing is
  timed on a machine it does not describe), its untimed blocks priced by a `BlockModel`, its
  offsets from the reference candidates timed whole;
- energy: the estimate a trial records without a meter, `measure.watts` / throughput;
- model_bytes: `BytesModel`, exact (storage is a linear function of a candidate's tensor sizes
  at each precision), fitted on candidates built whole and counted by `precision.model_bytes`;
- the study's baseline: its accuracy as measured (the predictor knows subnets only), its cost
  and bytes priced like any candidate.

`python -m vitsweep.bench.predictors --save` writes the cost file from this machine's table.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitsweep.predict.accuracy import DATA_DIR, AccuracyPredictor, accuracy_records, candidate_of
from vitsweep.predict.candidate import Candidate
from vitsweep.predict.cost import BlockModel, CostPredictor, CostTable, Geometry
from vitsweep.spec import ConfigError, MeasureSpec

METRICS = ("accuracy", "throughput", "latency_ms", "energy", "model_bytes")


def cost_file(experiment: str, data_dir: Path = DATA_DIR) -> Path:
    return data_dir / f"{experiment}_cost.json"


# --------------------------------------------------------------------------------- storage


def bytes_features(c: Candidate, g: Geometry) -> np.ndarray:
    """Tensor sizes the stored bytes are linear in, at any precision: the weights of the
    linear layers (int8: a byte each), their output channels (biases, per-channel scales and
    zero points), the layers (per-tensor constants), the norms, and the fixed parts (patch
    embedding, position embeddings, class token, head)."""
    e, hd = c.embed_dim, c.head_dim
    weights = outs = 0
    for h, m in zip(c.heads, c.mlp_ratio, strict=True):
        inner, hidden = h * hd, int(m * e)
        weights += 4 * e * inner + 2 * e * hidden
        outs += 3 * inner + e + hidden + e
    return np.array(
        [
            weights,
            outs,
            c.depth,
            c.depth * e,
            e * g.in_chans * g.patch_size**2 + e * g.num_classes,
            e * (c.tokens + 2),
            1.0,
        ],
        dtype=float,
    )


@dataclass
class BytesModel:
    """`model_bytes` per precision: least squares on `bytes_features` of candidates counted
    for real. Exact where the storage is what the features say (checked on held-out builds)."""

    coef: dict[str, list[float]]

    @classmethod
    def fit(cls, samples: Sequence[tuple[Candidate, int]], g: Geometry) -> BytesModel:
        coef = {}
        for precision in sorted({c.runs_as for c, _ in samples}):
            rows = [(c, b) for c, b in samples if c.runs_as == precision]
            x = np.array([bytes_features(c, g) for c, _ in rows])
            y = np.array([float(b) for _, b in rows])
            coef[precision] = np.linalg.lstsq(x, y, rcond=None)[0].tolist()
        return cls(coef)

    def predict(self, c: Candidate, g: Geometry) -> float:
        if c.runs_as not in self.coef:
            raise ConfigError(
                f"precision={c.runs_as}: the bytes model was fitted on {sorted(self.coef)}"
            )
        return float(round(bytes_features(c, g) @ np.array(self.coef[c.runs_as])))


def count_bytes(c: Candidate, g: Geometry, prop_attn: bool = True) -> int:
    """What a trial records as `model_bytes` for `c`: the candidate built whole, counted."""
    from vitsweep.precision import model_bytes
    from vitsweep.predict.cost import build_whole

    model, _ = build_whole(c, g, prop_attn)
    return model_bytes(model)


# ------------------------------------------------------------------------------- surrogate


def _candidate(d: dict[str, Any]) -> Candidate:
    return candidate_of({"candidate": d})


class Surrogate:
    """Every metric of `METRICS` for a candidate, predicted. Load with `Surrogate.load`."""

    def __init__(self, cost: dict[str, Any], accuracy: AccuracyPredictor, source: str) -> None:
        self.source = source
        self.machine: dict[str, Any] = cost["machine"]
        self.geometry = Geometry(**cost["geometry"])
        self.timing = MeasureSpec(**cost["measure"])
        self.batch_size = self.timing.batch_size
        table = CostTable.committed(
            cost["entries"], source, self.timing, self.geometry, cost["prop_attn"]
        )
        table.model = BlockModel.fit(table.timed_blocks())
        self.table = table
        refs = [_candidate(c) for c in cost["references"]]
        self.cost = CostPredictor(table, self.batch_size, refs)
        samples = [(_candidate(s["candidate"]), int(s["model_bytes"])) for s in cost["bytes"]]
        self.bytes = BytesModel.fit(samples, self.geometry)
        self.accuracy = accuracy
        self.baseline_accuracy = float(cost["baseline"]["accuracy"])
        self.baseline_point: dict[str, Any] = cost["baseline"]["point"]

    @classmethod
    def load(cls, experiment: str, data_dir: Path = DATA_DIR) -> Surrogate:
        path, acc_path = cost_file(experiment, data_dir), data_dir / f"{experiment}_accuracy.json"
        for p in (path, acc_path):
            if not p.exists():
                raise ConfigError(
                    f"{p}: missing; the search bench on predictors needs it (python -m "
                    "vitsweep.bench.predictors --collect N / --save)"
                )
        try:
            cost = json.loads(path.read_text())
        except ValueError as e:
            raise ConfigError(f"{path}: not JSON ({e})") from None
        cands, acc, _ = accuracy_records(acc_path)
        return cls(cost, AccuracyPredictor().fit(cands, acc), str(path))

    def cost_metrics(self, c: Candidate) -> dict[str, float]:
        throughput = self.batch_size / self.cost.step_s(c, self.batch_size)
        return {
            "throughput": throughput,
            "latency_ms": 1e3 * self.cost.step_s(c, 1),
            "energy": self.timing.watts / throughput,
            "model_bytes": self.bytes.predict(c, self.geometry),
        }

    def metrics(self, cands: Sequence[Candidate]) -> list[dict[str, float]]:
        """`METRICS` of each candidate (accuracy predicted for all of them in one call)."""
        acc = self.accuracy.predict(cands) if cands else []
        return [
            {"accuracy": float(a), **self.cost_metrics(c)} for a, c in zip(acc, cands, strict=True)
        ]

    def baseline_metrics(self, c: Candidate) -> dict[str, float]:
        """The baseline: measured accuracy, priced cost."""
        return {"accuracy": self.baseline_accuracy, **self.cost_metrics(c)}

    def describe(self) -> str:
        return (
            f"accuracy: {self.accuracy.kind} on the committed evaluations; cost: "
            f"{len(self.table.entries)} timed parts from {self.machine.get('cpu', '?')} "
            f"({self.machine.get('threads', '?')} threads, torch {self.machine.get('torch', '?')})"
        )


def save_cost_data(
    path: Path,
    table: CostTable,
    references: Sequence[Candidate],
    bytes_samples: Sequence[tuple[Candidate, int]],
    baseline: dict[str, Any],
    machine: dict[str, Any],
) -> Path:
    """The committed cost file `Surrogate` reads (written by the predictors bench)."""
    data = {
        "machine": machine,
        "measure": dataclasses.asdict(table.timing),
        "geometry": dataclasses.asdict(table.geometry),
        "prop_attn": table.prop_attn,
        "references": [dataclasses.asdict(c) for c in references],
        "bytes": [{"candidate": dataclasses.asdict(c), "model_bytes": b} for c, b in bytes_samples],
        "baseline": baseline,
        "entries": dict(sorted(table.entries.items())),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path
