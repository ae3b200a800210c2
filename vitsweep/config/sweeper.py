"""The Hydra sweeper: owns the study, hands each trial to Hydra's launcher as overrides.

It is part of the doorway because Hydra hands it DictConfig; it converts once (`sweep_context`)
and from then on drives `vitsweep.search.study.run_study`, which sees plain specs only. Hydra
loads sweepers only from the `hydra_plugins` namespace; `hydra_plugins/vitsweep_sweeper` is a
facade that imports this module when a sweep starts.

It serves any Hydra app: vitsweep's own trial app returns `{"metrics", "config"}`; any other
task's return value (a float, a tuple, a dict) is read by `vitsweep.search.returns`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vitsweep.config import is_vitsweep_app, launch_notes, recorder, sweep_context
from vitsweep.errors import one_line_errors
from vitsweep.search.loop import Outcome
from vitsweep.search.returns import outcome_of
from vitsweep.search.space import format_override
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
            ctx = launch_notes(self._fit_baseline(self.ctx.with_cli_params(arguments)))
            results = Path(str(self.config.hydra.sweep.dir)) / RESULTS_FILE
            return run_study(ctx, self._launch, recorder(ctx, results_file=results))

    def _fit_baseline(self, ctx: SweepContext) -> SweepContext:
        """The baseline takes the command line's plain overrides that its own config has keys
        for. `arch.space.depth=[3,4]` narrows a supernet's space; xray's baseline (`arch: vit`)
        has no space, and Hydra refuses to override a key that is not there, which failed the
        whole study at trial 0. Such an override is left out of the baseline only, and said."""
        spec = ctx.sweeper
        if not (spec.enqueue_baseline and spec.baseline and ctx.cli_overrides):
            return ctx
        lines = [format_override(k, v) for k, v in spec.baseline.items()]
        load = self.hydra_context.config_loader.load_sweep_config
        try:
            load(self.config, [*ctx.cli_overrides, *lines])
            return ctx
        except (HydraException, OmegaConfBaseException):
            pass
        parsed = OverridesParser.create().parse_overrides(list(ctx.cli_overrides))
        # group choices and top-level keys compose as for any trial (an error there is real)
        shallow = [o.input_line for o in parsed if "." not in o.key_or_group]
        tree = OmegaConf.to_container(load(self.config, [*shallow, *lines]), resolve=False)
        left = [
            o
            for o in parsed
            if "." in o.key_or_group
            and not (o.is_add() or o.is_force_add())
            and not _has_key(tree, o.key_or_group)
        ]
        if not left:
            return ctx
        log.warning(
            "baseline (trial 0, %s): left out the overrides of %s: its config has no such key",
            " ".join(lines),
            ", ".join(o.key_or_group for o in left),
        )
        dropped = {o.input_line for o in left}
        kept = tuple(o for o in ctx.cli_overrides if o not in dropped)
        return dataclasses.replace(ctx, baseline_cli=kept)


def _has_key(tree: Any, key: str) -> bool:
    """Whether the dotted `key` is in `tree` (a config as plain containers, unresolved), whatever
    its value: `???` and interpolations count (`OmegaConf.select` answers its default for both)."""
    for part in key.split("."):
        if isinstance(tree, list):
            return True  # a list element: Hydra's own error, if any, is the one to show
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True
