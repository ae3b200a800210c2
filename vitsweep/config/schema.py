"""Structured-config schemas derived from the plain spec dataclasses, and the way back.

One source of truth: the frozen dataclasses in `vitsweep.spec` (and the sweeper/tracking specs)
describe every key. Hydra needs OmegaConf-friendly dataclasses to validate keys and types at
compose time, so we derive them (unions -> Any, tuples -> lists, Literals -> str); `to_spec`
converts a plain container back, checking what OmegaConf cannot (Literals, unions, ranges) and
naming the key that is wrong.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from functools import cache
from typing import Any, Literal, Union, get_args, get_origin

from vitsweep.spec import ConfigError

_SIMPLE = (int, float, bool, str)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _schema_type(tp: Any) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if tp in _SIMPLE or tp is Any:
        return tp
    if origin is Literal:
        return str
    if _is_dataclass_type(tp):
        return schema_of(tp)
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and rest[0] in _SIMPLE:
            return typing.Optional[_schema_type(rest[0])]  # noqa: UP045 - OmegaConf needs Optional
        # Optional[spec] is Any, not Optional[its schema]: OmegaConf 2.3 cannot merge a mapping
        # into a structured node that is None (`train.teacher={...}` on the command line raised
        # AttributeError inside OmegaConf.update). `to_spec` still names an unknown or mistyped
        # key inside it, after composing.
        return Any
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis and args[0] in _SIMPLE:
        return list[args[0]]
    if origin is dict:
        return dict[str, Any]
    return Any


def _schema_default(f: dataclasses.Field) -> dataclasses.Field:
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        value = f.default
    if _is_dataclass_type(type(value)):
        inner = schema_of(type(value))
        return dataclasses.field(default_factory=inner)
    if isinstance(value, tuple):
        return dataclasses.field(default_factory=lambda v=value: list(v))
    if isinstance(value, dict):
        return dataclasses.field(default_factory=lambda v=value: dict(v))
    return dataclasses.field(default=value)


@cache
def schema_of(spec_cls: type) -> type:
    """An OmegaConf structured-config dataclass with the fields and defaults of `spec_cls`."""
    hints = typing.get_type_hints(spec_cls)
    fields = [
        (f.name, _schema_type(hints[f.name]), _schema_default(f))
        for f in dataclasses.fields(spec_cls)
    ]
    return dataclasses.make_dataclass(spec_cls.__name__ + "Schema", fields)


def _fmt(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _describe(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin is tuple:
        return f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}={_fmt(value)}: valid: {', '.join(map(str, args))}")
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own error says what is wrong, not "expected X"
            try:
                return _coerce(value, options[0], key)
            except ConfigError as e:  # a nested spec's checks name its own group's keys
                if str(e).startswith(key):
                    raise
                raise ConfigError(f"{key}: {e}") from None
        for option in options:
            try:
                return _coerce(value, option, key)
            except ConfigError:
                pass
        raise ConfigError(
            f"{key}={_fmt(value)}: expected {' or '.join(_describe(o) for o in options)}"
        )
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={_fmt(value)}: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}={_fmt(value)}: expected an integer")
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{key}={_fmt(value)}: expected an integer")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}={_fmt(value)}: expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={_fmt(value)}: expected a string")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}={_fmt(value)}: expected a list")
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={_fmt(value)}: expected a mapping")
        return dict(value)
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={_fmt(value)}: expected a mapping")
        return to_spec(tp, value, key)
    raise TypeError(f"unsupported spec type {tp!r} at {key}")


def to_spec(spec_cls: type, node: dict[str, Any], prefix: str = "") -> Any:
    """Build `spec_cls` from a plain dict, naming `prefix.key` in every error."""
    hints = typing.get_type_hints(spec_cls)
    names = {f.name for f in dataclasses.fields(spec_cls)}
    unknown = sorted(set(node) - names - {"_target_"})
    if unknown:
        raise ConfigError(
            f"{prefix + '.' if prefix else ''}{unknown[0]}: unknown key; "
            f"valid: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name in names & set(node):
        key = f"{prefix}.{name}" if prefix else name
        value = node[name]
        if isinstance(value, float) and math.isnan(value) and hints[name] in (int,):
            raise ConfigError(f"{key}=nan: expected an integer")
        kwargs[name] = _coerce(value, hints[name], key)
    return spec_cls(**kwargs)
