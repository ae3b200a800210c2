"""The doorway: Hydra entry points, and the only code that turns DictConfig into plain specs.

Console scripts: `vitsweep` (one trial, or `-m` for the study), `vitsweep-train`,
`vitsweep-report`, `vitsweep-export`. Every bad key, option or value is reported in one line
naming it, with a non-zero exit, before anything is trained, stored or logged.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vitsweep.configschema import schema_of, to_spec
from vitsweep.search.spec import SweeperSpec
from vitsweep.spec import (
    ArchSpec,
    ConfigError,
    DataSpec,
    MeasureSpec,
    PrecisionSpec,
    TokenSpec,
    TrainSpec,
    TrialSpec,
)
from vitsweep.track.spec import TrackingSpec

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
TRIAL_GROUPS: dict[str, type] = {
    "data": DataSpec,
    "arch": ArchSpec,
    "token": TokenSpec,
    "precision": PrecisionSpec,
    "measure": MeasureSpec,
    "train": TrainSpec,
}
SWEEPER_TARGET = "hydra_plugins.vitsweep_sweeper.vitsweep_sweeper.VitsweepSweeper"
log = logging.getLogger("vitsweep")


def register_configs() -> None:
    """Schemas behind every group: `token.rr=3` fails at compose time naming the key."""
    cs = ConfigStore.instance()
    for group, spec_cls in {**TRIAL_GROUPS, "tracking": TrackingSpec}.items():
        cs.store(group=group, name=f"base_{group}", node=schema_of(spec_cls))
    sweeper_schema = dataclasses.make_dataclass(
        "VitsweepSweeperConf",
        [("_target_", str, dataclasses.field(default=SWEEPER_TARGET))],
        bases=(schema_of(SweeperSpec),),
    )
    cs.store(group="hydra/sweeper", name="base_vitsweep", node=sweeper_schema)


register_configs()


# ------------------------------------------------------------------------- DictConfig -> specs


def _plain(node: Any) -> Any:
    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_plain(v) for v in node]
    return node


def trial_spec(cfg: DictConfig) -> TrialSpec:
    groups = {g: to_spec(cls, _plain(cfg[g]), g) for g, cls in TRIAL_GROUPS.items()}
    number = cfg.get("trial_number")
    return TrialSpec(
        **groups,
        root=str(cfg.paths.root),
        seed=int(cfg.seed),
        trial_number=None if number is None else int(number),
    )


def trial_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved trial config (no `hydra` node, so no storage URL): what W&B records."""
    return {k: _plain(cfg[k]) for k in cfg if k != "hydra"}


def sweeper_spec(raw: Any) -> SweeperSpec:
    node = {k: v for k, v in _plain(raw).items() if k != "_target_"}
    return to_spec(SweeperSpec, node, "hydra.sweeper")


def sweep_context(config: DictConfig, raw_sweeper: Any):
    from vitsweep.search.space import parse_space
    from vitsweep.search.storage import default_url
    from vitsweep.search.study import SweepContext

    sweeper = sweeper_spec(raw_sweeper)
    root = Path(str(config.paths.root)).resolve()
    return SweepContext(
        sweeper=sweeper,
        base=trial_spec(config),
        tracking=to_spec(TrackingSpec, _plain(config.tracking), "tracking"),
        root=root,
        storage_url=sweeper.storage or default_url(root),
        space=parse_space(sweeper.params, sweeper.space_hook),
        base_config=trial_config(config),
    )


# ---------------------------------------------------------------------- one-line error handling


def _valid_keys(full_key: str) -> str:
    parent = full_key.rpartition(".")[0]
    if parent in ("hydra.sweeper.objectives", "hydra.sweeper.params", "hydra.sweeper.baseline"):
        return f"; to add one: +{full_key}=<value>"
    group = full_key.split(".")[0]
    spec_cls = {**TRIAL_GROUPS, "tracking": TrackingSpec}.get(group)
    if spec_cls is None or "." not in full_key:
        return ""
    return "; valid: " + ", ".join(f.name for f in dataclasses.fields(spec_cls))


def _one_line(e: BaseException) -> str:
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


def _fail(message: str, code: int = 2) -> None:
    from vitsweep.search.storage import mask_url

    print(f"vitsweep: error: {mask_url(message)}", file=sys.stderr)
    raise SystemExit(code)


