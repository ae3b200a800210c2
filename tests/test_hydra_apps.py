"""The sweeper in other people's Hydra apps (issue #31): hydra-optuna-sweeper's examples, copied
with only the sweeper line changed (`tests/hydra_apps/`), run as a user runs them: a subprocess
with `-m`, real SQLite storage, the files read back.

Each example runs to a small budget, resumes to a larger one, and writes
`optimization_results.yaml` in the plugin's form; a dict-returning app with a constraint keeps
its infeasible trials off the front under tpe, nsgaii and gp.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from vitsweep.config import sweeper_spec
from vitsweep.search.returns import outcome_of
from vitsweep.spec import ConfigError

APPS = Path(__file__).resolve().parent / "hydra_apps"
ROOT = APPS.parents[1]


def sweep(app: str, cwd: Path, *overrides: str, ok: bool = True) -> subprocess.CompletedProcess:
    """`python <app>.py -m <overrides>` in `cwd`, vitsweep importable as when installed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(APPS)])}
    env.pop("VITSWEEP_STORAGE", None)
    proc = subprocess.run(
        [sys.executable, str(APPS / f"{app}.py"), "-m", *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if ok:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def study(cwd: Path, name: str) -> optuna.Study:
    """`storage: null` means SQLite under multirun/ in the launch directory (theirs: memory)."""
    return optuna.load_study(study_name=name, storage=f"sqlite:///{cwd / 'multirun/vitsweep.db'}")


def measured(s: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """What the budget counts: complete trials that are not a repeat told its twin's values."""
    return [
        t
        for t in s.get_trials()
        if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs
    ]


def results(cwd: Path) -> list[dict[str, Any]]:
    """Every launch's optimization_results.yaml, oldest first (one sweep dir per launch)."""
    files = sorted((cwd / "multirun").glob("*/*/optimization_results.yaml"))
    return [yaml.safe_load(f.read_text()) for f in files]


def run_twice(app: str, name: str, cwd: Path, *overrides: str) -> optuna.Study:
    """To a budget of 3, then resumed to 5: the study holds 5 measured trials, not 3 + 5."""
    sweep(app, cwd, "hydra.sweeper.n_trials=3", *overrides)
    assert len(measured(study(cwd, name))) == 3
    proc = sweep(app, cwd, "hydra.sweeper.n_trials=5", *overrides)
    assert "resumed" in proc.stdout + proc.stderr
    s = study(cwd, name)
    assert len(measured(s)) == 5
    assert len(results(cwd)) == 2
    return s


def test_sphere_returns_a_float_and_writes_best_params(tmp_path: Path) -> None:
    s = run_twice("sphere", "sphere", tmp_path)
    assert s.directions == [optuna.study.StudyDirection.MINIMIZE]
    for t in measured(s):
        assert t.value == pytest.approx(t.params["x"] ** 2 + t.params["y"] ** 2)
        assert t.params["y"] in (-5, 0, 5) and -5.5 <= t.params["x"] < 5.5
    doc = results(tmp_path)[-1]
    assert set(doc) == {"name", "best_params", "best_value"} and doc["name"] == "optuna"
    assert doc["best_value"] == min(t.value for t in measured(s))
    best = doc["best_params"]
    assert doc["best_value"] == pytest.approx(best["x"] ** 2 + best["y"] ** 2)


def test_two_objectives_from_a_tuple_write_the_front_as_solutions(tmp_path: Path) -> None:
    s = run_twice("multi_objective", "multi-objective", tmp_path)
    done = measured(s)
    for t in done:
        x, y = t.params["x"], t.params["y"]
        assert t.values == pytest.approx([4 * x**2 + 4 * y**2, (x - 5) ** 2 + (y - 5) ** 2])
    doc = results(tmp_path)[-1]
    assert set(doc) == {"name", "solutions"} and doc["name"] == "optuna"
    points = [tuple(t.values) for t in done]

    def dominated(p: tuple[float, ...]) -> bool:
        return any(all(a <= b for a, b in zip(q, p, strict=True)) and q != p for q in points)

    front = {p for p in points if not dominated(p)}
    got = [tuple(sol["values"]) for sol in doc["solutions"]]
    assert set(got) == front and len(got) == len(set(got))
    for sol in doc["solutions"]:
        assert set(sol) == {"params", "values"} and set(sol["params"]) == {"x", "y"}


def test_a_custom_search_space_adds_its_params_as_overrides(tmp_path: Path) -> None:
    s = run_twice("custom_search_space", "custom-search-space", tmp_path)
    for t in measured(s):
        p = t.params
        assert set(p) == {"x", "y", "z", "+w"}  # +w: a key the config did not have
        assert abs(p["z"] - p["x"]) <= 0.5 and 0.0 <= p["+w"] <= 1.0
        assert t.value == pytest.approx(p["+w"] ** 2 + p["x"] ** 2 + p["y"] ** 2 + p["z"] ** 2)
    doc = results(tmp_path)[-1]
    assert set(doc["best_params"]) == {"x", "y", "z", "+w"}
    assert doc["best_value"] == min(t.value for t in measured(s))


@pytest.mark.parametrize(
    ("sampler", "tuning"),
    [
        ("tpe", "+hydra.sweeper.sampler.n_startup_trials=3"),
        ("nsgaii", "+hydra.sweeper.sampler.population_size=4"),
        ("gp", "+hydra.sweeper.sampler.n_startup_trials=3"),
    ],
)
def test_a_constraint_on_a_returned_key_keeps_infeasible_trials_off_the_front(
    sampler: str, tuning: str, tmp_path: Path
) -> None:
    sweep(
        "constrained",
        tmp_path,
        f"hydra/sweeper/sampler={sampler}",
        "hydra.sweeper.sampler.seed=0",
        tuning,
        "hydra.sweeper.n_trials=7",
    )
    s = study(tmp_path, "constrained")
    done = measured(s)
    assert len(done) == 7
    size = {t.number: t.user_attrs["metrics"]["size"] for t in done}
    for t in done:
        assert size[t.number] == pytest.approx(t.params["x"] + t.params["y"])
        assert t.constraints == {"size<=0.5": pytest.approx(size[t.number] - 0.5)}
        assert t.user_attrs["metrics"]["trial"] == t.number
    infeasible = {n for n, v in size.items() if v > 0.5}
    assert infeasible and len(infeasible) < len(done)  # both kinds ran: the check means something
    on_front = {t.number for t in s.best_trials}
    assert on_front and not on_front & infeasible
    report = tmp_path / "multirun" / "constrained" / "report"
    pareto = (report / "pareto.csv").read_text().splitlines()[1:]
    assert {int(line.split(",")[0]) for line in pareto} == on_front
    solutions = results(tmp_path)[-1]["solutions"]
    assert all(sol["params"]["x"] + sol["params"]["y"] <= 0.5 for sol in solutions)
    # The report shows the objectives the app has, and no ViT headline it would have to invent.
    doc = yaml.safe_load((report / "results.yaml").read_text())
    assert doc["objectives"] == {"loss": "minimize", "cost": "minimize"}
    assert doc["headline"] == [] and doc["baseline"] is None
    assert all(set(p) == {"number", "loss", "cost"} for p in doc["pareto"])
    assert "accuracy" not in (report / "trials.csv").read_text().splitlines()[0]
    assert (report / "pareto.png").exists() and (report / "report.html").exists()


def test_a_failing_task_fails_its_trial_with_the_reason_until_the_failure_budget(
    tmp_path: Path,
) -> None:
    """Their example's `error: true`: each trial is FAIL with the task's exception as its reason,
    and once the failures exceed max_failure_rate x n_trials the study stops in one line."""
    proc = sweep(
        "sphere",
        tmp_path,
        "error=true",
        "hydra.sweeper.max_failure_rate=0.5",
        "hydra.sweeper.n_trials=4",
        ok=False,
    )
    assert proc.returncode != 0
    assert proc.stderr.splitlines()[-1] == (
        "vitsweep: error: 3 failed trials exceed hydra.sweeper.max_failure_rate=0.5 of "
        "n_trials=4; see fail_reason"
    )
    trials = study(tmp_path, "sphere").get_trials()
    assert len(trials) == 3 and all(t.state == TrialState.FAIL for t in trials)
    assert {t.user_attrs["fail_reason"] for t in trials} == {"RuntimeError: cfg.error is True"}
    assert results(tmp_path) == []  # nothing feasible: no results file invented


def test_hydra_optuna_sweeper_keys_refused_in_one_line_with_a_non_zero_exit(tmp_path: Path) -> None:
    proc = sweep("sphere", tmp_path, "hydra.sweeper.direction=sideways", ok=False)
    lines = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert proc.returncode != 0
    assert lines == [
        "vitsweep: error: hydra.sweeper.direction=sideways: valid: minimize, maximize, or a "
        "list of them, one per value the task returns"
    ]


@pytest.mark.parametrize(
    ("node", "said"),
    [
        ({"direction": ["minimize", "up"]}, "hydra.sweeper.direction=['minimize', 'up']: valid:"),
        (
            {"direction": "minimize", "objectives": {"loss": "minimize"}},
            "hydra.sweeper.direction: give direction",
        ),
        (
            {"search_space": {}},
            "hydra.sweeper.search_space: unknown key; write hydra.sweeper.params",
        ),
        (
            {
                "sampler": {
                    "_target_": "hydra_plugins.hydra_optuna_sweeper.config.raise_motpe_removed"
                }
            },
            "hydra.sweeper.sampler._target_=hydra_plugins.hydra_optuna_sweeper.config."
            "raise_motpe_removed: motpe was removed in Optuna 4; write hydra/sweeper/sampler=tpe",
        ),
        (
            {"sampler": {"_target_": "optuna.samplers.NSGAIISampler", "constraints_func": "f"}},
            "hydra.sweeper.sampler.constraints_func: write hydra.sweeper.constraints",
        ),
        ({"storage": {"url": "sqlite://"}}, "hydra.sweeper.storage: give an Optuna URL"),
        ({"objectives": {"accuracy": "up"}}, "hydra.sweeper.objectives.accuracy=up: valid:"),
    ],
)
def test_each_refused_key_is_one_line_saying_what_to_write(node: dict[str, Any], said: str) -> None:
    with pytest.raises(ConfigError) as err:
        sweeper_spec(node, ours=False, job_name="app")
    assert str(err.value).startswith(said) and "\n" not in str(err.value)


def test_their_keys_map_to_ours() -> None:
    spec = sweeper_spec(
        {
            "direction": ["minimize", "maximize"],
            "sampler": {
                "_target_": "optuna.samplers.TPESampler",
                "seed": 123,
                "prior_weight": None,
            },
            "study_name": None,
            "storage": None,
            "params": None,
            "custom_search_space": None,
        },
        ours=False,
        job_name="train",
    )
    assert spec.objectives == {"value_0": "minimize", "value_1": "maximize"}
    assert spec.sampler.name == "tpe" and spec.sampler.kwargs == {"seed": 123}
    assert spec.study_name == "train" and spec.storage is None and spec.params == {}


def test_the_vit_metric_names_are_checked_only_for_vitsweeps_own_app() -> None:
    node = {"objectives": {"loss": "minimize"}, "constraints": ["size <= 0"]}
    assert sweeper_spec(node, ours=False).objectives == {"loss": "minimize"}
    with pytest.raises(ConfigError, match=r"^hydra.sweeper.objectives.loss: not a metric; valid"):
        sweeper_spec(node, ours=True)


@pytest.mark.parametrize(
    ("value", "names", "metrics", "error"),
    [
        (2.5, ["value"], {"value": 2.5}, None),
        (np.float32(0.5), ["value"], {"value": 0.5}, None),
        ((1, 2.0), ["value_0", "value_1"], {"value_0": 1, "value_1": 2.0}, None),
        ([1.0], ["value_0", "value_1"], None, "the task returned 1 values for 2 objectives"),
        ({"loss": np.float64(0.25), "tag": "a"}, ["loss"], {"loss": 0.25, "tag": "a"}, None),
        ("fast", ["value"], None, "the task returned str 'fast': return a float, a tuple"),
        (None, ["value"], None, "the task returned NoneType None"),
    ],
)
def test_any_return_value_is_a_result_or_a_reason(
    value: Any, names: list[str], metrics: dict[str, Any] | None, error: str | None
) -> None:
    out = outcome_of(value, names)
    assert out.metrics == metrics
    assert (out.error is None) if error is None else out.error.startswith(error)
    if metrics:
        assert all(type(v) in (int, float, str) for v in metrics.values())
        assert not any(isinstance(v, float) and math.isnan(v) for v in metrics.values())


def test_the_search_path_adds_only_the_sweeper_configs(tmp_path: Path) -> None:
    """In another app's process, after the sweeper's code is imported: `hydra/sweeper=vitsweep`
    and the sampler group resolve, and none of vitsweep's own groups exists."""
    code = f"""
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
with initialize_config_dir({str(APPS / "sphere-conf")!r}, version_base="1.3"):
    cfg = compose("config", return_hydra_config=True)
    import vitsweep.config.sweeper  # what the sweeper imports when a sweep starts
    loader = GlobalHydra.instance().config_loader()
    print(cfg.hydra.sweeper._target_)
    print(sorted(loader.get_group_options("hydra/sweeper/sampler")))
    print([g for g in ("arch", "data", "token", "precision", "measure", "train", "tracking",
                       "experiment") if loader.get_group_options(g)])
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out[0] == "hydra_plugins.vitsweep_sweeper.vitsweep_sweeper.VitsweepSweeper"
    assert out[1] == str(["cmaes", "gp", "grid", "nsgaii", "qmc", "random", "tpe"])
    assert out[2] == "[]"
