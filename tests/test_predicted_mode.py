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
        "hydra.sweeper.n_trials=5", cwd=workdir,
    )  # fmt: skip
    root = workdir / "multirun"
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{root / 'vitsweep.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    subnets = [t for t in done if t.user_attrs.get("duplicate_of") is None]  # repeats: told
    assert len(subnets) == 5
    for t in subnets:
        attrs = record.metrics(t)
        assert attrs["predicted"] == PREDICTED
        assert "predicted" in attrs["peak_mem_source"]
        assert attrs["throughput"] > 0 and attrs["latency_ms"] > 0
        assert 0 <= attrs["accuracy"] <= 1  # evaluated, not predicted
    # Every entry of the machine's table was timed by exactly one trial: none twice.
    (table,) = (root / "cost").glob("*.json")
    entries = json.loads(table.read_text())
    assert any(k.startswith("block|") for k in entries)
    timed = [record.metrics(t)["cost_parts_timed"] for t in subnets]
    assert sum(timed) == len(entries)
    results = yaml.safe_load((root / "smoke" / "report" / "results.yaml").read_text())
    assert any("priced, not timed" in n for n in results["notes"])
    assert results["pareto"] and all(m["predicted"] == PREDICTED for m in results["pareto"])


def test_a_plain_model_is_measured_in_predicted_mode() -> None:
    """The study's baseline is usually a plain ViT, which the table of subnet blocks does not
    price: it is timed, and says nothing of predictions."""
    spec = config.trial_spec(config.compose([*STUDY, "measure.mode=predicted", "train.epochs=1"]))
    metrics = trial.run(spec).as_dict()
    assert "predicted" not in metrics and metrics["throughput_cv"] is not None


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
