"""Liveness of running trials, and recovery of the ones a killed worker left RUNNING.

Optuna's own heartbeat exists only for RDBStorage (JournalStorage has none), and is wired into
`study.optimize`, not ask/tell. We keep one mechanism for every storage: a thread writes a
timestamp system attribute while the trial runs; any worker fails trials whose stamp is older
than the grace period and, if asked to, re-queues them with the same parameters.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from vitsweep import record

BEAT_ATTR = "vitsweep:heartbeat"


@contextmanager
def beating(study: optuna.Study, trials: list[optuna.Trial], interval: float):
    """Stamp every trial now and every `interval` seconds until the block ends."""
    storage = study._storage  # Optuna exposes no public handle; used read/write-only here
    stop = threading.Event()

    def beat() -> None:
        now = time.time()
        for t in trials:
            try:
                storage.set_trial_system_attr(t._trial_id, BEAT_ATTR, now)
            except (UpdateFinishedTrialError, RuntimeError):
                pass

    def loop() -> None:
        while not stop.wait(interval):
            beat()

    beat()
    thread = threading.Thread(target=loop, name="vitsweep-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _last_beat(t: FrozenTrial) -> float:
    stamp = t.system_attrs.get(BEAT_ATTR)
    if stamp is not None:
        return float(stamp)
    return t.datetime_start.timestamp() if t.datetime_start else time.time()


def recover_stale(study: optuna.Study, grace_period: float, retry: bool) -> list[int]:
    """Fail RUNNING trials silent for longer than `grace_period`; re-queue them if `retry`.

    Returns the numbers of the trials failed here. Safe with many workers: only the worker whose
    state change succeeds re-queues, so a trial is never run twice.
    """
    storage = study._storage
    now = time.time()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if now - _last_beat(t) <= grace_period:
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, record.FAIL_REASON, "stale: worker lost")
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another worker got there first
        failed.append(t.number)
        if retry:
            study.enqueue_trial(
                t.params,
                user_attrs={k: v for k, v in t.user_attrs.items() if k != record.FAIL_REASON}
                | {record.RETRY_OF: t.number},
                skip_if_exists=False,
            )
    return failed
