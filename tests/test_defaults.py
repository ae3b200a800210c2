"""YAML is the one source of the defaults a user sees: every key of each group's default option
(conf/config.yaml's defaults list) must equal the schema dataclass's own default, so code that
builds a spec without Hydra (tests, benchmarks, `trial.run`) runs what `vitsweep` would."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from omegaconf import OmegaConf

from vitsweep.config import CONF_DIR, TRIAL_GROUPS
from vitsweep.search.spec import SweeperSpec
from vitsweep.spec import TrackingSpec

CONF = CONF_DIR
SPECS = {**TRIAL_GROUPS, "tracking": TrackingSpec, "hydra/sweeper": SweeperSpec}


def default_options() -> dict[str, str]:
    chosen = {}
    for entry in OmegaConf.load(CONF / "config.yaml").defaults:
        if isinstance(entry, str):
            continue
        for key, value in entry.items():
            group = key.removeprefix("override ")
            if group in SPECS:
                chosen[group] = value
    return chosen


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _plain(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def disagreements(spec_cls: type, node: dict[str, Any], prefix: str) -> list[str]:
    fields = {f.name: f for f in dataclasses.fields(spec_cls)}
    out = []
    for key, value in node.items():
        if key == "defaults" or (isinstance(value, str) and value.startswith("${")):
            continue  # interpolations are resolved at compose time, not defaults
        if key not in fields:
            out.append(f"{prefix}{key}: in the YAML, not in {spec_cls.__name__}")
            continue
        want = _plain(_default(fields[key]))
        if (
            isinstance(value, dict)
            and isinstance(want, dict)
            and dataclasses.is_dataclass(_default(fields[key]))
        ):
            out += disagreements(type(_default(fields[key])), value, f"{prefix}{key}.")
        elif value != want:
            out.append(f"{prefix}{key}: YAML {value!r} != {spec_cls.__name__} {want!r}")
    return out


def test_the_default_options_are_the_ones_checked() -> None:
    assert set(default_options()) == set(SPECS)


@pytest.mark.parametrize("group", list(SPECS))
def test_yaml_defaults_and_dataclass_defaults_agree(group: str) -> None:
    option = default_options()[group]
    node = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{option}.yaml"), resolve=False)
    assert isinstance(node, dict)
    assert disagreements(SPECS[group], node, f"{group}.") == []
