"""Feature sources: backbone (build_backbone API), plain functions, fitted-run refined features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dinotracker.segtrack.features import (
    BackboneFeatures,
    ImageFeatures,
    RunFeatures,
    as_source,
    features_from_backbone,
    features_from_run,
)


def _frame(h=50, w=70, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_dinov2_backbone_last_layer_with_final_norm():
    build_backbone = pytest.importorskip("dinotracker.backbones").build_backbone
    bb = build_backbone("dinov2_vits14", source="random", depth=2, embed_dim=32, num_heads=2)
    src = BackboneFeatures(bb, short_side=28)
    frame = _frame()
    feats = src(frame, 0)
    grid = src.grid(frame.shape[:2])
    assert grid.model_hw == (28, 42) and grid.shape == (2, 3) and feats.shape == (2, 3, 32)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(2, 3))
    # reference: the model's own forward ends with the final norm; drop CLS (+registers), reshape, L2
    x = src.image(frame)
    tokens = bb(x)[0, bb.num_prefix_tokens :].reshape(2, 3, 32)
    torch.testing.assert_close(feats, F.normalize(tokens, dim=-1), rtol=1e-4, atol=1e-5)
    raw = BackboneFeatures(bb, short_side=28, final_norm=False)(frame, 0)
    assert not torch.allclose(raw, feats, atol=1e-3)


def test_dinov3_backbone_integration():
    from dinotracker.backbones import build_backbone

    try:
        bb = build_backbone("dinov3_vits16", source="random", depth=2, embed_dim=64, num_heads=2)
    except (ValueError, ImportError, TypeError, NotImplementedError) as err:
        pytest.skip(f"dinov3 backbones not available yet: {err}")
    src = BackboneFeatures(bb, short_side=32)
    frame = _frame(40, 60)
    feats = src(frame, 0)
    assert src.patch == 16 and feats.shape == (2, 3, 64)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(2, 3))
    if hasattr(bb, "forward_blocks"):  # = get_intermediate_layers(n=1, norm=True): last block + final norm
        with torch.no_grad():
            last = bb.forward_blocks(src.image(frame))[-1][0, bb.num_prefix_tokens :]
        ref = F.normalize(bb.norm(last), dim=-1).reshape(2, 3, 64)
        torch.testing.assert_close(feats, ref, rtol=1e-4, atol=1e-5)


def test_features_from_backbone_builds_through_the_registry():
    pytest.importorskip("dinotracker.backbones")
    src = features_from_backbone(
        "dinov2_vits14", source="random", short_side=14, depth=1, embed_dim=16, num_heads=2
    )
    assert src(_frame(20, 30), 3).shape == (1, 2, 16)


def test_image_function_and_as_source():
    conv = torch.nn.Conv2d(3, 5, 4, 4)
    src = as_source(conv, short_side=8, patch=4)
    assert isinstance(src, ImageFeatures)
    assert src(_frame(10, 30), 0).shape == (2, 6, 5)  # 10x30 -> 8x24 -> 2x6
    assert as_source(src) is src
    with pytest.raises(ValueError):
        as_source(3)


class FakeTracker:
    """The attributes RunFeatures uses of dinotracker.load(...)'s Tracker."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.maps = torch.randn(4, 6, 7, 9, generator=g)
        self.patch, self.stride, self.input_hw, self.model_hw, self.num_frames = 8, 4, (64, 80), (32, 40), 4

    def refined_features(self, frames=None, dtype=None):
        return self.maps[frames].to(dtype)


def test_run_features_contract():
    src = RunFeatures(FakeTracker())
    g = src.grid((64, 80))
    assert (g.patch, g.stride, g.shape) == (8, 4, (7, 9))
    f = src(None, 2)
    torch.testing.assert_close(f, F.normalize(FakeTracker().maps[2].permute(1, 2, 0), dim=-1))
    with pytest.raises(ValueError, match="fitted on"):
        src.grid((60, 80))
    with pytest.raises(ValueError, match="outside"):
        src(None, 4)


def test_run_features_with_a_real_tracker():
    api = pytest.importorskip("dinotracker.inference.api")
    from dinotracker.geometry import Resize
    from dinotracker.models.tracker import DinoTracker

    torch.manual_seed(0)
    model = DinoTracker(16, 8, 4, (64, 96))
    grid = (1 + (64 - 8) // 4, 1 + (96 - 8) // 4)
    video = api.InferenceVideo(
        "tiny",
        torch.randint(0, 256, (3, 3, 64, 96), dtype=torch.uint8),
        torch.randn(3, 16, *grid),
        8,
        4,
        Resize((128, 192), (64, 96)),
    )
    src = RunFeatures(api.Tracker(model, video))
    assert src.grid((128, 192)).shape == grid
    assert src(None, 1).shape == (*grid, 16)


def test_features_from_run_missing_folder(tmp_path):
    import dinotracker

    if not hasattr(dinotracker, "load"):
        pytest.skip("dinotracker.load not available")
    with pytest.raises(FileNotFoundError):
        features_from_run(tmp_path / "nope")
