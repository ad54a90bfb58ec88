"""The config tree composes (every experiment), the CLI spelling works, errors list the choices."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dinotracker import config_dir
from dinotracker.jobs.cli import _register_resolvers, available

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted(str(p.relative_to(config_dir() / "experiment").with_suffix(""))
                     for p in (config_dir() / "experiment").rglob("*.yaml"))


def _compose(overrides):
    _register_resolvers()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("fit", overrides=overrides, return_hydra_config=True)


def test_groups_exist():
    for group in ("video", "backbone", "flow", "model", "loss", "data", "trainer", "logger", "experiment"):
        assert available(group) or (config_dir() / group).is_dir(), group
    assert {"synthetic", "horsejump", "path"} <= set(available("video"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment):
    cfg = _compose(["+video=synthetic", f"experiment={experiment}"])
    OmegaConf.resolve(cfg.video)
    assert cfg.trainer.max_steps > 0
    assert cfg.video.name == "synthetic-s0"


def test_paper_experiment_values():
    cfg = _compose(["+video=horsejump", "experiment=paper"])
    assert cfg.backbone.name == "dinov2_vitl14" and cfg.backbone.stride == 7 and cfg.backbone.layer == 15
    assert list(cfg.preprocess.size) == [476, 854] and cfg.trainer.max_steps == 10000
    assert cfg.flow.method == "raft_large" and cfg.flow.num_updates == 24
    assert _compose(["+video=horsejump", "experiment=paper_long"]).trainer.max_steps == 20000


def test_path_video_name():
    cfg = _compose(["+video=path", "video.path=/some/where/my_clip.mp4"])
    assert cfg.video.name == "my_clip"


def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "dinotracker.fit", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_cli_help_and_cfg():
    r = _cli("--help")
    assert r.returncode == 0 and "video" in r.stdout
    r = _cli("+video=synthetic", "--cfg", "job")
    assert r.returncode == 0, r.stderr
    assert "num_frames: 24" in r.stdout and "max_steps" in r.stdout


def test_cli_missing_and_unknown_video():
    r = _cli()
    assert r.returncode == 2 and "synthetic" in r.stderr and "horsejump" in r.stderr
    r = _cli("+video=nosuchvideo")
    assert r.returncode == 2 and "unknown video" in r.stderr and "synthetic" in r.stderr
