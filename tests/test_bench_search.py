"""The sampler benchmark (issues #10, #19): cached evaluations are reused and shared between
processes, hypervolume fractions are bounded by the reference front, the recommendation and
the stop_when verdict follow the issue's targets, and the baseline does not blind the samplers.

Runs the real `trial.run` on the smoke experiment in a throwaway root.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from vitsweep import record
from vitsweep.bench.search import (
    Bench,
    EvalCache,
    Evaluator,
    Run,
    cache_path,
    make_bench,
    recommend,
    reference_front,
    run_sampler,
    runs_path,
    stop_check,
    table_run,
)
from vitsweep.search.samplers import make_sampler
from vitsweep.search.space import SearchSpace
from vitsweep.search.spec import SamplerSpec, StopSpec

optuna.logging.set_verbosity(optuna.logging.ERROR)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Bench:
    root = tmp_path_factory.mktemp("bench")
    return make_bench("smoke", [f"paths.root={root}"])


def test_a_replay_reuses_the_cache_and_an_interrupted_one_is_completed(bench: Bench) -> None:
    assert not cache_path(bench).exists()
    cut = Evaluator(bench)
    cut.baseline()
    partial = run_sampler(bench, cut, "random", seed=0, n_trials=3)  # an interrupted run
    assert len(partial.values) == 3 and cut.evaluated >= 2  # the baseline, then new points

    ev = Evaluator(bench)  # a new run reads the file: only what is missing is evaluated
    full = run_sampler(bench, ev, "random", seed=0, n_trials=6)
    assert full.values[:3] == partial.values
    assert ev.reused >= 2 and ev.evaluated <= full.distinct

    again = Evaluator(bench)
    assert run_sampler(bench, again, "random", seed=0, n_trials=6).values == full.values
    assert again.evaluated == 0


def test_the_first_entry_of_a_key_wins_and_other_writers_are_seen(tmp_path: Path) -> None:
    path = tmp_path / "cache.jsonl"
    mine, theirs = EvalCache(path), EvalCache(path)
    mine.put("a", {"metrics": {"accuracy": 0.5}})
    assert theirs.put("a", {"metrics": {"accuracy": 0.9}})["metrics"]["accuracy"] == 0.5
    theirs.put("b", {"metrics": {"accuracy": 0.7}})
    assert mine.get("b") is None
    mine.refresh()
    assert mine.get("b") == theirs.get("b")
    assert len(path.read_text().splitlines()) == 2


def test_a_torn_last_line_is_skipped_and_the_next_append_starts_clean(tmp_path: Path) -> None:
    path = tmp_path / "cache.jsonl"
    cache = EvalCache(path)
    cache.put("a", {"point": {"x": 1}, "metrics": {"accuracy": 0.5}})
    with open(path, "a") as f:
        f.write('{"key": "b", "point": {"x"')  # killed mid-write
    torn = EvalCache(path)
    assert set(torn.entries) == {"a"}
    torn.put("c", {"point": {"x": 3}, "metrics": {"accuracy": 0.7}})
    assert set(EvalCache(path).entries) == {"a", "c"}


def test_the_reference_scores_one_and_every_sampler_run_at_most_one(bench: Bench) -> None:
    ev = Evaluator(bench)
    records = EvalCache(runs_path(bench))
    runs = [table_run(bench, ev, records, name, 0, 8) for name in ("tpe", "nsga2", "gp")]
    front = reference_front(bench, ev)
    assert front.evaluations == len(ev.entries()) >= 6
    everything = [front.baseline] + [
        tuple(float(e["metrics"][m]) for m in bench.objectives) for e in ev.entries()
    ]
    assert front.fraction(everything) == pytest.approx(1.0, abs=1e-12)
    assert front.fraction([front.baseline]) == pytest.approx(1 / front.hypervolume)
    for run in runs:
        run.score(front)
        assert len(run.fractions) == 8
        assert all(0 < f <= 1 + 1e-12 for f in run.fractions), run.sampler
        assert run.fractions == sorted(run.fractions), f"{run.sampler}: hypervolume shrank"
    # A recorded run is not replayed (same trials, nothing evaluated), and serves a shorter one.
    fresh, records = Evaluator(bench), EvalCache(runs_path(bench))
    assert table_run(bench, fresh, records, "gp", 0, 8).values == runs[2].values
    assert table_run(bench, fresh, records, "gp", 0, 5).values == runs[2].values[:5]
    assert fresh.evaluated == fresh.reused == 0


def test_gp_models_every_param_despite_a_param_less_baseline() -> None:
    space = SearchSpace(
        {
            "a": optuna.distributions.CategoricalDistribution([0, 1, 2]),
            "b": optuna.distributions.CategoricalDistribution(["x", "y"]),
        },
        {},
    )
    sampler = make_sampler(SamplerSpec(name="gp", n_startup_trials=2), space)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.enqueue_trial({}, user_attrs={record.BASELINE: True})
    study.tell(study.ask(), [1.0, 1.0])
    for i in range(3):
        t = study.ask()
        space.sample(t, None)  # type: ignore[arg-type]
        study.tell(t, [float(i), 1.0])
    study.ask()  # the probe: the trial the sampler plans for next
    assert set(sampler.infer_relative_search_space(study, study.trials[-1])) == {"a", "b"}
    plain = optuna.samplers.GPSampler(seed=0)  # what the product used to build
    assert plain.infer_relative_search_space(study, study.trials[-1]) == {}


def row(*medians: float) -> dict[int, dict[str, float]]:
    return {
        b: {"median": m, "min": m, "max": m} for b, m in zip((10, 20, 40, 80), medians, strict=True)
    }


def test_recommendation_needs_the_target_within_40_trials_and_a_lead_over_random() -> None:
    table = {
        "tpe": row(0.5, 0.7, 0.8, 0.99),  # reaches 95% only at 80
        "gp": row(0.5, 0.6, 0.96, 1.0),  # reaches 95% at 40
        "nsga2": row(0.3, 0.96, 0.97, 0.98),  # reaches it at 20 but trails random at 10
        "random": row(0.4, 0.5, 0.7, 0.7),
    }
    v = recommend(table, (10, 20, 40, 80))
    assert (v.sampler, v.n_trials, v.met) == ("gp", 40, True)
    assert v.meets == {"tpe": False, "gp": True, "nsga2": False}
    table["gp"] = row(0.5, 0.6, 0.9, 0.94)
    missed = recommend(table, (10, 20, 40, 80))
    assert not missed.met and missed.sampler == "tpe" and missed.n_trials == 80


def test_stop_when_is_judged_by_the_loops_own_rule() -> None:
    flat = Run("gp", 0, [], 0.0, 0, fractions=[0.5] * 5 + [0.99] * 35)  # plateau from trial 6
    late = Run("gp", 1, [], 0.0, 0, fractions=[0.1 + 0.02 * i for i in range(40)])  # 2%+/trial
    stop = StopSpec(patience=10, min_improvement=0.01)
    check = stop_check([flat, late], "gp", 40, stop)
    assert check.stopped_at == [16, 40]  # 10 trials after the last gain; never
    assert check.saving == pytest.approx((1 - 16 / 40 + 0) / 2)
    assert check.loss == 0.0
    assert check.worth_it == (check.saving >= 0.25)


def test_the_bench_compiles_as_the_product_and_scores_xray_on_a_smaller_val_split() -> None:
    """int8 is timed as a study runs it (compiled), not on PT2E's reference ops; where the data
    draws val and test apart, 2,000 val images score a trial, and a user's override wins."""
    xray = make_bench("xray").base
    assert (xray.measure.compile, xray.measure.threads) == ("auto", 1)
    assert (xray.data.val_size, xray.data.test_size) == (2000, 250)
    mine = make_bench("xray", ["data.val_size=500", "data.test_size=100"]).base
    assert (mine.data.val_size, mine.data.test_size) == (500, 100)
    smoke = make_bench("smoke").base  # digits: the pool is split by fractions, nothing to size
    assert smoke.data.val_size == 0 and smoke.measure.compile == "auto"
