"""Everything one launch of a study needs, as plain data, and the study's open/publish steps."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import optuna
from filelock import FileLock
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.trial import FrozenTrial

from vitsweep.search.loop import BASELINE_ATTR, Outcome
from vitsweep.search.samplers import make_sampler
from vitsweep.search.space import SearchSpace, _distribution
from vitsweep.search.spec import SweeperSpec
from vitsweep.search.storage import create_or_load, mask_url, open_storage
from vitsweep.spec import TrialSpec
from vitsweep.track.pareto import study_table
from vitsweep.track.report import write_report
from vitsweep.track.spec import TrackingSpec

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

    def log_trial(self, tracker, trial: FrozenTrial, outcome: Outcome) -> None:
        if tracker is None:
            return
        config = dict(outcome.config or self.base_config)
        config.update(
            trial_number=trial.number,
            params=dict(trial.params),
            versions=self.versions,
            study=self.sweeper.study_name,
        )
        metrics = dict(outcome.metrics or {})
        if "fail_reason" in trial.user_attrs:
            metrics["fail_reason"] = trial.user_attrs["fail_reason"]
        tags = ["baseline"] if trial.user_attrs.get(BASELINE_ATTR) else []
        tracker.log_trial(trial.number, trial.state.name, config, metrics, tags=tags)


def make_tracker(ctx: SweepContext):
    if ctx.tracking.backend == "none":
        return None
    from vitsweep.track.wandb_log import WandbTracker

    return WandbTracker(ctx.tracking, ctx.sweeper.study_name, ctx.study_dir)


def open_study(ctx: SweepContext) -> tuple[optuna.Study, Any]:
    """Create or resume the study; a new study gets the baseline as its first trial."""
    spec = ctx.sweeper
    storage = open_storage(ctx.storage_url)
    sampler = make_sampler(spec.sampler, ctx.space, constrained=bool(spec.constraints))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study, created = create_or_load(
            storage, spec.study_name, list(spec.objectives.values()), sampler
        )
    if created:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(spec.objectives))
        study.set_user_attr("storage", mask_url(ctx.storage_url))
        if spec.enqueue_baseline:
            study.enqueue_trial({}, user_attrs={BASELINE_ATTR: True})
    log.info(
        "study %r on %s: %s, budget %d complete trials",
        spec.study_name,
        mask_url(ctx.storage_url),
        "created" if created else "resumed",
        spec.n_trials,
    )
    return study, make_tracker(ctx)


def publish(ctx: SweepContext, study: optuna.Study, tracker) -> Path:
    """Rebuild the report from storage; mirror the front to W&B when tracking."""
    table = study_table(study, ctx.sweeper.objectives)
    extra = {"storage": mask_url(ctx.storage_url), "n_trials_budget": ctx.sweeper.n_trials}
    if table.hypervolume:
        study.set_user_attr("hypervolume", table.hypervolume[-1])
    # Workers that finish together write the same report files through the same temp names;
    # one at a time, or a rename finds its temp file already moved by another worker.
    ctx.study_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(ctx.study_dir / ".report.lock"):
        out = write_report(table, ctx.study_dir / "report", ctx.sweeper.study_name, extra)
    if tracker is not None:
        tracker.log_summary(table.rows, list(table.objectives), table.headline, extra)
    return out
