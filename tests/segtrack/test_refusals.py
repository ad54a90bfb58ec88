"""segtrack refuses what cannot give a meaningful result and fails cleanly (issue 16): backbone.name=none
(all-zero features) is refused before any work, no message suggests it to segtrack, a wrong-size first
mask fails with the cause as the last line before any output exists, and a failure during segmentation
leaves no empty masks/ folder and keeps the real error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from dinotracker import config_dir

REPO = Path(__file__).resolve().parents[2]
TINY = {"name": "dinov2_vits14", "source": "random", "depth": 2, "embed_dim": 32, "num_heads": 2}


def _clip(tmp_path: Path, hw=(48, 64), t: int = 3) -> tuple[Path, Path]:
    frames = tmp_path / "clip" / "frames"
    frames.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(t):
        Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)).save(frames / f"{i:05d}.png")
    mask = np.zeros(hw, np.uint8)
    mask[10:30, 20:40] = 1
    Image.fromarray(mask).save(tmp_path / "clip" / "mask.png")
    return frames, tmp_path / "clip" / "mask.png"


def _cfg(**kw):
    cfg = OmegaConf.load(config_dir() / "segtrack.yaml")
    cfg.pop("defaults")
    cfg.pop("hydra")
    cfg.device, cfg.progress, cfg.short_side, cfg.neighborhood.size = "cpu", False, 56, 3
    for k, v in kw.items():
        OmegaConf.update(cfg, k, v, force_add=True)
    return cfg


def _segtrack(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "dinotracker.segtrack", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_backbone_none_is_refused_before_any_work(tmp_path):
    from dinotracker.jobs.segtrack import run
    from dinotracker.segtrack.features import features_from_backbone

    out = tmp_path / "out"
    cfg = _cfg(video=str(tmp_path / "no-such-video"), mask=str(tmp_path / "no-mask.png"), out=str(out))
    cfg.backbone.name = "none"
    with pytest.raises(ValueError, match="backbone.name=none gives all-zero features"):
        run(cfg)  # refused before the (missing) video is even looked at
    assert not out.exists()
    with pytest.raises(ValueError, match="all-zero features"):
        features_from_backbone("none")


def test_cli_refuses_none_with_the_reason_last(tmp_path):
    frames, mask = _clip(tmp_path)
    out = tmp_path / "out"
    r = _segtrack(f"video={frames}", f"mask={mask}", f"out={out}", "backbone.name=none", "device=cpu")
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1].startswith("error: segtrack needs real features"), r.stderr[-2000:]
    assert not out.exists()


def test_missing_weights_message_does_not_offer_none_to_segtrack(tmp_path, monkeypatch):
    import torch

    from dinotracker.backbones import build_backbone
    from dinotracker.segtrack.features import features_from_backbone

    monkeypatch.setenv("DINOTRACKER_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # no weights there
    with pytest.raises(FileNotFoundError) as seg:
        features_from_backbone("dinov2_vits14")
    assert "weights are not available" in str(seg.value) and "none" not in str(seg.value)
    with pytest.raises(FileNotFoundError, match="backbone.name=none needs no weights"):  # the fit accepts none
        build_backbone("dinov2_vits14")


def test_wrong_size_mask_fails_with_the_cause_last_and_no_output(tmp_path):
    frames, _ = _clip(tmp_path, hw=(48, 64))
    Image.fromarray(np.ones((40, 64), np.uint8)).save(tmp_path / "small.png")
    out = tmp_path / "out"
    arch = [f"+backbone.{k}={v}" for k, v in TINY.items() if k not in ("name", "source")]
    r = _segtrack(f"video={frames}", f"mask={tmp_path / 'small.png'}", f"out={out}", "device=cpu",
                  f"backbone.name={TINY['name']}", "backbone.source=random", "short_side=56", *arch)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: first-frame mask {tmp_path / 'small.png'} is 64x40 but the video's frames "
                           "are 64x48"), r.stderr[-2000:]
    assert not out.exists()


def test_failure_during_segmentation_keeps_the_cause_and_no_empty_folders(tmp_path, monkeypatch):
    import dinotracker.segtrack.propagation as propagation
    from dinotracker.jobs.segtrack import run

    frames, mask = _clip(tmp_path)

    def broken(*a, **k):
        raise RuntimeError("out of memory at frame 1")
        yield  # a generator, like the real one

    monkeypatch.setattr(propagation, "iter_segmentation", broken)
    out = tmp_path / "out"
    cfg = _cfg(video=str(frames), mask=str(mask), out=str(out))
    for k, v in TINY.items():
        OmegaConf.update(cfg, f"backbone.{k}", v, force_add=True)
    with pytest.raises(RuntimeError, match="out of memory at frame 1"):
        run(cfg)
    assert not out.exists()
