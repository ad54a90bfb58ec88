"""Segmentation tracking on the refined features of a real (quick) DINO-Tracker fit: judo, 6 frames."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_segtrack_on_refined_features_of_a_quick_fit(shared_data, tmp_path):
    src = shared_data / "tapvid_davis_mini" / "judo"
    (tmp_path / "frames").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(6):
        shutil.copy(src / "frames" / f"{i:05d}.jpg", tmp_path / "frames" / f"{i:05d}.jpg")
        shutil.copy(src / "masks" / f"{i:05d}.png", tmp_path / "masks" / f"{i:05d}.png")
    run = tmp_path / "run"
    fit = [sys.executable, "-m", "dinotracker.fit", "+video=path", f"video.path={tmp_path / 'frames'}",
           f"video.masks={tmp_path / 'masks'}", "experiment=quick_cpu", "backbone=none", "backbone.dim=32",
           "trainer.max_steps=3", "preprocess.short_side=56", "preprocess.device=cpu", "model.delta_channels=[8,8,8]",
           "data.flow_pairs=32", "track.grid_step=200", "callbacks=none", "logger=csv",
           f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run}"]
    r = subprocess.run(fit, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "seg"
    seg = [sys.executable, "-m", "dinotracker.segtrack", f"video={tmp_path / 'frames'}",
           f"mask={tmp_path / 'masks' / '00000.png'}", f"out={out}", f"features=run:{run}",
           f"gt_masks={tmp_path / 'masks'}", "device=cpu"]
    r = subprocess.run(seg, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    masks = sorted((out / "masks").glob("*.png"))
    assert len(masks) == 6
    first = np.asarray(Image.open(masks[0]))
    gt0 = np.asarray(Image.open(tmp_path / "masks" / "00000.png"))
    assert first.shape == gt0.shape and set(np.unique(first)) <= {0, 1, 2}
    assert any(out.glob("*.mp4"))
