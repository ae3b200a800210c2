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

from vitsweep.precision.knobs import MODE_KNOBS, Knob
from vitsweep.spec import ConfigError, TrialSpec

SpaceHook = Callable[[optuna.Trial, TrialSpec, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class SearchSpace:
    distributions: dict[str, BaseDistribution]  # sampled every trial, in this order
    fixed: dict[str, Any]  # plain overrides given with the params
    hook: SpaceHook | None = None

    def sample(self, trial: optuna.Trial, base: TrialSpec) -> dict[str, Any]:
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
            "(e.g. vitsweep.search.space.conditional)"
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


# ----------------------------------------------------------------------------- conditional hooks


def conditional(trial: optuna.Trial, base: TrialSpec, sampled: dict[str, Any]) -> dict[str, Any]:
    """The default hook: the supernet's conditional space and the quantizers' own knobs.

    A fixed-length encoding of a conditional space: every trial suggests the same params, and
    the ones a trial does not use are ignored. Depth first; then heads and MLP ratio for every
    layer up to the space's *deepest* depth, of which only the first `depth` reach the config.
    Why: Optuna's GP and NSGA-II model only the params that every complete trial shares, and
    TPE (multivariate) only the ones in its relative search space, so per-layer params that
    exist for some trials only (layers past the shallowest depth) were drawn at random with no
    history at all. With one param set for every trial, every sampler learns every layer; an
    ignored value is a dimension that does not change the result, which a GP's per-dimension
    length scale and TPE's density both absorb.

    The quantizers' knobs get the same treatment: the bit budget (`precision=mixed`) and the
    rate (`precision=tq`) are suggested whenever the study *can* sample that precision (it is
    one of the choices of a searched `precision` param), and passed on only to trials of that
    precision. A study that cannot reach mixed or tq (xray's default: fp32/bf16/int8) gets no
    dead dimension; a precision fixed for the launch (not an Optuna param) is the same in every
    trial, so its knob is sampled every trial anyway.
    """
    out: dict[str, Any] = {}
    space = base.arch.space
    if base.arch.kind == "supernet" and space is not None:
        if "arch.embed_dim" not in sampled:
            out["arch.embed_dim"] = trial.suggest_categorical("arch.embed_dim", space.embed_dim)
        depth = sampled.get("arch.depth")
        if depth is None:
            depth = trial.suggest_categorical("arch.depth", space.depth)
            out["arch.depth"] = depth
        deepest = max(space.depth)
        if "arch.num_heads" not in sampled:
            heads = [
                trial.suggest_categorical(f"arch.num_heads.{i}", space.num_heads)
                for i in range(deepest)
            ]
            out["arch.num_heads"] = heads[:depth]
        if "arch.mlp_ratio" not in sampled:
            ratios = [
                trial.suggest_categorical(f"arch.mlp_ratio.{i}", space.mlp_ratio)
                for i in range(deepest)
            ]
            out["arch.mlp_ratio"] = ratios[:depth]
    precision = sampled.get("precision")
    for mode, knobs in MODE_KNOBS.items():  # each precision mode's own knobs (precision.knobs)
        for knob in knobs:
            if knob.key in sampled or not _may_be(trial, precision, mode):
                continue
            value = _suggest_knob(trial, knob)
            if precision == mode:
                out[knob.key] = value
    return out


def _suggest_knob(trial: optuna.Trial, knob: Knob) -> Any:
    if knob.choices:
        return trial.suggest_categorical(knob.key, knob.choices)
    return trial.suggest_float(knob.key, knob.low, knob.high, step=knob.step)


def _may_be(trial: optuna.Trial, precision: Any, mode: str) -> bool:
    """Whether some trial of this study can have `precision=mode`: this one has it, or the
    study searches `precision` with `mode` among its choices."""
    if precision == mode:
        return True
    dist = trial.distributions.get("precision")
    return isinstance(dist, CategoricalDistribution) and mode in dist.choices


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
