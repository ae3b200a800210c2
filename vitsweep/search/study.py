"""Everything one launch of a study needs, as plain data; opening the study and running it,
handing each finished trial to a `Recorder`."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, Protocol

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.trial import FrozenTrial

from vitsweep import record
from vitsweep.errors import mask_url
from vitsweep.search.loop import Outcome, StudyLoop, candidates
from vitsweep.search.samplers import make_sampler
from vitsweep.search.space import SearchSpace, _distribution
from vitsweep.search.spec import SweeperSpec
from vitsweep.search.storage import create_or_load, open_storage
from vitsweep.spec import TrackingSpec

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
    base: Any  # what the app's space hook reads (vitsweep's own app: its TrialSpec); else None
    tracking: TrackingSpec
    root: Path
    storage_url: str  # may hold a secret: never log it unmasked
    space: SearchSpace
    base_config: dict[str, Any]  # resolved, secret-free: W&B config of trials whose job failed
    cli_overrides: tuple[str, ...] = ()  # plain command-line overrides, given to every trial
    # ... but the baseline, which gets those its own config has keys for (None: all of them)
    baseline_cli: tuple[str, ...] | None = None
    # what the app wants said at launch (e.g. energy is an estimate), asked once the study is
    # open: vitsweep's note imports torch (2 s), which a launch refused by its storage never needs
    notes: Callable[[], tuple[str, ...]] = tuple
    columns: tuple[str, ...] = ()  # the app's metric names: a column of every report row
    # The override that tells a job its Optuna trial number (vitsweep's app: a config key; any
    # other app: the environment variable VITSWEEP_TRIAL_NUMBER, its config left alone).
    number_override: str = "trial_number={n}"
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
                # get_key_element keeps a `+`: `+x=interval(0,1)` adds x, as in the plugin
                dists[o.get_key_element()] = _distribution(o.get_key_element(), o)
            else:
                plain.append(o.input_line)
        space = dataclasses.replace(self.space, distributions=dists)
        return dataclasses.replace(self, space=space, cli_overrides=tuple(plain))

    @property
    def summary_config(self) -> dict[str, Any]:
        """The summary run's config and results.yaml's header: secret-free."""
        return {"storage": mask_url(self.storage_url), "n_trials_budget": self.sweeper.n_trials}

    def trial_config(self, trial: FrozenTrial, job_config: dict[str, Any] | None) -> dict[str, Any]:
        config = dict(job_config or self.base_config)
        config.update(
            trial_number=trial.number,
            params=dict(trial.params),
            versions=self.versions,
            study=self.sweeper.study_name,
        )
        return config


def open_study(ctx: SweepContext) -> optuna.Study:
    """Create or resume the study; a new study gets the baseline as its first trial."""
    spec = ctx.sweeper
    storage = open_storage(ctx.storage_url)
    sampler = make_sampler(spec.sampler, ctx.space, spec.parsed_constraints)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study, created = create_or_load(
            storage,
            spec.study_name,
            list(spec.objectives.values()),
            sampler,
            metric_names=list(spec.objectives),
        )
    if created:
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
    return study


class Recorder(Protocol):
    """What the search room hands each finished trial to, and asks to publish at the end of a
    launch; `vitsweep.track.recorder.StudyRecorder` is the one the doorway wires in."""

    def trial_done(self, study: optuna.Study, trial: FrozenTrial, outcome: Outcome) -> None: ...

    def publish(self, study: optuna.Study) -> Path: ...


def run_study(
    ctx: SweepContext,
    launch: Callable[[list[list[str]]], list[Outcome]],
    recorder: Recorder,
) -> list[int]:
    """Open (or resume) the study, run it to its budget with `launch`, then publish its report
    whatever happened; the numbers of the trials run here. The Hydra sweeper is this plus
    Hydra's launcher; tests give their own `launch`."""
    study = open_study(ctx)
    for note in ctx.notes():
        log.warning(note)
    loop = StudyLoop(
        ctx.sweeper,
        study,
        ctx.space,
        ctx.base,
        launch,
        on_trial=lambda t, o: recorder.trial_done(study, t, o),
        prefix=ctx.cli_overrides,
        baseline_prefix=ctx.baseline_cli,
        number_override=ctx.number_override,
    )
    try:
        ran = loop.run()
        trials = study.get_trials(deepcopy=False)
        repeats = sum(record.duplicate_of(t) is not None for t in trials)
        log.info(
            "the budget of %d bought %d distinct candidates; %d proposals repeated a measured "
            "configuration and cost nothing",
            ctx.sweeper.n_trials,
            len(candidates(trials)),
            repeats,
        )
        return ran
    finally:
        report = recorder.publish(study)
        log.info("report: %s", Path(report).resolve())
