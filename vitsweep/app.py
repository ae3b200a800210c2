"""The console scripts: `vitsweep` (one trial, or `-m` for the study), `vitsweep-train`,
`vitsweep-report`, `vitsweep-export`. Thin: the doorway (`vitsweep.config`) composes and
converts, the rooms do the work, and every failure ends in one line (`vitsweep.errors`).
Nothing imports this module.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vitsweep import record
from vitsweep.config import (
    CONF_DIR,
    check,
    compose,
    config_error_line,
    recorder,
    sweep_context,
    trial_config,
    trial_spec,
    usage,
)
from vitsweep.errors import fail as _fail
from vitsweep.errors import one_line_errors
from vitsweep.spec import ConfigError


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _task(cfg: DictConfig) -> dict[str, Any]:
    from vitsweep import isolated, trial

    # In a sweep, whatever a trial raises is its fail_reason (the sweeper records it and goes
    # on); alone, it is the command's one-line error.
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    with nullcontext() if in_sweep else one_line_errors():
        spec = trial_spec(cfg)
        if in_sweep and spec.measure.beside == "baseline":
            spec = _with_baseline_beside(cfg, spec)
        metrics = (isolated.run(spec) if spec.measure.isolate else trial.run(spec)).as_dict()
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
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(usage())
        return
    check(sys.argv[1:])
    _task()


def train_main() -> None:
    """`vitsweep-train [overrides]`: train (or resume) the model the composed arch needs; cached."""
    with one_line_errors():
        cfg = compose(sys.argv[1:])
        spec = trial_spec(cfg)
        from vitsweep import trial  # torch and timm: after the config is known to be good

        path = trial.train(spec)
        if spec.arch.kind == "supernet":
            print(f"supernet: {path}")
        else:
            print(f"model for arch.kind={spec.arch.kind} is trained and cached under {spec.root}")


def _load_study(ctx: Any) -> Any:
    """The launch's study from its storage (never created here); a wrong name lists the others."""
    import optuna

    from vitsweep.search.storage import open_storage

    storage = open_storage(ctx.storage_url, create=False)
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
    import yaml

    with one_line_errors():
        cfg = compose(sys.argv[1:])
        ctx = sweep_context(cfg, cfg.hydra.sweeper)
        out = recorder(ctx).publish(_load_study(ctx))
        results = yaml.safe_load((Path(out) / "results.yaml").read_text())
        print(
            f"{results['n_candidates']} distinct candidates measured for a budget of "
            f"{ctx.sweeper.n_trials}; {results['n_duplicates']} repeats told, not run"
        )
        print(f"report: {out}")


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


def _stored_spec(ctx: Any, trial: Any) -> Any:
    """The TrialSpec a finished trial ran, rebuilt from its stored config as it ran (its
    thread count and mixed plan pinned: `trial.as_ran`), under this launch's root."""
    from vitsweep.trial import as_ran

    spec = trial_spec(OmegaConf.create(_trial_config(ctx, trial)))
    return as_ran(dataclasses.replace(spec, root=str(ctx.root)), record.metrics(trial))


def _with_baseline_beside(cfg: DictConfig, spec: Any) -> Any:
    """`measure.beside=baseline`: `spec` with the study's baseline to time beside it, rebuilt
    as `vitsweep-confirm` rebuilds it. The baseline trial itself, and a trial that starts
    before the baseline has finished (another worker's), time alone: their throughput is the
    clock's, and they record no `throughput_x_beside`."""
    from optuna.trial import TrialState

    from vitsweep.spec import Beside

    ctx = sweep_context(cfg, HydraConfig.get().sweeper)
    study = _load_study(ctx)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    base = next((t for t in done if record.is_baseline(t)), None)
    unit = None if base is None else record.metrics(base).get("throughput")
    if base is None or base.number == spec.trial_number or not unit:
        return spec
    return dataclasses.replace(spec, beside=Beside(_stored_spec(ctx, base), unit, base.number))


def _trial_config(ctx: Any, trial: Any) -> dict[str, Any]:
    """The trial's resolved config: stored with it (`config` user attribute), or, for studies
    run before it was stored, its Hydra job's `.hydra/config.yaml` under the study directory."""
    stored = trial.user_attrs.get(record.CONFIG)
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
        raise ConfigError(f"{jobs[-1]}: {config_error_line(e)}") from None


