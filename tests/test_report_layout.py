"""The report adapts to what the study has (issue #31): a derived objective gets no panel, the
PNG is a grid a slide can hold, report.html opens with one headline sentence and rounds its
numbers. Asserted on the data the renderers share and on the files read back, never on pixels."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
from PIL import Image

from tests.fakestudy import FIRST_LAUNCH, NAME, make_ctx, run
from vitsweep.search.space import parse_space
from vitsweep.search.study import open_study
from vitsweep.track.html import _cell, _number
from vitsweep.track.pareto import headline_sentence, panel_pairs, study_table


def test_estimated_energy_gets_no_panel_and_the_png_is_one_row(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, n_trials=len(FIRST_LAUNCH), wandb=False)
    objectives = {**ctx.sweeper.objectives, "model_bytes": "minimize"}
    ctx = dataclasses.replace(ctx, sweeper=dataclasses.replace(ctx.sweeper, objectives=objectives))
    study = run(ctx, *FIRST_LAUNCH)
    table = study_table(study, objectives)
    assert table.energy_derived  # every trial's energy_source is "estimate"
    pairs = panel_pairs(table)
    assert pairs and all("energy" not in pair for pair in pairs)
    assert len(pairs) == 3  # accuracy, throughput, model_bytes: three pairs, one row
    report = tmp_path / "front" / "report"
    width, height = Image.open(report / "pareto.png").size
    assert width < 1800 and height < 600  # one row of three panels, not a strip of six
    html = (report / "report.html").read_text()
    assert "energy_vs_" not in html and "_vs_energy" not in html
    # The first line is the sentence, built from the headline table's own numbers.
    sentence = headline_sentence(table)
    best = max(
        (h for h in table.headline if h["number"] != table.baseline),
        key=lambda h: h["throughput_x"],
    )
    assert sentence.startswith(f"Trial {best['number']} runs {best['throughput_x']:.1f}x")
    assert f"(trial {table.baseline})" in sentence
    assert html.index(sentence) < html.index("<h2>")


def test_one_objective_is_drawn_against_the_trial_number(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, n_trials=2, wandb=False)
    ctx = dataclasses.replace(
        ctx, sweeper=dataclasses.replace(ctx.sweeper, objectives={"throughput": "maximize"})
    )
    study = run(ctx, 4)
    assert panel_pairs(study_table(study, {"throughput": "maximize"})) == [("number", "throughput")]


def test_the_front_table_says_how_each_member_runs(tmp_path: Path) -> None:
    """A study that searches the runtime shows how each front member runs: the front table's
    runtime column holds every member's choice, and a panel plots accuracy by runtime."""
    ctx = make_ctx(tmp_path, n_trials=4, wandb=False)
    params = {**ctx.sweeper.params, "runtime": "choice(torch,openvino)"}
    ctx = dataclasses.replace(
        ctx,
        sweeper=dataclasses.replace(ctx.sweeper, params=params),
        space=parse_space(params),
    )
    study = open_study(ctx)
    for r, runtime in ((8, "torch"), (2, "openvino"), (0, "torch")):
        study.enqueue_trial({"token.r": r, "runtime": runtime})
    run(ctx)
    table = study_table(optuna.load_study(study_name=NAME, storage=ctx.storage_url),
                        ctx.sweeper.objectives)  # fmt: skip
    html = (tmp_path / "front" / "report" / "report.html").read_text()
    front = html[html.index("<h2>Pareto front</h2>") :]
    front = front[: front.index("</table>")]
    assert "<th>runtime</th>" in front and "<th>param:runtime</th>" not in front
    members = [r for r in table.rows if r["is_pareto"] and "param:runtime" in r]
    assert {r["param:runtime"] for r in members} == {"openvino", "torch"}
    for r in members:
        assert f"<td>{r['param:runtime']}</td>" in front
    assert "accuracy by runtime" in html


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (6312.49, "6.31k"),
        (5_800_000, "5.8M"),
        (17_300_000_000, "17.3G"),
        (0.953421, "0.953"),
        (-0.412, "-0.412"),
        (12, "12"),
        (None, ""),
        ("estimate", "estimate"),
    ],
)
def test_numbers_are_rounded_to_three_significant_digits(value: object, shown: str) -> None:
    assert _number(value) == shown


@pytest.mark.parametrize(
    ("row", "col", "shown"),
    [
        # +/-0.005 (7,350 test images): three decimals, value and bounds alike
        (
            {"test_accuracy": 0.934123, "test_accuracy_lo": 0.9287, "test_accuracy_hi": 0.9391},
            "test_accuracy",
            "0.934",
        ),
        (
            {"test_accuracy": 0.934123, "test_accuracy_lo": 0.9287, "test_accuracy_hi": 0.9391},
            "test_accuracy_lo",
            "0.929",
        ),
        # +/-0.05 (a few hundred images): two decimals
        ({"accuracy": 0.9123, "accuracy_lo": 0.86, "accuracy_hi": 0.95}, "accuracy", "0.91"),
        # +/-2 points on a delta in points: no decimals
        ({"d_pts": 3.4567, "d_pts_lo": 1.2, "d_pts_hi": 5.8}, "d_pts", "3"),
        # no interval: three significant digits
        ({"throughput": 6312.49}, "throughput", "6.31k"),
    ],
)
def test_a_number_with_an_interval_is_rounded_to_what_the_interval_supports(row, col, shown):
    assert _cell(row, col) == shown
