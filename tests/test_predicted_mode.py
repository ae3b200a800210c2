"""`measure.mode=predicted` (issue #30, item 7): a study searched on the cost table.

A real sweep of a tiny supernet on digits: every subnet is priced from the per-machine table of
timed blocks, which each block enters once, and results.yaml says which numbers were predicted;
a plain model (a study's usual baseline) is measured as always.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml

from tests.conftest import TINY_SUPERNET_SPACE, run_cli
from vitsweep import config, record, trial
from vitsweep.spec import ConfigError

pytestmark = pytest.mark.slow

STUDY = ("experiment=smoke", "tracking=none")
TINY_SUPERNET = (*TINY_SUPERNET_SPACE, "train.epochs=2")
PREDICTED = "throughput,latency_ms,energy"


def test_a_predicted_study_prices_subnets_and_says_so(workdir: Path) -> None:
    run_cli(
        "vitsweep", "-m", *STUDY, *TINY_SUPERNET, "measure.mode=predicted",
        "measure.accuracy_after=5", "hydra.sweeper.n_trials=7", cwd=workdir,
    )  # fmt: skip
    root = workdir / "multirun"
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{root / 'vitsweep.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    subnets = [t for t in done if t.user_attrs.get("duplicate_of") is None]  # repeats: told
    assert len(subnets) == 7
    # The first 5 subnets' val accuracy is evaluated and kept beside the supernet; from then on
    # a predictor fitted on those 5 gives it, and nothing is evaluated
    (kept,) = (root / "supernets").glob("*.accuracy.json")
    records = json.loads(kept.read_text())["records"]
    assert len(records) == 5
    subnets.sort(key=lambda t: t.number)
    for t in subnets[:5]:
        attrs = record.metrics(t)
        assert attrs["predicted"] == PREDICTED
        assert 0 <= attrs["accuracy"] <= 1 and attrs["accuracy_n"] > 0  # evaluated
        assert any(r["accuracy"] == pytest.approx(attrs["accuracy"], abs=1e-6) for r in records)
    for t in subnets[5:]:
        attrs = record.metrics(t)
        assert attrs["predicted"] == f"accuracy,{PREDICTED}"
        assert attrs["accuracy_fitted_on"] == 5 and "accuracy_n" not in attrs
        assert 0 <= attrs["accuracy"] <= 1
        assert attrs["model_bytes"] >= 4 * attrs["params"]  # fp32: 4 bytes a weight
    for t in subnets:
        attrs = record.metrics(t)
        assert "predicted" in attrs["peak_mem_source"]
        assert attrs["throughput"] > 0 and attrs["latency_ms"] > 0
        assert "vitsweep-confirm" in attrs["test_accuracy_source"]  # the test split: left
    # Every entry of the machine's table was timed by exactly one trial: none twice.
    (table,) = (root / "cost").glob("*.json")
    entries = json.loads(table.read_text())
    assert any(k.startswith("block|") for k in entries)
    timed = [record.metrics(t)["cost_parts_timed"] for t in subnets]
    assert sum(timed) == len(entries)
    results = yaml.safe_load((root / "smoke" / "report" / "results.yaml").read_text())
    assert any(
        "7 trials were priced, not timed" in n and "2 of them also had their val accuracy" in n
        for n in results["notes"]
    )
    assert results["pareto"] and all(PREDICTED in m["predicted"] for m in results["pareto"])
    # the test split is not measured here: null, as its interval, not .nan (front and headline)
    assert all(m["test_accuracy"] is None for m in results["pareto"])
    assert results["headline"] and all(h["test_accuracy"] is None for h in results["headline"])


def test_a_plain_model_is_priced_like_the_subnets_in_predicted_mode(tmp_path: Path) -> None:
    """The study's baseline is usually a ViT built from its dims, which the table's blocks
    describe: it is priced like the subnets (their ratios rest on one predictor) and its val
    accuracy evaluated; a model the table cannot describe would be measured."""
    spec = config.trial_spec(
        config.compose(
            [*STUDY, "measure.mode=predicted", "train.epochs=1", f"paths.root={tmp_path}"]
        )
    )
    assert trial.priceable(spec)
    metrics = trial.run(spec).as_dict()
    assert metrics["predicted"] == PREDICTED and "throughput_cv" not in metrics
    assert metrics["accuracy_n"] > 0 and 0 <= metrics["accuracy"] <= 1
    # kept beside its weights: the next predicted study's baseline reuses that evaluation
    # (xray's took 35-43 s of each), with its interval, and builds nothing at its precision
    again = trial.run(spec).as_dict()
    assert again["accuracy_source"].startswith("evaluated before (")
    for key in ("accuracy", "accuracy_n", "accuracy_lo", "accuracy_hi", "model_bytes", "flops"):
        assert again[key] == pytest.approx(metrics[key]), key
    assert again["predicted"] == PREDICTED and "build_s" not in again
    timm = config.trial_spec(config.compose([*STUDY, "arch.timm_name=vit_tiny_patch16_224"]))
    assert not trial.priceable(timm)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (("precision=tq",), r"measure\.mode=predicted: the cost table times torch's"),
        (("runtime=onnxruntime",), r"not runtime=onnxruntime"),
    ],
)
def test_what_the_cost_table_cannot_price_is_refused_in_one_line(overrides, match) -> None:
    spec = config.trial_spec(
        config.compose([*STUDY, *TINY_SUPERNET, "measure.mode=predicted", *overrides])
    )
    with pytest.raises(ConfigError, match=match):
        trial.run(spec)
