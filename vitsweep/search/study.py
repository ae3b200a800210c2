"""Everything one launch of a study needs, as plain data, and the study's open/publish steps."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import optuna
from filelock import FileLock
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.trial import FrozenTrial

from vitsweep import record
from vitsweep.errors import mask_url
from vitsweep.search.loop import Outcome, StudyLoop
from vitsweep.search.samplers import make_sampler
from vitsweep.search.space import SearchSpace, _distribution
from vitsweep.search.spec import SweeperSpec
from vitsweep.search.storage import create_or_load, open_storage
from vitsweep.spec import TrialSpec
from vitsweep.track.pareto import StudyTable, study_table
from vitsweep.track.report import write_report
from vitsweep.track.spec import TrackingSpec
from vitsweep.track.wandb_front import (
    HYPERVOLUME_ATTR,
    WANDB_HV_ATTR,
    WANDB_PARETO_ATTR,
    front_tag,
    run_tags,
    sync_front_tags,
    wandb_lock,
    wandb_run_ids,
)
from vitsweep.track.wandb_log import PARETO, WandbTracker, hv_points

log = logging.getLogger("vitsweep.sweep")


def library_versions() -> dict[str, str]:
    names = ("vitsweep", "torch", "timm", "optuna", "hydra-core", "wandb")
    out = {}
    for n in names:
        try:
            out[n] = version(n)
        except Exception:
            out[n] = "unknown"
    return out


@dataclass(frozen=True)
class SweepContext:
    sweeper: SweeperSpec
    base: TrialSpec  # the launch's composed config (before any trial's params)
    tracking: TrackingSpec
    root: Path
    storage_url: str  # may hold a secret: never log it unmasked
    space: SearchSpace
    base_config: dict[str, Any]  # resolved, secret-free: W&B config of trials whose job failed
    cli_overrides: tuple[str, ...] = ()  # plain command-line overrides, given to every trial
    versions: dict[str, str] = field(default_factory=library_versions)

    @property
    def study_dir(self) -> Path:
        return self.root / self.sweeper.study_name

    def with_cli_params(self, arguments: list[str]) -> SweepContext:
        """Command-line sweeps (`token.r=choice(0,8)`) join the space; plain overrides are kept
        for every trial, since Hydra recomposes each job from its own override list."""
        parser = OverridesParser.create()
        dists = dict(self.space.distributions)
        plain = []
        for o in parser.parse_overrides(arguments):
            if o.is_sweep_override():
                dists[o.key_or_group] = _distribution(o.key_or_group, o)
            else:
                plain.append(o.input_line)
        space = dataclasses.replace(self.space, distributions=dists)
        return dataclasses.replace(self, space=space, cli_overrides=tuple(plain))

    @property
    def summary_config(self) -> dict[str, Any]:
        """The summary run's config and results.yaml's header: secret-free."""
        return {"storage": mask_url(self.storage_url), "n_trials_budget": self.sweeper.n_trials}

    def trial_config(self, trial: FrozenTrial, outcome: Outcome) -> dict[str, Any]:
        config = dict(outcome.config or self.base_config)
        config.update(
            trial_number=trial.number,
            params=dict(trial.params),
            versions=self.versions,
            study=self.sweeper.study_name,
        )
        return config


def after_trial(
    ctx: SweepContext,
    study: optuna.Study,
    tracker: WandbTracker | None,
    trial: FrozenTrial,
    outcome: Outcome,
) -> None:
    """Everything recorded once a trial is told: the study's hypervolume (a study attribute,
    and a value of the trial's own W&B run) and the trial's W&B run, tagged by its place on the
    front. Runs that left the front are retagged, and the summary run's hypervolume line gets
    its new points, at `publish` (end of a launch, or `vitsweep-report`): reopening finished
    runs after every trial costs ~0.25 s per reopened run and tripled the sweeper's overhead."""
    if tracker is None:
        _set_hypervolume(study, study_table(study, ctx.sweeper.objectives))
        return
    metrics = dict(outcome.metrics or {})
    if record.fail_reason(trial) is not None:
        metrics[record.FAIL_REASON] = record.fail_reason(trial)
    with wandb_lock(ctx.study_dir):
        # The front as of now, read under the lock: a trial told by another worker meanwhile
        # is either in it (and this trial is tagged against it) or will retag this one itself.
        table = study_table(study, ctx.sweeper.objectives)
        _set_hypervolume(study, table)
        if table.hypervolume:
            metrics[HYPERVOLUME_ATTR] = table.hypervolume[-1]
        tag = front_tag(trial, table)
        ids = wandb_run_ids(study)
        logged = tracker.log_trial(
            trial.number,
            trial.state.name,
            ctx.trial_config(trial, outcome),
            metrics,
            tags=run_tags(trial, tag),
            run_id=ids.trial(trial.number) if ids else None,
        )
        if ids is None:
            return
        if logged and tag == PARETO:
            now = set(study.user_attrs.get(WANDB_PARETO_ATTR, []))
            study.set_user_attr(WANDB_PARETO_ATTR, sorted(now | {trial.number}))


