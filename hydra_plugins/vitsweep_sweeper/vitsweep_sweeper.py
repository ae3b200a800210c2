"""What Hydra's plugin scan finds: the sweeper facade and the search path of its configs.

Hydra imports every module under `hydra_plugins` in every Hydra app, so this one stays light:
the sweeper's code (`vitsweep.config.sweeper`) is imported when a sweep starts, as Hydra's own
optuna plugin does. The search path adds only `hydra/sweeper/vitsweep` and its `sampler`
group (`conf/` beside this file); vitsweep's own groups (arch, precision, ...) stay out of
other apps.
"""

from __future__ import annotations

from typing import Any

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

CONF = "pkg://hydra_plugins.vitsweep_sweeper.conf"


class VitsweepSearchPath(SearchPathPlugin):
    """`override hydra/sweeper: vitsweep` resolves in any app once vitsweep is installed."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="vitsweep", path=CONF)


class VitsweepSweeper(Sweeper):
    """Registered by Hydra's plugin scan; the work is `vitsweep.config.sweeper.VitsweepSweeper`."""

    def __init__(self, **kwargs: Any) -> None:
        from vitsweep.config.sweeper import VitsweepSweeper as Impl

        self.impl = Impl(**kwargs)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.impl.sweep(arguments)
