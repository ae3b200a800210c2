"""Optuna samplers by name, none misled by the baseline.

Constraints reach every sampler through Optuna 5's own channel: the loop stores them on each
trial with `Trial.set_constraint`, which TPE, NSGA-II and GP read from `FrozenTrial.constraints`
(the samplers' `constraints_func` is deprecated since Optuna 5.0)."""

from __future__ import annotations

import copy
import inspect
import warnings
from collections.abc import Container, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from vitsweep import record
from vitsweep.search.space import SearchSpace
from vitsweep.search.spec import Constraint, SamplerSpec
from vitsweep.spec import ConfigError


def _grid(space: SearchSpace) -> dict[str, list[Any]]:
    grid = {}
    for name, dist in space.distributions.items():
        if isinstance(dist, CategoricalDistribution):
            grid[name] = list(dist.choices)
        elif isinstance(dist, IntDistribution) and not dist.log:
            grid[name] = list(range(dist.low, dist.high + 1, dist.step))
        else:
            raise ConfigError(
                f"hydra.sweeper.params.{name}: the grid sampler needs choice() or range(), "
                "not interval()"
            )
    if space.hook is not None:
        raise ConfigError(
            "hydra.sweeper.sampler.name=grid: a grid cannot follow a conditional space; "
            "set hydra.sweeper.space_hook=null or use tpe/nsga2/random/gp"
        )
    return grid


_CONSTRAINTS = "constraints"  # Optuna's system attribute: a list (old) or "constraints:<name>"


def _shown(trial: FrozenTrial, constraints: Sequence[Constraint]) -> FrozenTrial:
    """The trial as the sampler is shown it.

    - The baseline runs a config outside the search space and has no params: it is shown as a
      FAIL trial, which every sampler leaves out of its model. It stays in the list, because
      Optuna 5.1's GA samplers index the study's trials by number (NSGA-II saw none of its
      parents when the baseline was removed from the list).
    - Constraints are the study's current ones, recomputed from the metrics each trial
      recorded. Studies of earlier versions kept them as a user attribute (Optuna cannot see it),
      later trials carry them through `set_constraint`, and a constraint may have been added
      since: Optuna 5.1's GP refuses trials whose constraint names differ. The metrics are the
      one record every trial of every era has.
    """
    baseline = record.is_baseline(trial)
    stored = {k: v for k, v in trial.system_attrs.items() if k.startswith(_CONSTRAINTS)}
    if not baseline and not stored and not constraints:
        return trial
    shown = copy.copy(trial)
    if baseline:
        shown.state, shown.values = TrialState.FAIL, None
    attrs = {k: v for k, v in trial.system_attrs.items() if k not in stored}
    if trial.state == TrialState.COMPLETE and not baseline:
        metrics = record.metrics(trial)
        attrs |= {f"{_CONSTRAINTS}:{c.key}": c.violation(metrics) for c in constraints}
    shown.system_attrs = attrs
    return shown


