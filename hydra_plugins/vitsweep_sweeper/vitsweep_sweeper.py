"""Hydra finds sweepers only under hydra_plugins; the code is in vitsweep.search.sweeper."""

from __future__ import annotations

from vitsweep.search import sweeper as _impl


class VitsweepSweeper(_impl.VitsweepSweeper):
    """Registered by Hydra's plugin scan; see `vitsweep.search.sweeper.VitsweepSweeper`."""
