"""Optuna samplers by name, none misled by the baseline.

Constraints reach every sampler through Optuna 5's own channel: the loop stores them on each
trial with `Trial.set_constraint`, which TPE, NSGA-II and GP read from `FrozenTrial.constraints`
(the samplers' `constraints_func` is deprecated since Optuna 5.0)."""

from __future__ import annotations

import copy
import inspect
import math
import warnings
from collections.abc import Container, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.study import Study, StudyDirection
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


def _ranked(dist: BaseDistribution) -> tuple[Any, ...] | None:
    """The choices of a categorical param whose choices are distinct finite numbers, ascending;
    None for any other param."""
    if not isinstance(dist, CategoricalDistribution) or len(dist.choices) < 2:
        return None
    choices = dist.choices
    if not all(isinstance(c, int | float) and not isinstance(c, bool) for c in choices):
        return None
    if not all(math.isfinite(c) for c in choices) or len(set(choices)) < len(choices):
        return None
    return tuple(sorted(choices))


def _as_ranks(
    space: dict[str, BaseDistribution],
) -> tuple[dict[str, BaseDistribution], dict[str, tuple[Any, ...]]]:
    """`space` as a model-based sampler is shown it (numeric choices as their rank, an
    integer), and the ascending choices each rank indexes."""
    orders = {n: o for n, d in space.items() if (o := _ranked(d)) is not None}
    shown = {
        n: IntDistribution(0, len(orders[n]) - 1) if n in orders else d for n, d in space.items()
    }
    return shown, orders


