"""Shared fixtures. ``shared_data`` is ../shared/data beside the checkout; tests that need it skip
cleanly when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DINOTRACKER_DATA", REPO.parent / "shared" / "data"))

# one thread: on a shared 2-core machine oversubscription makes tiny ops 10x slower
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synthetic_video():
    from dinotracker.data.synthetic import make_synthetic_video

    return make_synthetic_video(num_frames=12, height=96, width=128, num_points=96, seed=3)


@pytest.fixture(scope="session")
def tiny_fit_overrides() -> list[str]:
    """Command-line overrides that make the whole fit job take seconds (synthetic 5-frame video, no backbone,
    2 steps); for tests that run `python -m dinotracker.fit` / `dinotracker.benchmark` in a subprocess."""
    return ["experiment=quick_cpu", "backbone=none", "backbone.dim=16", "video.num_frames=5", "video.height=64",
            "video.width=96", "video.num_points=16", "trainer.max_steps=2", "preprocess.short_side=56",
            "preprocess.device=cpu", "model.delta_channels=[8,8,8]", "data.flow_pairs=16", "data.bb_pairs=16",
            "data.cycle_pairs=16", "track.grid_step=48", "callbacks=none", "logger=csv"]
