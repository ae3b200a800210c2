"""The conditional space's fixed-length encoding (issue #19): every trial carries every param,
so the model-based samplers learn every layer; the config gets only what the trial uses.

Real Optuna studies, in memory, driven by ask/tell with a cheap synthetic objective: no model
is built, the samplers and the hook are the product's.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import optuna
import pytest
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from vitsweep import record
from vitsweep.search.samplers import make_sampler
from vitsweep.search.space import SearchSpace
from vitsweep.search.spec import SamplerSpec
from vitsweep.spec import ArchSpec, SpaceSpec, TrialSpec
from vitsweep.vit_space import conditional

optuna.logging.set_verbosity(optuna.logging.ERROR)

SPACE = SpaceSpec(embed_dim=(16, 32), depth=(2, 3, 4), mlp_ratio=(1.0, 2.0), num_heads=(1, 2),
                  head_dim=8)  # fmt: skip
BASE = TrialSpec(arch=ArchSpec(kind="supernet", embed_dim=32, depth=4, head_dim=8, space=SPACE))
PER_LAYER = {f"arch.{k}.{i}" for k in ("num_heads", "mlp_ratio") for i in range(4)}


def study_space(precisions: Sequence[str] = ("fp32", "int8")) -> SearchSpace:
    return SearchSpace(
        {
            "token.r": CategoricalDistribution([0, 2]),
            "precision": CategoricalDistribution(list(precisions)),
        },
        {},
        conditional,
    )


def objective(point: dict[str, Any]) -> list[float]:
    """A cheap stand-in for accuracy and throughput that depends on every layer in use."""
    cost = sum(h * m for h, m in zip(point["arch.num_heads"], point["arch.mlp_ratio"], strict=True))
    return [cost + point["arch.embed_dim"] / 16, 100.0 / (1.0 + cost + point["token.r"])]


def test_every_trial_carries_every_layer_and_the_config_only_the_layers_it_has() -> None:
    space = study_space()
    study = optuna.create_study(directions=["maximize", "maximize"])
    depths = set()
    for _ in range(12):
        trial = study.ask()
        point = space.sample(trial, BASE)
        depth = point["arch.depth"]
        depths.add(depth)
        assert PER_LAYER <= set(trial.params)  # the deepest depth's layers, always
        for key in ("arch.num_heads", "arch.mlp_ratio"):
            assert point[key] == [trial.params[f"{key}.{i}"] for i in range(depth)]
        assert not set(KNOBS) & set(trial.params)  # no dead dims
        study.tell(trial, objective(point))
    assert len({frozenset(t.params) for t in study.trials}) == 1  # one param set for all
    assert len(depths) > 1


# each quantizer knob and the precision it belongs to
KNOBS = {
    "precision.budget_ratio": "mixed",
    "precision.latency_ratio": "mixed",
    "precision.rate": "tq",
}


def test_quantizer_knobs_are_sampled_whenever_reachable_and_passed_only_when_used() -> None:
    space = study_space(("int8", "mixed", "tq"))
    study = optuna.create_study(directions=["maximize", "maximize"])
    seen = set()
    for _ in range(15):
        trial = study.ask()
        point = space.sample(trial, BASE)
        precision = point["precision"]
        seen.add(precision)
        assert set(KNOBS) <= set(trial.params)
        for key, mode in KNOBS.items():
            assert (key in point) == (precision == mode)
            if precision == mode:
                assert point[key] == trial.params[key]
        study.tell(trial, objective(point))
    assert seen == {"int8", "mixed", "tq"}


class Recording(optuna.samplers.BaseSampler):
    """Optuna's sampler protocol, passed through to the product's sampler; records which
    params each trial got from the model (relative) and which were drawn on their own."""

    def __init__(self, inner: optuna.samplers.BaseSampler) -> None:
        self.inner = inner
        self.inferred: dict[int, set[str]] = {}
        self.relative: dict[int, set[str]] = {}
        self.independent: dict[int, set[str]] = {}

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        space = self.inner.infer_relative_search_space(study, trial)
        self.inferred[trial.number] = set(space)
        return space

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        params = self.inner.sample_relative(study, trial, search_space)
        self.relative[trial.number] = set(params)
        return params

    def sample_independent(
        self, study: Study, trial: FrozenTrial, name: str, dist: BaseDistribution
    ) -> Any:
        self.independent.setdefault(trial.number, set()).add(name)
        return self.inner.sample_independent(study, trial, name, dist)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self.inner.before_trial(study, trial)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.inner.after_trial(study, trial, state, values)


def drive(name: str, hook: Any, n_trials: int) -> tuple[Recording, Study, int]:
    """The product's sampler over the conditional space, the baseline as param-less trial 0,
    as the sweeper runs it; returns the recorder, the study and the first modelled trial."""
    spec = SamplerSpec(name=name, seed=0, n_startup_trials=4, population_size=4)
    space = SearchSpace(study_space().distributions, {}, hook)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-feature warnings
        rec = Recording(make_sampler(spec, space))
        study = optuna.create_study(directions=["maximize", "maximize"], sampler=rec)
        study.enqueue_trial({}, user_attrs={record.BASELINE: True})
        study.tell(study.ask(), [1.0, 1.0])
        for _ in range(n_trials):
            trial = study.ask()
            study.tell(trial, objective(space.sample(trial, BASE)))
    startup = spec.population_size if name == "nsga2" else spec.n_startup_trials
    return rec, study, 1 + startup  # trial 0 is the baseline


@pytest.mark.parametrize("name", ["tpe", "gp", "nsga2"])
def test_model_based_samplers_model_every_per_layer_param_of_every_trial(name: str) -> None:
    """Past its startup trials, each sampler's model covers every param of every trial; tpe
    and gp sample all of them from it. NSGA-II's mutation redraws a param at random by design
    (`mutation_prob`), so for it the check is that the model's space holds them all."""
    rec, study, first = drive(name, conditional, n_trials=12)
    modelled = [t for t in study.trials if t.number >= first]
    assert len(modelled) >= 6
    for t in modelled:
        assert PER_LAYER <= set(t.params)
        assert rec.inferred[t.number] == set(t.params), f"{name}: trial {t.number}"
        if name != "nsga2":
            assert rec.relative[t.number] == set(t.params), f"{name}: trial {t.number}"
            assert not rec.independent.get(t.number), f"{name}: trial {t.number} drew alone"
    if name == "nsga2":  # crossover, not mutation, sets most params
        relative = sum(len(rec.relative[t.number]) for t in modelled)
        assert relative > 0.5 * sum(len(t.params) for t in modelled)


