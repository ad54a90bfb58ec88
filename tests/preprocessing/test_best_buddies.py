"""DINO best-buddies against independent brute-force references (plain Python / numpy loops)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dinotracker.preprocessing.best_buddies import (
    ambiguity_ratio,
    bb_weight,
    compute_best_buddies,
    filter_by_trajectories,
    mutual_nearest_neighbours,
    nearest_trajectory,
)
from dinotracker.preprocessing.types import BestBuddies

# ----------------------------------------------------------------------------------------------
# independent references
# ----------------------------------------------------------------------------------------------


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.sqrt((v * v).sum())), 1e-8)


def brute_best_buddies(feat: np.ndarray) -> dict:
    """Every ordered pair s != t, double loop over cells, first index wins ties -> {(s,t,i,j): cos}."""
    T, C, h, w = feat.shape
    N = h * w
    X = [[_unit(feat[t, :, n // w, n % w].astype(np.float64)) for n in range(N)] for t in range(T)]
    out = {}
    for s in range(T):
        for t in range(T):
            if s == t:
                continue
            A = [[float(np.dot(X[s][i], X[t][j])) for j in range(N)] for i in range(N)]
            row = []
            for i in range(N):
                best, bj = -math.inf, -1
                for j in range(N):
                    if A[i][j] > best:
                        best, bj = A[i][j], j
                row.append(bj)
            col = []
            for j in range(N):
                best, bi = -math.inf, -1
                for i in range(N):
                    if A[i][j] > best:
                        best, bi = A[i][j], i
                col.append(bi)
            for i in range(N):
                if col[row[i]] == i:
                    out[(s, t, i, row[i])] = A[i][row[i]]
    return out


def _as_dict(bb: BestBuddies, h: int, w: int, patch: int, stride: int) -> dict:
    out = {}
    for k in range(len(bb)):
        sx, sy = bb.src_xy[k].tolist()
        dx, dy = bb.dst_xy[k].tolist()
        i = int(round((sy - patch / 2) / stride)) * w + int(round((sx - patch / 2) / stride))
        j = int(round((dy - patch / 2) / stride)) * w + int(round((dx - patch / 2) / stride))
        out[(int(bb.src_t[k]), int(bb.dst_t[k]), i, j)] = float(bb.cos[k])
    return out


def naive_nms_ratio(feat: np.ndarray, bb: BestBuddies, patch: int, stride: int, topk: int,
                    box_half: float, iou: float) -> np.ndarray:
    """Greedy NMS with Python loops over boxes (suppress IoU > iou), r = max(r_st, r_ts)."""
    T, C, h, w = feat.shape
    N = h * w
    cent = [(stride * (n % w) + patch / 2, stride * (n // w) + patch / 2) for n in range(N)]

    def box_iou(a, b):
        ax0, ay0, ax1, ay1 = a
        bx0, by0, bx1, by1 = b
        iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
        ih = max(0.0, min(ay1, by1) - max(ay0, by0))
        inter = iw * ih
        return inter / ((ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter)

    def one(qf, qxy, tf):
        col = int(round((qxy[0] - patch / 2) / stride))
        row = int(round((qxy[1] - patch / 2) / stride))
        q = _unit(feat[qf, :, row, col].astype(np.float64))
        sims = [float(np.dot(q, _unit(feat[tf, :, n // w, n % w].astype(np.float64)))) for n in range(N)]
        order = sorted(range(N), key=lambda n: -sims[n])[:min(topk, N)]
        kept = []
        for n in order:
            bx = (cent[n][0] - box_half, cent[n][1] - box_half, cent[n][0] + box_half, cent[n][1] + box_half)
            if all(box_iou(bx, kb) <= iou for kb, _ in kept):
                kept.append((bx, sims[n]))
        s1 = kept[0][1]
        s2 = max(kept[1][1], 0.0) if len(kept) > 1 else 0.0
        return s2 / s1 if s1 > 0 else 0.0

    r = []
    for k in range(len(bb)):
        s, t = int(bb.src_t[k]), int(bb.dst_t[k])
        r.append(max(one(s, bb.src_xy[k].tolist(), t), one(t, bb.dst_xy[k].tolist(), s)))
    return np.array(r)


def brute_nearest(tracks: np.ndarray, t: int, p) -> int:
    d = np.sqrt(((tracks[:, t] - np.asarray(p)[None]) ** 2).sum(-1))
    d = np.where(np.isnan(d), np.inf, d)
    return -1 if not np.isfinite(d).any() else int(np.argmin(d))  # argmin: first index on ties


def brute_filter_keep(bb: BestBuddies, tracks: np.ndarray, shift: float = 0.5) -> list[bool]:
    """Per-pair Python loop of spec §2.5 5c (no trajectory at a frame -> condition holds); the nearest
    trajectory is looked up at the points + ``shift`` (the reference's pixel 7 + 7k is raster 7.5 + 7k)."""
    keep = []
    exists = ~np.isnan(tracks).any(-1)
    for k in range(len(bb)):
        s, t = int(bb.src_t[k]), int(bb.dst_t[k])
        ns = brute_nearest(tracks, s, bb.src_xy[k].numpy() + shift)
        nt = brute_nearest(tracks, t, bb.dst_xy[k].numpy() + shift)
        keep.append((ns < 0 or not exists[ns, t]) and (nt < 0 or not exists[nt, s]))
    return keep


# ----------------------------------------------------------------------------------------------
# 1. mutual nearest neighbours
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_mnn_matches_brute_force_including_reverse_pairs(seed):
    g = torch.Generator().manual_seed(seed)
    T, C, h, w, patch, stride = 4, 16, 6, 7, 14, 7
    feat = torch.randn(T, C, h, w, generator=g)
    bb = mutual_nearest_neighbours(feat, patch, stride, pair_batch=3, progress=False)
    ref = brute_best_buddies(feat.numpy())
    ours = _as_dict(bb, h, w, patch, stride)
    assert (bb.src_t < bb.dst_t).all()
    fwd = {k: v for k, v in ref.items() if k[0] < k[1]}
    assert set(ours) == set(fwd) and len(ours) == len(bb)
    for k, v in fwd.items():
        assert ours[k] == pytest.approx(v, abs=1e-5)
    # the reference's second (t, s) computation is the mirror image of (s, t)
    rev = {(t, s, j, i): v for (s, t, i, j), v in ref.items() if s > t}
    assert set(rev) == set(fwd)
    assert torch.allclose(bb.ratio, torch.zeros(len(bb)))
    assert torch.allclose(bb.weight, bb_weight(torch.zeros(len(bb)), bb.cos))


def test_mnn_exact_ties_take_first_index():
    # scaled basis vectors and zero cells: cosines are exactly 0 or 1, so ties are everywhere
    g = torch.Generator().manual_seed(3)
    T, C, h, w = 3, 3, 4, 5
    basis = torch.eye(C)[torch.randint(0, C, (T, h, w), generator=g)]  # [T, h, w, C]
    scale = torch.rand(T, h, w, 1, generator=g) + 0.5
    scale[torch.rand(T, h, w, 1, generator=g) < 0.15] = 0.0
    feat = (basis * scale).permute(0, 3, 1, 2).contiguous()
    bb = mutual_nearest_neighbours(feat, 2, 2, pair_batch=2, progress=False)
    assert _as_dict(bb, h, w, 2, 2) == {k: v for k, v in brute_best_buddies(feat.numpy()).items()
                                        if k[0] < k[1]}


def test_mnn_identical_frames_all_cells_and_patch_centres():
    T, C, h, w, patch, stride = 2, 8, 3, 4, 8, 4
    f = torch.randn(1, C, h, w).expand(T, C, h, w).contiguous()
    bb = mutual_nearest_neighbours(f, patch, stride, progress=False)
    assert len(bb) == h * w
    # generic random features: every cell is its own best buddy; coords by hand
    expected = sorted((stride * c + patch / 2, stride * r + patch / 2) for r in range(h) for c in range(w))
    assert sorted(map(tuple, bb.src_xy.tolist())) == expected
    assert torch.equal(bb.src_xy, bb.dst_xy)
    assert torch.allclose(bb.cos, torch.ones(h * w), atol=1e-5)


def test_mnn_pairs_argument_dtype_and_errors():
    feat = torch.randn(5, 4, 3, 3).half()  # the cache stores float16
    bb = mutual_nearest_neighbours(feat, 14, 7, pairs=[(3, 1), (1, 3), (0, 4)], progress=False)
    assert set(zip(bb.src_t.tolist(), bb.dst_t.tolist())) <= {(1, 3), (0, 4)}
    assert bb.cos.dtype == torch.float32 and bb.src_xy.dtype == torch.float32
    full = _as_dict(mutual_nearest_neighbours(feat.float(), 14, 7, progress=False), 3, 3, 14, 7)
    assert _as_dict(bb, 3, 3, 14, 7).keys() == {k for k in full if k[:2] in {(1, 3), (0, 4)}}
    with pytest.raises(ValueError, match="s != t"):
        mutual_nearest_neighbours(feat, 14, 7, pairs=[(2, 2)], progress=False)
    with pytest.raises(ValueError, match="index"):
        mutual_nearest_neighbours(feat, 14, 7, pairs=[(0, 9)], progress=False)
    with pytest.raises(ValueError, match=r"\[T, C, h, w\]"):
        mutual_nearest_neighbours(torch.randn(4, 3, 3), 14, 7)
    with pytest.raises(ValueError, match="pair_batch"):
        mutual_nearest_neighbours(feat, 14, 7, pair_batch=0)


def test_single_frame_is_empty():
    bb = mutual_nearest_neighbours(torch.randn(1, 4, 3, 3), 14, 7, progress=False)
    assert len(bb) == 0 and bb.src_xy.shape == (0, 2)


# ----------------------------------------------------------------------------------------------
# 2. trajectory filter
# ----------------------------------------------------------------------------------------------


def _random_bb(g, M, T, h, w, patch, stride) -> BestBuddies:
    s = torch.randint(0, T - 1, (M,), generator=g)
    t = s + 1 + (torch.rand(M, generator=g) * (T - 1 - s)).long()
    cell = lambda: torch.stack([torch.randint(0, w, (M,), generator=g) * stride + patch / 2,  # noqa: E731
                                torch.randint(0, h, (M,), generator=g) * stride + patch / 2], 1).float()
    cos = torch.rand(M, generator=g)
    return BestBuddies(s, t, cell(), cell(), cos, torch.zeros(M), bb_weight(torch.zeros(M), cos))


def _random_tracks(g, N, T, H, W, pixel_seed_frac=0.3):
    """Contiguous segments; some tracks sit on pixel centres (exact distance ties) and duplicates."""
    xy = torch.rand(N, 1, 2, generator=g) * torch.tensor([W, H]) + torch.cumsum(
        torch.randn(N, T, 2, generator=g), dim=1)
    seed = torch.rand(N, generator=g) < pixel_seed_frac
    xy[seed] = torch.floor(xy[seed]) + 0.5
    start = torch.randint(0, T, (N,), generator=g)
    length = torch.randint(1, T + 1, (N,), generator=g)
    tt = torch.arange(T)[None]
    absent = (tt < start[:, None]) | (tt >= (start + length)[:, None])
    xy[absent] = float("nan")
    # duplicated positions with different life spans: the tie rule decides the outcome
    dup = xy[: N // 5].clone()
    dup[:, : T // 2] = xy[: N // 5, : T // 2]
    dup[:, T // 2:] = float("nan")
    return torch.cat([xy, dup])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_filter_matches_per_pair_loop(seed):
    g = torch.Generator().manual_seed(seed)
    T, h, w, patch, stride = 6, 5, 7, 8, 4
    H, W = (h - 1) * stride + patch, (w - 1) * stride + patch
    bb = _random_bb(g, 120, T, h, w, patch, stride)
    tracks = _random_tracks(g, 60, T, H, W)
    tracks[:, 4] = float("nan")  # a frame without trajectories
    out = filter_by_trajectories(bb, tracks, max_elems=64)
    keep = brute_filter_keep(bb, tracks.numpy())
    assert 0 < sum(keep) < len(keep)
    assert len(out) == sum(keep)
    idx = torch.tensor(keep).nonzero().squeeze(1)
    for name in ("src_t", "dst_t", "src_xy", "dst_xy", "cos", "ratio", "weight"):
        assert torch.equal(getattr(out, name), getattr(bb, name)[idx])


def test_nearest_trajectory_pruned_equals_argmin():
    g = torch.Generator().manual_seed(5)
    tracks = _random_tracks(g, 3000, 3, 60, 90, pixel_seed_frac=0.6)
    pts = torch.stack([torch.randint(0, 23, (400,), generator=g) * 4.0 + 4,
                       torch.randint(0, 15, (400,), generator=g) * 4.0 + 4], 1)
    pts = torch.cat([pts, torch.tensor([[-50.0, 300.0], [500.0, -20.0]])])  # far outside
    for t in range(3):
        got = nearest_trajectory(tracks, t, pts, max_elems=500, tile=16, probe=64)
        ref = [brute_nearest(tracks.numpy(), t, p) for p in pts.numpy()]
        assert got.tolist() == ref


def test_filter_everything_connected_is_empty():
    g = torch.Generator().manual_seed(0)
    bb = _random_bb(g, 30, 4, 3, 3, 14, 7)
    tracks = torch.tensor([[[10.0, 10.0]] * 4])  # one trajectory spanning every frame
    out = filter_by_trajectories(bb, tracks)
    assert len(out) == 0 and out.src_xy.shape == (0, 2)
    assert len(filter_by_trajectories(BestBuddies.empty(), tracks)) == 0
    with pytest.raises(ValueError, match="N, T, 2"):
        filter_by_trajectories(bb, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="frames"):
        filter_by_trajectories(bb, torch.zeros(1, 2, 2))


# ----------------------------------------------------------------------------------------------
# 3. ambiguity ratio and weights
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("patch,stride,box_half,topk", [(8, 4, 7.0, 400), (8, 4, 7.0, 5), (14, 7, 30.0, 400),
                                                         (14, 7, 10.0, 12)])
@pytest.mark.parametrize("nms", ["fast", "torchvision"])
def test_ratio_matches_naive_nms(patch, stride, box_half, topk, nms):
    g = torch.Generator().manual_seed(7)
    T, C, h, w = 4, 16, 6, 7
    feat = torch.randn(T, C, h, w, generator=g)
    bb = mutual_nearest_neighbours(feat, patch, stride, progress=False)
    assert len(bb) > 10
    r = ambiguity_ratio(bb, feat, patch, stride, topk=topk, box_half=box_half, iou=0.2, chunk=7, nms=nms)
    ref = naive_nms_ratio(feat.numpy(), bb, patch, stride, topk, box_half, 0.2)
    assert r.shape == (len(bb),)
    np.testing.assert_allclose(r.numpy(), ref, atol=1e-5)
    assert (ref > 0).any() and (r >= 0).all() and (r <= 1 + 1e-6).all()


@pytest.mark.parametrize("patch,stride,box_half,topk,iou", [
    (8, 4, 7.0, 400, 0.2), (8, 4, 7.0, 3, 0.2), (14, 7, 30.0, 400, 0.2), (8, 4, 6.0, 400, 0.05),
    (8, 4, 7.0, 400, 1.0)])  # iou = 1: nothing suppressed, s2 = second-highest cell
def test_fused_ratio_in_mnn_matches_naive_nms(patch, stride, box_half, topk, iou):
    g = torch.Generator().manual_seed(11)
    T, C, h, w = 4, 16, 6, 7
    feat = torch.randn(T, C, h, w, generator=g)
    bb = mutual_nearest_neighbours(feat, patch, stride, progress=False, with_ratio=True, topk=topk,
                                   box_half=box_half, iou=iou, chunk=5, pair_batch=4)
    ref = naive_nms_ratio(feat.numpy(), bb, patch, stride, topk, box_half, iou)
    np.testing.assert_allclose(bb.ratio.numpy(), ref, atol=1e-5)
    assert torch.allclose(bb.weight, bb_weight(bb.ratio, bb.cos))
    plain = mutual_nearest_neighbours(feat, patch, stride, progress=False)
    assert torch.equal(plain.src_xy, bb.src_xy) and torch.equal(plain.dst_t, bb.dst_t)


def test_ratio_single_peak_and_duplicate_peak():
    # target frame 1 equals frame 0 except one cell far away duplicates cell 0's feature exactly
    C, h, w, patch, stride = 8, 4, 6, 14, 7
    g = torch.Generator().manual_seed(1)
    f0 = torch.randn(C, h, w, generator=g)
    f1 = f0.clone()
    f1[:, 3, 5] = f0[:, 0, 0]
    feat = torch.stack([f0, f1])
    src = torch.tensor([[patch / 2, patch / 2]])
    bb = BestBuddies(torch.tensor([0]), torch.tensor([1]), src, src.clone(), torch.ones(1), torch.zeros(1),
                     torch.ones(1))
    # second identical peak 35+ px away survives NMS -> r = 1
    r = ambiguity_ratio(bb, feat, patch, stride, topk=400, box_half=30.0)
    assert r[0] == pytest.approx(1.0, abs=1e-5)
    # with topk = 1 only one peak exists -> s2 = 0 -> r = 0
    assert ambiguity_ratio(bb, feat, patch, stride, topk=1)[0] == 0.0
    assert ambiguity_ratio(BestBuddies.empty(), feat, patch, stride).shape == (0,)
    with pytest.raises(ValueError, match="nms"):
        ambiguity_ratio(bb, feat, patch, stride, nms="bogus")


def test_bb_weight_hand_values():
    c_half = 0.5 ** (1 / 3)  # 2 c^3 = 1
    r0 = 1 - 5.7 / 27  # 0.78888...: sigmoid argument 0
    w = bb_weight(torch.tensor([r0, 0.7, 0.85, 1.0, 0.0, 0.0, 0.3]),
                  torch.tensor([c_half, c_half, c_half, c_half, 1.0, -0.4, 0.0]))
    expected = [0.5, 1 / (1 + math.exp(-2.4)), 1 / (1 + math.exp(1.65)), 1 / (1 + math.exp(5.7)),
                2 / (1 + math.exp(-21.3)), 0.0, 0.0]
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-5, atol=1e-7)
    assert w[1] == pytest.approx(0.9168, abs=1e-4) and w[2] == pytest.approx(0.1611, abs=1e-4)
    assert w[3] == pytest.approx(0.00334, abs=1e-5)


@pytest.mark.parametrize("nms", ["fast", "torchvision"])
def test_compute_best_buddies_end_to_end(nms):
    g = torch.Generator().manual_seed(4)
    T, C, h, w, patch, stride = 4, 16, 6, 7, 8, 4
    feat = torch.randn(T, C, h, w, generator=g)
    H, W = (h - 1) * stride + patch, (w - 1) * stride + patch
    tracks = _random_tracks(g, 40, T, H, W)
    out = compute_best_buddies(feat, patch, stride, tracks, topk=20, box_half=7.0, progress=False, nms=nms,
                               a=20.0, b=-4.0)
    mnn = mutual_nearest_neighbours(feat, patch, stride, progress=False)
    filt = filter_by_trajectories(mnn, tracks)
    assert 0 < len(out) == len(filt) < len(mnn)
    assert torch.equal(out.src_xy, filt.src_xy) and torch.equal(out.dst_t, filt.dst_t)
    r = torch.from_numpy(naive_nms_ratio(feat.numpy(), filt, patch, stride, 20, 7.0, 0.2)).float()
    assert torch.allclose(out.ratio, r, atol=1e-5)
    assert torch.allclose(out.weight, bb_weight(r, out.cos, 20.0, -4.0), atol=1e-5)
    # no trajectories given: no filter
    unfiltered = compute_best_buddies(feat, patch, stride, None, topk=20, box_half=7.0, progress=False)
    assert len(unfiltered) == len(mnn)


def test_compute_best_buddies_nothing_survives():
    feat = torch.randn(3, 4, 3, 3)
    tracks = torch.full((1, 3, 2), 5.0)  # connects every pair
    out = compute_best_buddies(feat, 14, 7, tracks, progress=False)
    assert len(out) == 0
    ref = BestBuddies.empty()
    for name in ("src_t", "dst_t", "src_xy", "dst_xy", "cos", "ratio", "weight"):
        assert getattr(out, name).shape == getattr(ref, name).shape
        assert getattr(out, name).dtype == getattr(ref, name).dtype
    assert len(compute_best_buddies(torch.randn(1, 4, 3, 3), 14, 7, progress=False)) == 0
