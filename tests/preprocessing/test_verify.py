"""A cache that checks what it reads (issue 16): a truncated stage file and same-size garbage in a
cached array are both detected, named, moved aside and recomputed; ``cache=check`` checks a whole cache."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from dinotracker import config_dir
from dinotracker.data.synthetic import make_synthetic_video
from dinotracker.data.video import Video
from dinotracker.preprocessing.cache import CorruptEntryError, StageCache, check_cache
from dinotracker.preprocessing.pipeline import load_preprocessed, preprocess_video

REPO = Path(__file__).resolve().parents[2]
PRE = OmegaConf.load(config_dir() / "preprocess" / "default.yaml")
PRE.size, PRE.short_side, PRE.device = None, 56, "cpu"
PRE.trajectories.direct_window = 3
FLOW = OmegaConf.create(dict(method="dis", weights=None, num_updates=24, dis_preset="medium", batch_size=8))
NONE = OmegaConf.create(dict(name="none", weights=None, source="none", dim=16, patch=14, stride=7, layer=0,
                             facet="tokens", mask_layer=0, batch_size=4))


@pytest.fixture()
def video():
    syn = make_synthetic_video(num_frames=5, height=64, width=96, num_points=16, seed=1)
    return Video(frames=syn.frames, masks=(syn.masks > 0).astype(np.uint8), frame_indices=np.arange(5),
                 name="syn", source="synthetic")


def _run(video, root, stats=None):
    return preprocess_video(video, NONE, FLOW, PRE, root, progress=False, stats=stats)


def _corrupt_and_rerun(video, tmp_path, caplog, damage):
    first = _run(video, tmp_path)
    flow_file = first.index.path("flow") / "forward.npy"
    original = np.load(flow_file)
    damage(flow_file)
    stats: dict = {}
    with caplog.at_level(logging.WARNING, logger="dinotracker.preprocessing.cache"):
        again = _run(video, tmp_path, stats)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    named = [w for w in warnings if str(flow_file) in w]
    assert len(named) == 1, warnings  # one line naming the file
    assert not stats["flow"]["cached"] and stats["frames"]["cached"] and stats["trajectories"]["cached"]
    aside = list(first.index.cache_dir.glob(first.index.ref("flow").dirname + ".corrupt-*"))
    assert len(aside) == 1 and (aside[0] / "forward.npy").is_file()  # kept for inspection
    np.testing.assert_array_equal(np.load(flow_file), original)  # recomputed: the same flow again
    assert np.array_equal(again.tracks.numpy(), first.tracks.numpy(), equal_nan=True)
    return named[0]


def test_truncated_stage_file_is_named_moved_aside_and_recomputed(video, tmp_path, caplog):
    def truncate(f):
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)

    line = _corrupt_and_rerun(video, tmp_path, caplog, truncate)
    assert "truncated" in line


def test_same_size_garbage_is_detected_and_recomputed(video, tmp_path, caplog):
    def garbage(f):
        size = os.path.getsize(f)
        with open(f, "r+b") as fh:  # keep the .npy header (shape, dtype): only the checksum can tell
            fh.seek(size // 2)
            fh.write(np.random.default_rng(0).bytes(size - size // 2))
        assert os.path.getsize(f) == size and np.load(f).shape

    line = _corrupt_and_rerun(video, tmp_path, caplog, garbage)
    assert "checksum" in line


def test_loading_a_corrupt_index_entry_names_the_file(video, tmp_path):
    pre = _run(video, tmp_path)
    bad = pre.index.path("features") / "features.npy"
    bad.write_bytes(b"not an array")
    with pytest.raises(CorruptEntryError, match="features.npy.*rerun the preprocessing"):
        load_preprocessed(pre.index)
    assert not pre.index.path("features").exists()  # moved aside: the next preprocessing recomputes it
    entry = pre.index.cache_dir / "x-k"
    StageCache(pre.index.cache_dir).save("x", "k", {"a": np.zeros(3)})
    (entry / "meta.json").write_text("{")
    with pytest.raises(CorruptEntryError, match="meta.json"):
        StageCache(pre.index.cache_dir).load("x", "k")


def test_check_cache_function_and_cli(video, tmp_path):
    pre = _run(video, tmp_path / "cache")
    assert check_cache(tmp_path / "cache")["corrupt"] == []
    tracks = pre.index.path("trajectories") / "tracks.npy"
    with open(tracks, "r+b") as fh:
        fh.seek(-4, os.SEEK_END)
        fh.write(b"\x00\x00\xc0\x7f")  # one float changed
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "dinotracker.preprocess", "cache=check", f"paths.cache_dir={tmp_path / 'cache'}",
           f"hydra.run.dir={tmp_path / 'out'}"]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert str(tracks) in r.stderr and "1 corrupt" in r.stdout
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "0 corrupt" in r.stdout and "1 indexed but missing" in r.stdout, r.stdout + r.stderr
    stats: dict = {}
    _run(video, tmp_path / "cache", stats)
    assert [s for s, v in stats.items() if not v["cached"]] == ["trajectories"]