def layers_that_exist(trial: optuna.Trial, base: TrialSpec, sampled: dict[str, Any]) -> dict:
    """The encoding before issue #19: per-layer params only up to the trial's depth."""
    space = base.arch.space
    assert space is not None
    depth = trial.suggest_categorical("arch.depth", space.depth)
    return {
        "arch.embed_dim": trial.suggest_categorical("arch.embed_dim", space.embed_dim),
        "arch.depth": depth,
        "arch.num_heads": [
            trial.suggest_categorical(f"arch.num_heads.{i}", space.num_heads) for i in range(depth)
        ],
        "arch.mlp_ratio": [
            trial.suggest_categorical(f"arch.mlp_ratio.{i}", space.mlp_ratio) for i in range(depth)
        ],
    }


def test_the_variable_length_encoding_left_gp_drawing_deep_layers_at_random() -> None:
    """The check above has teeth: with per-layer params only for the layers that exist, GP
    models only the shallowest depth's layers and draws the others with no history at all."""
    rec, study, first = drive("gp", layers_that_exist, n_trials=10)
    drawn = set().union(*(rec.independent.get(t.number, set()) for t in study.trials[first:]))
    assert drawn & {"arch.num_heads.3", "arch.mlp_ratio.3"}


class Spy(optuna.samplers.RandomSampler):
    """An inner sampler that records what it is shown of the study before each proposal."""

    def __init__(self) -> None:
        super().__init__(seed=0)
        self.shown: list[tuple[int, list[int]]] = []  # (directions, lengths of values)

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        self.shown.append((len(study.directions), [len(t.values) for t in done]))
        return {}


def drive_objectives(
    sampler: optuna.samplers.BaseSampler, directions: list[str], values: Any, n: int = 10
) -> Study:
    """A study with the baseline as trial 0, every trial told `values(throughput)`."""
    study = optuna.create_study(directions=directions, sampler=sampler)
    study.enqueue_trial({}, user_attrs={record.BASELINE: True})
    study.tell(study.ask(), [1.0] * len(directions))
    for _ in range(n):
        trial = study.ask()
        x = trial.suggest_float("x", 0.0, 1.0)
        study.tell(trial, values(1.0 + 9.0 * x, trial.number))
    return study


def estimate(tput: float, number: int) -> list[float]:
    """Accuracy, throughput, and energy as the estimate records it: 35 W / throughput."""
    return [0.9 - 0.01 * tput + 0.001 * (number % 3), tput, 35.0 / tput]


