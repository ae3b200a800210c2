"""`vitsweep-confirm`: the front measured again on the test split, retrained standalone and
fine-tuned alone from the inherited weights."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from tests.conftest import run_cli
from tests.test_export import STUDY, TINY_SUPERNET

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("confirm")
    base = ("+hydra.sweeper.baseline.precision=fp32", "train.epochs=4")
    tiny = [a for a in TINY_SUPERNET if "baseline.precision" not in a and "train.epochs" not in a]
    # int8 members: PT2E programs that only run at their speed compiled, as their trial ran them
    # (measure=quick never compiles: auto compiles exactly the PT2E programs)
    int8 = ("precision=int8", "measure.compile=auto")  # every trial but the baseline (fp32)
    # model_bytes as a fourth objective puts an int8 member on the front whatever the timings
    # say: nothing fp32 has fewer bytes, so the int8 trials with the fewest are not dominated
    front = "+hydra.sweeper.objectives.model_bytes=minimize"
    # every trial times the baseline beside its own throughput, as experiment=xray's do
    beside = "measure.beside=baseline"
    # the baseline and one member: each int8 member costs a compile in the sweep and another in
    # the confirmation (about 50 s of the suite), and one shows every column
    sweep = ("-m", *STUDY, *tiny, *base, *int8, front, beside, "hydra.sweeper.n_trials=2")
    run_cli("vitsweep", *sweep, cwd=workdir)
    return workdir


def test_confirm_reproduces_the_sweep_and_sets_standalone_beside_inherited(workdir: Path) -> None:
    proc = run_cli(
        "vitsweep-confirm", *STUDY, "retrain=1", "finetune=1", "repeats=1", cwd=workdir,
        timeout=600,
    )  # fmt: skip
    out = workdir / "multirun" / "smoke" / "report" / "confirmed.yaml"
    assert f"confirmed: {out}" in proc.stdout
    rows = yaml.safe_load(out.read_text())["confirmed"]
    study = optuna.load_study(
        study_name="smoke", storage=f"sqlite:///{workdir / 'multirun' / 'vitsweep.db'}"
    )
    front = {t.number for t in study.best_trials}
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    base = next(t for t in trials if t.user_attrs.get("baseline"))
    unit = base.user_attrs["metrics"]["throughput"]
    assert "throughput_x_beside" not in base.user_attrs["metrics"]  # the unit: timed alone
    for t in trials:
        m = t.user_attrs["metrics"]
        if t.number == base.number or t.user_attrs.get("duplicate_of") is not None:
            continue
        # measure.beside=baseline: the ratio to the baseline timed beside the clock's reading,
        # recorded in the baseline trial's images/s (and the estimated energy with it)
        assert m["beside_trial"] == base.number and m["baseline_throughput_beside"] > 0
        assert m["throughput_x_beside"] == pytest.approx(
            m["throughput_raw"] / m["baseline_throughput_beside"]
        )
        assert m["throughput"] == pytest.approx(m["throughput_x_beside"] * unit)
        assert t.values[1] == pytest.approx(m["throughput"])  # what the sampler was told
        assert m["energy_source"] == "estimate"
        assert m["energy"] == pytest.approx(15.0 / m["throughput"])
    assert rows[0]["baseline"] and rows[0]["test_delta_pts"] == 0.0
    assert rows[0]["sweep_over_confirmed"] == pytest.approx(unit / rows[0]["throughput"])
    assert rows[0]["baseline_throughput_beside"] == rows[0]["throughput"]
    assert {r["number"] for r in rows[1:]} <= front
    for r in rows:
        # Same machine, same threads, same stored config: the same test images right and wrong.
        assert r["test_accuracy"] == r["sweep_test_accuracy"]
        assert r["inside_sweep_interval"] is True
        assert r["test_accuracy_lo"] <= r["test_accuracy"] <= r["test_accuracy_hi"]
        assert r["test_delta_lo_pts"] <= r["test_delta_pts"] <= r["test_delta_hi_pts"]
        assert r["throughput"] > 0 and r["throughput_raw"] > 0
        # timed beside the host probe, in the units of the reference the sweep's trials used
        assert r["host_speed"] > 0
        # the ratio is to the baseline timed beside the member, not minutes earlier
        assert r["throughput_x"] == pytest.approx(r["throughput"] / r["baseline_throughput_beside"])
        if not r["baseline"]:  # compared in the units the sweep recorded: ratio against ratio
            by = {t.number: t.user_attrs["metrics"] for t in trials}
            swept_x = by[r["number"]]["throughput_x_beside"]
            assert r["sweep_over_confirmed"] == pytest.approx(swept_x / r["throughput_x"])
            assert r["throughput_sweep_units"] == pytest.approx(r["throughput_x"] * unit)
        # what ran is what the trial ran (compiled where it was), not a slower stand-in
        assert r["precision_exec"] == r["sweep_precision_exec"]
        # each member's line is printed as it is measured (minutes of work, one by one)
        assert f"trial {r['number']}: test {r['test_accuracy']:.4f}" in proc.stderr
        assert f"sweep_over_confirmed={r['sweep_over_confirmed']:.6g}" in proc.stdout
    assert rows[1:] and all(r["precision_exec"].endswith(", compiled") for r in rows[1:])
    retrained = [
        r
        for r in rows
        if "standalone_test_accuracy" in r and r["standalone_test_accuracy"] is not None
    ]
    subnets = [t for t in study.best_trials if t.params.get("arch.embed_dim") is not None]
    assert len(retrained) == min(1, len(subnets))
    for r in retrained:
        lo, hi = r["inherited_minus_standalone_lo_pts"], r["inherited_minus_standalone_hi_pts"]
        assert lo <= r["inherited_minus_standalone_pts"] <= hi
    # finetune=1: the same member trained alone from its inherited weights, paired likewise
    tuned = [r for r in rows if r.get("finetuned_test_accuracy") is not None]
    assert [r["number"] for r in tuned] == [r["number"] for r in retrained]
    for r in tuned:
        lo, hi = r["inherited_minus_finetuned_lo_pts"], r["inherited_minus_finetuned_hi_pts"]
        assert lo <= r["inherited_minus_finetuned_pts"] <= hi
        assert r["finetuned_test_accuracy_lo"] <= r["finetuned_test_accuracy"]
    assert (out.parent / "confirmed.csv").exists()

    # The front's hypervolume from what was measured again. Checked against box volumes: each
    # member alone dominates the box between its baseline-normalized point and the reference
    # (ratio 0 for a maximized objective, 2 for a minimized one), so the front's volume is at
    # least the largest box and at most their sum.
    doc = yaml.safe_load(out.read_text())
    names = doc["confirmed_hypervolume_objectives"]
    assert names == ["accuracy", "throughput", "model_bytes"]  # energy: an estimate, left out
    assert doc["confirmed_hypervolume_from_sweep"] == []
    assert all(r["model_bytes"] == r["sweep_model_bytes"] for r in rows)  # as built, again
    base_row = rows[0]
    boxes = [
        (r["test_accuracy"] / base_row["test_accuracy"])
        * r["throughput_x"]
        * max(0.0, 2 - r["model_bytes"] / base_row["model_bytes"])
        for r in rows[1:]
    ]
    hv = doc["confirmed_hypervolume"]
    assert max(boxes) - 1e-9 <= hv <= sum(boxes) + 1e-9
    assert hv > 0 and doc["sweep_hypervolume"] > 0
    assert f"confirmed {hv:.6g}" in proc.stdout

    # The README's headline sets each member's confirmed throughput beside the sweep's, and
    # never joins a confirmation made from another study (other sweep throughputs).
    from vitsweep.track.report import confirmed_ratios

    results = yaml.safe_load((out.parent / "results.yaml").read_text())
    timed = [t for t in trials if t.number != base.number and "duplicate_of" not in t.user_attrs]
    assert any(f"{len(timed)} measured trials timed the baseline" in n for n in results["notes"])
    joined = confirmed_ratios(out.parent, results)
    members = {p["number"] for p in results["pareto"]} - {results["baseline"]}
    assert set(joined) == members
    assert all(joined[r["number"]] == r["throughput_x"] for r in rows if r["number"] in members)
    for p in results["pareto"]:
        p["throughput"] *= 1.5
    assert confirmed_ratios(out.parent, results) == {}


def test_confirm_takes_whole_numbers_only(workdir: Path) -> None:
    proc = run_cli("vitsweep-confirm", *STUDY, "retrain=two", cwd=workdir, check=False)
    assert proc.returncode == 2
    assert "retrain=two: retrain must be a whole number" in proc.stderr