def compose(overrides: list[str]) -> DictConfig:
    """The config for `overrides` (no sweeps), hydra node included; errors in one line."""
    from hydra import compose as _compose
    from hydra import initialize_config_dir

    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return _compose("config", overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(_one_line(e)) from None


def check(args: list[str]) -> None:
    """Compose and convert everything a launch will use, so that mistakes fail here, in one line."""
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):
        return  # Hydra's own flags (--help, --cfg, -cn ...): let Hydra handle them
    multirun = any(a in ("-m", "--multirun") for a in args)
    words = [a for a in args if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(words)
    except OverrideParseException as e:
        _fail(_one_line(e))
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


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _task(cfg: DictConfig) -> dict[str, Any]:
    from vitsweep import trial

    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        spec = trial_spec(cfg)
        metrics = trial.run(spec).as_dict()
    except ConfigError as e:
        if in_sweep:
            raise  # the sweeper records it as the trial's fail_reason
        _fail(str(e))
    label = f"trial {spec.trial_number}" if spec.trial_number is not None else "result"
    from vitsweep.measure.accuracy import TEST_FLAGS_KEY

    shown = {k: v for k, v in metrics.items() if k != TEST_FLAGS_KEY}  # per-image bits: stored
    width = max(map(len, shown))
    lines = [f"{k:<{width}}  {_fmt(v)}" for k, v in shown.items()]
    print(f"[{label}]\n" + "\n".join(lines), flush=True)
    return {"metrics": metrics, "config": trial_config(cfg)}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def main() -> None:
    """`vitsweep [overrides]` (one candidate) and `vitsweep -m [overrides]` (the study)."""
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    check(sys.argv[1:])
    _task()


def train_main() -> None:
    """`vitsweep-train [overrides]`: train (or resume) the model the composed arch needs; cached."""
    from vitsweep import data, models

    try:
        cfg = compose(sys.argv[1:])
        spec = trial_spec(cfg)
        splits = data.load(spec.data, data.data_dir(spec.root))
        if spec.arch.kind == "supernet":
            path = models.train_supernet(
                spec.arch.space,
                spec.data,
                spec.train,
                splits,
                spec.root,
                patch_size=spec.arch.patch_size,
                img_size=spec.arch.img_size,
            )
            print(f"supernet: {path}")
        else:
            models.build_model(spec.arch, spec.train, spec.data, splits, spec.root)
            print(f"model for arch.kind={spec.arch.kind} is trained and cached under {spec.root}")
    except ConfigError as e:
        _fail(str(e))


def _load_study(ctx: Any) -> Any:
    """The launch's study from its storage (never created here); a wrong name lists the others."""
    import optuna

    from vitsweep.search.storage import open_storage

    storage = open_storage(ctx.storage_url)
    try:
        return optuna.load_study(study_name=ctx.sweeper.study_name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise ConfigError(
            f"hydra.sweeper.study_name={ctx.sweeper.study_name}: no such study in storage; "
            f"found: {', '.join(names) or 'none'}"
        ) from None


def report_main() -> None:
    """`vitsweep-report [overrides]`: rebuild the study's report from its storage, any time."""
    from vitsweep.search.study import make_tracker, publish

    try:
        cfg = compose(sys.argv[1:])
        ctx = sweep_context(cfg, cfg.hydra.sweeper)
        out = publish(ctx, _load_study(ctx), make_tracker(ctx))
        print(f"report: {out}")
    except ConfigError as e:
        _fail(str(e))


def _ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8' (how valid trial numbers are listed in errors)."""
    spans: list[list[int]] = []
    for n in sorted(numbers):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans) or "none"


def _export_args(args: list[str]) -> tuple[str | None, str | None, list[str]]:
    """(trial=, export.dir=, the rest): the two keys that are not config keys come off first."""
    trial = out = None
    rest = []
    for a in args:
        if a.startswith("trial="):
            trial = a.removeprefix("trial=")
        elif a.startswith("export.dir="):
            out = a.removeprefix("export.dir=")
        else:
            rest.append(a)
    return trial, out, rest


def _trial_config(ctx: Any, trial: Any) -> dict[str, Any]:
    """The trial's resolved config: stored with it (`config` user attribute), or, for studies
    run before it was stored, its Hydra job's `.hydra/config.yaml` under the study directory."""
    from vitsweep.search.loop import CONFIG_ATTR

    stored = trial.user_attrs.get(CONFIG_ATTR)
    if isinstance(stored, dict):
        return stored
    jobs = sorted(ctx.study_dir.glob(f"*/trial-{trial.number}/.hydra/config.yaml"))
    if not jobs:
        raise ConfigError(
            f"trial={trial.number}: the study stored no config for it and its job directory "
            f"({ctx.study_dir}/*/trial-{trial.number}/.hydra/config.yaml) is gone"
        )
    try:
        return trial_config(OmegaConf.load(jobs[-1]))
    except OmegaConfBaseException as e:
        raise ConfigError(f"{jobs[-1]}: {_one_line(e)}") from None


def export_main() -> None:
    """`vitsweep-export [overrides] trial=<n> [export.dir=<dir>]`: write trial n's deployable
    model (weights after ToMe and precision, config, metrics, loading code), load it back and
    re-measure it. The overrides locate the study as for `vitsweep-report`; the model is built
    from the trial's own stored config. Exit 0: the export reproduces the trial's accuracy
    exactly; 1: it does not (files left in `<dir>.partial`); 2: bad input, nothing written."""
    from optuna.trial import TrialState

    from vitsweep.export import default_dir, export_trial, trial_metrics

    raw, out, rest = _export_args(sys.argv[1:])
    try:
        cfg = compose(rest)
        ctx = sweep_context(cfg, cfg.hydra.sweeper)
        study = _load_study(ctx)
        trials = study.get_trials(deepcopy=False)
        complete = [t.number for t in trials if t.state == TrialState.COMPLETE]
        valid = f"complete trials of study {ctx.sweeper.study_name!r}: {_ranges(complete)}"
        if raw is None:
            raise ConfigError(
                f"trial: missing; usage: vitsweep-export [overrides] trial=<n>; {valid}"
            )
        if not re.fullmatch(r"\d+", raw.strip()):
            raise ConfigError(f"trial={raw}: not a trial number; {valid}")
        number = int(raw)
        found = next((t for t in trials if t.number == number), None)
        if found is None:
            raise ConfigError(f"trial={number}: no such trial; {valid}")
        if found.state != TrialState.COMPLETE:
            raise ConfigError(f"trial={number}: is {found.state.name}, not COMPLETE; {valid}")
        config = _trial_config(ctx, found)
        spec = trial_spec(OmegaConf.create(config))
        # The weights it was built from are cached under this launch's root, wherever it is now.
        spec = dataclasses.replace(spec, root=str(ctx.root))
        metrics = trial_metrics(found.user_attrs)
        dest = Path(out) if out else default_dir(ctx.root, ctx.sweeper.study_name, number)
        result = export_trial(
            spec,
            config=config,
            metrics=metrics,
            study=ctx.sweeper.study_name,
            number=number,
            out_dir=dest,
        )
    except ConfigError as e:
        _fail(str(e))
    for check in result.checks:
        print(check)
    for name, note in result.formats.items():
        print(f"{name}: {note}")
    if not result.ok:
        _fail(
            f"trial={number}: the export does not reproduce the trial (see above); "
            f"files left in {result.path}",
            code=1,
        )
    print(f"export: {result.path}")


def _confirm_args(args: list[str]) -> tuple[int, int, list[str]]:
    """(retrain=K, repeats=F, the rest): the confirm pass's own keys come off first."""
    values = {"retrain": 0, "repeats": 3}
    rest = []
    for a in args:
        key, _, value = a.partition("=")
        if key in values:
            if not re.fullmatch(r"\d+", value.strip()):
                raise ConfigError(f"{a}: {key} must be a whole number (e.g. {key}=3)")
            values[key] = int(value)
        else:
            rest.append(a)
    if values["repeats"] < 1:
        raise ConfigError(f"repeats={values['repeats']}: must be >= 1")
    return values["retrain"], values["repeats"], rest


def confirm_main() -> None:
    """`vitsweep-confirm [overrides] [retrain=K] [repeats=F]`: measure the study's front again
    on the test split (throughput with F times the repeats, default 3), and with retrain=K train
    the K front architectures best on validation standalone from scratch beside their inherited
    accuracy; writes report/confirmed.csv and confirmed.yaml, and a `confirmed` W&B table."""
    from optuna.trial import TrialState

    from vitsweep.confirm import Member, confirm
    from vitsweep.search.study import make_tracker
    from vitsweep.track.pareto import study_table
    from vitsweep.track.report import write_confirmed

    try:
        retrain, repeats, rest = _confirm_args(sys.argv[1:])
        cfg = compose(rest)
        ctx = sweep_context(cfg, cfg.hydra.sweeper)
        study = _load_study(ctx)
        table = study_table(study, ctx.sweeper.objectives)
        if table.baseline is None or not table.pareto:
            raise ConfigError(
                f"hydra.sweeper.study_name={ctx.sweeper.study_name}: no complete baseline and "
                "front to confirm yet; run the study first (make sweep)"
            )
        by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
        members = []
        for number in dict.fromkeys([table.baseline, *table.pareto]):
            t = by_number[number]
            if t.state != TrialState.COMPLETE:
                continue
            spec = trial_spec(OmegaConf.create(_trial_config(ctx, t)))
            spec = dataclasses.replace(spec, root=str(ctx.root))
            members.append(Member(number, spec, dict(t.user_attrs), number == table.baseline))
    except ConfigError as e:
        _fail(str(e))
    rows = confirm(members, retrain=retrain, repeat_factor=repeats)
    out = write_confirmed(rows, ctx.study_dir / "report")
    tracker = make_tracker(ctx)
    if tracker is not None:
        from vitsweep.track.wandb_front import wandb_run_ids

        ids = wandb_run_ids(study)
        tracker.log_confirmed(rows, ids.summary if ids is not None else None)
    keys = ["number", "test_accuracy", "test_accuracy_lo", "test_accuracy_hi"]
    keys += ["test_delta_pts", "test_delta_lo_pts", "test_delta_hi_pts", "throughput_x"]
    keys += ["inside_sweep_interval", "standalone_test_accuracy"]
    for r in rows:
        print("  ".join(f"{k}={_fmt(r.get(k))}" for k in keys if k in r))
    print(f"confirmed: {out}")
