import numpy as np
import pytest

from dinotracker.data.synthetic import make_synthetic_video


def _bilinear(img, x, y):
    """Sample img [H,W,3] at raster (x, y) (pixel centres at +0.5)."""
    x, y = x - 0.5, y - 0.5
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    ax, ay = x - x0, y - y0
    h, w = img.shape[:2]
    x0c, x1c = np.clip([x0, x0 + 1], 0, w - 1)
    y0c, y1c = np.clip([y0, y0 + 1], 0, h - 1)
    f = img.astype(np.float64)
    return ((1 - ax) * (1 - ay) * f[y0c, x0c] + ax * (1 - ay) * f[y0c, x1c]
            + (1 - ax) * ay * f[y1c, x0c] + ax * ay * f[y1c, x1c])


def test_deterministic_and_seed_dependent():
    a = make_synthetic_video(num_frames=6, height=64, width=80, num_points=40, seed=1)
    b = make_synthetic_video(num_frames=6, height=64, width=80, num_points=40, seed=1)
    c = make_synthetic_video(num_frames=6, height=64, width=80, num_points=40, seed=2)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.tracks, b.tracks)
    np.testing.assert_array_equal(a.occluded, b.occluded)
    assert not np.array_equal(a.frames, c.frames)


def test_layout(synthetic_video):
    v = synthetic_video
    n, t = v.tracks.shape[:2]
    assert v.frames.shape == (t, 96, 128, 3) and v.frames.dtype == np.uint8
    assert v.occluded.shape == (n, t) and v.query_frames.shape == (n,)
    assert not v.occluded[np.arange(n), v.query_frames].any()  # query frame = first visible
    assert ((~v.occluded).sum(1) >= 2).all()
    assert set(np.unique(v.point_layer)) >= {0, 1}
    q = v.queries
    assert q.shape == (n, 3)
    np.testing.assert_allclose(q[:, 1:], v.tracks[np.arange(n), v.query_frames])


def test_tracks_follow_texture(synthetic_video):
    """The colour under a visible track stays the colour of its texture point."""
    v = synthetic_video
    errs, ctrl = [], []
    for i in range(len(v.tracks)):
        vis = np.flatnonzero(~v.occluded[i])
        ref = _bilinear(v.frames[vis[0]], *v.tracks[i, vis[0]])
        for t in vis[1:]:
            x, y = v.tracks[i, t]
            if not (1.5 < x < v.frames.shape[2] - 1.5 and 1.5 < y < v.frames.shape[1] - 1.5):
                continue
            if v.layer_ids[t, int(y), int(x)] != v.point_layer[i]:
                continue  # own-layer boundary pixel: neighbours belong to another layer
            errs.append(np.abs(_bilinear(v.frames[t], x, y) - ref).mean())
            ctrl.append(np.abs(_bilinear(v.frames[t], x + 4.0, y + 3.0) - ref).mean())
    errs, ctrl = np.array(errs), np.array(ctrl)
    assert len(errs) > 200
    assert np.median(errs) < 6.0, np.median(errs)
    assert np.median(ctrl) > 3 * np.median(errs)


def test_occlusion_flags_exact(synthetic_video):
    """Occluded <=> outside the frame, or the containing pixel is owned by a nearer layer."""
    v = synthetic_video
    h, w = v.frames.shape[1:3]
    px = np.floor(v.tracks).astype(int)
    for i in range(len(v.tracks)):
        for t in range(v.tracks.shape[1]):
            x, y = px[i, t]
            outside = not (0 <= x < w and 0 <= y < h)
            covered = (not outside) and v.layer_ids[t, y, x] > v.point_layer[i]
            assert v.occluded[i, t] == (outside or covered)
    # the video exercises both kinds of occlusion
    outside_any = ((px[..., 0] < 0) | (px[..., 0] >= w) | (px[..., 1] < 0) | (px[..., 1] >= h)).any()
    assert outside_any and v.occluded.mean() > 0.02


def test_default_size():
    v = make_synthetic_video(num_frames=24, height=240, width=320)
    assert v.frames.shape == (24, 240, 320, 3)
    assert len(v.tracks) > 200


def test_bad_args():
    with pytest.raises(ValueError):
        make_synthetic_video(num_frames=1)
    with pytest.raises(ValueError):
        make_synthetic_video(height=8)


def test_saturation_calms_the_colours_and_keeps_geometry_and_brightness():
    full = make_synthetic_video(num_frames=4, seed=3)
    again = make_synthetic_video(num_frames=4, seed=3, saturation=1.0)
    calm = make_synthetic_video(num_frames=4, seed=3, saturation=0.4)
    assert np.array_equal(full.frames, again.frames)
    for key in ("tracks", "occluded", "query_frames", "masks", "layer_ids"):
        assert np.array_equal(getattr(full, key), getattr(calm, key)), key
    luma = np.array([0.299, 0.587, 0.114])
    # brightness kept up to the uint8 rounding (and the bilinear remap of rounded textures)
    assert np.abs(full.frames @ luma - calm.frames @ luma).max() < 2.5
    chroma = lambda f: (f.astype(float) - (f @ luma)[..., None]).std()  # noqa: E731
    assert 0.3 < chroma(calm.frames) / chroma(full.frames) < 0.5
    with pytest.raises(ValueError, match="saturation"):
        make_synthetic_video(num_frames=2, saturation=1.5)
