"""The study loop: ask -> overrides -> launch -> tell, until the study's budget is met.

No Hydra here: `launch` is any callable that runs a batch of override lists and returns one
`Outcome` each, which is what tests and the Hydra sweeper both provide.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from vitsweep import record
from vitsweep.errors import Fatal
from vitsweep.record import Outcome
from vitsweep.search.heartbeat import beating, recover_stale
from vitsweep.search.space import SearchSpace, format_override
from vitsweep.search.spec import SweeperSpec

log = logging.getLogger("vitsweep.sweep")


class StudyFailed(Fatal):
    """The failure budget is spent; the study stops (its trials stay in storage)."""


def failure_budget(spec: SweeperSpec) -> int:
    return math.floor(spec.max_failure_rate * spec.n_trials)


def counted_failures(trials: list[FrozenTrial]) -> int:
    """Failures of the candidates themselves; trials of killed workers do not count."""
    return sum(
        1
        for t in trials
        if t.state == TrialState.FAIL and record.fail_reason(t) and not record.is_stale_failure(t)
    )


def candidates(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The COMPLETE trials that measured a configuration of their own: what the budget buys.
    A repeat (`duplicate_of`) is told its twin's values and costs neither budget nor time."""
    return [t for t in trials if t.state == TrialState.COMPLETE and record.duplicate_of(t) is None]


def repeats_in_a_row(trials: list[FrozenTrial]) -> int:
    """How many of the newest finished proposals repeated an earlier configuration."""
    n = 0
    for t in sorted(trials, key=lambda t: t.number, reverse=True):
        if t.state != TrialState.COMPLETE:
            continue
        if record.duplicate_of(t) is None:
            break
        n += 1
    return n


