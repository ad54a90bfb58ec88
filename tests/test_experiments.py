"""Every ``experiment=`` file composes and runs the whole fit job for 2 steps on a tiny synthetic video
(heavy backbones swapped for small random ones, RAFT for DIS: no weights, no network)."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dinotracker import config_dir
from dinotracker.jobs.cli import _register_resolvers

ALL = sorted(str(p.relative_to(config_dir() / "experiment").with_suffix(""))
             for p in (config_dir() / "experiment").rglob("*.yaml"))
TINY = ["video.num_frames=6", "video.height=64", "video.width=96", "video.num_points=24", "trainer.max_steps=2",
        "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true", "preprocess.size=null",
        "preprocess.short_side=56", "preprocess.device=cpu", "preprocess.best_buddies.topk=10", "data.flow_pairs=32",
        "data.bb_pairs=32", "data.cycle_pairs=32", "model.delta_channels=[8,8,8]", "track.grid_step=32",
        "logger=csv", "callbacks.track_viz.every_n_steps=1", "callbacks.model_checkpoint.every_n_train_steps=1"]


def _run(experiment, tmp_path, extra=()):
    from dinotracker.jobs.fit import fit_video

    return fit_video(_compose(experiment, tmp_path, extra))


def _compose(experiment, tmp_path, extra=()):
    _register_resolvers()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("fit", overrides=["+video=synthetic", f"experiment={experiment}", *TINY, *extra,
                                        f"paths.cache_dir={tmp_path / 'cache'}",
                                        f"paths.output_dir={tmp_path / 'run'}"])
    OmegaConf.set_struct(cfg, False)
    cfg.output_dir = str(tmp_path / "run")
    if cfg.flow.method != "dis":
        cfg.flow.method = "dis"
    if cfg.backbone.name != "none":  # a small random ViT of the configured family at the same layer/facet
        cfg.backbone.source = "random"
        cfg.backbone.weights = None
        cfg.backbone.name = "dinov2_vits14"
        cfg.backbone.dim = 384
        cfg.backbone.layer = min(int(cfg.backbone.layer), 11)
    return cfg


@pytest.mark.parametrize("experiment", ALL)
def test_experiment_runs_two_steps(experiment, tmp_path):
    metric = _run(experiment, tmp_path)
    run = tmp_path / "run"
    for f in ("run_info.json", "tracker.pt", "tracks.npz", "metrics.json", "checkpoints/last.ckpt"):
        assert (run / f).is_file(), f
    m = json.loads((run / "metrics.json").read_text())
    assert {"dinotracker", "still"} <= set(m["methods"])
    assert metric is not None and 0.0 <= metric <= 1.0
    if experiment.startswith(("ablation/", "layers/", "subsample/")):  # the paper's row for this setting
        ref = m["paper_reference"]
        assert ref["method"] in m["methods"] and 0.4 < ref["delta_avg"] < 0.9
        assert f"Paper ({ref['label']}" in (run / "metrics.md").read_text()


def test_subsampled_fit_tracks_every_frame(tmp_path):
    """Paper Tab. 4: fitted on every 2nd frame, the tracker runs on all frames with their own features; on
    the fitted frames it gives what the fitted-frames tracker gives."""
    import torch

    from dinotracker.data.sources import video_from_config
    from dinotracker.inference.api import load
    from dinotracker.preprocessing.pipeline import preprocess_inference_inputs
    from dinotracker.jobs.fit import _full_video, fit_video, fitted_video_config

    cfg = _compose("subsample/every_2", tmp_path, ["backbone=random_vits14"])
    fit_video(cfg)
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    full, gt = _full_video(cfg)
    assert (m["num_frames"], m["fitted_frames"], full.num_frames) == (6, 3, 6)
    assert m["num_queries"] == len(gt.queries)  # every ground-truth track, whatever its query frame
    assert video_from_config(fitted_video_config(cfg))[0].num_frames == 3
    index = preprocess_inference_inputs(full, cfg.backbone, cfg.flow, cfg.preprocess, cfg.paths.cache_dir)
    every = load(tmp_path / "run", video=index).track(torch.tensor([[0, 20.0, 30.0], [4, 50.0, 40.0]]))
    fitted = load(tmp_path / "run").track(torch.tensor([[0, 20.0, 30.0], [2, 50.0, 40.0]]))
    assert every["tracks"].shape == (2, 6, 2) and fitted["tracks"].shape == (2, 3, 2)
    torch.testing.assert_close(every["tracks"][:, ::2], fitted["tracks"], atol=1e-3, rtol=0)
