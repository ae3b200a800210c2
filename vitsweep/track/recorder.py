"""What is recorded of a study, behind the one small interface the search room calls:
`trial_done` after each told trial, `publish` at the end of a launch (or `vitsweep-report`).

The study table is computed once per event and handed to every renderer (the hypervolume
study attribute, the W&B runs, the report files and HTML), like optuna's
`visualization/_pareto_front.py` computes one info object and renders it twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from filelock import FileLock
from optuna.trial import FrozenTrial

from vitsweep import record
from vitsweep.record import Outcome
from vitsweep.spec import TrackingSpec
from vitsweep.track.optuna_results import write_optimization_results
from vitsweep.track.pareto import StudyTable, study_table
from vitsweep.track.report import write_report
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

# (trial, its job's config or None) -> the config its W&B run records (secret-free)
TrialConfig = Callable[[FrozenTrial, dict[str, Any] | None], dict[str, Any]]


class StudyRecorder:
    def __init__(
        self,
        *,
        study_name: str,
        study_dir: Path,
        objectives: dict[str, str],
        tracking: TrackingSpec,
        summary_config: dict[str, Any],
        trial_config: TrialConfig,
        columns: Sequence[str] = (),
        results_file: Path | None = None,
    ) -> None:
        """`columns`: the app's metric names, each a column of every row (vitsweep's own:
        `spec.METRIC_NAMES`); `results_file`: where hydra-optuna-sweeper's
        optimization_results.yaml goes (the launch's sweep dir), None for none."""
        self.study_name, self.study_dir, self.objectives = study_name, study_dir, objectives
        self.summary_config, self.trial_config = summary_config, trial_config
        self.columns, self.results_file = tuple(columns), results_file
        self.tracker = (
            None if tracking.backend == "none" else WandbTracker(tracking, study_name, study_dir)
        )

    def trial_done(self, study: optuna.Study, trial: FrozenTrial, outcome: Outcome) -> None:
        """The study's hypervolume (a study attribute, and a value of the trial's own W&B run)
        and the trial's W&B run, tagged by its place on the front. Runs that left the front are
        retagged, and the summary run's hypervolume line gets its new points, at `publish`:
        reopening finished runs after every trial costs ~0.25 s per reopened run and tripled
        the sweeper's overhead."""
        if self.tracker is None:
            _set_hypervolume(study, self._table(study))
            return
        logged_metrics = dict(outcome.metrics or {})
        if record.fail_reason(trial) is not None:
            logged_metrics[record.FAIL_REASON] = record.fail_reason(trial)
        if record.duplicate_of(trial) is not None:
            logged_metrics[record.DUPLICATE_OF] = record.duplicate_of(trial)
        with wandb_lock(self.study_dir):
            # The front as of now, read under the lock: a trial told by another worker meanwhile
            # is either in it (and this trial is tagged against it) or will retag this one.
            table = self._table(study)
            _set_hypervolume(study, table)
            if table.hypervolume:
                logged_metrics[HYPERVOLUME_ATTR] = table.hypervolume[-1]
            tag = front_tag(trial, table)
            ids = wandb_run_ids(study)
            logged = self.tracker.log_trial(
                trial.number,
                trial.state.name,
                self.trial_config(trial, outcome.config),
                logged_metrics,
                tags=run_tags(trial, tag),
                run_id=ids.trial(trial.number) if ids else None,
            )
            if ids is not None and logged and tag == PARETO:
                now = set(study.user_attrs.get(WANDB_PARETO_ATTR, []))
                study.set_user_attr(WANDB_PARETO_ATTR, sorted(now | {trial.number}))

    def _table(self, study: optuna.Study) -> StudyTable:
        return study_table(study, self.objectives, self.columns)

    def publish(self, study: optuna.Study) -> Path:
        """Rebuild the report from storage; mirror the front to W&B when tracking; write the
        launch's optimization_results.yaml."""
        if self.results_file is not None:
            write_optimization_results(study, self.results_file)
        table = self._table(study)
        extra = self.summary_config
        _set_hypervolume(study, table)
        # Workers that finish together write the same report files through the same temp
        # names; one at a time, or a rename finds its temp file already moved by another.
        self.study_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(self.study_dir / ".report.lock"):
            out = write_report(table, self.study_dir / "report", self.study_name, extra)
        if self.tracker is not None:
            with wandb_lock(self.study_dir):
                ids = wandb_run_ids(study)
                if ids is None:
                    self.tracker.log_summary(table, extra)
                else:
                    sync_front_tags(study, self.tracker, table, ids)
                    done = int(study.user_attrs.get(WANDB_HV_ATTR, 0))
                    if self.tracker.log_summary(table, extra, ids.summary, hv_points(table, done)):
                        study.set_user_attr(WANDB_HV_ATTR, len(table.hypervolume))
        return out


def _set_hypervolume(study: optuna.Study, table: StudyTable) -> None:
    if table.hypervolume:
        study.set_user_attr(HYPERVOLUME_ATTR, table.hypervolume[-1])
