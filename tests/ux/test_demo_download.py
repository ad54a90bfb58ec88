"""The demo's weights download, against a local HTTP server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import hashlib
import http.server
import logging
import threading
from functools import partial

import pytest
import torch


@pytest.fixture
def server(tmp_path):
    """A loopback HTTP server over tmp_path/srv serving a random-weight DINOv2 ViT-S/14 checkpoint."""
    from dinotracker.backbones import build_backbone

    srv = tmp_path / "srv"
    srv.mkdir()
    model = build_backbone("dinov2_vits14", source="random", seed=1)
    torch.save(model.state_dict(), srv / "dinov2_vits14_pretrain.pth")
    (srv / "broken").mkdir()
    (srv / "broken" / "dinov2_vits14_pretrain.pth").write_bytes(b"not a checkpoint")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(srv))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", srv, model
    httpd.shutdown()


def test_fetch_weights_downloads_verifies_and_falls_back(server, tmp_path, monkeypatch, caplog):
    from dinotracker.backbones import build_backbone
    from dinotracker.backbones.download import fetch_weights
    from dinotracker.jobs import demo

    url, srv, model = server
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # an earlier torch.hub.set_dir would outrank TORCH_HOME
    monkeypatch.setenv("DINOTRACKER_WEIGHTS", str(tmp_path / "none"))
    monkeypatch.delenv("DINOTRACKER_OFFLINE", raising=False)
    sha = hashlib.sha256((srv / "dinov2_vits14_pretrain.pth").read_bytes()).hexdigest()

    # a wrong checksum and a broken file are refused, and nothing is left in the cache
    monkeypatch.setenv("DINOTRACKER_WEIGHTS_URL", url)
    assert fetch_weights("dinov2_vits14", sha256="0" * 64) is None
    monkeypatch.setenv("DINOTRACKER_WEIGHTS_URL", url + "/broken")
    assert fetch_weights("dinov2_vits14") is None
    assert not list((tmp_path / "th").rglob("*.pth"))

    # the good file lands in the torch hub cache and loads strictly into the architecture
    monkeypatch.setenv("DINOTRACKER_WEIGHTS_URL", url)
    with caplog.at_level(logging.INFO, logger="dinotracker.download"):
        got = fetch_weights("dinov2_vits14", sha256=sha)
    assert got == tmp_path / "th" / "hub" / "checkpoints" / "dinov2_vits14_pretrain.pth"
    assert any("downloaded" in r.getMessage() for r in caplog.records)
    loaded = build_backbone("dinov2_vits14", weights=str(got))
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    overrides, why = demo.pick_backbone(download=False)  # now local: the demo uses it
    assert overrides == ["backbone=dinov2_vits14", f"backbone.weights={got}"] and "DINOv2" in why


def test_demo_offline_fallback_explains_why(tmp_path, monkeypatch):
    from dinotracker.jobs import demo

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # an earlier torch.hub.set_dir would outrank TORCH_HOME
    monkeypatch.setenv("DINOTRACKER_WEIGHTS", str(tmp_path / "none"))
    monkeypatch.setenv("DINOTRACKER_WEIGHTS_URL", "http://127.0.0.1:9")  # refused at once
    overrides, why = demo.pick_backbone(download=True, timeout=2)
    assert overrides[0] == "backbone=none" and "flow-chaining baseline" in why


@pytest.mark.slow
def test_demo_command_runs_offline_with_calm_colours(tmp_path):
    """``python -m dinotracker.demo`` (what ``make demo`` runs) end to end on a tiny schedule, offline."""
    import json
    import os
    import subprocess
    import sys

    tiny = ["video.num_frames=6", "video.height=64", "video.width=96", "video.num_points=24", "trainer.max_steps=2",
            "preprocess.short_side=56", "data.flow_pairs=32", "data.bb_pairs=32", "data.cycle_pairs=32",
            "model.delta_channels=[8,8,8]", "track.grid_step=32", "logger=csv", f"paths.cache_dir={tmp_path / 'c'}"]
    env = {**os.environ, "DINOTRACKER_OFFLINE": "1", "DINOTRACKER_WEIGHTS": str(tmp_path / "none")}
    r = subprocess.run([sys.executable, "-m", "dinotracker.demo", *tiny], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[demo] backbone: none" in r.stdout and "[demo] done: run folder runs/demo/" in r.stdout
    (run,) = (tmp_path / "runs" / "demo").iterdir()
    names = sorted(p.name for p in run.iterdir())
    assert {"report.md", "tracks.npz", "metrics.json", "tracker.pt"} <= set(names), names
    cfg = (run / ".hydra" / "config.yaml").read_text() if (run / ".hydra").is_dir() else json.dumps(
        json.loads((run / "run_info.json").read_text()))
    assert "no DINO prior" in (run / "report.md").read_text()
    assert "saturation: 0.4" in cfg or '"saturation": 0.4' in cfg
