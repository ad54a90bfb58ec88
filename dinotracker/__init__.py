"""dinotracker: DINO-Tracker (ECCV 2024) test-time training as a Lightning + Hydra framework."""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"


def config_dir() -> Path:
    """The Hydra config folder: shipped inside the wheel, or ``conf/`` of a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "fit.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"dinotracker configs not found next to {here}; reinstall the package")


def load(run_folder, device="cpu", **kwargs):
    """Load a fitted tracker from a run folder: see :func:`dinotracker.inference.api.load`."""
    from dinotracker.inference.api import load as _load

    return _load(run_folder, device=device, **kwargs)
