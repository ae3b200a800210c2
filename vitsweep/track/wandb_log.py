"""One W&B run per trial and a summary run per launch; W&B trouble never fails a trial.

Offline when there is no API key (or W&B cannot start online); offline runs live under
`<root>/<study>/wandb/` and upload later with `wandb sync`.
"""

from __future__ import annotations

import logging
import os
from itertools import combinations
from pathlib import Path
from typing import Any

from vitsweep.track.spec import TrackingSpec

log = logging.getLogger("vitsweep.track")


def _settings():
    import wandb

    return wandb.Settings(silent=True, console="off", x_disable_stats=True, x_disable_meta=True)


class WandbTracker:
    def __init__(self, spec: TrackingSpec, study: str, run_dir: Path) -> None:
        self.spec, self.study, self.dir = spec, study, run_dir
        self.mode = spec.mode
        if self.mode == "auto":
            self.mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"

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
    ) -> None:
        try:
            run = self._init(name=f"trial-{number}", job_type="trial", config=config, tags=tags)
            try:
                run.summary.update({**metrics, "state": state, "trial_number": number})
            finally:
                run.finish(exit_code=0 if state == "COMPLETE" else 1)
        except Exception as e:
            log.warning("W&B logging of trial %d failed: %s", number, e)

    def log_summary(
        self,
        rows: list[dict[str, Any]],
        objectives: list[str],
        headline: list[dict[str, Any]],
        extra: dict[str, Any],
    ) -> None:
        """The study's front for the W&B UI: a table with `is_pareto` and one scatter per pair."""
        try:
            import wandb

            run = self._init(name=f"{self.study}-summary", job_type="summary", config=extra)
            try:
                if rows:
                    cols = list(rows[0])
                    table = wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])
                    run.log({"trials": table})
                    for x, y in combinations(objectives, 2):
                        run.log(
                            {
                                f"pareto/{x}_vs_{y}": wandb.plot.scatter(
                                    table, x, y, title=f"{y} vs {x}"
                                )
                            }
                        )
                if headline:
                    cols = list(headline[0])
                    run.log(
                        {
                            "headline": wandb.Table(
                                columns=cols, data=[[h[c] for c in cols] for h in headline]
                            )
                        }
                    )
                run.summary.update({"n_pareto": sum(bool(r.get("is_pareto")) for r in rows)})
            finally:
                run.finish()
        except Exception as e:
            log.warning("W&B summary run failed: %s", e)
