"""Chained trajectories: exact analytic tracks on synthetic flows (translations, rotation), ends at frame
exits and occlusions, re-seeding at disocclusions, the direct-flow filter, min_length, equality with a naive
per-point loop (experiments/bench/trajectories.py), and the FG/BG split against a per-track loop."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dinotracker.preprocessing.trajectories import (
    chain_trajectories,
    continuation_masks,
    direct_targets,
    make_direct_flow_fn,
    split_foreground,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def naive():
    path = REPO / "experiments" / "bench" / "trajectories.py"
    spec = importlib.util.spec_from_file_location("bench_trajectories", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def constant_flows(n_frames, h, w, d):
    fwd = torch.empty(n_frames - 1, 2, h, w)
    fwd[:, 0], fwd[:, 1] = d
    return fwd, -fwd


def starts(tracks):
    """[(start frame, x, y)] of each row."""
    out = []
    for row in tracks.numpy():
        s = int(np.flatnonzero(~np.isnan(row[:, 0]))[0])
        out.append((s, float(row[s, 0]), float(row[s, 1])))
    return out


def check_rows_are_segments(tracks):
    valid = ~torch.isnan(tracks).any(-1)
    assert (valid == ~torch.isnan(tracks).all(-1)).all()  # x and y absent together
    d = valid.int().diff(dim=1)
    assert ((d == 1).sum(1) <= 1).all() and ((d == -1).sum(1) <= 1).all()  # one contiguous segment
    return valid


def inside(x, y, h, w):
    return 0.5 <= x <= w - 0.5 and 0.5 <= y <= h - 0.5


def assert_analytic(tracks, motion, h, w, n_frames, tol=1e-3):
    """Every row follows p_{s+k} = motion(p_s, k) exactly and ends where the next step leaves the frame."""
    for row in tracks.numpy().astype(np.float64):
        valid = np.flatnonzero(~np.isnan(row[:, 0]))
        s, last = int(valid[0]), int(valid[-1])
        x0, y0 = row[s]
        assert (x0 - 0.5) % 1 == 0 and (y0 - 0.5) % 1 == 0  # starts at a pixel centre
        for k in range(last - s + 1):
            np.testing.assert_allclose(row[s + k], motion(x0, y0, k), atol=tol)
        if last < n_frames - 1:
            assert not inside(*motion(x0, y0, last - s + 1), h, w)


def test_integer_translation_exact():
    n_frames, h, w, (dx, dy) = 5, 10, 12, (2, 1)
    tr = chain_trajectories(*constant_flows(n_frames, h, w, (dx, dy)), progress=False)
    assert tr.tracks is tr.tracks_unfiltered  # no direct filter: one set
    # hand-derived: frame 0 seeds every pixel; later frames seed exactly the disoccluded band j < 2 or i < 1
    expected = []
    for s in range(n_frames - 1):
        for i in range(h):
            for j in range(w):
                if s > 0 and j >= dx and i >= dy:
                    continue
                last = min(n_frames - 1, s + (w - 1 - j) // dx, s + (h - 1 - i) // dy)
                if last >= s + 1:
                    row = np.full((n_frames, 2), np.nan)
                    for t in range(s, last + 1):
                        row[t] = (j + 0.5 + dx * (t - s), i + 0.5 + dy * (t - s))
                    expected.append(row)
    np.testing.assert_allclose(tr.tracks.numpy(), np.stack(expected), atol=1e-4)


@pytest.mark.parametrize("d", [(0.3, 0.6), (-0.7, 0.45)])
def test_subpixel_translation_exact(naive, d):
    n_frames, h, w = 6, 9, 11
    fwd, bwd = constant_flows(n_frames, h, w, d)
    tr = chain_trajectories(fwd, bwd, progress=False)
    check_rows_are_segments(tr.tracks)
    assert_analytic(tr.tracks, lambda x, y, k: (x + d[0] * k, y + d[1] * k), h, w, n_frames)
    st = starts(tr.tracks)
    assert sum(s == 0 for s, _, _ in st) == sum(  # every pixel of frame 0 that survives one step
        inside(j + 0.5 + d[0], i + 0.5 + d[1], h, w) for i in range(h) for j in range(w))
    ref_f, _ = naive.naive_chain(fwd.numpy(), bwd.numpy())
    assert st == starts(torch.from_numpy(ref_f))  # look-behind re-seeding as the per-point loop


def rotation_flows(n_frames, h, w, theta):
    c = np.array([w / 2, h / 2])
    ys, xs = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    p = np.stack([xs, ys], 0).reshape(2, -1) - c[:, None]

    def field(a):
        r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        return (r @ p - p).reshape(2, h, w)

    fwd = torch.from_numpy(np.stack([field(theta)] * (n_frames - 1))).float()
    bwd = torch.from_numpy(np.stack([field(-theta)] * (n_frames - 1))).float()
    return fwd, bwd, c


def test_rotation_about_centre_exact(naive):
    n_frames, h, w, theta = 6, 15, 17, math.radians(6.0)
    fwd, bwd, c = rotation_flows(n_frames, h, w, theta)

    def motion(x, y, k):
        a = theta * k
        u, v = x - c[0], y - c[1]
        return (c[0] + math.cos(a) * u - math.sin(a) * v, c[1] + math.sin(a) * u + math.cos(a) * v)

    tr = chain_trajectories(fwd, bwd, progress=False)
    check_rows_are_segments(tr.tracks)
    # bilinear interpolation of an affine field is exact between pixel centres: tracks are exact rotations
    assert_analytic(tr.tracks, motion, h, w, n_frames)
    # corners leave the frame: some frame-0 tracks end early, the centre pixel lives to the end
    n_valid = (~torch.isnan(tr.tracks[..., 0])).sum(1)
    from0 = ~torch.isnan(tr.tracks[:, 0, 0])
    assert (n_valid[from0] < n_frames).any() and (n_valid[from0] == n_frames).any()
    assert int((~from0).sum()) > 0  # re-seeded where the rotated grid leaves holes / uncovered pixels
    ref_f, _ = naive.naive_chain(fwd.numpy(), bwd.numpy())
    assert starts(tr.tracks) == starts(torch.from_numpy(ref_f))


def occlusion_flows(n_frames=5, h=12, w=24, rows=(3, 8), x0=4, size=5, v=2):
    """Static background, a square (rows [3, 8), cols [x0 + v t, x0 + v t + size)) moving right v px/frame."""
    fwd = torch.zeros(n_frames - 1, 2, h, w)
    bwd = torch.zeros(n_frames - 1, 2, h, w)
    for t in range(n_frames - 1):
        a = x0 + v * t
        fwd[t, 0, rows[0]:rows[1], a:a + size] = v  # square pixels of frame t
        bwd[t, 0, rows[0]:rows[1], a + v:a + v + size] = -v  # square pixels of frame t+1
    return fwd, bwd


def test_occlusion_ends_and_disocclusion_starts():
    n_frames = 5
    fwd, bwd = occlusion_flows(n_frames)
    cont = continuation_masks(fwd, bwd)
    assert not cont[0].any()
    # frame 1: the background uncovered behind the square (cols 4, 5) is not a continuation
    assert not cont[1, 3:8, 4:6].any() and cont[1, 3:8, 6:11].all() and cont[1, :3].all()
    tr = chain_trajectories(fwd, bwd, progress=False)
    rows = {(s, x, y): r for (s, x, y), r in zip(starts(tr.tracks), tr.tracks.numpy())}
    # background pixel (row 5, col 11): free at frame 1, covered by the square at frame 2 -> ends at frame 1
    r = rows[(0, 11.5, 5.5)]
    assert np.isnan(r[2:]).all() and np.allclose(r[:2], [[11.5, 5.5]] * 2)
    # background pixel (row 5, col 9): occluded at frame 1 -> a single frame, dropped (min_length 2)
    assert (0, 9.5, 5.5) not in rows
    # a square pixel rides along to the end
    np.testing.assert_allclose(rows[(0, 6.5, 5.5)], [[6.5 + 2 * t, 5.5] for t in range(n_frames)], atol=1e-5)
    # disoccluded background behind the square starts new static tracks at frame 1 (cols 4, 5)
    for i in range(3, 8):
        for j in (4, 5):
            np.testing.assert_allclose(rows[(1, j + 0.5, i + 0.5)][1:], [[j + 0.5, i + 0.5]] * (n_frames - 1),
                                       atol=1e-5)
    # nothing passes through an occluded background pixel: every track is either the square or static
    for (s, _x, _y), r in rows.items():
        steps = np.diff(r[s:][~np.isnan(r[s:, 0])], axis=0)
        assert np.allclose(steps, 0, atol=1e-5) or np.allclose(steps, [[2, 0]] * len(steps), atol=1e-5)


def test_direct_filter_kills_drifting_chain():
    """Consecutive flows say +1.6 px/frame, the direct flows say +1 px/frame: the chain drifts 0.6 px/frame
    and dies once the drift reaches 2.5 px (k = 5), only where the direct flow is reliable."""
    n_frames, h, w = 8, 6, 40
    fwd, bwd = constant_flows(n_frames, h, w, (1.6, 0.0))
    calls = []

    def direct(s, ts):
        calls.append((s, list(ts)))
        flows = torch.zeros(len(ts), 2, h, w)
        flows[:, 0] = torch.tensor([t - s for t in ts], dtype=torch.float32)[:, None, None]
        reliable = torch.ones(len(ts), h, w, dtype=torch.bool)
        reliable[:, 3:] = False  # rows 3.. are unreliable: never filtered
        return flows, reliable

    tr = chain_trajectories(fwd, bwd, direct_flow=direct, direct_threshold=2.5, progress=False)
    unf = dict(zip(starts(tr.tracks_unfiltered), tr.tracks_unfiltered.numpy()))
    filt = dict(zip(starts(tr.tracks), tr.tracks.numpy()))
    assert set(filt) <= set(unf)
    for key, r in filt.items():
        s, x, y = key
        valid = np.flatnonzero(~np.isnan(r[:, 0]))
        last_u = np.flatnonzero(~np.isnan(unf[key][:, 0]))[-1]
        np.testing.assert_array_equal(r[valid], unf[key][valid])  # a prefix of the unfiltered row
        if y < 3:  # reliable rows: drift 0.6 k >= 2.5 first at k = 5
            assert valid[-1] == min(last_u, s + 4)
        else:
            assert valid[-1] == last_u
    assert any(np.flatnonzero(~np.isnan(unf[k][:, 0]))[-1] > k[0] + 4 for k in filt if k[2] < 3)
    assert all(t > s for s, ts in calls for t in ts)


@pytest.mark.parametrize("drift, killed", [(2.0, False), (3.0, True)])
def test_direct_filter_threshold(drift, killed):
    n_frames, h, w = 5, 4, 30
    fwd, bwd = constant_flows(n_frames, h, w, (1.0, 0.0))

    def direct(s, ts):
        flows = torch.zeros(len(ts), 2, h, w)
        flows[:, 0] = torch.tensor([t - s + drift for t in ts])[:, None, None]
        return flows, torch.ones(len(ts), h, w, dtype=torch.bool)

    tr = chain_trajectories(fwd, bwd, direct_flow=direct, direct_threshold=2.5, progress=False)
    if killed:  # dead at the first check: rows of length 1, all dropped; the unfiltered set is untouched
        assert tr.tracks.shape[0] == 0
    else:
        assert torch.equal(torch.isnan(tr.tracks), torch.isnan(tr.tracks_unfiltered))
    assert tr.tracks_unfiltered.shape[0] >= h * (w - 1)


@pytest.mark.parametrize("window, every, last_k", [(2, 1, None), (None, 4, 3), (None, 1, 2), (6, 3, 2)])
def test_direct_window_and_every(window, every, last_k):
    """Static direct flows vs +1 px/frame chains: the drift k reaches 2.5 at k = 3; targets outside the
    window / stride are never requested, so the first check may come later or never."""
    n_frames, h, w = 9, 3, 40
    fwd, bwd = constant_flows(n_frames, h, w, (1.0, 0.0))
    requested = []

    def direct(s, ts):
        requested.extend(t - s for t in ts)
        return torch.zeros(len(ts), 2, h, w), torch.ones(len(ts), h, w, dtype=torch.bool)

    tr = chain_trajectories(fwd, bwd, direct_flow=direct, direct_window=window, direct_every=every,
                            progress=False)
    assert all(k % every == 0 and (window is None or k <= window) for k in requested)
    expected = [t for t in range(3, n_frames) if (t - 2) % every == 0 and (window is None or t - 2 <= window)]
    assert direct_targets(2, n_frames, window, every) == expected
    n_valid = (~torch.isnan(tr.tracks[..., 0])).sum(1)
    n_unf = (~torch.isnan(tr.tracks_unfiltered[..., 0])).sum(1)
    if last_k is None:
        assert torch.equal(n_valid, n_unf)
    else:
        assert int(n_valid.max()) == last_k + 1


@pytest.mark.parametrize("min_length, use_direct", [(2, False), (2, True), (3, True), (4, False)])
def test_matches_naive_loop_on_random_flows(naive, min_length, use_direct):
    """Smooth random flows with inconsistent patches (failed checks, re-seeding everywhere)."""
    g = torch.Generator().manual_seed(min_length + 10 * use_direct)
    n_frames, h, w = 6, 10, 13
    fwd = torch.nn.functional.avg_pool2d(torch.randn(n_frames - 1, 2, h + 4, w + 4, generator=g) * 6, 5, 1)
    bwd = -fwd + 0.9 * torch.randn(fwd.shape, generator=g).clamp(-2, 2)
    noise = torch.randn(n_frames * n_frames, 2, h + 2, w + 2, generator=g) * 4
    dflows = torch.nn.functional.avg_pool2d(noise, 3, 1).reshape(n_frames, n_frames, 2, h, w)
    drel = torch.rand(n_frames, n_frames, h, w, generator=g) < 0.7

    def direct(s, ts):
        return dflows[s, ts], drel[s, ts]

    kw = dict(min_length=min_length, direct_flow=direct if use_direct else None)
    tr = chain_trajectories(fwd, bwd, progress=False, **kw)
    ref_f, ref_u = naive.naive_chain(fwd.numpy(), bwd.numpy(), **kw)
    assert tr.tracks.shape[0] > h * w // 2
    np.testing.assert_allclose(tr.tracks.numpy(), ref_f, atol=1e-4)
    np.testing.assert_allclose(tr.tracks_unfiltered.numpy(), ref_u, atol=1e-4)
    for t in (tr.tracks, tr.tracks_unfiltered):
        valid = check_rows_are_segments(t)
        assert (valid.sum(1) >= min_length).all()
        assert (valid[:, : n_frames - min_length + 1].any(1)).all()  # no start after T - min_length
    if use_direct:  # same starts, filtered rows no longer
        unf = dict(zip(starts(tr.tracks_unfiltered), tr.tracks_unfiltered))
        for key, r in zip(starts(tr.tracks), tr.tracks):
            ok = ~torch.isnan(r[:, 0])
            assert torch.equal(r[ok], unf[key][ok])
        assert (~torch.isnan(tr.tracks[..., 0])).sum() < (~torch.isnan(tr.tracks_unfiltered[..., 0])).sum()


def test_make_direct_flow_fn_reliability():
    n_frames, h, w = 4, 6, 10

    class Fake:
        """Constant frames (value = index): flow s -> t = (t - s, 0); its reverse is wrong on rows 0-1."""

        def __call__(self, src, dst):
            out = torch.zeros(src.shape[0], 2, h, w)
            for k in range(src.shape[0]):
                a, b = int(src[k, 0, 0, 0]), int(dst[k, 0, 0, 0])
                out[k, 0] = b - a
                if b < a:
                    out[k, 0, :2] = 0.0
            return out

    frames = torch.arange(n_frames, dtype=torch.uint8)[:, None, None, None]
    frames = frames.expand(n_frames, 3, h, w).contiguous()
    fn = make_direct_flow_fn(Fake(), frames, fb_threshold=1.5, batch_size=2)
    flows, reliable = fn(0, [1, 2, 3])
    assert flows.shape == (3, 2, h, w) and reliable.shape == (3, h, w) and reliable.dtype == torch.bool
    for k, t in enumerate([1, 2, 3]):
        assert (flows[k, 0] == t).all() and (flows[k, 1] == 0).all()
        for i in range(h):
            for j in range(w):
                lands = j + 0.5 + t <= w - 0.5
                consistent = i >= 2 or t < 1.5  # rows 0-1: error t
                assert bool(reliable[k, i, j]) == (lands and consistent), (t, i, j)
    with pytest.raises(ValueError, match="direct flow frames"):
        fn(0, [n_frames])


def test_split_foreground_matches_loop():
    g = torch.Generator().manual_seed(0)
    n, n_frames, h, w = 300, 7, 9, 11
    masks = torch.rand(n_frames, h, w, generator=g) < 0.4
    tracks = torch.full((n, n_frames, 2), float("nan"))
    for r in range(n - 1):  # the last row stays empty
        s = int(torch.randint(0, n_frames, (1,), generator=g))
        e = int(torch.randint(s, n_frames, (1,), generator=g))
        tracks[r, s:e + 1, 0] = torch.rand(e - s + 1, generator=g) * w
        tracks[r, s:e + 1, 1] = torch.rand(e - s + 1, generator=g) * h
    tracks[0, :, 0] = torch.linspace(w + 1, 0, n_frames)  # starts outside the frame: background
    fg = split_foreground(tracks, masks)
    expected = []
    for r in range(n):
        frames = [t for t in range(n_frames) if not math.isnan(float(tracks[r, t, 0]))]
        if not frames:
            expected.append(False)
            continue
        x, y = (float(v) for v in tracks[r, frames[0]])
        expected.append(0 <= x < w and 0 <= y < h and bool(masks[frames[0], int(y), int(x)]))
    assert fg.tolist() == expected
    assert 0 < sum(expected) < n
    with pytest.raises(ValueError, match="fg_masks"):
        split_foreground(tracks, masks[:3])


def test_bad_arguments():
    fwd, bwd = constant_flows(3, 4, 5, (1.0, 0.0))
    with pytest.raises(ValueError, match="forward/backward"):
        chain_trajectories(fwd, bwd[:1])
    with pytest.raises(ValueError, match="min_length"):
        chain_trajectories(fwd, bwd, min_length=0)
    with pytest.raises(ValueError, match="direct_every"):
        chain_trajectories(fwd, bwd, direct_every=0)
    with pytest.raises(ValueError, match="direct_window"):
        chain_trajectories(fwd, bwd, direct_window=0)
    with pytest.raises(ValueError, match="direct_flow"):
        chain_trajectories(fwd, bwd, direct_flow=lambda s, ts: (torch.zeros(1, 2, 4, 5), torch.ones(1, 4, 5)),
                           progress=False)
    tr = chain_trajectories(fwd, bwd, min_length=4, progress=False)  # longer than the video: nothing
    assert tr.tracks.shape == (0, 3, 2)


def test_dis_chaining_follows_synthetic_ground_truth(synthetic_video):
    """End to end with DIS on a rendered video with exact tracks: chained displacements match the ground
    truth (checks the pixel-centre convention of flow and chaining) and the direct filter cuts the tail."""
    from dinotracker.preprocessing.flow import build_flow, compute_consecutive_flows

    v = synthetic_video
    frames = torch.from_numpy(v.frames).permute(0, 3, 1, 2).contiguous()
    est = build_flow("dis")
    fwd, bwd = compute_consecutive_flows(est, frames, progress=False)
    tr = chain_trajectories(fwd, bwd, direct_flow=make_direct_flow_fn(est, frames), progress=False)
    errors = {}
    for name, tracks in (("filtered", tr.tracks), ("unfiltered", tr.tracks_unfiltered)):
        errs = []
        for n in range(v.tracks.shape[0]):
            q = int(v.query_frames[n])
            gt = torch.from_numpy(v.tracks[n])
            d = torch.nan_to_num((tracks[:, q] - gt[q]).norm(dim=-1), nan=1e9)
            k = int(d.argmin())
            if d[k] > 0.75:  # no trajectory through this query pixel
                continue
            for t in range(q + 1, v.tracks.shape[1]):
                if not v.occluded[n, t] and not torch.isnan(tracks[k, t, 0]):
                    errs.append(float(((tracks[k, t] - tracks[k, q]) - (gt[t] - gt[q])).norm()))
        errors[name] = np.array(errs)
    assert len(errors["filtered"]) > 200
    assert np.median(errors["filtered"]) < 0.75
    assert np.percentile(errors["filtered"], 90) < np.percentile(errors["unfiltered"], 90)