def _shown(
    trial: FrozenTrial, constraints: Sequence[Constraint], kept: Sequence[int] | None = None
) -> FrozenTrial:
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
    - Only the objectives in `kept` (all when None): see `kept_objectives`.
    - A categorical param whose choices are numbers (heads 1/2/4, embed dim 48..128) as its
      rank among them, an integer param (`_as_ranks`). Why: Optuna's GP models a
      categorical param with a kernel that knows only "same" or "different", so 2 heads
      taught it nothing about 1 or 4. On xray's supernet space, where every such knob moves
      cost one way, it changed one or two knobs at a time around its best trial and first
      tried r=0 at proposal 35. As ranks the kernel sees the order: `make bench-search` on
      the predictors (xray, AMD EPYC, 2026-12-05, 10 seeds) moved gp's median at 40 trials
      from 0.84 to 0.99 of the reference hypervolume, tpe's from 0.58 to 0.61. The study
      stores the choices as asked (reports, resume, W&B); only the sampler sees ranks.
    """
    baseline = record.is_baseline(trial)
    stored = {k: v for k, v in trial.system_attrs.items() if k.startswith(_CONSTRAINTS)}
    distributions, ranked = _as_ranks(trial.distributions)
    if not baseline and not stored and not constraints and kept is None and not ranked:
        return trial
    shown = copy.copy(trial)
    if ranked:
        shown.params = {
            n: ranked[n].index(v) if n in ranked else v for n, v in trial.params.items()
        }
        shown.distributions = distributions
    if baseline:
        shown.state, shown.values = TrialState.FAIL, None
    else:
        shown.values = _pick(trial.values, kept)
    attrs = {k: v for k, v in trial.system_attrs.items() if k not in stored}
    if trial.state == TrialState.COMPLETE and not baseline:
        metrics = record.metrics(trial)
        attrs |= {f"{_CONSTRAINTS}:{c.key}": c.violation(metrics) for c in constraints}
    shown.system_attrs = attrs
    return shown


def _pick(values: Sequence[float] | None, kept: Sequence[int] | None) -> list[float] | None:
    """`values` of the objectives in `kept` (all when None)."""
    if values is None or kept is None:
        return None if values is None else list(values)
    return [values[i] for i in kept]


# Two objectives that order every trial alike are one: a product or a ratio this constant
# across the trials (relative spread) is no measurement, it is arithmetic.
_SAME = 1e-9


def kept_objectives(
    directions: Sequence[StudyDirection], values: Sequence[Sequence[float]]
) -> list[int]:
    """The objectives a model-based sampler is shown: all but those another one already carries.

    Without an energy meter a trial records energy as the estimate `measure.watts` /
    throughput (`measure.protocol`), so "minimize energy" ranks every trial exactly as
    "maximize throughput" does. A sampler shown both pays for a copy: Optuna's GP fits one
    model per objective and its logEHVI decomposes the front into boxes whose count grows
    with the objectives (xray on the predictors: 3.9 s a GP proposal at 4 objectives, 2.4 s
    at 3), and TPE's and NSGA-II's fronts and crowding count the copy as a second dimension
    (neutral there: 30 paired seeds moved neither, Wilcoxon p >= 0.39). So an
    objective whose product (opposite directions) or ratio (same direction) with an earlier
    kept one is the same for every trial is left out; decided on the values, so a study
    whose trials read a real meter (RAPL, NVML) keeps all. Fewer than 3 trials: all kept."""
    keep = list(range(len(directions)))
    v = np.asarray(values, dtype=float)
    if len(v) < 3 or v.ndim != 2 or not np.all(np.isfinite(v)):
        return keep
    for j in range(1, len(directions)):
        for i in (k for k in keep if k < j):
            a, b = v[:, i], v[:, j]
            if np.any(a <= 0) or np.any(b <= 0):
                continue
            tied = a * b if directions[i] != directions[j] else b / a
            if np.ptp(tied) <= _SAME * np.abs(tied).mean():
                keep.remove(j)
                break
    return keep


class _SamplerView:
    """The study as a model-based sampler sees it (`_shown` for each trial, the directions of
    the objectives it is shown), all else real. Finished trials are shown from `cache`: they
    no longer change, and a 3,000-trial study would otherwise be copied on every call."""

    def __init__(
        self,
        study: Study,
        constraints: Sequence[Constraint],
        kept: list[int] | None,
        cache: dict[int, FrozenTrial],
    ) -> None:
        self._study = study
        self._constraints = constraints
        self._kept = kept
        self._cache = cache
        directions = study.directions
        self.directions = directions if kept is None else [directions[i] for i in kept]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    @property
    def direction(self) -> StudyDirection:
        if len(self.directions) > 1:
            return self._study.direction  # Optuna's own error for a multi-objective study
        return self.directions[0]

    def _is_multi_objective(self) -> bool:
        return len(self.directions) > 1

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        trials = self._study._get_trials(deepcopy=deepcopy, use_cache=use_cache)
        shown = [self._show(t, deepcopy) for t in trials]
        return shown if states is None else [t for t in shown if t.state in states]

    def _show(self, trial: FrozenTrial, fresh: bool) -> FrozenTrial:
        if not fresh and (hit := self._cache.get(trial._trial_id)) is not None:
            return hit
        shown = _shown(trial, self._constraints, self._kept)
        if not fresh and trial.state.is_finished():
            self._cache[trial._trial_id] = shown
        return shown

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class BaselineBlind(optuna.samplers.BaseSampler):
    """`inner`, shown the study through `_shown`: the baseline as a FAIL trial, constraints
    as the study's current ones, an objective that copies another left out (`kept_objectives`),
    numeric choices as their ranks.

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
        self._kept: dict[int, list[int] | None] = {}  # study id -> objectives shown (None: all)
        self._cache: dict[int, dict[int, FrozenTrial]] = {}  # study id -> trial id -> as shown

    def _update(self, study: Study) -> None:
        """Which objectives the sampler is shown, decided once per trial (`before_trial`)."""
        done = study._get_trials(deepcopy=False, states=(TrialState.COMPLETE,), use_cache=True)
        values = [t.values for t in done if not record.is_baseline(t)]
        found = kept_objectives(study.directions, values)
        kept = None if len(found) == len(study.directions) else found
        sid = study._study_id
        if sid not in self._kept or self._kept[sid] != kept:
            self._kept[sid], self._cache[sid] = kept, {}

    def _shown_study(self, study: Study) -> _SamplerView:
        if study._study_id not in self._kept:
            self._update(study)
        sid = study._study_id
        return _SamplerView(study, self.constraints, self._kept[sid], self._cache[sid])

    def _view(self, study: Study) -> Study:
        return self._shown_study(study)  # type: ignore[return-value]

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        """The inner sampler's space, each param as the study asks it (Optuna checks a
        relative param against the distribution of its `suggest_*` call): ranks back to
        the categorical they stand for."""
        space = self.inner.infer_relative_search_space(self._view(study), trial)
        if not space:
            return space
        asked: dict[str, BaseDistribution] = {}
        done = study._get_trials(deepcopy=False, states=(TrialState.COMPLETE,), use_cache=True)
        for t in done:
            asked |= {n: d for n, d in t.distributions.items() if n in space and n not in asked}
            if len(asked) == len(space):
                break
        return {n: asked.get(n, d) for n, d in space.items()}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        shown, order = _as_ranks(search_space)
        sampled = self.inner.sample_relative(self._view(study), trial, shown)
        return {n: order[n][int(v)] if n in order else v for n, v in sampled.items()}

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        shown, order = _as_ranks({param_name: param_distribution})
        value = self.inner.sample_independent(
            self._view(study), trial, param_name, shown[param_name]
        )
        return order[param_name][int(value)] if order else value

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._update(study)
        self.inner.before_trial(self._view(study), trial)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        view = self._view(study)  # decides the objectives shown, if no trial has yet
        shown = _pick(values, self._kept[study._study_id])
        self.inner.after_trial(view, trial, state, shown)

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
