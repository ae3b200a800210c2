"""The doorway: the only code that sees Hydra's DictConfig. It registers the schemas, composes
configs, checks a launch before anything runs, and turns the composed config into the plain
frozen specs the rooms take. The CLI (`vitsweep.app`) and the Hydra sweeper plugin both import
it; it imports neither.

Every bad key, option or value is reported in one line naming it, before anything is trained,
stored or logged.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import tempfile
import typing
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vitsweep.config.migrate import read_plugin_keys
from vitsweep.config.schema import schema_of, to_spec
from vitsweep.errors import fail as _fail
from vitsweep.search.space import format_override, parse_space
from vitsweep.search.spec import SweeperSpec
from vitsweep.search.storage import default_url
from vitsweep.search.study import SweepContext
from vitsweep.spec import (
    METRIC_NAMES,
    ArchSpec,
    ConfigError,
    DataSpec,
    MeasureSpec,
    PrecisionSpec,
    RuntimeSpec,
    TokenSpec,
    TrackingSpec,
    TrainSpec,
    TrialSpec,
)
from vitsweep.track.recorder import StudyRecorder

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
TRIAL_GROUPS: dict[str, type] = {
    "data": DataSpec,
    "arch": ArchSpec,
    "token": TokenSpec,
    "precision": PrecisionSpec,
    "measure": MeasureSpec,
    "train": TrainSpec,
    "runtime": RuntimeSpec,
}
# A user's app learns its Optuna trial number from the environment, its config left alone.
ENV_NUMBER_OVERRIDE = "++hydra.job.env_set.VITSWEEP_TRIAL_NUMBER='{n}'"
SWEEPER_TARGET = "hydra_plugins.vitsweep_sweeper.vitsweep_sweeper.VitsweepSweeper"


def register_configs() -> None:
    """Schemas behind every group: `token.rr=3` fails at compose time naming the key.

    Called by vitsweep's own entry points (the CLI, `compose`), not on import: the sweeper
    plugin imports this module inside any Hydra app, whose groups (`data`, `arch`, ...) must not
    gain vitsweep's `base_*` schemas."""
    cs = ConfigStore.instance()
    for group, spec_cls in {**TRIAL_GROUPS, "tracking": TrackingSpec}.items():
        cs.store(group=group, name=f"base_{group}", node=schema_of(spec_cls))
    sweeper_schema = dataclasses.make_dataclass(
        "VitsweepSweeperConf",
        [("_target_", str, dataclasses.field(default=SWEEPER_TARGET))],
        bases=(schema_of(SweeperSpec),),
    )
    cs.store(group="hydra/sweeper", name="base_vitsweep", node=sweeper_schema)


# ------------------------------------------------------------------------- DictConfig -> specs


def _plain(node: Any) -> Any:
    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_plain(v) for v in node]
    return node


def _integer(cfg: DictConfig, key: str) -> int | None:
    value = cfg.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}={value}: must be an integer")
    return value


# Configs stored before a group existed ran as its default does (runtime: torch, issue #34).
_LATER_GROUPS = ("runtime",)


def trial_spec(cfg: DictConfig) -> TrialSpec:
    groups = {
        g: to_spec(cls, _plain(cfg[g]) if g in cfg or g not in _LATER_GROUPS else {}, g)
        for g, cls in TRIAL_GROUPS.items()
    }
    seed = _integer(cfg, "seed")
    return TrialSpec(
        **groups,
        root=str(cfg.paths.root),
        seed=0 if seed is None else seed,
        trial_number=_integer(cfg, "trial_number"),
    )


_INTERPOLATION = re.compile(r"\$\{([\w.]+)\}")


