"""One W&B run per trial and one summary run per study; W&B trouble never fails a trial.

Offline when there is no API key (or W&B cannot start online); offline runs live under
`<root>/<study>/wandb/` and upload later with `wandb sync`.

Runs have ids derived from the study (`RunIds`), so a finished run can be opened again with
`resume="allow"`: that is how a trial run's tags follow the front (a trial leaves the front after
its run has finished) and how the summary run's hypervolume line grows launch after launch
(`vitsweep.track.wandb_front` decides when; both happen at publish). Offline,
each reopening writes one more directory for the same run id (`offline-run-<time>-<id>-<k>`)
whose run record carries the resume intent; `wandb sync` uploads the segments of one run in
order of start time as that one run, and `wandb_files.read_runs` merges them the same way.

W&B keeps a resumed run's tags unless the resuming run names a non-empty set, and then that set
replaces them. A set can therefore never shrink to nothing, so every complete trial carries
exactly one of `pareto`, `dominated` or `infeasible` (and `baseline` for trial 0).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitsweep.spec import TrackingSpec
from vitsweep.track.pareto import StudyTable, notes, panel_pairs

log = logging.getLogger("vitsweep.track")

PARETO, DOMINATED, INFEASIBLE, BASELINE = "pareto", "dominated", "infeasible", "baseline"
DUPLICATE = "duplicate"  # repeats an earlier trial's configuration (never on the front)


def _settings():
    import wandb

    # x_save_requirements: W&B lists every installed distribution at each init (~0.2 s with
    # torch's stack installed, once per trial run); the run config carries our versions instead.
    return wandb.Settings(
        silent=True,
        console="off",
        x_disable_stats=True,
        x_disable_meta=True,
        x_save_requirements=False,
    )


@dataclass(frozen=True)
class RunIds:
    """Stable W&B run ids of one study: every worker and every launch computes the same ones.

    `key` must be unique per study in the W&B project (`wandb_front.wandb_run_ids`); the
    human-readable names stay `trial-<n>` and `<study>-summary`.
    """

    key: str

    def trial(self, number: int) -> str:
        return f"{self.key}-trial-{number}"

    @property
    def summary(self) -> str:
        return f"{self.key}-summary"


@dataclass(frozen=True)
class HvPoint:
    """The hypervolume after the `complete_trials`-th complete trial (trial `trial_number`)."""

    complete_trials: int
    trial_number: int
    hypervolume: float


def hv_points(table: StudyTable, start: int = 0) -> list[HvPoint]:
    """The table's hypervolume history from its `start`-th point on (0-based)."""
    return [
        HvPoint(i + 1, n, hv)
        for i, (n, hv) in enumerate(zip(table.hv_trials, table.hypervolume, strict=True))
        if i >= start
    ]


