"""Hydra finds sweepers only under hydra_plugins; the code is in vitsweep.config.sweeper."""

from __future__ import annotations

from vitsweep.config import sweeper as _impl


class VitsweepSweeper(_impl.VitsweepSweeper):
    """Registered by Hydra's plugin scan; see `vitsweep.config.sweeper.VitsweepSweeper`."""
