"""Run-folder outputs (issue 16): the fit's ``tracks.npz`` and ``track``'s follow one schema with a checking
reader; ``track`` fails with the cause as the last line and leaves no output; ``track`` on a killed run
(checkpoint, no tracker.pt) prints the resume command, and that command works."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinotracker.inference.export import save_npz
from dinotracker.inference.tracks_schema import KEYS, read_tracks, write_tracks

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(REPO))


def _cmd(module: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def fit_run(tmp_path_factory, tiny_fit_overrides) -> Path:
    tmp = tmp_path_factory.mktemp("fit")
    r = _cmd("dinotracker.fit", "+video=synthetic", *tiny_fit_overrides, f"paths.cache_dir={tmp / 'c'}",
             f"hydra.run.dir={tmp / 'run'}", "evaluate.enabled=false", "track.export=[npz]")
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp / "run"


@pytest.mark.slow
def test_fit_and_track_write_the_same_schema(fit_run, tmp_path):
    r = _cmd("dinotracker.track", f"run={fit_run}", "grid_step=48", f"out={tmp_path / 't.npz'}", "export=[npz]",
             "device=cpu")
    assert r.returncode == 0, r.stderr[-3000:]
    fit, track = read_tracks(fit_run / "tracks.npz"), read_tracks(tmp_path / "t.npz")
    assert sorted(fit) == sorted(track) == sorted(KEYS)
    for k in ("input_hw", "fps", "video", "coord_convention"):
        assert fit[k].tolist() == track[k].tolist(), k
    assert fit["input_hw"].tolist() == [64, 96]
    np.testing.assert_allclose(fit["tracks"], track["tracks"], atol=1e-4)  # same grid, same model


def test_reader_rejects_malformed_files(tmp_path):
    n, t = 3, 5
    tr, vis = np.zeros((n, t, 2), np.float32), np.ones((n, t), bool)
    q = np.zeros((n, 3), np.float32)
    good = write_tracks(tmp_path / "good.npz", tr, vis, None, q, input_hw=(64, 96), fps=24, video="v")
    assert read_tracks(good)["tracks"].shape == (n, t, 2)
    save_npz(tmp_path / "old.npz", tr, vis, None, q)  # the fit's file before the schema: no input_hw/fps
    with pytest.raises(ValueError, match=r"old.npz does not follow the tracks.npz schema.*missing \['input_hw', 'fps'"):
        read_tracks(tmp_path / "old.npz")
    np.savez(tmp_path / "vis.npz", **{**dict(np.load(good)), "visible": np.ones((n, t + 1), bool)})
    with pytest.raises(ValueError, match=r"visible must be bool \[N, T\] = \[3, 5\]"):
        read_tracks(tmp_path / "vis.npz")
    np.savez(tmp_path / "q.npz", **{**dict(np.load(good)), "queries": np.full((n, 3), 9, np.float32)})
    with pytest.raises(ValueError, match=r"query frames must lie in \[0, 4\]"):
        read_tracks(tmp_path / "q.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip" * 10)
    with pytest.raises(ValueError, match="junk.npz is not a readable .npz"):
        read_tracks(tmp_path / "junk.npz")
    with pytest.raises(ValueError, match="fps must be > 0"):
        write_tracks(tmp_path / "x.npz", tr, vis, None, q, input_hw=(64, 96), fps=None, video="v")
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.slow
def test_track_wrong_mask_fails_with_the_cause_last(fit_run, tmp_path):
    Image.fromarray(np.ones((10, 20), np.uint8)).save(tmp_path / "m.png")
    out = tmp_path / "out"
    r = _cmd("dinotracker.track", f"run={fit_run}", f"grid_mask={tmp_path / 'm.png'}", f"out={out / 't.npz'}",
             "export=[npz,csv,mp4]", "device=cpu")
    assert r.returncode != 0
    want = f"error: grid mask {tmp_path / 'm.png'} is 20x10, the video is 96x64 (W x H)"
    assert r.stderr.strip().splitlines()[-1] == want
    assert not out.exists()


@pytest.mark.slow
def test_track_on_a_killed_run_gives_the_resume_command(fit_run, tmp_path):
    from dinotracker.utils.resume import resume_command

    killed = tmp_path / "killed"  # what kill -9 leaves: config, run_info, a checkpoint, no tracker.pt
    shutil.copytree(fit_run / ".hydra", killed / ".hydra")
    shutil.copy(fit_run / "run_info.json", killed)
    (killed / "checkpoints").mkdir()
    shutil.copy(next((fit_run / "csv" / "checkpoints").glob("*.ckpt")), killed / "checkpoints" / "last.ckpt")
    r = _cmd("dinotracker.track", f"run={killed}", "device=cpu")
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    cmd = resume_command(killed)
    assert "has no tracker.pt" in last and "checkpoints/last.ckpt (step 2)" in last and cmd in last, last
    assert "+video=synthetic" in cmd and cmd.endswith(f"ckpt_path=last hydra.run.dir={killed}")
    args = shlex.split(cmd)[3:]  # after "python -m dinotracker.fit"
    r = _cmd("dinotracker.fit", *args, "track.enabled=false")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (killed / "tracker.pt").is_file()
