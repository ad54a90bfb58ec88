"""extract_video_features: batching, dtype, autocast independence, input checks."""

from __future__ import annotations

import pytest
import torch

from dinotracker.backbones import build_backbone
from dinotracker.preprocessing.features import extract_video_features


@pytest.fixture(scope="module")
def model():
    return build_backbone(
        "dinov2_vits14", source="random", stride=7, depth=3, embed_dim=32, num_heads=4, img_size=56
    )


@pytest.mark.parametrize("batch_size", [1, 2, 4, 9])
def test_batched_equals_per_frame(model, batch_size):
    frames = torch.randint(
        0, 256, (5, 3, 28, 42), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    f = extract_video_features(model, frames, layer=-1, facet="values", batch_size=batch_size, progress=False)
    with torch.no_grad():
        ref = torch.cat([model.extract(fr[None].float() / 255.0, [2], "values")[2] for fr in frames])
    assert f.dtype == torch.float16 and f.shape == (5, 32, 3, 5) and f.device.type == "cpu"
    torch.testing.assert_close(f, ref.half())  # fp32 compute, one cast


def test_dtype_and_autocast_free(model):
    frames = torch.randint(0, 256, (3, 3, 28, 28), dtype=torch.uint8)
    f32 = extract_video_features(model, frames, layer=1, facet="keys", dtype=torch.float32, progress=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # an enclosing autocast must not lower the precision
        inside = extract_video_features(
            model, frames, layer=1, facet="keys", dtype=torch.float32, progress=False
        )
    assert f32.dtype == torch.float32
    torch.testing.assert_close(inside, f32, rtol=0, atol=0)
    assert not torch.is_grad_enabled() or not f32.requires_grad


def test_none_backbone_and_errors(model):
    nb = build_backbone("none", stride=7, dim=16)
    f = extract_video_features(
        nb, torch.zeros(4, 3, 28, 42, dtype=torch.uint8), layer=15, facet="tokens", progress=False
    )
    assert f.shape == (4, 16, 3, 5) and not f.any()
    with pytest.raises(ValueError, match="uint8"):
        extract_video_features(model, torch.rand(2, 3, 28, 28), layer=0, facet="tokens", progress=False)
    with pytest.raises(ValueError, match=r"\[T,3,H,W\]"):
        extract_video_features(model, torch.zeros(3, 28, 28, dtype=torch.uint8), layer=0, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        extract_video_features(
            model, torch.zeros(1, 3, 28, 28, dtype=torch.uint8), layer=0, batch_size=0, progress=False
        )