class StudyLoop:
    def __init__(
        self,
        spec: SweeperSpec,
        study: optuna.Study,
        space: SearchSpace,
        base: Any,
        launch: Callable[[list[list[str]]], list[Outcome]],
        on_trial: Callable[[FrozenTrial, Outcome], None] = lambda t, o: None,
        prefix: tuple[str, ...] = (),
        number_override: str = "trial_number={n}",
        baseline_prefix: tuple[str, ...] | None = None,
    ) -> None:
        self.spec, self.study, self.space, self.base = spec, study, space, base
        self.launch, self.on_trial = launch, on_trial
        self.prefix = list(prefix)  # overrides every trial gets (the command line's) ...
        # ... but the baseline: it gets those that apply to its own config (None: all)
        self.baseline_prefix = self.prefix if baseline_prefix is None else list(baseline_prefix)
        self.number_override = number_override  # how the job learns its Optuna trial number
        self.objectives = list(spec.objectives)
        self.constraints = spec.parsed_constraints
        self.ran: list[int] = []

    def run(self) -> list[int]:
        """Run trials until the study holds `n_trials` distinct measured candidates (repeats of
        a finished configuration are told, not counted); return the numbers run here."""
        spec = self.spec
        while True:
            stale = recover_stale(self.study, spec.grace_period, spec.on_stale == "retry")
            if stale:
                log.warning("recovered stale trials %s (%s)", stale, spec.on_stale)
            trials = self.study.get_trials(deepcopy=False)
            complete = len(candidates(trials))
            running = sum(t.state == TrialState.RUNNING for t in trials)
            failures = counted_failures(trials)
            if failures > failure_budget(spec):
                raise StudyFailed(
                    f"{failures} failed trials exceed hydra.sweeper.max_failure_rate="
                    f"{spec.max_failure_rate} of n_trials={spec.n_trials}; see fail_reason"
                )
            if complete >= spec.n_trials:
                return self.ran
            if spec.stop_when.enabled and self._plateaued():
                return self.ran
            if self._exhausted() or self._converged(trials):
                return self.ran
            free = spec.n_trials - complete - running
            if free <= 0:
                # Others hold the rest of the budget: wait for them, or for them to go stale.
                time.sleep(min(spec.heartbeat_interval, 2.0))
                continue
            self._run_batch(min(free, spec.n_jobs), complete)

    def _exhausted(self) -> bool:
        """A grid sampler that has run every point has nothing left to propose."""
        is_exhausted = getattr(self.study.sampler, "is_exhausted", None)
        if is_exhausted is None or not is_exhausted(self.study):
            return False
        return self._stop("every point of the grid (hydra.sweeper.params) has run")

    def _stop(self, reason: str) -> bool:
        """Store why the study ends (the study attribute `stopped`), say it, and end it."""
        self.study.set_user_attr(record.STUDY_STOPPED, reason)
        log.warning("stopping: %s", reason)
        return True

    def _converged(self, trials: list[FrozenTrial]) -> bool:
        """A sampler that proposes only configurations already measured has nothing new to
        offer: `max_repeats` in a row end the study (repeats cost no budget, so without this
        cap a converged sampler would loop for ever)."""
        n = repeats_in_a_row(trials)
        if n < self.spec.max_repeats:
            return False
        return self._stop(
            f"the sampler proposed {n} configurations in a row that had already run "
            f"(hydra.sweeper.max_repeats={self.spec.max_repeats}): it has converged"
        )

    def _plateaued(self) -> bool:
        from vitsweep.hypervolume import history, plateaued

        stop = self.spec.stop_when
        done = candidates(self.study.get_trials(deepcopy=False))  # a repeat adds no point
        base = next((t for t in done if record.is_baseline(t)), None)
        if base is None:
            return False
        done.sort(key=lambda t: (t.datetime_complete, t.number))
        hv = history(
            [tuple(t.values) if record.is_feasible(t) else None for t in done],
            tuple(base.values),
            list(self.spec.objectives.values()),
        )
        if not plateaued(hv, stop.patience, stop.min_improvement):
            return False
        return self._stop(
            f"hypervolume {hv[-1]:.4g} improved < {stop.min_improvement:.2%} over the last "
            f"{stop.patience} measured candidates"
        )

    def _run_batch(self, size: int, complete: int) -> None:
        batch = self._within_budget([self.study.ask() for _ in range(size)])
        if not batch:
            return
        launched: list[optuna.Trial] = []
        overrides = []
        ran_before = self._ran_before()
        for t in batch:
            baseline = bool(t.user_attrs.get(record.BASELINE))
            if baseline:
                chosen = dict(self.spec.baseline)
            else:
                chosen = self.space.sample(t, self.base)
            lines = [format_override(k, v) for k, v in chosen.items()]
            effective = [*(self.baseline_prefix if baseline else self.prefix), *lines]
            twin = None
            if not baseline:
                t.set_user_attr(record.OVERRIDES, effective)
                twin = ran_before.get(tuple(effective))
            if twin is not None:
                self._tell_duplicate(t, twin)
                continue
            launched.append(t)
            overrides.append([*effective, self.number_override.format(n=t.number)])
            log.info(
                "trial %d (%d/%d complete): %s",
                t.number,
                complete,
                self.spec.n_trials,
                " ".join(lines) or "(base config)",
            )
        if not launched:
            return
        with beating(self.study, launched, self.spec.heartbeat_interval):
            outcomes = self.launch(overrides)
        for t, outcome in zip(launched, outcomes, strict=True):
            frozen = self._tell(t, outcome)
            self.ran.append(t.number)
            self.on_trial(frozen, outcome)

    def _ran_before(self) -> dict[tuple[str, ...], FrozenTrial]:
        """The COMPLETE trials that ran, by the overrides they were launched with.

        Why: the fixed-length encoding (`space.conditional`) samples per-layer params up to the
        deepest depth, so two trials that differ only past a shallow trial's depth are one
        configuration. Samplers count them as new points (7 of 39 trials of a default sweep;
        GP with a fourth objective proposed one configuration 5 times running, 45 s each).
        """
        return {
            tuple(t.user_attrs[record.OVERRIDES]): t
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if record.OVERRIDES in t.user_attrs and record.duplicate_of(t) is None
        }

    def _tell_duplicate(self, trial: optuna.Trial, twin: FrozenTrial) -> None:
        """Tell the measured configuration's values again, without running it: the sampler
        learns that the params it changed do not matter. It costs no time and no budget
        (`hydra.sweeper.max_repeats` in a row stop a sampler that proposes nothing else), and
        is never on the front beside its twin."""
        trial.set_user_attr(record.DUPLICATE_OF, twin.number)
        outcome = Outcome(metrics=record.metrics(twin), config=twin.user_attrs.get(record.CONFIG))
        log.info(
            "trial %d is trial %d's configuration: its values are told, nothing runs",
            trial.number,
            twin.number,
        )
        frozen = self._tell(trial, outcome)
        self.on_trial(frozen, outcome)

    def _within_budget(self, asked: list[optuna.Trial]) -> list[optuna.Trial]:
        """Drop the claims that overshoot the budget; give them back PRUNED, never run.

        Workers that count free slots at the same moment can together ask for more trials than
        remain. Storages hand out trial numbers atomically, so every worker agrees that the
        lowest-numbered COMPLETE/RUNNING trials own the budget: a claim ranked beyond it yields.
        """
        trials = self.study.get_trials(deepcopy=False)
        running = [t for t in trials if t.state == TrialState.RUNNING]
        live = sorted(t.number for t in candidates(trials) + running)
        kept = []
        for t in asked:
            if t.number in live and live.index(t.number) >= self.spec.n_trials:
                t.set_user_attr(record.SKIP_REASON, "budget already claimed by other workers")
                self.study.tell(t, state=TrialState.PRUNED)
                log.info("trial %d given back: budget already claimed by other workers", t.number)
            else:
                kept.append(t)
        return kept

    def _tell(self, trial: optuna.Trial, outcome: Outcome) -> FrozenTrial:
        reason = outcome.error
        values: list[float] = []
        if reason is None:
            metrics = outcome.metrics or {}
            for name in self.objectives:
                value = metrics.get(name)
                if value is None:
                    reason = f"objective {name!r} missing from the trial's metrics" + (
                        f" (it returned {', '.join(sorted(metrics))})" if metrics else ""
                    )
                    break
                number = _number(value)
                if number is None or not math.isfinite(number):
                    reason = f"objective {name!r} is {value!r}"
                    break
                values.append(number)
        if reason is None:
            metrics = dict(outcome.metrics or {})
            # One write for all metrics (and one for the config): the storage time per trial
            # grew with one user attribute per metric.
            trial.set_user_attr(record.METRICS, metrics)
            if outcome.config:
                trial.set_user_attr(record.CONFIG, outcome.config)
            for c in self.constraints:
                trial.set_constraint(c.key, c.violation(metrics))
            frozen = self.study.tell(trial, values)
            log.info("trial %d COMPLETE %s", trial.number, _fmt_values(self.objectives, values))
        else:
            trial.set_user_attr(record.FAIL_REASON, reason)
            frozen = self.study.tell(trial, state=TrialState.FAIL)
            log.warning("trial %d FAIL: %s", trial.number, reason)
        return frozen


def _number(value: object) -> float | None:
    """A metric as Optuna's value; None for what is not a number (a string, a bool)."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _fmt_values(names: list[str], values: list[float]) -> str:
    return " ".join(f"{n}={v:.4g}" for n, v in zip(names, values, strict=True))
