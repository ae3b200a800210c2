"""The search space: Hydra sweep expressions -> Optuna distributions, and conditional hooks.

Hydra's `range(a, b, step)` excludes `b`; Optuna's IntDistribution includes `high`, so a range
becomes IntDistribution(low=a, high=<last element>, step) -- never `high=b`.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.errors import HydraException
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from vitsweep.spec import ConfigError

# (trial, the launch's base config as the app hands it, the params sampled so far) -> overrides
SpaceHook = Callable[[optuna.Trial, Any, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class SearchSpace:
    distributions: dict[str, BaseDistribution]  # sampled every trial, in this order
    fixed: dict[str, Any]  # plain overrides given with the params
    hook: SpaceHook | None = None

    def sample(self, trial: optuna.Trial, base: Any) -> dict[str, Any]:
        """Overrides for one trial: the flat params, then whatever the conditional hook adds."""
        sampled = {name: _suggest(trial, name, d) for name, d in self.distributions.items()}
        if self.hook is not None:
            sampled.update(self.hook(trial, base, {**self.fixed, **sampled}))
        return {**self.fixed, **sampled}


def _suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    raise TypeError(f"unsupported distribution {dist!r}")


def _distribution(key: str, override: Override) -> BaseDistribution:
    sweep = override.value()
    log = "log" in getattr(sweep, "tags", set())
    if isinstance(sweep, ChoiceSweep):
        choices = [v for v in override.sweep_iterator()]
        if not choices:
            raise ConfigError(f"hydra.sweeper.params.{key}: choice() needs at least one value")
        return CategoricalDistribution(choices)
    if isinstance(sweep, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise ConfigError(f"hydra.sweeper.params.{key}: empty range (the end is excluded)")
        if all(isinstance(v, int) for v in values):
            step = int(sweep.step)
            return IntDistribution(low=values[0], high=values[-1], step=abs(step), log=log)
        return CategoricalDistribution(values)
    if isinstance(sweep, IntervalSweep):
        lo, hi = sweep.start, sweep.end
        if lo >= hi:
            raise ConfigError(f"hydra.sweeper.params.{key}: interval({lo}, {hi}) needs start < end")
        if isinstance(lo, int) and isinstance(hi, int) and not isinstance(lo, bool):
            return IntDistribution(low=lo, high=hi, log=log)
        return FloatDistribution(low=float(lo), high=float(hi), log=log)
    raise ConfigError(f"hydra.sweeper.params.{key}: unsupported sweep {sweep!r}")


def load_hook(path: str | None) -> SpaceHook | None:
    if not path:
        return None
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(
            f"hydra.sweeper.space_hook={path}: not an importable function "
            "(e.g. vitsweep.vit_space.conditional)"
        ) from None


def parse_space(params: dict[str, str], hook: str | None = None) -> SearchSpace:
    """Parse `{key: "choice(1,2)" | "range(0,16,4)" | "tag(log, interval(1e-4, 1e-2))" | value}`."""
    parser = OverridesParser.create()
    distributions: dict[str, BaseDistribution] = {}
    fixed: dict[str, Any] = {}
    for key, expr in params.items():
        line = f"{key}={expr}"
        try:
            (override,) = parser.parse_overrides([line])
        except HydraException as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(f"hydra.sweeper.params.{key}={expr}: {msg}") from None
        if override.is_sweep_override():
            distributions[key] = _distribution(key, override)
        else:
            fixed[key] = override.value()
    return SearchSpace(distributions, fixed, load_hook(hook))


def format_override(key: str, value: Any) -> str:
    """A Hydra command-line override for `key=value` (lists, bools, None, floats)."""
    return f"{key}={_format_value(value)}"


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_format_value(v) for v in value) + "]"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    if isinstance(value, str):
        safe = value.replace("_", "").replace("-", "").replace(".", "").replace("/", "")
        return value if safe.isalnum() else "'" + value.replace("'", "\\'") + "'"
    return str(value)
