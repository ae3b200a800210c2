"""hydra-optuna-sweeper's keys, read as ours, so a migrating user changes only the defaults line
(`override hydra/sweeper: optuna` -> `vitsweep`). Each key maps to ours or is refused in one
line that says what to write instead.

| theirs                         | ours                                                        |
| `direction: minimize | [..]`   | `objectives: {value: minimize}` / `{value_0: .., value_1: ..}` |
| `sampler: {_target_, kwargs}`  | `sampler: {name, kwargs}` (the class built with those kwargs) |
| `custom_search_space: a.b.f`   | a space hook calling `f(cfg, trial)` after the params       |
| `storage: null`                | SQLite under `multirun/` (theirs: in memory, lost on exit)  |
| `study_name: null`             | the app's job name (theirs: a random name), so it resumes   |
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vitsweep.search.samplers import CLASSES
from vitsweep.search.spec import SweeperSpec
from vitsweep.spec import ConfigError

# `_target_` of hydra-optuna-sweeper's sampler group -> our sampler name
SAMPLER_TARGETS = {f"optuna.samplers.{cls.__name__}": name for name, cls in CLASSES.items()}
# Their keys that are not ours (read here); `tracking` turns on W&B for an app of any kind.
PLUGIN_KEYS = ("direction", "custom_search_space", "tracking")
DIRECTIONS = ("minimize", "maximize")


def objective_names(n: int) -> list[str]:
    """Names for unnamed objectives: `value` (Optuna's `trial.value`), or `value_<i>`."""
    return ["value"] if n == 1 else [f"value_{i}" for i in range(n)]


def _objectives(direction: Any) -> dict[str, str]:
    given = direction if isinstance(direction, list | tuple) else [direction]
    words = [str(d).rpartition(".")[2].lower() for d in given]  # Direction.minimize -> minimize
    for d in words:
        if d not in DIRECTIONS:
            raise ConfigError(
                f"hydra.sweeper.direction={direction}: valid: minimize, maximize, or a list of "
                "them, one per value the task returns"
            )
    if not words:
        raise ConfigError("hydra.sweeper.direction=[]: name one direction per objective")
    return dict(zip(objective_names(len(words)), words, strict=True))


def _sampler(node: dict[str, Any]) -> dict[str, Any]:
    node = dict(node)
    target = node.pop("_target_")
    node.pop("_partial_", None)  # their GridSampler is partial: its grid comes from params
    if "name" in node:
        raise ConfigError(
            "hydra.sweeper.sampler: give _target_ (hydra-optuna-sweeper's form) or name (ours: "
            f"{', '.join(CLASSES)}), not both"
        )
    name = SAMPLER_TARGETS.get(str(target))
    if name is None and "motpe" in str(target):
        raise ConfigError(
            f"hydra.sweeper.sampler._target_={target}: motpe was removed in Optuna 4; write "
            "hydra/sweeper/sampler=tpe (TPE handles several objectives)"
        )
    if name is None:
        raise ConfigError(
            f"hydra.sweeper.sampler._target_={target}: valid: {', '.join(SAMPLER_TARGETS)}"
        )
    # Their configs write null for "Optuna's default": leave those out.
    kwargs = {k: v for k, v in node.items() if v is not None}
    if "constraints_func" in kwargs:
        raise ConfigError(
            "hydra.sweeper.sampler.constraints_func: write hydra.sweeper.constraints: "
            "['<metric> <= <number>'] (stored on each trial, seen by every sampler)"
        )
    return {"name": name, "kwargs": kwargs}


def read_plugin_keys(node: dict[str, Any], job_name: str | None) -> dict[str, Any]:
    """The sweeper node with hydra-optuna-sweeper's keys turned into ours (not `tracking` and
    `custom_search_space`, which the doorway reads itself)."""
    ours = {f.name for f in dataclasses.fields(SweeperSpec)}
    node = {k: v for k, v in node.items() if k not in ("_target_", "defaults")}
    for key in node:
        if key not in ours and key not in PLUGIN_KEYS:
            hint = "; write hydra.sweeper.params" if key == "search_space" else ""
            raise ConfigError(
                f"hydra.sweeper.{key}: unknown key{hint}; valid: "
                f"{', '.join(sorted(ours | set(PLUGIN_KEYS)))}"
            )
    direction = node.pop("direction", None)
    if direction is not None and node.get("objectives"):
        raise ConfigError(
            "hydra.sweeper.direction: give direction (the task returns a float or a tuple) "
            "or objectives (named metrics of a returned dict), not both"
        )
    if not node.get("objectives"):  # their default: one value, minimized
        node["objectives"] = _objectives("minimize" if direction is None else direction)
    sampler = node.get("sampler")
    if isinstance(sampler, dict) and "_target_" in sampler:
        node["sampler"] = _sampler(sampler)
    if node.get("params") is None:
        node["params"] = {}
    if node.get("study_name") is None and job_name:
        node["study_name"] = job_name
    storage = node.get("storage")
    if storage is not None and not isinstance(storage, str):
        raise ConfigError(
            "hydra.sweeper.storage: give an Optuna URL (sqlite:///..., postgresql://..., "
            "journal:<path>), or null for SQLite under multirun/"
        )
    for key in PLUGIN_KEYS:
        node.pop(key, None)
    return node
