"""End to end: ``python -m dinotracker.segtrack`` on the real judo clip (first frames, small short side)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dinotracker.data.video import list_frames, read_mask
from dinotracker.evaluation.davis import evaluate_sequence, summarize

REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def tiny_backbone_overrides() -> list[str]:
    """A 2-block random ViT: DINOv3 (patch 16) when the registry has it, else DINOv2 (patch 14)."""
    from dinotracker.backbones import build_backbone

    arch = ["+backbone.depth=2", "+backbone.embed_dim=64", "+backbone.num_heads=2"]
    try:
        build_backbone("dinov3_vits16", source="random", depth=1, embed_dim=32, num_heads=2)
        name = "dinov3_vits16"
    except (ValueError, ImportError, TypeError, NotImplementedError):
        name = "dinov2_vits14"
    return [f"backbone.name={name}", "backbone.source=random", *arch]


def test_cli_on_judo(shared_data, tmp_path):
    judo = shared_data / "tapvid_davis_mini" / "judo"
    if not (judo / "frames").is_dir():
        pytest.skip("judo clip not in the shared data")
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "dinotracker.segtrack",
        f"video={judo / 'frames'}",
        f"mask={judo / 'masks' / '00000.png'}",
        f"gt_masks={judo / 'masks'}",
        f"out={out}",
        "end=6",
        "short_side=112",
        "device=cpu",
        "progress=false",
        "neighborhood.size=5",
        *tiny_backbone_overrides(),
    ]
    res = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    masks = list_frames(out / "masks")
    assert [p.name for p in masks] == [f"{i:05d}.png" for i in range(6)]
    with Image.open(masks[3]) as im:
        assert im.mode == "P" and im.size == (854, 480)
    pred = np.stack([read_mask(p) for p in masks])
    gt = np.stack([read_mask(judo / "masks" / f"{i:05d}.png") for i in range(6)])
    np.testing.assert_array_equal(pred[0], gt[0])  # frame 0 is the given mask
    assert set(np.unique(pred)) <= {0, 1, 2}
    # the table the CLI wrote equals a recomputation from the PNGs it wrote
    jf = json.loads((out / "jf.json").read_text())
    ref = summarize({"judo": evaluate_sequence(gt, pred)})
    for key in ("J&F-Mean", "J-Mean", "F-Mean"):
        assert jf["global"][key] == pytest.approx(ref["global"][key])
        assert 0.0 <= jf["global"][key] <= 1.0
    assert set(jf["objects"]) == {"judo_1", "judo_2"}
    assert (out / "jf.txt").read_text().startswith(" J&F-Mean")
    assert (out / "global_results-val.csv").is_file()
    av = pytest.importorskip("av")
    with av.open(str(out / "overlay.mp4")) as c:
        assert sum(1 for _ in c.decode(c.streams.video[0])) == 6


def test_cli_needs_a_mask(shared_data, tmp_path):
    judo = shared_data / "tapvid_davis_mini" / "judo"
    from omegaconf import OmegaConf

    from dinotracker import config_dir as conf_dir
    from dinotracker.jobs.segtrack import run

    cfg = OmegaConf.load(conf_dir() / "segtrack.yaml")
    cfg.video, cfg.out = str(judo / "frames"), str(tmp_path)
    with pytest.raises(ValueError, match="mask"):
        run(cfg)
    cfg.mask, cfg.features = str(judo / "masks" / "00000.png"), "nonsense"
    with pytest.raises(ValueError, match="features"):
        run(cfg)


def test_run_features_through_the_cli(shared_data, tmp_path, monkeypatch):
    """features=run:<folder>: dinotracker.load is replaced by a tiny random tracker on the judo clip's size
    (patch 8, stride 4: a strided grid), so the whole run path and its geometry execute."""
    import torch
    from omegaconf import OmegaConf

    import dinotracker
    from dinotracker import config_dir as conf_dir
    from dinotracker.geometry import Resize
    from dinotracker.inference.api import InferenceVideo, Tracker
    from dinotracker.jobs.segtrack import run
    from dinotracker.models.tracker import DinoTracker

    judo = shared_data / "tapvid_davis_mini" / "judo"
    n = len(list_frames(judo / "frames"))
    torch.manual_seed(0)
    model_hw, grid = (64, 112), (15, 27)
    video = InferenceVideo(
        "judo",
        torch.randint(0, 256, (n, 3, *model_hw), dtype=torch.uint8),
        torch.randn(n, 16, *grid),
        8,
        4,
        Resize((480, 854), model_hw),
    )
    calls = []

    def fake_load(run_dir, device="cpu", **kw):
        calls.append(run_dir)
        return Tracker(DinoTracker(16, 8, 4, model_hw), video, device=device)

    monkeypatch.setattr(dinotracker, "load", fake_load)
    cfg = OmegaConf.load(conf_dir() / "segtrack.yaml")
    cfg.video, cfg.out, cfg.gt_masks = str(judo / "frames"), str(tmp_path), str(judo / "masks")
    cfg.features, cfg.device, cfg.progress, cfg.overlay.enabled = f"run:{tmp_path}", "cpu", False, False
    cfg.neighborhood.size = 3
    res = run(cfg)
    assert calls == [str(tmp_path)]
    assert res["num_frames"] == n and len(list_frames(tmp_path / "masks")) == n
    assert 0.0 <= res["jf"]["global"]["J&F-Mean"] <= 1.0
    cfg.end = 5
    with pytest.raises(ValueError, match="own video"):
        run(cfg)


def test_missing_inputs_fail_in_one_line_before_torch_loads(tmp_path):
    code = ("import runpy, sys\n"
            "sys.argv = ['segtrack'] + sys.argv[1:]\n"
            "try:\n    runpy.run_module('dinotracker.segtrack', run_name='__main__')\n"
            "except SystemExit as e:\n    print('torch loaded:', 'torch' in sys.modules); raise\n")
    for args, what in ((["video=/missing/clip.mp4", f"out={tmp_path}"], "video not found: /missing/clip.mp4"),
                       ([f"video={tmp_path}", "mask=/missing/m.png", f"out={tmp_path}"],
                        "first-frame mask not found: /missing/m.png")):
        r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO_ROOT)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines() == [f"error: {what} ({args[0 if 'video' in what else 1].split('=')[0]}=)"]
        assert "torch loaded: False" in r.stdout
