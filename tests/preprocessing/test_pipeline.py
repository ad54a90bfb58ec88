"""The whole preprocessing on the synthetic video: every stage, caching keyed by config, resume."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from dinotracker import config_dir
from dinotracker.data.synthetic import make_synthetic_video
from dinotracker.data.video import Video
from dinotracker.preprocessing.pipeline import load_preprocessed, preprocess_video, preprocessed_info

PRE = OmegaConf.load(config_dir() / "preprocess" / "default.yaml")
PRE.size, PRE.short_side, PRE.device = None, 56, "cpu"
PRE.trajectories.direct_window = 3
PRE.best_buddies.topk = 20
FLOW = OmegaConf.create(dict(method="dis", weights=None, num_updates=24, dis_preset="medium", batch_size=8))


def _backbone(name):
    if name == "none":
        return OmegaConf.create(dict(name="none", weights=None, source="none", dim=16, patch=14, stride=7, layer=0,
                                     facet="tokens", mask_layer=0, batch_size=4))
    return OmegaConf.create(dict(name="dinov2_vits14", weights=None, source="random", dim=384, patch=14, stride=7,
                                 layer=3, facet="tokens", mask_layer=-1, batch_size=4))


@pytest.fixture(scope="module")
def video():
    syn = make_synthetic_video(num_frames=5, height=64, width=96, num_points=16, seed=1)
    return Video(frames=syn.frames, masks=(syn.masks > 0).astype(np.uint8), frame_indices=np.arange(5),
                 name="syn", source="synthetic")


@pytest.mark.parametrize("backbone", ["none", "vit"])
def test_preprocess_synthetic(video, backbone, tmp_path):
    stats = {}
    pre = preprocess_video(video, _backbone(backbone), FLOW, PRE, tmp_path, progress=False, stats=stats)
    assert pre.model_hw == (56, 84) and pre.frames.shape == (5, 3, 56, 84)
    assert pre.grid_hw == (7, 11) and str(pre.features.dtype) == "torch.float16"
    assert pre.tracks.shape[1:] == (5, 2) and pre.tracks.shape[0] >= 56 * 84
    assert pre.tracks_fg.shape == (pre.tracks.shape[0],) and 0 < float(pre.tracks_fg.float().mean()) < 1
    assert pre.fg_masks.shape == (5, 56, 84)
    if backbone == "vit":
        assert len(pre.best_buddies) > 0 and (pre.best_buddies.weight >= 0).all()
    else:
        assert len(pre.best_buddies) == 0
    assert not any(s["cached"] for s in stats.values())
    # everything is cached now; a training-irrelevant change reuses it all
    stats2 = {}
    preprocess_video(video, _backbone(backbone), FLOW, PRE, tmp_path, progress=False, stats=stats2)
    assert all(s["cached"] for s in stats2.values())
    # a backbone-layer change recomputes features and best-buddies only
    if backbone == "vit":
        b = _backbone("vit")
        b.layer = 2
        stats3 = {}
        preprocess_video(video, b, FLOW, PRE, tmp_path, progress=False, stats=stats3)
        recomputed = {k for k, s in stats3.items() if not s["cached"]}
        assert recomputed == {"features", "best_buddies"}
    again = load_preprocessed(preprocessed_info(pre))
    assert np.array_equal(again.tracks.numpy(), pre.tracks.numpy(), equal_nan=True)


def test_saliency_when_no_masks(video, tmp_path):
    nomask = Video(frames=video.frames, masks=None, frame_indices=video.frame_indices, name="syn2", source="x")
    pre = preprocess_video(nomask, _backbone("vit"), FLOW, PRE, tmp_path, progress=False)
    assert pre.meta["mask_source"] == "saliency" and pre.fg_masks.shape == (5, 56, 84)
    assert (tmp_path.glob("*/masks-*/png/00000.png")).__next__().is_file()
