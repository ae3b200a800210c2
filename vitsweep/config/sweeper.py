"""The Hydra sweeper: owns the study, hands each trial to Hydra's launcher as overrides.

It is part of the doorway because Hydra hands it DictConfig; it converts once (`sweep_context`)
and from then on drives `vitsweep.search.study.run_study`, which sees plain specs only. Hydra
loads sweepers only from the `hydra_plugins` namespace; `hydra_plugins/vitsweep_sweeper`
subclasses this class and nothing more.
"""

from __future__ import annotations

import logging
from typing import Any

from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from vitsweep.config import recorder, sweep_context
from vitsweep.errors import one_line_errors
from vitsweep.search.loop import Outcome
from vitsweep.search.study import SweepContext, run_study

log = logging.getLogger("vitsweep.sweep")


class VitsweepSweeper(Sweeper):
    def __init__(self, **kwargs: Any) -> None:
        self._raw = kwargs
        self.job_idx = 0

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        with one_line_errors():
            self.launcher = Plugins.instance().instantiate_launcher(
                hydra_context=hydra_context, task_function=task_function, config=config
            )
            self.ctx: SweepContext = sweep_context(config, self._raw)

    def _launch(self, batch: list[list[str]]) -> list[Outcome]:
        returns = self.launcher.launch(batch, initial_job_idx=self.job_idx)
        self.job_idx += len(batch)
        outcomes = []
        for r in returns:
            if r.status == JobStatus.COMPLETED and isinstance(r.return_value, dict):
                rv = r.return_value
                outcomes.append(Outcome(metrics=rv.get("metrics"), config=rv.get("config")))
            else:
                try:
                    r.return_value  # noqa: B018 - re-raises the job's exception
                    error = f"job returned {type(r.return_value).__name__}, not a metrics dict"
                except Exception as e:
                    error = f"{type(e).__name__}: {e}".strip()
                outcomes.append(Outcome(error=error or "job failed"))
        return outcomes

    def sweep(self, arguments: list[str]) -> Any:
        with one_line_errors():
            ctx = self.ctx.with_cli_params(arguments)
            return run_study(ctx, self._launch, recorder(ctx))