def _set_hypervolume(study: optuna.Study, table: StudyTable) -> None:
    if table.hypervolume:
        study.set_user_attr(HYPERVOLUME_ATTR, table.hypervolume[-1])


def make_tracker(ctx: SweepContext) -> WandbTracker | None:
    if ctx.tracking.backend == "none":
        return None
    return WandbTracker(ctx.tracking, ctx.sweeper.study_name, ctx.study_dir)


def open_study(ctx: SweepContext) -> tuple[optuna.Study, Any]:
    """Create or resume the study; a new study gets the baseline as its first trial."""
    spec = ctx.sweeper
    storage = open_storage(ctx.storage_url)
    sampler = make_sampler(spec.sampler, ctx.space)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study, created = create_or_load(
            storage, spec.study_name, list(spec.objectives.values()), sampler
        )
    if created:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(spec.objectives))
        study.set_user_attr(record.STUDY_STORAGE, mask_url(ctx.storage_url))
        if spec.enqueue_baseline:
            study.enqueue_trial({}, user_attrs={record.BASELINE: True})
    log.info(
        "study %r on %s: %s, budget %d complete trials",
        spec.study_name,
        mask_url(ctx.storage_url),
        "created" if created else "resumed",
        spec.n_trials,
    )
    from vitsweep.measure.energy import estimate_note

    m = ctx.base.measure
    note = estimate_note(m.energy, m.device, m.watts, spec.objectives)
    if note:
        log.warning(note)
    return study, make_tracker(ctx)


def publish(ctx: SweepContext, study: optuna.Study, tracker: WandbTracker | None) -> Path:
    """Rebuild the report from storage; mirror the front to W&B when tracking."""
    table = study_table(study, ctx.sweeper.objectives)
    extra = ctx.summary_config
    _set_hypervolume(study, table)
    # Workers that finish together write the same report files through the same temp names;
    # one at a time, or a rename finds its temp file already moved by another worker.
    ctx.study_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(ctx.study_dir / ".report.lock"):
        out = write_report(table, ctx.study_dir / "report", ctx.sweeper.study_name, extra)
    if tracker is not None:
        with wandb_lock(ctx.study_dir):
            ids = wandb_run_ids(study)
            if ids is None:
                tracker.log_summary(table, extra)
            else:
                sync_front_tags(study, tracker, table, ids)
                done = int(study.user_attrs.get(WANDB_HV_ATTR, 0))
                if tracker.log_summary(table, extra, ids.summary, hv_points(table, done)):
                    study.set_user_attr(WANDB_HV_ATTR, len(table.hypervolume))
    return out


def run_study(ctx: SweepContext, launch: Callable[[list[list[str]]], list[Outcome]]) -> list[int]:
    """Open (or resume) the study, run it to its budget with `launch`, then publish its report
    whatever happened; the numbers of the trials run here. The Hydra sweeper is this plus
    Hydra's launcher; tests give their own `launch`."""
    study, tracker = open_study(ctx)
    loop = StudyLoop(
        ctx.sweeper,
        study,
        ctx.space,
        ctx.base,
        launch,
        on_trial=lambda t, o: after_trial(ctx, study, tracker, t, o),
        prefix=ctx.cli_overrides,
    )
    try:
        return loop.run()
    finally:
        report = publish(ctx, study, tracker)
        log.info("report: %s", Path(report).resolve())
