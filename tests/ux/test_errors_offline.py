"""User errors in one line and commands that work offline (issue 15)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dinotracker.utils.errors import one_line_errors, precheck_argv

REPO = Path(__file__).resolve().parents[2]


def _run(module, *args, env=None, timeout=300):
    e = dict(os.environ, DINOTRACKER_OFFLINE="1", TORCH_HOME=str(Path(env or "/nonexistent-torch-home")))
    e.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=e)


def test_missing_video_is_one_line_and_nonzero():
    r = _run("dinotracker.fit", "+video=path", "video.path=/missing.mp4")
    assert r.returncode != 0
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert err == ["error: video not found: /missing.mp4 (video.path=)"], r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_precheck_leaves_hydra_syntax_alone(tmp_path):
    precheck_argv(["video.path=${oc.env:HOME}", "video.path=a,b", "features=run:/x", "seed=3"])
    precheck_argv([f"video.path={tmp_path}", "video.masks=null"])
    with pytest.raises(SystemExit) as e:
        precheck_argv(["run=/no/such/run"])
    assert e.value.code == 2


def test_task_errors_end_in_one_line(capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("DINOTRACKER_DEBUG", raising=False)

    def task(cfg):
        raise ValueError("trainer.max_steps must be > 0,\n got -5")

    with pytest.raises(SystemExit) as e:
        one_line_errors(task)(None)
    assert e.value.code == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: trainer.max_steps must be > 0, got -5"]  # one line, the cause last
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ValueError):  # debug: the real exception and its traceback
        one_line_errors(task)(None)


def test_quick_cpu_falls_back_to_no_backbone_without_weights(tmp_path, monkeypatch):
    from dinotracker.backbones.weights import resolve_backbone

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setenv("DINOTRACKER_WEIGHTS", str(tmp_path / "w"))
    cfg = OmegaConf.create({"backbone": {"name": "dinov2_vitl14", "weights": None, "source": "auto"},
                            "backbone_fallback": "none"})
    assert resolve_backbone(cfg) and cfg.backbone.name == "none"
    cfg = OmegaConf.create({"backbone": {"name": "dinov2_vitl14", "weights": None, "source": "auto"},
                            "backbone_fallback": None})
    monkeypatch.setenv("DINOTRACKER_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="dinov2_vitl14_pretrain.pth"):
        resolve_backbone(cfg)
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "dinov2_vitl14_pretrain.pth").write_bytes(b"x")
    assert not resolve_backbone(cfg) and cfg.backbone.weights == str(tmp_path / "w" / "dinov2_vitl14_pretrain.pth")


@pytest.mark.parametrize("exp", ["quick_cpu", "demo"])
def test_preprocess_accepts_experiment_files(tmp_path, exp):
    # the README's `dinotracker.preprocess` with the experiment files of `fit`, offline, no weights
    tiny = ["video.num_frames=5", "video.height=64", "video.width=96", "video.num_points=16",
            "preprocess.short_side=56", "preprocess.device=cpu"]
    r = _run("dinotracker.preprocess", "+video=synthetic", f"experiment={exp}", *tiny,
             f"paths.cache_dir={tmp_path / 'c'}", f"hydra.run.dir={tmp_path / 'run'}", env=str(tmp_path / "th"))
    assert r.returncode == 0, r.stderr[-3000:]
    log = (tmp_path / "run" / "preprocess.log").read_text()
    assert "using backbone=none instead" in log and "cache ready" in log


def test_backbone_name_error_lists_only_configured_names():
    from dinotracker import config_dir
    from dinotracker.backbones.build import parse_name

    with pytest.raises(ValueError) as e:
        parse_name("dinov9_vitx")
    listed = str(e.value).split("choose one of: ", 1)[1].split(", ")
    have = {p.stem for p in (config_dir() / "backbone").glob("*.yaml")}
    assert listed and set(listed) <= have
    assert "dinov3_vit7b16" not in listed and "dinov3_vitl16plus" not in listed