def _referenced(node: Any) -> set[str]:
    """Keys that some value of an unresolved config interpolates (`${data.image_size}`)."""
    if isinstance(node, dict):
        return set().union(*(_referenced(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_referenced(v) for v in node))
    return set(_INTERPOLATION.findall(node)) if isinstance(node, str) else set()


@dataclasses.dataclass
class _Composed:
    plain: dict[str, dict[str, Any]]  # each trial group, resolved to plain values
    specs: dict[str, Any]  # each trial group as its spec
    referenced: set[str]
    root: str
    seed: int
    trial_number: int | None


class PointSpecs:
    """The `TrialSpec` of each of many points of one study, without composing each: what a
    benchmark that prices 100,000 configurations needs (a compose takes ~0.2 s; this well
    under a millisecond).

    A point's keys that choose a config group (`precision: int8`) are composed, once per
    combination of choices; its other keys are set on that composition's resolved groups,
    which are converted with the same `to_spec` checks as `trial_spec`. Where the composition
    interpolates a key the point sets (`${data.image_size}`), or a key lies outside the trial
    groups, that point is composed whole, as the sweeper's job composes it: the result is the
    same either way (tests/test_config.py holds the two paths equal)."""

    def __init__(self, overrides: typing.Sequence[str]) -> None:
        self.overrides = list(overrides)
        self._composed: dict[tuple[tuple[str, str], ...], _Composed] = {}
        self.composed_whole = 0  # points that needed a whole compose

    def _compose(self, lines: list[str]) -> DictConfig:
        return compose([*self.overrides, *lines])

    def _base(self, choices: dict[str, Any]) -> _Composed:
        key = tuple(sorted((k, format_override(k, v)) for k, v in choices.items()))
        if key not in self._composed:
            cfg = self._compose([format_override(k, v) for k, v in choices.items()])
            spec = trial_spec(cfg)
            groups = {g: getattr(spec, g) for g in TRIAL_GROUPS}
            raw = OmegaConf.to_container(cfg, resolve=False)
            self._composed[key] = _Composed(
                plain={g: _plain(cfg[g]) for g in TRIAL_GROUPS if g in cfg},
                specs=groups,
                referenced=_referenced(raw),
                root=spec.root,
                seed=spec.seed,
                trial_number=spec.trial_number,
            )
        return self._composed[key]

    def spec(self, point: typing.Mapping[str, Any]) -> TrialSpec:
        choices = {k: v for k, v in point.items() if (CONF_DIR / k.replace(".", "/")).is_dir()}
        values = {k: v for k, v in point.items() if k not in choices}
        base = self._base(choices)
        direct = all(
            k.split(".")[0] in base.plain
            and "." in k
            and not any(
                r == k or r.startswith(k + ".") or k.startswith(r + ".") for r in base.referenced
            )
            for k in values
        )
        if not direct:
            self.composed_whole += 1
            lines = [format_override(k, v) for k, v in point.items()]
            return trial_spec(self._compose(lines))
        specs = dict(base.specs)
        for group in {k.split(".")[0] for k in values}:
            node = copy.deepcopy(base.plain[group])
            for k, v in values.items():
                if k.split(".")[0] == group:
                    *path, leaf = k.split(".")[1:]
                    target = node
                    for part in path:
                        target = target.setdefault(part, {})
                    target[leaf] = list(v) if isinstance(v, tuple) else v
            specs[group] = to_spec(TRIAL_GROUPS[group], node, group)
        return TrialSpec(**specs, root=base.root, seed=base.seed, trial_number=base.trial_number)


# What the tensors of a kind=vit checkpoint are laid out by (heads: how qkv splits them).
_VIT_LAYOUT = tuple(
    f"arch.{k}"
    for k in ("timm_name", "img_size", "patch_size", "embed_dim", "depth", "num_heads",
              "mlp_ratio", "head_dim")
)  # fmt: skip


def _check_checkpoint(cfg: DictConfig, swept: typing.Sequence[str]) -> None:
    """A given checkpoint must exist and load, before a study starts trials that all need it;
    a fixed ViT's (kind vit) must also fit the launch's architecture, which a sweep (`swept`:
    its params, empty for a single run) must then not vary: one file holds one architecture."""
    path = OmegaConf.select(cfg, "arch.checkpoint")
    if path is None:
        return
    if not Path(str(path)).is_file():  # before importing torch and timm (5 s) to read it
        raise ConfigError(f"arch.checkpoint={str(path)!r}: no such file")
    from vitsweep.models.checkpoint import readable

    obj = readable(Path(str(path)), key="arch.checkpoint")
    if OmegaConf.select(cfg, "arch.kind") != "vit":
        return  # a supernet file is converted into the space where a trial needs it
    varied = [k for k in swept if k in _VIT_LAYOUT]
    if varied:
        raise ConfigError(
            f"arch.checkpoint={str(path)!r}: one file holds one architecture, but the sweep "
            f"varies {varied[0]}; sweep other keys (token, precision), or search a supernet "
            "(arch=supernet arch.checkpoint=<a supernet file>)"
        )
    from vitsweep.models import check_checkpoint_fits

    check_checkpoint_fits(trial_spec(cfg).arch, obj, str(path))


def _check_data_root(cfg: DictConfig) -> None:
    """A data.root that is not a folder fails at launch, not in every trial's process after
    its start (12 s); the tree inside is checked where it is read (`data.folder`)."""
    root = OmegaConf.select(cfg, "data.root", throw_on_missing=False)
    if isinstance(root, str) and not Path(root).expanduser().is_dir():
        raise ConfigError(f"data.root={root}: not a directory (an ImageFolder tree: train/ val/)")


def _check_root(cfg: DictConfig) -> None:
    """Every output lives under paths.root: a root that cannot be written fails at launch."""
    root = Path(str(cfg.paths.root)).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as e:
        raise ConfigError(
            f"paths.root={root}: not a writable directory ({e.strerror or e})"
        ) from None


def trial_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved trial config (no `hydra` node, so no storage URL): what W&B records."""
    return {k: _plain(cfg[k]) for k in cfg if k != "hydra"}


def is_vitsweep_app(config: DictConfig) -> bool:
    """vitsweep's own trial app composes its trial groups and `paths.root`; any other Hydra
    app is a user's, whose metrics are whatever its task returns."""
    return all(g in config for g in TRIAL_GROUPS) and OmegaConf.select(config, "paths") is not None


def _check_vit_metrics(spec: SweeperSpec) -> None:
    """Our app returns `METRIC_NAMES`: a typo in an objective or constraint fails at launch."""
    numeric = [m for m in METRIC_NAMES if m != "energy_source"]
    for name in spec.objectives:
        if name not in numeric:
            raise ConfigError(
                f"hydra.sweeper.objectives.{name}: not a metric; valid: {', '.join(numeric)}"
            )
    for c in spec.parsed_constraints:
        if c.metric not in numeric:
            raise ConfigError(
                f"hydra.sweeper.constraints: {c.metric!r} is not a metric; "
                f"valid: {', '.join(numeric)}"
            )


def sweeper_spec(raw: Any, *, ours: bool = True, job_name: str | None = None) -> SweeperSpec:
    node = read_plugin_keys(dict(_plain(raw)), job_name)
    spec = to_spec(SweeperSpec, node, "hydra.sweeper")
    if ours:
        _check_vit_metrics(spec)
    return spec


def _custom_search_space(path: str, config: DictConfig, inner: Any) -> Any:
    """hydra-optuna-sweeper's `custom_search_space`: `f(cfg, trial)` suggests more params after
    the flat ones; every param it adds becomes an override (`+w` adds a new key), as there."""
    from hydra.utils import get_method

    try:
        fn = get_method(path)
    except Exception as e:
        raise ConfigError(
            f"hydra.sweeper.custom_search_space={path}: not an importable function "
            f"f(cfg, trial) ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from None

    def hook(trial: Any, base: Any, sampled: dict[str, Any]) -> dict[str, Any]:
        out = dict(inner(trial, base, sampled)) if inner is not None else {}
        before = set(trial.params)
        fn(config, trial)
        out.update({k: v for k, v in trial.params.items() if k not in before})
        return out

    return hook


def _launch_dir(config: DictConfig) -> Path:
    cwd = OmegaConf.select(config, "hydra.runtime.cwd", default=None)
    return Path(str(cwd)) if cwd else Path.cwd()


def _base_config(config: DictConfig) -> dict[str, Any]:
    try:
        return trial_config(config)
    except OmegaConfBaseException:  # a user's config may hold ??? or its own resolvers
        raw = OmegaConf.to_container(config, resolve=False, throw_on_missing=False)
        return {str(k): v for k, v in raw.items() if k != "hydra"}  # type: ignore[union-attr]


def sweep_context(config: DictConfig, raw_sweeper: Any) -> SweepContext:
    """The launch as plain data. vitsweep's own app: its TrialSpec, tracking group and metric
    names. Any other app: no base spec, W&B only with `hydra.sweeper.tracking`, the study
    under `multirun/` in the launch directory."""
    ours = is_vitsweep_app(config)
    node = dict(_plain(raw_sweeper))
    job_name = OmegaConf.select(config, "hydra.job.name", default=None)
    sweeper = sweeper_spec(node, ours=ours, job_name=job_name)
    if ours:
        root = Path(str(config.paths.root)).resolve()
        base = trial_spec(config)
        tracking = to_spec(TrackingSpec, _plain(config.tracking), "tracking")
        base_config = trial_config(config)
    else:
        root = (_launch_dir(config) / "multirun").resolve()
        base = None
        tracking = to_spec(
            TrackingSpec, node.get("tracking") or {"backend": "none"}, "hydra.sweeper.tracking"
        )
        base_config = _base_config(config)
    space = parse_space(sweeper.params, sweeper.space_hook)
    if node.get("custom_search_space"):
        hook = _custom_search_space(str(node["custom_search_space"]), config, space.hook)
        space = dataclasses.replace(space, hook=hook)
    return SweepContext(
        sweeper=sweeper,
        base=base,
        tracking=tracking,
        root=root,
        storage_url=sweeper.storage or default_url(root),
        space=space,
        base_config=base_config,
        columns=METRIC_NAMES if ours else (),
        number_override="trial_number={n}" if ours else ENV_NUMBER_OVERRIDE,
    )


def launch_notes(ctx: SweepContext) -> SweepContext:
    """What the study says when it starts: for vitsweep's own app, that energy is an estimate
    (resolved at sweep time: `measure.device` is only looked for then)."""
    if not isinstance(ctx.base, TrialSpec):
        return ctx
    m, objectives = ctx.base.measure, dict(ctx.sweeper.objectives)

    def notes() -> tuple[str, ...]:
        from vitsweep.measure.energy import estimate_note

        note = estimate_note(m.energy, m.device, m.watts, objectives)
        return (note,) if note else ()

    return dataclasses.replace(ctx, notes=notes)


def recorder(ctx: SweepContext, results_file: Path | None = None) -> StudyRecorder:
    """What the study records, wired from the launch's context: the search room only sees the
    small `Recorder` interface, and the tracking room never sees the search room.
    `results_file`: the launch's optimization_results.yaml (hydra-optuna-sweeper's form)."""
    return StudyRecorder(
        study_name=ctx.sweeper.study_name,
        study_dir=ctx.study_dir,
        objectives=dict(ctx.sweeper.objectives),
        tracking=ctx.tracking,
        summary_config=ctx.summary_config,
        trial_config=ctx.trial_config,
        columns=ctx.columns,
        results_file=results_file,
    )


# ---------------------------------------------------------------------- one-line error handling


def _valid_keys(full_key: str) -> str:
    parent = full_key.rpartition(".")[0]
    if parent in ("hydra.sweeper.objectives", "hydra.sweeper.params", "hydra.sweeper.baseline"):
        return f"; to add one: +{full_key}=<value>"
    group, *inner = parent.split(".")
    spec_cls: Any = {**TRIAL_GROUPS, "tracking": TrackingSpec}.get(group)
    for name in inner:  # down to the spec the key is missing from (train.teacher -> ArchSpec)
        if spec_cls is None:
            break
        hint = typing.get_type_hints(spec_cls).get(name)
        spec_cls = next(
            (t for t in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(t)), None
        )
    if spec_cls is None or not parent:
        return ""
    return "; valid: " + ", ".join(f.name for f in dataclasses.fields(spec_cls))


def config_error_line(e: BaseException) -> str:
    """Hydra's and OmegaConf's multi-line messages, cut to the key, the value and the fix."""
    text = str(e)
    missing = re.search(r"Could not find '([^']+)'", text)
    if isinstance(e, MissingConfigException) and missing and e.options is not None:
        group, _, name = missing.group(1).rpartition("/")
        valid = sorted(o for o in e.options if not o.startswith("base_"))
        return f"{group}={name}: no such option; valid: {', '.join(valid)}"
    if isinstance(e, OverrideParseException):
        return f"{e.override}: {e.message.splitlines()[0]}"
    cause = e.__cause__ or e.__context__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if cause is not None:
        lines += [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
    full_key = next(
        (ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("full_key:")), None
    )
    if full_key and any("not in" in ln for ln in lines):
        return f"{full_key}: unknown key{_valid_keys(full_key)}"
    merging = re.search(r"Error merging override (\S+)", text)
    reason = next((ln for ln in lines if ln.startswith(("Value '", "Invalid", "Key '"))), None)
    if merging and reason:
        return f"{merging.group(1)}: {reason}"
    if full_key and reason:
        return f"{full_key}: {reason}"
    return "; ".join(lines[:2]) if lines else type(e).__name__


def compose(overrides: list[str]) -> DictConfig:
    """The config for `overrides` (no sweeps), hydra node included; errors in one line."""
    from hydra import compose as _compose
    from hydra import initialize_config_dir

    register_configs()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return _compose("config", overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(config_error_line(e)) from None


# Hydra's run modes, of which a command line may name one
_HYDRA_MODES = ("-m", "--multirun", "-r", "--run", "-c", "--cfg", "-i", "--info")


def check(args: list[str]) -> None:
    """Compose and convert everything a launch will use, so that mistakes fail here, in one line."""
    register_configs()  # before Hydra composes (also for --cfg/--help, which return early)
    modes = [a for a in args if a in _HYDRA_MODES]
    if len(modes) > 1:  # else Hydra raises a ValueError of its own, traceback and all
        _fail(
            f"{' '.join(modes)}: one at a time (Hydra runs one of --run, --multirun, --cfg, "
            "--info); to see a study's config: vitsweep <overrides> --cfg job"
        )
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):
        return  # Hydra's own flags (--help, --cfg, -cn ...): let Hydra handle them
    multirun = any(a in ("-m", "--multirun") for a in args)
    words = [a for a in args if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(words)
    except OverrideParseException as e:
        _fail(config_error_line(e))
    sweeps = [o for o in parsed if o.is_sweep_override()]
    for o in sweeps:
        if o.key_or_group.startswith("hydra."):
            key = o.key_or_group.removeprefix("hydra.sweeper.params.")
            _fail(
                f"{o.input_line}: Hydra cannot sweep hydra.* keys; write {key}=<sweep> on the "
                "command line, or put it under hydra.sweeper.params in an experiment"
            )
    if sweeps and not multirun:
        _fail(f"{sweeps[0].input_line}: a sweep needs -m (vitsweep -m ...)")
    try:
        cfg = compose([o.input_line for o in parsed if not o.is_sweep_override()])
        ctx = sweep_context(cfg, cfg.hydra.sweeper).with_cli_params([o.input_line for o in sweeps])
        _check_root(cfg)
        _check_checkpoint(cfg, list(ctx.space.distributions) if multirun else [])
        _check_data_root(cfg)
        for key in ctx.space.distributions:
            _check_param_key(cfg, key)
    except ConfigError as e:
        _fail(str(e))


def _check_param_key(cfg: DictConfig, key: str) -> None:
    if key in TRIAL_GROUPS or key.split(".")[0] == "hydra":
        return
    if OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
        raise ConfigError(f"hydra.sweeper.params.{key}: no such config key")


# ------------------------------------------------------------------------------- entry points


def usage() -> str:
    """`vitsweep --help`: how to call it and the options a user can pick, in vitsweep's words
    (Hydra's own help says "app is powered by Hydra" and lists the schema entries too)."""
    defaults = {}
    for entry in OmegaConf.load(CONF_DIR / "config.yaml").defaults:
        if not isinstance(entry, str):
            for key, value in entry.items():
                defaults[key.removeprefix("override ")] = value
    groups = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra")
    groups += ["hydra/launcher"]
    defaults.setdefault("hydra/launcher", "basic")
    lines = [
        "usage: vitsweep [group=option ...] [key=value ...]   evaluate one candidate",
        "       vitsweep -m [overrides] ['key=choice(a,b)']  run or resume the study",
        "       vitsweep-train | vitsweep-report | vitsweep-export trial=<n>  [overrides]",
        "",
        "options per group (* = default; an experiment overrides some, e.g. xray: arch=supernet):",
    ]
    for group in groups:
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        if group == "hydra/launcher":
            options = sorted({"basic", *options})
        marked = [f"{o}*" if o == defaults.get(group) else o for o in options]
        lines.append(f"  {group:<15} {', '.join(marked)}")
    lines += [
        "",
        "any key: vitsweep --cfg job [overrides] prints the composed config;",
        "the study's keys live under hydra.sweeper.* (README: 'The sweeper').",
    ]
    return "\n".join(lines)
