"""The front in W&B, read back from the offline run files: trial runs tagged by their place on
the front (and retagged when they leave it), one hypervolume line per study, the summary run's
tables and plotly figures. A real Optuna study on SQLite, the real study loop and the real
W&B SDK; only the trial jobs are replaced by a function of their overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fakestudy import FIRST_LAUNCH, make_ctx, run
from vitsweep.config import recorder
from vitsweep.search.study import SweepContext
from vitsweep.track.pareto import study_table
from vitsweep.track.wandb_files import RunRecord, read_runs, read_segments
from vitsweep.track.wandb_front import HYPERVOLUME_ATTR, wandb_run_ids


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")


def trial_runs(ctx: SweepContext) -> dict[int, RunRecord]:
    runs = read_runs(ctx.study_dir / "wandb")
    return {r.config["trial_number"]: r for r in runs if r.job_type == "trial"}


def summary_run(ctx: SweepContext) -> RunRecord:
    (run,) = [r for r in read_runs(ctx.study_dir / "wandb") if r.job_type == "summary"]
    return run


def test_trial_runs_carry_pareto_while_on_the_front_and_lose_it_after(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, n_trials=4)
    study = run(ctx, *FIRST_LAUNCH)
    front = {t.number for t in study.best_trials}
    assert front == {2, 3}
    runs = trial_runs(ctx)
    assert sorted(runs) == [0, 1, 2, 3]
    # The baseline and trial 1 were on the front when logged, then left it: reopened once each.
    assert runs[0].tags == ["baseline", "dominated"]
    assert runs[1].tags == ["dominated"]
    assert runs[2].tags == ["pareto"] and runs[3].tags == ["pareto"]
    assert {n: r.segments for n, r in runs.items()} == {0: 2, 1: 2, 2: 1, 3: 1}
    for n, rec in runs.items():
        assert ("pareto" in rec.tags) == (n in front)
        assert rec.name == f"trial-{n}" and rec.group == "front"
        assert rec.summary["accuracy"] == pytest.approx(study.trials[n].values[0])
        assert rec.config["r"] == study.trials[n].params.get("token.r")  # first segment's config
        assert rec.exit_code == 0

    # Each reopening is its own directory with the same run id, opened with `resume` (allow),
    # so that `wandb sync` uploads the segments as one run, in order of start time.
    segments = [s for s in read_segments(ctx.study_dir / "wandb") if s.run_id == runs[0].run_id]
    first, second = sorted(segments, key=lambda s: s.start_time)
    assert first.tags == ["baseline", "pareto"]
    assert second.tags == ["baseline", "dominated"] and second.resume
    assert second.path.parent != first.path.parent
    ids = wandb_run_ids(study)
    assert ids is not None and runs[2].run_id == ids.trial(2)


def test_hypervolume_is_one_line_per_study_across_trials_and_launches(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, n_trials=4)
    study = run(ctx, *FIRST_LAUNCH)
    first = study_table(study, ctx.sweeper.objectives)
    assert len(first.hypervolume) == 4

    # The summary run gets the launch's points when it publishes (one segment per launch); each
    # trial run carries the hypervolume as of its own trial.
    summary = summary_run(ctx)
    assert summary.segments == 1
    per_trial = [trial_runs(ctx)[n].summary["hypervolume"] for n in range(4)]
    assert per_trial == pytest.approx(first.hypervolume)
    assert summary.metrics["hypervolume"] == "complete_trials"  # W&B's x for the line
    line = [h for h in summary.history if "hypervolume" in h]
    assert [h["complete_trials"] for h in line] == [1, 2, 3, 4]
    assert [h["hv_trial_number"] for h in line] == [0, 1, 2, 3]
    assert [h["hypervolume"] for h in line] == pytest.approx(first.hypervolume)
    assert line[0]["hypervolume"] == pytest.approx(1.0)  # the baseline alone (3 objectives)
    assert study.user_attrs[HYPERVOLUME_ATTR] == pytest.approx(first.hypervolume[-1])

    # A second launch with a bigger budget appends its point; republishing adds none.
    ctx5 = make_ctx(tmp_path, n_trials=5)
    study = run(ctx5, 4)
    recorder(ctx5).publish(study)  # what `vitsweep-report` does
    table = study_table(study, ctx5.sweeper.objectives)
    summary = summary_run(ctx5)
    line = [h for h in summary.history if "hypervolume" in h]
    assert [h["complete_trials"] for h in line] == [1, 2, 3, 4, 5]
    assert [h["hypervolume"] for h in line] == pytest.approx(table.hypervolume)
    assert table.hypervolume[-1] > table.hypervolume[-2]  # r=4 widens the front
    assert summary.summary["hypervolume"] == pytest.approx(table.hypervolume[-1])
    assert trial_runs(ctx5)[4].tags == ["pareto"]


def test_summary_run_holds_the_front_tables_and_plotly_figures(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, n_trials=4)
    run(ctx, *FIRST_LAUNCH)
    summary = summary_run(ctx)
    assert summary.name == "front-summary" and summary.group == "front"
    assert summary.summary["n_pareto"] == 2 and summary.summary["pareto_trials"] == [2, 3]
    assert summary.config["n_trials_budget"] == 4

    logged = {k: v for row in summary.history for k, v in row.items()}
    run_dirs = [s.path.parent for s in read_segments(ctx.study_dir / "wandb")]

    def media(key: str, kind: str) -> dict:
        """A logged table or figure, read from the segment directory that holds its file."""
        value = logged[key]
        assert value["_type"] == kind, value
        found = [d / "files" / value["path"] for d in run_dirs]
        (path,) = [p for p in found if p.exists()]
        return json.loads(path.read_text())

    trials = media("trials", "table-file")
    assert "is_pareto" in trials["columns"]
    pareto_col = trials["columns"].index("is_pareto")
    number_col = trials["columns"].index("number")
    assert {row[number_col] for row in trials["data"] if row[pareto_col]} == {2, 3}

    headline = media("headline", "table-file")
    assert [row[headline["columns"].index("number")] for row in headline["data"]] == [2, 3]
    assert "throughput_x" in headline["columns"]
    # how much smaller what ships is: the baseline's model_bytes over the member's, per row
    col = {name: i for i, name in enumerate(trials["columns"])}
    rows = {row[number_col]: row for row in trials["data"]}
    (base,) = [row for row in trials["data"] if row[col["baseline"]]]
    for row in headline["data"]:
        member = rows[row[headline["columns"].index("number")]]
        want = base[col["model_bytes"]] / member[col["model_bytes"]]
        assert row[headline["columns"].index("bytes_x")] == pytest.approx(want)

    # Energy is an estimate in this study (watts / throughput, a copy of throughput): it gets no
    # panel of its own (issue #31), so two objectives remain and there is no 3-D view.
    assert media("pareto/plotly/throughput_vs_accuracy", "plotly-file")["data"][0]["type"] == (
        "scatter"
    )
    assert not [k for k in logged if "energy" in k] and "pareto/3d" not in logged
    # W&B's own scatter per pair and the hypervolume curve are custom charts over tables.
    assert {"pareto/accuracy_vs_throughput_table", "hypervolume_curve_table"} <= set(logged)
