"""Tiny inference fixtures: a perturbed random DinoTracker and translating feature/texture videos.

The builders are exposed as pytest fixtures returning the functions (``make_model`` etc.)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dinotracker.geometry import Resize
from dinotracker.inference.api import InferenceVideo
from dinotracker.models.tracker import DinoTracker


def tiny_model(
    c: int = 16,
    hw=(64, 96),
    patch: int = 8,
    stride: int = 4,
    seed: int = 0,
    scale: float = 0.05,
    delta_gain: float = 0.1,
    radius: float = 10.0,
    **kw,
) -> DinoTracker:
    """Random-init tracker with every parameter perturbed (Delta-DINO no longer zero, refiner random)."""
    torch.manual_seed(seed)
    m = DinoTracker(c, patch, stride, hw, radius=radius, **kw)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
        if m.delta_dino is not None:  # keep Delta small next to the features (as after training)
            m.delta_dino.layers[-1].weight.mul_(delta_gain)
    return m.eval()


def drifting_features(
    t: int = 8, c: int = 16, grid=(15, 23), noise: float = 0.05, seed: int = 0
) -> torch.Tensor:
    """[T, C, h, w] float16: a smooth random field drifting one cell right per frame, plus noise."""
    g = torch.Generator().manual_seed(seed)
    h, w = grid
    base = torch.randn(1, c, h + 4, w + t + 4, generator=g)
    base = F.avg_pool2d(base, 3, 1, 1)[0]  # mild spatial correlation
    maps = torch.stack([base[:, 2 : 2 + h, 2 + (t - 1 - k) : 2 + (t - 1 - k) + w] for k in range(t)])
    return (maps + noise * torch.randn(maps.shape, generator=g)).to(torch.float16)


def tiny_video(
    t: int = 8, hw=(64, 96), c: int = 16, patch: int = 8, stride: int = 4, input_hw=(128, 192), seed: int = 0
) -> InferenceVideo:
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (t, 3, *hw), generator=g, dtype=torch.uint8)
    grid = (1 + (hw[0] - patch) // stride, 1 + (hw[1] - patch) // stride)
    return InferenceVideo(
        "tiny",
        frames,
        drifting_features(t, c, grid, seed=seed),
        patch,
        stride,
        Resize(tuple(input_hw), tuple(hw)),
    )


def translating_texture_video(
    t: int = 8, hw=(64, 96), shift: int = 8, patch: int = 8, stride: int = 4, c: int = 48, seed: int = 0
):
    """A window sliding right over a random texture by ``shift`` px per frame (content moves left), with
    features = a fixed random projection of each patch (a stand-in backbone that sees only pixels).

    Returns (video, gt_tracks [N, T, 2], gt_occluded [N, T], queries [N, 3]) for a grid of frame-0 points;
    a point is occluded once it has left the frame on the left.
    """
    rng = np.random.default_rng(seed)
    h, w = hw
    tex = rng.random((h, w + shift * t, 3)).astype(np.float32)
    tex = torch.from_numpy(tex).permute(2, 0, 1)[None]
    tex = F.avg_pool2d(F.avg_pool2d(tex, 5, 1, 2), 5, 1, 2)  # smooth: features vary slowly with position
    frames = torch.stack([tex[0, :, :, k * shift : k * shift + w] for k in range(t)])  # [T, 3, H, W]
    proj = torch.from_numpy(rng.standard_normal((c, 3 * patch * patch)).astype(np.float32))
    cols = F.unfold(frames, patch, stride=stride)  # [T, 3*p*p, L]
    cols = cols - cols.mean(1, keepdim=True)  # per-patch contrast only
    grid = (1 + (h - patch) // stride, 1 + (w - patch) // stride)
    feats = (proj @ cols).reshape(t, c, *grid)
    video = InferenceVideo(
        "translate", (frames * 255).round().to(torch.uint8), feats, patch, stride, Resize(hw, hw)
    )
    ys, xs = torch.meshgrid(torch.arange(12.0, h - 8, 8), torch.arange(12.0, w - 8, 8), indexing="ij")
    xy0 = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)
    tt = torch.arange(t, dtype=torch.float32)
    gt = torch.stack([xy0[:, None, 0] - shift * tt[None], xy0[:, None, 1].expand(-1, t)], -1)
    occluded = gt[..., 0] < 0
    queries = torch.cat([torch.zeros(len(xy0), 1), xy0], 1)
    return video, gt, occluded, queries


@pytest.fixture
def make_model():
    return tiny_model


@pytest.fixture
def make_video():
    return tiny_video


@pytest.fixture
def make_translating_video():
    return translating_texture_video


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny tensors: one intra-op thread is fastest and immune to a busy shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