class WandbTracker:
    def __init__(self, spec: TrackingSpec, study: str, run_dir: Path) -> None:
        self.spec, self.study, self.dir = spec, study, run_dir
        self.mode = spec.mode
        if self.mode == "auto":
            self.mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"

    @property
    def wandb_dir(self) -> Path:
        """Where wandb writes the run directories (it appends `wandb/` to `dir`)."""
        return self.dir / "wandb"

    def _init(self, **kwargs: Any):
        import wandb

        self.dir.mkdir(parents=True, exist_ok=True)
        common = dict(
            project=self.spec.project,
            entity=self.spec.entity,
            group=self.study,
            dir=str(self.dir),
            reinit="create_new",
            settings=_settings(),
        )
        if kwargs.get("id"):
            common["resume"] = "allow"  # a stable id: create the run, or reopen it
        try:
            return wandb.init(mode=self.mode, **common, **kwargs)
        except Exception as e:  # no network, bad key: record offline rather than lose the run
            if self.mode == "offline":
                raise
            log.warning("W&B online failed (%s); logging offline from now on", e)
            self.mode = "offline"
            return wandb.init(mode="offline", **common, **kwargs)

    def log_trial(
        self,
        number: int,
        state: str,
        config: dict[str, Any],
        metrics: dict[str, Any],
        tags: list[str] | None = None,
        run_id: str | None = None,
    ) -> bool:
        try:
            run = self._init(
                id=run_id, name=f"trial-{number}", job_type="trial", config=config, tags=tags
            )
            try:
                run.summary.update({**metrics, "state": state, "trial_number": number})
            finally:
                run.finish(exit_code=0 if state == "COMPLETE" else 1)
            return True
        except Exception as e:
            log.warning("W&B logging of trial %d failed: %s", number, e)
            return False

    def retag_trial(self, number: int, run_id: str, tags: Sequence[str]) -> bool:
        """Reopen a finished trial run and replace its tags (`tags` must not be empty)."""
        if not tags:
            raise ValueError("W&B cannot clear a resumed run's tags; give a non-empty set")
        try:
            run = self._init(id=run_id, name=f"trial-{number}", job_type="trial", tags=list(tags))
            run.finish()
            return True
        except Exception as e:
            log.warning("W&B tags of trial %d not updated: %s", number, e)
            return False

    def _open_summary(self, run_id: str | None, extra: dict[str, Any]):
        run = self._init(id=run_id, name=f"{self.study}-summary", job_type="summary", config=extra)
        # One line per study: hypervolume against the number of complete trials, the same x
        # as the report's plot. A logged x rather than W&B's _step, which differs between
        # segments of a resumed offline run.
        run.define_metric("complete_trials", hidden=True)
        run.define_metric("hypervolume", step_metric="complete_trials")
        return run

    @staticmethod
    def _log_points(run, points: Sequence[HvPoint]) -> None:
        for p in points:
            run.log(
                {
                    "complete_trials": p.complete_trials,
                    "hypervolume": p.hypervolume,
                    "hv_trial_number": p.trial_number,
                }
            )

    def log_confirmed(self, rows: list[dict[str, Any]], run_id: str | None = None) -> bool:
        """The confirmation pass as a `confirmed` table of the study's summary run."""
        try:
            import wandb

            run = self._open_summary(run_id, {})
            try:
                cols = list(dict.fromkeys(c for r in rows for c in r))
                run.log(
                    {
                        "confirmed": wandb.Table(
                            columns=cols, data=[[r.get(c) for c in cols] for r in rows]
                        )
                    }
                )
            finally:
                run.finish()
            return True
        except Exception as e:
            log.warning("W&B confirmed table not logged: %s", e)
            return False

    def log_summary(
        self,
        table: StudyTable,
        extra: dict[str, Any],
        run_id: str | None = None,
        points: Sequence[HvPoint] = (),
    ) -> bool:
        """The study's front for the W&B UI without custom panels: the trials table with
        `is_pareto`, one scatter per objective pair, the plotly front (pairs and 3-D), the
        headline table, the hypervolume curve; `points` not yet on the line are appended."""
        try:
            import wandb

            from vitsweep.track.html import front_3d, pair_figures

            run = self._open_summary(run_id, extra)
            try:
                self._log_points(run, points)
                rows = table.rows
                data: dict[str, Any] = {}
                if rows:
                    cols = list(dict.fromkeys(c for r in rows for c in r))
                    trials = wandb.Table(
                        columns=cols, data=[[r.get(c) for c in cols] for r in rows]
                    )
                    data["trials"] = trials
                    for x, y in panel_pairs(table):  # no derived energy, as the report
                        data[f"pareto/{x}_vs_{y}"] = wandb.plot.scatter(
                            trials, x, y, title=f"{y} vs {x}"
                        )
                for name, fig in pair_figures(table):
                    data[f"pareto/plotly/{name}"] = wandb.Plotly(fig)
                fig3d = front_3d(table)
                if fig3d is not None:
                    data["pareto/3d"] = wandb.Plotly(fig3d)
                if table.headline:
                    cols = list(table.headline[0])
                    data["headline"] = wandb.Table(
                        columns=cols, data=[[h.get(c) for c in cols] for h in table.headline]
                    )
                if table.hypervolume:
                    curve = wandb.Table(
                        columns=["complete_trials", "hypervolume", "trial_number"],
                        data=[
                            [p.complete_trials, p.hypervolume, p.trial_number]
                            for p in hv_points(table)
                        ],
                    )
                    data["hypervolume_curve"] = wandb.plot.line(
                        curve, "complete_trials", "hypervolume", title="Hypervolume"
                    )
                if data:
                    run.log(data)
                run.summary.update(
                    {
                        "n_pareto": len(table.pareto),
                        "n_complete": sum(r["state"] == "COMPLETE" for r in rows),
                        "pareto_trials": list(table.pareto),
                        "hypervolume_objectives": list(table.hv_objectives),
                        "energy_derived": table.energy_derived,
                        "notes": " ".join(notes(table)),
                    }
                )
            finally:
                run.finish()
            return True
        except Exception as e:
            log.warning("W&B summary run failed: %s", e)
            return False
