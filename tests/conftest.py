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
