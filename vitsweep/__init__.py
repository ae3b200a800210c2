"""vitsweep: joint architecture x token x precision search for Vision Transformers."""

from __future__ import annotations

__version__ = "0.1.0"
