"""Where the Hydra configs are, for every layer (the bottom layer, so backbones/data may ask too)."""

from __future__ import annotations

from pathlib import Path


def config_dir() -> Path:
    """The Hydra config folder: shipped inside the wheel, or ``conf/`` of a source checkout."""
    pkg = Path(__file__).resolve().parents[1]
    for candidate in (pkg / "conf", pkg.parent / "conf"):
        if (candidate / "fit.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"dinotracker configs not found next to {pkg}; reinstall the package")
