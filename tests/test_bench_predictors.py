"""The predictor bench's scoring (issue #30): the share within +/-10%, Kendall tau and the worst
misses, on numbers worked out by hand; and the accuracy check's cross-validation, which must
never let a predictor see the candidate it predicts."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from vitsweep.bench.predictors import accuracy_check, agreement
from vitsweep.predict.candidate import Candidate


def test_agreement_counts_the_share_within_ten_percent_and_names_the_worst() -> None:
    measured = [100.0, 200.0, 300.0, 400.0]
    predicted = [105.0, 250.0, 300.0, 360.0]  # +5%, +25%, 0%, -10%
    out = agreement(measured, predicted, ["a", "b", "c", "d"], worst=2)
    assert out["n"] == 4 and out["within_10pct"] == 0.75
    assert out["kendall_tau"] == 1.0  # the order is kept
    assert [w["config"] for w in out["worst"]] == ["b", "d"]
    assert out["worst"][0]["error_pct"] == 25.0 and out["worst"][1]["error_pct"] == -10.0


def test_agreement_sees_a_reversed_order() -> None:
    out = agreement([1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [0, 1, 2])
    assert out["kendall_tau"] == -1.0


def test_the_accuracy_check_predicts_each_candidate_without_it(tmp_path) -> None:
    """One candidate is unlike all others (int8, merged, the widest heads) and scores 50%
    against their 93-95%. Fitted on it, either kind predicts it within a few points; cross-
    validated, nothing like it was seen, so it must be the worst miss by far."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(30):
        depth = int(rng.integers(3, 7))
        c = Candidate(int(rng.choice([48, 64, 96, 128])), (2,) * depth, (3.0,) * depth, 32,
                      (0,) * depth, 65, "fp32")  # fmt: skip
        acc = 0.9 + 0.0003 * c.embed_dim + 0.002 * depth
        records.append({"point": {"i": i}, "candidate": dataclasses.asdict(c), "accuracy": acc})
    odd = Candidate(64, (4,) * 6, (4.0,) * 6, 32, (8,) * 6, 65, "int8")
    records.append({"point": {"i": 30}, "candidate": dataclasses.asdict(odd), "accuracy": 0.5})
    path = tmp_path / "acc.json"
    path.write_text(json.dumps({"machine": {"cpu": "x"}, "records": records}))
    out = accuracy_check(path, folds=4)
    assert set(out["kinds"]) == {"gbt", "gp"}
    for row in out["kinds"].values():
        assert row["n"] == 31
        assert row["worst"][0]["config"] == {"i": 30} and row["worst"][0]["error_pct"] > 40
