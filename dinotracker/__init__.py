"""dinotracker: DINO-Tracker (ECCV 2024) test-time training as a Lightning + Hydra framework."""

from __future__ import annotations

from dinotracker.utils.confdir import config_dir  # noqa: F401 - public: dinotracker.config_dir()

__version__ = "0.1.0"


def load(run_folder, device="cpu", **kwargs):
    """Load a fitted tracker from a run folder: see :func:`dinotracker.inference.api.load`."""
    from dinotracker.inference.api import load as _load

    return _load(run_folder, device=device, **kwargs)
