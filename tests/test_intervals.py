"""Accuracy intervals and the paired headline, checked against published values and brute force."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import yaml
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from vitsweep.measure.accuracy import (
    TEST_FLAGS_KEY,
    accuracy_summary,
    pack_flags,
    paired_difference,
    unpack_flags,
    wilson,
)
from vitsweep.track.pareto import study_table
from vitsweep.track.report import write_report

# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, method 3
# (Wilson score without continuity correction).
NEWCOMBE = [
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0000, 0.1611),
    (1, 29, 0.0061, 0.1718),
]


@pytest.mark.parametrize(("k", "n", "lo", "hi"), NEWCOMBE)
def test_wilson_matches_newcombes_table(k: int, n: int, lo: float, hi: float) -> None:
    got = wilson(k, n)
    assert got == pytest.approx((lo, hi), abs=6e-5)


def test_seven_thousand_images_resolve_half_a_point_around_95_percent() -> None:
    lo, hi = wilson(int(0.95 * 7350), 7350)
    assert (hi - lo) / 2 <= 0.005
    lo, hi = wilson(int(0.96 * 280), 280)
    assert (hi - lo) / 2 > 0.02  # the old 280-image split: about +/-2.3 points


def test_summary_names_the_interval_and_the_count() -> None:
    s = accuracy_summary(np.array([True] * 81 + [False] * 182), "test_accuracy")
    assert s["test_accuracy"] == pytest.approx(81 / 263)
    assert (s["test_accuracy_lo"], s["test_accuracy_hi"]) == pytest.approx(
        (0.2553, 0.3662), abs=6e-5
    )
    assert s["test_accuracy_n"] == 263


@pytest.mark.parametrize("n", [1, 7, 8, 9, 7350])
def test_flags_round_trip_through_their_packed_text(n: int) -> None:
    flags = np.random.default_rng(n).random(n) < 0.7
    assert np.array_equal(unpack_flags(pack_flags(flags), n), flags)
    with pytest.raises(ValueError):
        unpack_flags(pack_flags(flags), n + 8)


def _brute(a: np.ndarray, b: np.ndarray) -> tuple[int, int, float]:
    a_only = b_only = 0
    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        a_only += x and not y
        b_only += y and not x
    return a_only, b_only, (sum(a.tolist()) - sum(b.tolist())) / len(a)


def test_paired_difference_counts_discordant_images_and_brackets_the_difference() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(2000) < 0.95
    cand = np.where(rng.random(2000) < 0.04, ~base, base)
    p = paired_difference(cand, base)
    a_only, b_only, diff = _brute(cand, base)
    assert (p.a_only, p.b_only, p.n) == (a_only, b_only, 2000)
    assert p.diff == pytest.approx(diff)
    assert p.lo < p.diff < p.hi
    # Exact McNemar: two-sided binomial p-value of a_only among the discordant pairs.
    d = a_only + b_only
    tail = sum(__import__("math").comb(d, i) for i in range(0, min(a_only, b_only) + 1)) / 2**d
    assert p.p_value == pytest.approx(min(1.0, 2 * tail))


def test_identical_models_differ_by_exactly_zero() -> None:
    flags = np.arange(50) % 3 > 0
    p = paired_difference(flags, flags)
    assert (p.diff, p.lo, p.hi, p.a_only, p.b_only) == (0.0, 0.0, 0.0, 0, 0)


def _study(
    flags: dict[int, np.ndarray],
    values: dict[int, tuple[float, float]],
    more: dict[int, dict[str, float]] | None = None,
) -> optuna.Study:
    """Trials with (val accuracy, throughput) and per-image test flags, trial 0 the baseline;
    `more`: further metrics of some trials."""
    study = optuna.create_study(directions=["maximize", "maximize"])
    for number, (acc, thr) in values.items():
        f = flags[number]
        attrs = {
            **(more or {}).get(number, {}),
            "baseline": number == 0,
            "accuracy": acc,
            "throughput": thr,
            "params": 1000 // (number + 1),
            "flops": 1e6 / (number + 1),
            "energy": 1.0 / thr,
            "energy_source": "estimate",
            **accuracy_summary(f, "test_accuracy"),
            TEST_FLAGS_KEY: pack_flags(f),
        }
        study.add_trial(
            create_trial(
                state=TrialState.COMPLETE,
                values=[acc, thr],
                params={"x": number},
                distributions={"x": IntDistribution(0, 10)},
                user_attrs=attrs,
            )
        )
    return study


def test_headline_reports_the_paired_test_difference_of_every_front_member(tmp_path) -> None:
    rng = np.random.default_rng(1)
    n = 3000
    base = rng.random(n) < 0.95
    flags = {0: base}
    for k in (1, 2, 3):  # each candidate flips some of the baseline's answers
        flags[k] = np.where(rng.random(n) < 0.02 * k, ~base, base)
    values = {0: (0.96, 100.0), 1: (0.955, 900.0), 2: (0.95, 1500.0), 3: (0.90, 1200.0)}
    table = study_table(_study(flags, values), {"accuracy": "maximize", "throughput": "maximize"})
    assert table.pareto == [0, 1, 2]
    for row in table.headline:
        a_only, b_only, diff = _brute(flags[row["number"]], base)
        assert (row["test_better"], row["test_worse"], row["test_n"]) == (a_only, b_only, n)
        assert row["test_delta_pts"] == pytest.approx(100 * diff)
        assert row["test_delta_lo_pts"] <= row["test_delta_pts"] <= row["test_delta_hi_pts"]
        assert (row["selected_on"], row["reported_on"]) == ("val", "test")
    # The flags stay out of the CSV rows; the intervals are in them.
    assert all(TEST_FLAGS_KEY not in r for r in table.rows)
    assert all("test_accuracy_lo" in r for r in table.rows)

    out = write_report(table, tmp_path, "s", {})
    results = yaml.safe_load((out / "results.yaml").read_text())
    assert {"test_accuracy_lo", "test_accuracy_hi", "test_accuracy_n"} <= set(results["pareto"][0])
    assert results["headline"][1]["test_delta_lo_pts"] is not None
    html = (out / "report.html").read_text()
    assert "test_delta_lo_pts" in html and "selected on the val split" in html
    assert "test_accuracy_lo" in (out / "trials.csv").read_text().splitlines()[0]


def test_the_front_shows_a_plans_predicted_latency_beside_the_measured_one(tmp_path) -> None:
    """A mixed plan under a latency budget (#32): results.yaml's front shows what the plan
    predicted beside what the trial measured, and the plan itself; a member without a
    prediction gets neither."""
    base = np.arange(200) % 10 > 0
    flags = {0: base, 1: base, 2: base}
    values = {0: (0.96, 100.0), 1: (0.95, 900.0), 2: (0.94, 1500.0)}
    plan = "blocks.0.mlp.fc2:6,blocks.1.attn.qkv:4"
    more = {
        0: {"latency_ms": 9.0},
        2: {
            "latency_ms": 4.0,
            "predicted_latency_ms": 3.8,
            "mixed_bits": plan,
            "side_by_side_latency_ms": 3.1,
            "side_by_side_predicted_ms": 3.2,
        },
    }
    table = study_table(
        _study(flags, values, more), {"accuracy": "maximize", "throughput": "maximize"}
    )
    results = yaml.safe_load((write_report(table, tmp_path, "s", {}) / "results.yaml").read_text())
    front = {m["number"]: m for m in results["pareto"]}
    assert set(front) == {0, 1, 2}
    assert (front[2]["predicted_latency_ms"], front[2]["latency_ms"]) == (3.8, 4.0)
    beside = ("side_by_side_predicted_ms", "side_by_side_latency_ms")
    assert tuple(front[2][k] for k in beside) == (3.2, 3.1)
    assert not {"predicted_latency_ms", "latency_ms"} & (set(front[0]) | set(front[1]))
    assert front[2]["mixed_bits"] == plan and "mixed_bits" not in front[0]  # which layers, bits


def test_estimated_energy_is_left_out_of_the_hypervolume() -> None:
    rng = np.random.default_rng(2)
    base = rng.random(100) < 0.9
    flags = {0: base, 1: base}
    study = optuna.create_study(directions=["maximize", "maximize", "minimize"])
    for number, (acc, thr) in {0: (0.9, 100.0), 1: (0.85, 400.0)}.items():
        study.add_trial(
            create_trial(
                state=TrialState.COMPLETE,
                values=[acc, thr, 30.0 / thr],
                params={"x": number},
                distributions={"x": IntDistribution(0, 10)},
                user_attrs={
                    "baseline": number == 0,
                    "accuracy": acc,
                    "throughput": thr,
                    "energy": 30.0 / thr,
                    "energy_source": "estimate",
                    "params": 10,
                    "flops": 10.0,
                    **accuracy_summary(flags[number], "test_accuracy"),
                },
            )
        )
    objectives = {"accuracy": "maximize", "throughput": "maximize", "energy": "minimize"}
    table = study_table(study, objectives)
    assert table.energy_derived
    assert table.hv_objectives == ["accuracy", "throughput"]
    # Two objectives, baseline-normalized: the union of the boxes 1 x 1 and 0.85/0.9 x 4.
    a = 0.85 / 0.9
    assert table.hypervolume[-1] == pytest.approx(a * 4.0 + (1.0 - a) * 1.0)


def test_an_estimated_energy_is_said_to_be_a_copy_of_throughput() -> None:
    from vitsweep.measure.energy import estimate_note

    objectives = {"accuracy": "maximize", "throughput": "maximize", "energy": "minimize"}
    note = estimate_note("estimate", "cpu", 15.0, objectives)
    assert note is not None and "15 W / throughput" in note and "copy" in note
    assert estimate_note("estimate", "cpu", 15.0, {"accuracy": "maximize"}) is None