def export_main() -> None:
    """`vitsweep-export [overrides] trial=<n> [export.dir=<dir>]`: write trial n's deployable
    model (weights after ToMe and precision, config, metrics, loading code), load it back and
    re-measure it. The overrides locate the study as for `vitsweep-report`; the model is built
    from the trial's own stored config. Exit 0: the export reproduces the trial's accuracy
    exactly; 1: it does not (files left in `<dir>.partial`); 2: bad input, nothing written."""
    from optuna.trial import TrialState

    raw, out, rest = _export_args(sys.argv[1:])
    with one_line_errors():
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
        metrics = record.metrics(found)
        # torch: once the study and the trial are known to be good (a bad key fails in 0.5 s)
        from vitsweep.export import default_dir, export_trial

        dest = Path(out) if out else default_dir(ctx.root, ctx.sweeper.study_name, number)
        result = export_trial(
            spec,
            config=config,
            metrics=metrics,
            study=ctx.sweeper.study_name,
            number=number,
            out_dir=dest,
        )
    for line in result.checks:
        print(line)
    for name, note in result.formats.items():
        print(f"{name}: {note}")
    if not result.ok:
        _fail(
            f"trial={number}: the export does not reproduce the trial (see above); "
            f"files left in {result.path}",
            code=1,
        )
    print(f"export: {result.path}")


def _confirm_args(args: list[str]) -> tuple[int, int, int, list[str]]:
    """(retrain=K, finetune=K, repeats=F, the rest): the confirm pass's own keys come off
    first."""
    values = {"retrain": 0, "finetune": 0, "repeats": 3}
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
    return values["retrain"], values["finetune"], values["repeats"], rest


def confirm_main() -> None:
    """`vitsweep-confirm [overrides] [retrain=K] [finetune=K] [repeats=F]`: measure the study's
    front again on the test split (throughput with F times the repeats, default 3); retrain=K
    trains the K front architectures best on validation standalone from scratch, finetune=K
    from their inherited weights, beside their inherited accuracy; writes
    report/confirmed.csv and confirmed.yaml, and a `confirmed` W&B table."""
    from optuna.trial import TrialState

    from vitsweep.track.pareto import study_table
    from vitsweep.track.report import write_confirmed

    with one_line_errors():
        retrain, finetune, repeats, rest = _confirm_args(sys.argv[1:])
        cfg = compose(rest)
        ctx = sweep_context(cfg, cfg.hydra.sweeper)
        study = _load_study(ctx)
        table = study_table(study, ctx.sweeper.objectives)
        if table.baseline is None or not table.pareto:
            raise ConfigError(
                f"hydra.sweeper.study_name={ctx.sweeper.study_name}: no complete baseline and "
                "front to confirm yet; run the study first (make sweep)"
            )
        # torch: once the study is known to have a front (a bad key fails in 0.5 s)
        from vitsweep.confirm import Member, confirm, confirmed_hypervolume

        by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
        members = []
        for number in dict.fromkeys([table.baseline, *table.pareto]):
            t = by_number[number]
            if t.state != TrialState.COMPLETE:
                continue
            spec = _stored_spec(ctx, t)  # a mixed plan is rebuilt as the trial chose it
            members.append(Member(number, spec, record.metrics(t), number == table.baseline))
        rows = confirm(members, retrain=retrain, repeat_factor=repeats, finetune=finetune)
        directions = {n: table.objectives[n] for n in table.hv_objectives}
        summary = {
            "sweep_hypervolume": table.hypervolume[-1] if table.hypervolume else None,
            **confirmed_hypervolume(rows, {m.number: m.recorded for m in members}, directions),
        }
        out = write_confirmed(rows, ctx.study_dir / "report", summary)
        tracker = recorder(ctx).tracker
        if tracker is not None:
            from vitsweep.track.wandb_front import wandb_run_ids

            ids = wandb_run_ids(study)
            tracker.log_confirmed(rows, ids.summary if ids is not None else None)
    keys = ["number", "test_accuracy", "test_accuracy_lo", "test_accuracy_hi"]
    keys += ["test_delta_pts", "test_delta_lo_pts", "test_delta_hi_pts", "throughput_x"]
    keys += ["sweep_over_confirmed"]
    keys += ["inside_sweep_interval", "standalone_test_accuracy", "finetuned_test_accuracy"]
    for r in rows:
        print("  ".join(f"{k}={_fmt(r.get(k))}" for k in keys if k in r))
    print(
        f"hypervolume: sweep {_fmt(summary['sweep_hypervolume'])}, confirmed "
        f"{_fmt(summary['confirmed_hypervolume'])} over "
        f"{', '.join(summary['confirmed_hypervolume_objectives'])}"
    )
    print(f"confirmed: {out}")
