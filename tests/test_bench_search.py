"""The sampler benchmark (issue #10): cached evaluations are reused, hypervolume fractions are
bounded by the exact front, and the baseline trial does not blind the product's samplers.

Runs the real `trial.run` on the smoke experiment's 8-point grid in a throwaway root.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from vitsweep import record
from vitsweep.bench.search import (
    EvalCache,
    Grid,
    cache_path,
    evaluate_grid,
    exact_front,
    make_grid,
    recommend,
    run_sampler,
)
from vitsweep.search.samplers import make_sampler
from vitsweep.search.space import SearchSpace
from vitsweep.search.spec import SamplerSpec

optuna.logging.set_verbosity(optuna.logging.ERROR)


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Grid:
    root = tmp_path_factory.mktemp("bench")
    return make_grid("smoke", [f"paths.root={root}"])


def metrics_by_point(entries: list[dict]) -> dict[str, dict]:
    return {json.dumps(e["point"], sort_keys=True): e["metrics"] for e in entries}


def test_a_repeated_run_reuses_the_cache_and_completes_a_partial_one(grid: Grid) -> None:
    points = grid.points()
    assert grid.size == len(points) == 8
    assert not cache_path(grid).exists()

    first = evaluate_grid(grid, points=points[:3])  # an interrupted run: 3 of 8 points
    assert (first.evaluated, first.reused) == (4, 0)  # the baseline is evaluated too

    full = evaluate_grid(grid)  # a new run reads the file: only the 5 missing points run
    assert (full.evaluated, full.reused) == (5, 4)
    assert metrics_by_point(first.points).items() <= metrics_by_point(full.points).items()
    assert full.baseline == first.baseline

    again = evaluate_grid(grid)
    assert (again.evaluated, again.reused) == (0, 9)
    assert metrics_by_point(again.points) == metrics_by_point(full.points)


def test_a_torn_last_line_is_skipped_and_the_next_append_starts_clean(
    grid: Grid, tmp_path: Path
) -> None:
    path = tmp_path / "cache.jsonl"
    cache = EvalCache(path)
    cache.put("a", {"point": {"x": 1}, "metrics": {"accuracy": 0.5}})
    with open(path, "a") as f:
        f.write('{"key": "b", "point": {"x"')  # killed mid-write
    torn = EvalCache(path)
    assert set(torn.entries) == {"a"}
    torn.put("c", {"point": {"x": 3}, "metrics": {"accuracy": 0.7}})
    assert set(EvalCache(path).entries) == {"a", "c"}


def test_the_exact_front_scores_one_and_every_sampler_run_at_most_one(grid: Grid) -> None:
    ev = evaluate_grid(grid)
    front = exact_front(grid, ev)
    everything = [front.baseline] + [
        tuple(float(e["metrics"][m]) for m in grid.objectives) for e in ev.points
    ]
    assert front.fraction(everything) == pytest.approx(1.0, abs=1e-12)
    assert front.fraction([front.baseline]) == pytest.approx(1 / front.hypervolume)
    assert front.points, "some grid point must be on the front"
    for name in ("tpe", "nsga2", "gp", "random"):
        run = run_sampler(grid, ev, front, name, seed=0, n_trials=12)
        assert len(run.fractions) == 12
        assert all(0 < f <= 1 + 1e-12 for f in run.fractions), name
        assert run.fractions == sorted(run.fractions), f"{name}: hypervolume never shrinks"


def test_the_baseline_trial_does_not_change_what_the_samplers_propose(grid: Grid) -> None:
    """The product enqueues a param-less baseline as trial 0; the samplers must propose what
    they would without it (before `BaselineBlind`, gp and nsga2 fell back to random search)."""
    ev = evaluate_grid(grid)
    front = exact_front(grid, ev)
    for name in ("tpe", "nsga2", "gp"):
        told = run_sampler(grid, ev, front, name, seed=1, n_trials=10, tell_baseline=True)
        hidden = run_sampler(grid, ev, front, name, seed=1, n_trials=10, tell_baseline=False)
        assert told.fractions == hidden.fractions, name


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


def test_recommendation_needs_the_target_within_the_grid_share_and_a_lead_over_random() -> None:
    def row(*medians: float) -> dict[int, dict[str, float]]:
        return {
            b: {"median": m, "min": m, "max": m}
            for b, m in zip((10, 20, 40, 80), medians, strict=True)
        }

    table = {
        "tpe": row(0.5, 0.7, 0.8, 0.99),  # reaches 95% at 80
        "gp": row(0.5, 0.6, 0.99, 1.0),  # reaches 95% at 40
        "nsga2": row(0.3, 0.96, 0.97, 0.98),  # reaches it at 20 but trails random at 10
        "random": row(0.4, 0.5, 0.7, 0.7),
    }
    v = recommend(table, (10, 20, 40, 80), grid_size=864)
    assert (v.sampler, v.n_trials) == ("gp", 40)
    assert v.meets == {"tpe": True, "gp": True, "nsga2": False}
    # A grid of 300 allows 45 trials: tpe's 80 no longer counts.
    assert recommend(table, (10, 20, 40, 80), grid_size=300).meets["tpe"] is False
    table["gp"] = row(0.5, 0.6, 0.9, 0.94)
    table["tpe"] = row(0.5, 0.7, 0.8, 0.9)
    assert recommend(table, (10, 20, 40, 80), grid_size=864).sampler is None
