"""Constraints through Optuna 5's own API: every sampler, the front, the headline, the
hypervolume and the W&B tags agree on which trials are feasible. A real Optuna study on SQLite,
the real study loop, report and W&B SDK (offline, read back from its files); only the trial
jobs are a function of their overrides (tests/fakestudy.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tests.fakestudy import BASELINE, CANDIDATES, NAME, make_ctx, run
from vitsweep.config import sweeper_spec
from vitsweep.search.spec import SamplerSpec
from vitsweep.spec import ConfigError
from vitsweep.track.pareto import study_table
from vitsweep.track.wandb_files import read_runs
from vitsweep.track.wandb_front import front_tag

SAMPLERS = {
    "tpe": SamplerSpec(name="tpe", seed=0, n_startup_trials=2),
    "nsga2": SamplerSpec(name="nsga2", seed=0, population_size=2),
    "gp": SamplerSpec(name="gp", seed=0, n_startup_trials=2),
    "random": SamplerSpec(name="random", seed=0),
    "grid": SamplerSpec(name="grid", seed=0),
}


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_no_infeasible_trial_reaches_the_front_whatever_the_sampler(
    name: str, tmp_path: Path
) -> None:
    # The best accuracy any candidate reaches is 0.85: no trial can meet 0.99.
    assert max(m["accuracy"] for m in (BASELINE, *CANDIDATES.values())) < 0.99
    ctx = make_ctx(tmp_path, n_trials=3, sampler=SAMPLERS[name], constraints=("accuracy >= 0.99",))
    study = run(ctx)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    n = len(complete)  # the 3 measured, and any repeat told its twin's values
    assert len([t for t in complete if "duplicate_of" not in t.user_attrs]) == 3
    # Optuna's own view: the constraint is on every trial, and best_trials honours it.
    for t in complete:
        assert set(t.constraints) == {"accuracy>=0.99"}
        assert t.constraints["accuracy>=0.99"] == pytest.approx(0.99 - t.values[0])
    assert study.best_trials == []
    # Ours: the table, pareto.csv, results.yaml's headline, hypervolume and W&B tags agree.
    table = study_table(study, ctx.sweeper.objectives)
    assert table.pareto == [] and table.headline == []
    assert all(r["feasible"] is False for r in table.rows if r["state"] == "COMPLETE")
    assert table.hypervolume == [0.0] * n
    report = ctx.study_dir / "report"
    assert _rows(report / "pareto.csv") == []
    results = yaml.safe_load((report / "results.yaml").read_text())
    assert results["pareto"] == [] and results["headline"] == []
    assert results["n_infeasible"] == n
    runs = [r for r in read_runs(ctx.study_dir / "wandb") if r.job_type == "trial"]
    assert len(runs) == n
    assert all("infeasible" in r.tags and "pareto" not in r.tags for r in runs)


def test_a_met_constraint_keeps_the_front_and_a_partly_met_one_splits_it(tmp_path: Path) -> None:
    # r=0 (0.85) and r=2 (0.80) meet accuracy >= 0.8; r=4 (0.70) would widen the front but
    # does not, so the feasible front is {r=0, r=2} and r=4 is tagged infeasible.
    ctx = make_ctx(tmp_path, n_trials=4, wandb=False, constraints=("accuracy >= 0.8",))
    study = run(ctx, 4, 2, 0)
    by_r = {t.params.get("token.r"): t.number for t in study.trials}
    assert {t.number for t in study.best_trials} == {by_r[0], by_r[2]}
    table = study_table(study, ctx.sweeper.objectives)
    assert table.pareto == sorted([by_r[0], by_r[2]])
    assert front_tag(study.trials[by_r[4]], table) == "infeasible"
    # The baseline (0.5) is infeasible too, but stays the reference of the ratios.
    assert table.baseline == 0 and [h["number"] for h in table.headline] == table.pareto


def _write_old_study(storage: str) -> None:
    """A study as earlier versions wrote it: constraints as a user attribute, metrics flat,
    the baseline first (trial 1 is r=4, infeasible under accuracy >= 0.8)."""
    directions = ["maximize", "maximize", "minimize"]
    study = optuna.create_study(study_name=NAME, storage=storage, directions=directions)
    dist = {"token.r": optuna.distributions.CategoricalDistribution([0, 2, 4, 8])}
    old = [(None, BASELINE, [0.3], True), (4, CANDIDATES[4], [0.1], False)]
    old += [(0, CANDIDATES[0], [-0.05], False), (2, CANDIDATES[2], [0.0], False)]
    for r, m, constraints, baseline in old:
        attrs = {**m, "energy_source": "estimate", "constraints": constraints}
        attrs |= {"baseline": True} if baseline else {}
        study.add_trial(
            optuna.trial.create_trial(
                values=[m["accuracy"], m["throughput"], m["energy"]],
                params={} if r is None else {"token.r": r},
                distributions={} if r is None else dist,
                user_attrs=attrs,
            )
        )


def test_a_study_written_before_set_constraint_still_reports(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'old.db'}"
    _write_old_study(storage)
    study = optuna.load_study(study_name=NAME, storage=storage)
    objectives = {"accuracy": "maximize", "throughput": "maximize", "energy": "minimize"}
    table = study_table(study, objectives)
    assert table.pareto == [2, 3]  # trial 1 (r=4) would dominate in throughput: infeasible
    assert table.rows[1]["feasible"] is False and table.rows[2]["feasible"] is True
    assert table.rows[2]["accuracy"] == CANDIDATES[0]["accuracy"]  # flat metrics still read


@pytest.mark.parametrize("name", ["gp", "nsga2", "tpe"])
def test_a_study_written_before_set_constraint_resumes_with_every_model_based_sampler(
    name: str, tmp_path: Path
) -> None:
    """The sweep resumes an old-format study and runs past the sampler's startup trials, so the
    model is fitted on trials of both eras (Optuna 5.1's GP raised 'The constraint names must
    be the same for all trials' on that mix)."""
    ctx = make_ctx(
        tmp_path, n_trials=9, wandb=False, sampler=SAMPLERS[name], constraints=("accuracy >= 0.8",)
    )
    _write_old_study(ctx.storage_url)
    study = run(ctx)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    # The space holds 5 configurations, the budget 9: the sampler, fitted on both eras at every
    # ask, proposes repeats (told, not run) until `max_repeats` of them in a row end the study.
    assert "max_repeats=20" in study.user_attrs["stopped"]
    # (the old era stored no overrides to compare with: each of its 4 configurations may run
    # once more, never twice)
    measured = [t for t in complete if "duplicate_of" not in t.user_attrs]
    assert len(measured[4:]) <= 4
    new = complete[4:]
    assert len(new) >= 20
    # The new trials carry the constraint through Optuna's own API, with the right value...
    for t in new:
        assert t.constraints == {"accuracy>=0.8": pytest.approx(0.8 - t.values[0])}
    # ...and one front spans both eras: an infeasible r=4 of either era never reaches it.
    table = study_table(study, ctx.sweeper.objectives)
    feasible_rs = {study.trials[n].params["token.r"] for n in table.pareto}
    assert feasible_rs <= {0, 2} and table.pareto
    assert all(r["feasible"] is False for r in table.rows if r.get("param:token.r") == 4)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("accuracy > 0.9", "expected '<metric> >= <number>'"),
        ("acc >= 0.9", "'acc' is not a metric; valid: accuracy"),
        ("accuracy >= high", "expected '<metric> >= <number>'"),
        ("accuracy >= nan", "with a finite number"),
        ("energy_source <= 1", "'energy_source' is not a metric"),
    ],
)
def test_a_malformed_constraint_is_one_line_naming_the_key(text: str, said: str) -> None:
    """vitsweep's own app: the metric names are checked at the doorway (any other app's
    metrics are whatever its task returns, see test_hydra_apps)."""
    node = {"objectives": {"accuracy": "maximize"}, "constraints": [text]}
    with pytest.raises(ConfigError) as err:
        sweeper_spec(node, ours=True)
    message = str(err.value)
    assert message.startswith("hydra.sweeper.constraints: ") and said in message
    assert "\n" not in message


def test_a_grid_smaller_than_the_budget_ends_the_study_when_it_is_exhausted(
    tmp_path: Path,
) -> None:
    """Optuna's GridSampler calls `study.stop()`, legal only inside `optimize`: the loop must
    end the study itself, every point run once, with the reason stored."""
    ctx = make_ctx(tmp_path, n_trials=9, wandb=False, sampler=SAMPLERS["grid"])
    study = run(ctx)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 5  # the baseline and the 4 grid points
    assert sorted(t.params["token.r"] for t in done if t.params) == [0, 2, 4, 8]
    assert "grid" in study.user_attrs["stopped"]
