"""Optuna samplers by name, all aware of the study's constraints."""

from __future__ import annotations

import warnings
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial

from vitsweep.search.space import SearchSpace
from vitsweep.search.spec import SamplerSpec
from vitsweep.spec import ConfigError


def _constraints(trial: FrozenTrial) -> list[float]:
    return list(trial.user_attrs.get("constraints", ()))


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


def make_sampler(
    spec: SamplerSpec, space: SearchSpace, constrained: bool
) -> optuna.samplers.BaseSampler:
    cf = _constraints if constrained else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if spec.name == "tpe":
            # multivariate+group model the conditional (per-layer) space jointly; constant_liar
            # keeps parallel workers from proposing the same point.
            return optuna.samplers.TPESampler(
                seed=spec.seed,
                n_startup_trials=spec.n_startup_trials,
                multivariate=True,
                group=True,
                constant_liar=True,
                constraints_func=cf,
            )
        if spec.name == "nsga2":
            return optuna.samplers.NSGAIISampler(
                population_size=spec.population_size, seed=spec.seed, constraints_func=cf
            )
        if spec.name == "random":
            return optuna.samplers.RandomSampler(seed=spec.seed)
        if spec.name == "gp":
            return optuna.samplers.GPSampler(
                seed=spec.seed, n_startup_trials=spec.n_startup_trials, constraints_func=cf
            )
        if spec.name == "grid":
            return optuna.samplers.GridSampler(_grid(space), seed=spec.seed)
    raise ConfigError(
        f"hydra.sweeper.sampler.name={spec.name}: valid: tpe, nsga2, random, gp, grid"
    )