def test_an_objective_that_copies_another_is_shown_to_the_sampler_once() -> None:
    from vitsweep.search.samplers import BaselineBlind

    spy = Spy()
    study = drive_objectives(BaselineBlind(spy), ["maximize", "maximize", "minimize"], estimate)
    # the study itself keeps every objective: the report and the hypervolume use all three
    assert all(len(t.values) == 3 for t in study.trials)
    early = [s for s in spy.shown if len(s[1]) < 3]
    late = [s for s in spy.shown if len(s[1]) >= 3]
    assert early and all(d == 3 and all(n == 3 for n in lens) for d, lens in early)
    assert late and all(d == 2 and all(n == 2 for n in lens) for d, lens in late)

    def metered(tput: float, number: int) -> list[float]:  # a real meter: energy has its own noise
        acc, _, energy = estimate(tput, number)
        return [acc, tput, energy * (1.0 + 0.03 * ((number * 7) % 5 - 2))]

    spy = Spy()
    drive_objectives(BaselineBlind(spy), ["maximize", "maximize", "minimize"], metered)
    assert all(d == 3 for d, _ in spy.shown)

    def inverse_same_way(tput: float, number: int) -> list[float]:  # conflicting, not a copy
        return [tput, 35.0 / tput]

    spy = Spy()
    drive_objectives(BaselineBlind(spy), ["maximize", "maximize"], inverse_same_way)
    assert all(d == 2 for d, _ in spy.shown)


@pytest.mark.parametrize("name", ["gp", "tpe", "nsga2"])
def test_samplers_propose_from_the_objectives_they_are_shown(name: str) -> None:
    """Optuna's own samplers run on the reduced view, also where it leaves one objective:
    throughput against its own estimate is maximizing throughput (x = 1)."""
    spec = SamplerSpec(name=name, seed=0, n_startup_trials=4, population_size=4)
    sampler = make_sampler(spec, SearchSpace({}, {}, None))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        three = drive_objectives(sampler, ["maximize", "maximize", "minimize"], estimate, n=12)
        one = drive_objectives(
            sampler, ["maximize", "minimize"], lambda t, n: estimate(t, n)[1:], n=16
        )
    for study in (three, one):
        assert len(study.get_trials(states=(TrialState.COMPLETE,))) == len(study.trials)
    assert len({t.params["x"] for t in three.trials[1:]}) >= 8  # a front, not one point
    assert max(t.params["x"] for t in one.trials[1:]) > 0.9


class RankSpy(optuna.samplers.BaseSampler):
    """An inner sampler that records the params it is shown and proposes the highest value
    of every relative param and the lowest of every independent one."""

    def __init__(self) -> None:
        self.shown: list[tuple[dict[str, Any], dict[str, BaseDistribution]]] = []
        self.asked: list[dict[str, BaseDistribution]] = []

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        self.shown = [(t.params, t.distributions) for t in done]
        return optuna.search_space.IntersectionSearchSpace().calculate(study)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        self.asked.append(search_space)
        return {
            n: d.high if isinstance(d, IntDistribution) else d.choices[-1]
            for n, d in search_space.items()
        }

    def sample_independent(
        self, study: Study, trial: FrozenTrial, name: str, dist: BaseDistribution
    ) -> Any:
        return dist.low if isinstance(dist, IntDistribution) else dist.choices[0]


def test_numeric_choices_are_shown_to_the_sampler_as_ranks_and_stored_as_asked() -> None:
    """heads=choice(4,1,2) reaches a model-based sampler as a rank 0..2 in ascending order
    (1, 2, 4), its proposal in ranks comes back as the choice; words stay categorical."""
    from vitsweep.search.samplers import BaselineBlind

    spy = RankSpy()
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=BaselineBlind(spy))
    for _ in range(4):
        trial = study.ask()
        trial.suggest_categorical("heads", [4, 1, 2])
        trial.suggest_categorical("mlp", [3.0, 2.0])
        trial.suggest_categorical("act", ["relu", "gelu"])
        study.tell(trial, [1.0 + trial.number, 2.0])
    first, *later = study.trials
    assert first.params == {"heads": 1, "mlp": 2.0, "act": "relu"}  # independent: lowest
    assert all(t.params == {"heads": 4, "mlp": 3.0, "act": "gelu"} for t in later)  # highest
    for t in study.trials:  # the study keeps the params as asked
        assert t.distributions["heads"] == CategoricalDistribution([4, 1, 2])
    asked = [space for space in spy.asked if space]  # trial 0's space is empty
    assert len(asked) == 3 and all(
        space["heads"] == IntDistribution(0, 2)
        and space["mlp"] == IntDistribution(0, 1)
        and space["act"] == CategoricalDistribution(["relu", "gelu"])
        for space in asked
    )
    assert [p for p, _ in spy.shown] == [
        {"heads": 0, "mlp": 0, "act": "relu"},
        {"heads": 2, "mlp": 1, "act": "gelu"},
        {"heads": 2, "mlp": 1, "act": "gelu"},
    ]
