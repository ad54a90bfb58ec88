"""track_segmentation against a literal re-implementation of the notebook loop; resampling geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dinotracker.segtrack.features import CellGrid, resize_to_multiple_hw
from dinotracker.segtrack.neighbourhood import make_neighborhood_mask
from dinotracker.segtrack.propagation import (
    _bilinear_matrix,
    _Upsampler,
    first_frame_cells,
    iter_segmentation,
    propagate_dense,
    track_segmentation,
)

PATCH = 8


class ConvFeatures(torch.nn.Module):
    """A tiny random conv "backbone": fn(images [1,3,H,W] in [0,1]) -> [1, C, H/8, W/8]."""

    def __init__(self, c=24, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, c, PATCH, PATCH)

    def forward(self, x):
        return self.conv(x)


def toy_video(t=6, h=40, w=56, seed=0):
    """Two coloured squares drifting over a textured background, ids 1 and 2."""
    rng = np.random.default_rng(seed)
    bg = (rng.random((h, w, 3)) * 80).astype(np.uint8)
    frames, masks = [], []
    for k in range(t):
        f, m = bg.copy(), np.zeros((h, w), np.uint8)
        f[8:20, 6 + k : 20 + k], m[8:20, 6 + k : 20 + k] = (220, 40, 40), 1
        f[24:36, 30 - k : 46 - k], m[24:36, 30 - k : 46 - k] = (40, 200, 60), 2
        frames.append(f)
        masks.append(m)
    return np.stack(frames), np.stack(masks)


def notebook_loop(fn, frames, first_mask, context, size, shape, topk, temperature, short_side, mode):
    """The notebook's cells, transcribed: transform, forward, one-hot, stack queue, propagate, interpolate,
    postprocess_probs, argmax (dense propagate, full-resolution probabilities)."""
    from PIL import Image

    h0, w0 = first_mask.shape
    m = int(first_mask.max()) + 1

    def feats_of(frame):
        nh, nw = resize_to_multiple_hw((h0, w0), short_side, PATCH)
        img = np.array(Image.fromarray(frame).resize((nw, nh), Image.BICUBIC))
        x = torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255
        return F.normalize(fn(x).movedim(-3, -1), dim=-1, p=2)[0]

    first_feats = feats_of(frames[0])
    fh, fw = first_feats.shape[:2]
    fm = F.interpolate(torch.from_numpy(first_mask)[None, None].float(), (fh, fw), mode="nearest-exact")[
        0, 0
    ].long()
    first_probs = F.one_hot(fm, m).float()
    mask = make_neighborhood_mask(fh, fw, size, shape)
    preds = [first_mask.astype(np.uint8)]
    fq, pq = [], []
    for frame in frames[1:]:
        cur = feats_of(frame)
        probs = propagate_dense(
            cur, torch.stack([first_feats, *fq]), torch.stack([first_probs, *pq]), mask, topk, temperature
        )
        fq.append(cur)
        pq.append(probs)
        if len(fq) > context:
            fq.pop(0)
            pq.pop(0)
        p = F.interpolate(probs.movedim(-1, -3)[None], size=(h0, w0), mode=mode)
        vmin, vmax = p.flatten(2, 3).min(2).values, p.flatten(2, 3).max(2).values
        p = torch.nan_to_num((p - vmin[:, :, None, None]) / (vmax - vmin)[:, :, None, None], nan=0)
        preds.append(p[0].argmax(0).to(torch.uint8).numpy())
    return np.stack(preds)


@pytest.mark.parametrize(
    "mode,context,shape", [("nearest", 2, "circle"), ("bilinear", 7, "square"), ("nearest", 0, "square")]
)
def test_matches_notebook_loop(mode, context, shape):
    torch.manual_seed(0)
    frames, masks = toy_video()
    fn = ConvFeatures()
    kw = dict(context=context, size=3, shape=shape, topk=5, temperature=0.2, short_side=48)
    ref = notebook_loop(fn, frames, masks[0], mode=mode, **kw)
    ours = track_segmentation(fn, frames, masks[0], upsample=mode, patch=PATCH, progress=False, **kw)
    dense = track_segmentation(
        fn, frames, masks[0], upsample=mode, patch=PATCH, progress=False, method="dense", **kw
    )
    assert ours.shape == masks.shape and ours.dtype == np.uint8
    np.testing.assert_array_equal(dense, ref)
    assert (ours == ref).mean() > 0.999  # gather: equal up to float summation order
    np.testing.assert_array_equal(ours[0], masks[0])


def test_generator_streams_frames_lazily():
    frames, masks = toy_video(t=4)
    seen = []

    def lazy():
        for f in frames:
            seen.append(1)
            yield f

    gen = iter_segmentation(
        ConvFeatures(), lazy(), masks[0], size=3, short_side=40, patch=PATCH, progress=False
    )
    t, lab = next(gen)
    assert t == 0 and len(seen) == 1 and lab.shape == masks[0].shape
    t, lab = next(gen)
    assert t == 1 and len(seen) == 2


def test_tracks_the_toy_objects():
    frames, masks = toy_video(t=6)
    pred = track_segmentation(
        ConvFeatures(c=48), frames, masks[0], size=3, short_side=80, patch=PATCH, progress=False
    )
    for k in (1, 2):
        inter = ((pred[-1] == k) & (masks[-1] == k)).sum()
        union = ((pred[-1] == k) | (masks[-1] == k)).sum()
        assert inter / union > 0.5


def test_resize_to_multiple():
    assert resize_to_multiple_hw((480, 854), 960, 16) == (960, 1712)  # DAVIS @ M: 60 x 107 patches
    assert resize_to_multiple_hw((1440, 1920), 960, 16) == (960, 1280)  # the notebook's demo video
    assert resize_to_multiple_hw((854, 480), 960, 16) == (1712, 960)  # portrait
    assert resize_to_multiple_hw((480, 854), 950, 16) == (960, 1712)  # long side from the rounded short side


def test_first_frame_cells_regular_is_nearest_exact():
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 4, (37, 53))
    for hw, model in [((5, 7), (40, 56)), ((12, 9), (96, 72))]:
        grid = CellGrid((37, 53), model, 8, 8)
        assert grid.shape == hw and grid.regular
        ref = F.interpolate(torch.from_numpy(mask)[None, None].float(), hw, mode="nearest-exact")[0, 0].long()
        np.testing.assert_array_equal(first_frame_cells(mask, grid), ref.numpy())


def test_strided_grid_geometry_by_hand():
    """patch 14, stride 7 on a 28 x 42 model image at input 56 x 84 (scale 2): cell k is centred at model
    7k + 7, input 14k + 14 -> rows 14, 28, 42; cols 14, 28, 42, 56, 70."""
    grid = CellGrid((56, 84), (28, 42), 14, 7)
    assert grid.shape == (3, 5) and not grid.regular
    np.testing.assert_allclose(grid.centres_input(0), [14, 28, 42])
    mask = np.arange(56 * 84).reshape(56, 84)
    cells = first_frame_cells(mask, grid)
    assert cells[1, 2] == mask[28, 42]
    # bilinear rows: input row y (centre y + 0.5) -> cell coordinate ((y + .5) / 2 - 7) / 7, clamped
    r = _bilinear_matrix(grid, 0).numpy()
    assert r.shape == (56, 3)
    np.testing.assert_allclose(r.sum(1), 1.0, atol=1e-6)
    u = ((21 + 0.5) / 2 - 7) / 7  # y = 21 -> 0.5357
    np.testing.assert_allclose(r[21], [1 - u, u, 0], atol=1e-6)
    np.testing.assert_allclose(r[0], [1, 0, 0])  # clamped before the first centre


def test_bilinear_matrix_matches_interpolate():
    grid = CellGrid((37, 53), (40, 56), 8, 8)
    g = torch.Generator().manual_seed(0)
    p = torch.rand(5, 7, 3, generator=g)
    ref = F.interpolate(p.movedim(-1, 0)[None], size=(37, 53), mode="bilinear", align_corners=False)[0]
    ry, rx = _bilinear_matrix(grid, 0), _bilinear_matrix(grid, 1)
    ours = torch.einsum("yh,hwm,xw->myx", ry, p, rx)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


def test_upsampler_nearest_exact_when_downsampling():
    """Output smaller than the grid: nearest skips cells, and min-max must use only the sampled ones."""
    grid = CellGrid((3, 4), (48, 56), 8, 8)  # 6 x 7 cells -> 3 x 4 pixels
    g = torch.Generator().manual_seed(1)
    p = torch.rand(6, 7, 3, generator=g)
    up = F.interpolate(p.movedim(-1, 0)[None], size=(3, 4), mode="nearest")
    lo, hi = up.amin((2, 3), keepdim=True), up.amax((2, 3), keepdim=True)
    ref = torch.nan_to_num((up - lo) / (hi - lo), nan=0)[0].argmax(0)
    assert torch.equal(_Upsampler(grid, "nearest", "cpu")(p), ref)


def test_driver_errors():
    frames, masks = toy_video(t=3)
    fn = ConvFeatures()
    with pytest.raises(ValueError, match="first_mask"):
        track_segmentation(fn, frames, masks[0].astype(np.float32), patch=PATCH, progress=False)
    with pytest.raises(ValueError, match="frame 0"):
        track_segmentation(fn, frames, masks[0][:-1], patch=PATCH, progress=False)
    with pytest.raises(ValueError, match="upsample"):
        track_segmentation(
            fn, frames, masks[0], patch=PATCH, upsample="cubic", short_side=40, size=3, progress=False
        )