class _SamplerView:
    """The study as a model-based sampler sees it (`_shown` for each trial), all else real."""

    def __init__(self, study: Study, constraints: Sequence[Constraint]) -> None:
        self._study = study
        self._constraints = constraints

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        trials = self._study._get_trials(deepcopy=deepcopy, use_cache=use_cache)
        shown = [_shown(t, self._constraints) for t in trials]
        return shown if states is None else [t for t in shown if t.state in states]

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class BaselineBlind(optuna.samplers.BaseSampler):
    """`inner`, shown the study through `_shown`: the baseline as a FAIL trial, constraints
    as the study's current ones.

    The baseline (trial 0) runs a config outside the search space, so it has no params.
    Optuna's GP and NSGA-II samplers model only the params that every complete trial shares:
    one param-less trial leaves none, and they silently sample every param at random from then
    on (`python -m vitsweep.bench.search` measured gp and nsga2 giving random search's exact
    numbers). TPE copes with the missing params, but the baseline's values still enter its
    split of good and bad trials (0.87 instead of 0.997 of the exact front's hypervolume after
    80 trials). The baseline stays in the study for the report, hypervolume and W&B.
    """

    def __init__(
        self, inner: optuna.samplers.BaseSampler, constraints: Sequence[Constraint] = ()
    ) -> None:
        self.inner = inner
        self.constraints = tuple(constraints)

    def _view(self, study: Study) -> Study:
        return _SamplerView(study, self.constraints)  # type: ignore[return-value]

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(self._view(study), trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.inner.sample_relative(self._view(study), trial, search_space)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self.inner.sample_independent(
            self._view(study),
            trial,
            param_name,
            param_distribution,
        )

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self.inner.before_trial(self._view(study), trial)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.inner.after_trial(self._view(study), trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


class _Grid(optuna.samplers.GridSampler):
    """Optuna's grid sampler, minus its `study.stop()` once every point has run: that call is
    only legal inside `Study.optimize`, and our loop asks and tells. The loop checks
    `is_exhausted` instead and ends the study there, with the reason stored."""

    def after_trial(self, study, trial, state, values) -> None:  # type: ignore[no-untyped-def]
        return None


# Our sampler names -> Optuna's classes (hydra-optuna-sweeper names the class in `_target_`).
CLASSES: dict[str, type[optuna.samplers.BaseSampler]] = {
    "tpe": optuna.samplers.TPESampler,
    "nsga2": optuna.samplers.NSGAIISampler,
    "random": optuna.samplers.RandomSampler,
    "gp": optuna.samplers.GPSampler,
    "grid": optuna.samplers.GridSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "qmc": optuna.samplers.QMCSampler,
}
_MODEL_BASED = ("tpe", "nsga2", "gp", "cmaes")  # the ones a param-less baseline would mislead


def make_sampler(
    spec: SamplerSpec, space: SearchSpace, constraints: Sequence[Constraint] = ()
) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if spec.kwargs is not None:
            sampler = _given_sampler(spec, space)
        else:
            sampler = _make_sampler(spec, space)
    if spec.name in _MODEL_BASED:
        return BaselineBlind(sampler, constraints)
    return sampler


def _given_sampler(spec: SamplerSpec, space: SearchSpace) -> optuna.samplers.BaseSampler:
    """hydra-optuna-sweeper's form: Optuna's class with exactly the user's kwargs. A kwarg this
    Optuna no longer takes is named, with the ones it does take, instead of a TypeError."""
    cls = CLASSES[spec.name]
    kwargs = dict(spec.kwargs or {})
    if spec.name == "grid":  # the grid is the params' (the plugin's `_partial_` GridSampler)
        kwargs["search_space"] = _grid(space)
        cls = _Grid
    valid = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kwargs")]
    for key in kwargs:
        if key not in valid:
            raise ConfigError(
                f"hydra.sweeper.sampler.{key}: {CLASSES[spec.name].__name__} of Optuna "
                f"{optuna.__version__} takes no such argument; valid: {', '.join(valid)}"
            )
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"hydra.sweeper.sampler: {cls.__name__}(...): {e}") from None


def _make_sampler(spec: SamplerSpec, space: SearchSpace) -> optuna.samplers.BaseSampler:
    if spec.name == "tpe":
        # Optuna 5's defaults, checked against ours: constant_liar=True is its default too
        # (parallel workers do not propose the same point). multivariate=None means
        # *independent* TPE for a multi-objective study, so we ask for multivariate: the
        # space hook's fixed-length encoding (`space.conditional`) gives every trial the
        # same params, one joint space for TPE to model. group=True changes nothing for
        # that one group; it keeps a user's own conditional hook modelled per param set.
        # n_startup_trials: 8, not Optuna's 10 (budgets here are tens of trials).
        return optuna.samplers.TPESampler(
            seed=spec.seed,
            n_startup_trials=spec.n_startup_trials,
            multivariate=True,
            group=True,
            constant_liar=True,
        )
    if spec.name == "nsga2":
        # population_size 16, not Optuna's 50: a generation of 50 is a whole study here.
        return optuna.samplers.NSGAIISampler(population_size=spec.population_size, seed=spec.seed)
    if spec.name == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    if spec.name == "gp":
        # Optuna 5's GPSampler handles constrained multi-objective studies itself (logEHVI,
        # constrained when the trials carry constraints). It models only the params every
        # complete trial shares; the fixed-length encoding of `space.conditional` makes
        # that all of them, so a param drawn independently after the startup trials is a
        # bug worth Optuna's warning (kept on, its default). n_startup_trials: 8, not 10.
        return optuna.samplers.GPSampler(
            seed=spec.seed,
            n_startup_trials=spec.n_startup_trials,
        )
    if spec.name == "grid":
        return _Grid(_grid(space), seed=spec.seed)
    if spec.name in ("cmaes", "qmc"):
        return CLASSES[spec.name](seed=spec.seed)
    raise ConfigError(f"hydra.sweeper.sampler.name={spec.name}: valid: {', '.join(CLASSES)}")
