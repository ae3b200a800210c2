"""The Hydra sweeper: owns the study, hands each trial to Hydra's launcher as overrides.

It is part of the doorway because Hydra hands it DictConfig; it converts once (`sweep_context`)
and from then on drives `vitsweep.search.study.run_study`, which sees plain specs only. Hydra
loads sweepers only from the `hydra_plugins` namespace; `hydra_plugins/vitsweep_sweeper` is a
facade that imports this module when a sweep starts.

It serves any Hydra app: vitsweep's own trial app returns `{"metrics", "config"}`; any other
task's return value (a float, a tuple, a dict) is read by `vitsweep.search.returns`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf

from vitsweep.config import is_vitsweep_app, launch_notes, recorder, sweep_context
from vitsweep.errors import one_line_errors
from vitsweep.search.loop import Outcome
from vitsweep.search.returns import outcome_of
from vitsweep.search.study import SweepContext, run_study

log = logging.getLogger("vitsweep.sweep")

RESULTS_FILE = "optimization_results.yaml"  # hydra-optuna-sweeper's, in the launch's sweep dir


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
            self.ours = is_vitsweep_app(config)
            self.ctx: SweepContext = sweep_context(config, self._raw)

    def _outcome(self, value: Any) -> Outcome:
        if not self.ours:
            if isinstance(value, DictConfig | ListConfig):
                value = OmegaConf.to_container(value, resolve=True)
            return outcome_of(value, list(self.ctx.sweeper.objectives))
        if isinstance(value, dict):
            return Outcome(metrics=value.get("metrics"), config=value.get("config"))
        return Outcome(error=f"job returned {type(value).__name__}, not a metrics dict")

    def _launch(self, batch: list[list[str]]) -> list[Outcome]:
        returns = self.launcher.launch(batch, initial_job_idx=self.job_idx)
        self.job_idx += len(batch)
        outcomes = []
        for r in returns:
            if r.status == JobStatus.COMPLETED:
                outcomes.append(self._outcome(r.return_value))
                continue
            try:
                r.return_value  # noqa: B018 - re-raises the job's exception
                error = "job failed"
            except Exception as e:
                error = f"{type(e).__name__}: {e}".strip()
            outcomes.append(Outcome(error=error or "job failed"))
        return outcomes

    def sweep(self, arguments: list[str]) -> Any:
        with one_line_errors():
            ctx = launch_notes(self.ctx.with_cli_params(arguments))
            results = Path(str(self.config.hydra.sweep.dir)) / RESULTS_FILE
            return run_study(ctx, self._launch, recorder(ctx, results_file=results))
