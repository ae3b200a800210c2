"""Where the W&B runs of a study stand against its front: stable run ids, one front tag per
complete trial run, and the study attributes that say what W&B already shows, so that a later
trial, launch or worker changes only what changed (runs are reopened, never rewritten)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import optuna
from filelock import FileLock
from optuna.trial import FrozenTrial, TrialState

from vitsweep import record
from vitsweep.track.pareto import StudyTable
from vitsweep.track.wandb_log import (
    BASELINE,
    DOMINATED,
    DUPLICATE,
    INFEASIBLE,
    PARETO,
    RunIds,
    WandbTracker,
)

HYPERVOLUME_ATTR = "hypervolume"
WANDB_PARETO_ATTR = "wandb_pareto"  # trial numbers whose W&B run carries the tag `pareto`
WANDB_HV_ATTR = "wandb_hv_points"  # hypervolume points already on the summary run's line


def wandb_run_ids(study: optuna.Study) -> RunIds | None:
    """Stable W&B run ids for this study, the same in every worker and launch; None before the
    study's first trial has started.

    The key hashes the study name with trial 0's start time: a study recreated under the same
    name (after `make clean`) gets new runs instead of reopening the old study's. Derived, not
    stored, so that workers starting together cannot disagree about it.
    """
    first = next((t for t in study.get_trials(deepcopy=False) if t.number == 0), None)
    if first is None or first.datetime_start is None:
        return None
    seed = f"{study.study_name}|{first.datetime_start.isoformat()}"
    return RunIds("vs-" + hashlib.sha1(seed.encode()).hexdigest()[:10])


def front_tag(trial: FrozenTrial, table: StudyTable) -> str | None:
    """Exactly one of pareto/dominated/infeasible/duplicate for a complete trial: W&B cannot
    empty a resumed run's tags, so a trial leaving the front must swap `pareto` for another tag.
    A duplicate (its twin holds its place on the front) keeps its tag for good."""
    if trial.state != TrialState.COMPLETE:
        return None
    if trial.number in table.pareto:
        return PARETO
    if not record.is_feasible(trial):
        return INFEASIBLE
    if record.duplicate_of(trial) is not None:
        return DUPLICATE
    return DOMINATED


def run_tags(trial: FrozenTrial, front_tag: str | None) -> list[str]:
    tags = [BASELINE] if record.is_baseline(trial) else []
    return tags + ([front_tag] if front_tag else [])


def wandb_lock(study_dir: Path) -> FileLock:
    """Workers sharing the W&B directory reopen the same runs: one at a time, or two reopenings
    of one run id in the same second share a directory name and corrupt each other's file."""
    study_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(study_dir / ".wandb.lock")


def sync_front_tags(
    study: optuna.Study, tracker: WandbTracker, table: StudyTable, ids: RunIds
) -> None:
    """Trials that left the front lose `pareto` (they become `dominated`): their finished runs
    are reopened. A trial never rejoins the front, so tags only ever move that way."""
    tagged = set(study.user_attrs.get(WANDB_PARETO_ATTR, []))
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    retagged = []
    for n in sorted(tagged - set(table.pareto)):
        tag = front_tag(trials[n], table) if n in trials else None
        if tag is None or tracker.retag_trial(n, ids.trial(n), run_tags(trials[n], tag)):
            retagged.append(n)  # retagged, or no longer a complete trial: stop tracking it
    if retagged:
        # Re-read just before writing: a worker on another machine may have added its trial.
        now = set(study.user_attrs.get(WANDB_PARETO_ATTR, []))
        study.set_user_attr(WANDB_PARETO_ATTR, sorted(now - set(retagged)))
