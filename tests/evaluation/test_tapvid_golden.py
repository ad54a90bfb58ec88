"""TAP-Vid metrics: tapnet's golden values (ANCHORS.md §10.7) and an independent per-track loop."""

from __future__ import annotations

import numpy as np
import pytest

from dinotracker.evaluation.tapvid import compute_tapvid_metrics, evaluate_tracks


def _toy():
    gt = np.zeros((1, 2, 4, 2))
    gt[0, 0] = [(10, 10), (20, 10), (30, 10), (40, 10)]
    gt[0, 1] = (100, 100)
    gt_occ = np.array([[[0, 0, 0, 1], [0, 0, 1, 0]]], bool)
    q = np.array([[[0, 10, 10], [1, 100, 100]]], float)
    pred = gt.copy()
    pred[0, 0, 1] = (21.5, 10)
    pred[0, 0, 2] = (33, 14)
    pred[0, 1, 0] = (100, 120)
    pred[0, 1, 3] = (102, 100)
    pred_occ = np.array([[[0, 0, 0, 0], [0, 0, 1, 1]]], bool)
    return q, gt_occ, gt, pred_occ, pred


@pytest.mark.parametrize("mode,expect", [
    ("first", dict(occlusion_accuracy=0.6, pts_within_1=0, pts_within_2=1 / 3, pts_within_4=2 / 3, pts_within_8=1,
                   pts_within_16=1, jaccard_1=0, jaccard_2=0.2, jaccard_4=0.2, jaccard_8=0.5, jaccard_16=0.5,
                   average_jaccard=0.28, average_pts_within_thresh=0.6)),
    ("strided", dict(occlusion_accuracy=2 / 3, pts_within_1=0, pts_within_2=0.25, pts_within_4=0.5,
                     pts_within_8=0.75, pts_within_16=0.75, jaccard_1=0, jaccard_2=1 / 7, jaccard_4=1 / 7,
                     jaccard_8=1 / 3, jaccard_16=1 / 3, average_jaccard=0.190476, average_pts_within_thresh=0.45)),
])
def test_toy_golden(mode, expect):
    m = compute_tapvid_metrics(*_toy(), query_mode=mode)
    for k, v in expect.items():
        assert m[k][0] == pytest.approx(v, abs=1e-6), k


def _random():
    rng = np.random.default_rng(0)
    b, n, t = 3, 50, 24
    gt = rng.uniform(0, 256, (b, n, t, 2))
    gt_occ = rng.uniform(size=(b, n, t)) < 0.2
    pred = gt + rng.normal(0, 6, (b, n, t, 2))
    pred_occ = rng.uniform(size=(b, n, t)) < 0.25
    qt = rng.integers(0, t, (b, n))
    q = np.stack([qt, rng.uniform(0, 256, (b, n)), rng.uniform(0, 256, (b, n))], -1)
    return q, gt_occ, gt, pred_occ, pred


@pytest.mark.parametrize("mode,aj,davg,oa", [
    ("first", [0.202235, 0.219523, 0.198150], [0.374038, 0.374840, 0.375771], [0.638941, 0.671848, 0.637153]),
    ("strided", [0.204858, 0.209159, 0.202209], [0.369014, 0.365189, 0.374892], [0.648696, 0.659130, 0.640000]),
])
def test_random_golden(mode, aj, davg, oa):
    m = compute_tapvid_metrics(*_random(), query_mode=mode)
    np.testing.assert_allclose(m["average_jaccard"], aj, atol=1e-6)
    np.testing.assert_allclose(m["average_pts_within_thresh"], davg, atol=1e-6)
    np.testing.assert_allclose(m["occlusion_accuracy"], oa, atol=1e-6)


def _loop_metrics(q, gt_occ, gt, pred_occ, pred, mode):
    """Independent formulation: explicit loops over tracks and frames, counts accumulated by hand."""
    b, n, t = gt_occ.shape
    res = []
    for v in range(b):
        occ_ok = occ_n = 0
        within = {d: [0, 0] for d in (1, 2, 4, 8, 16)}
        jac = {d: [0, 0, 0] for d in (1, 2, 4, 8, 16)}  # tp, gt_pos, fp
        for i in range(n):
            tq = int(round(q[v, i, 0]))
            for k in range(t):
                if (mode == "first" and k <= tq) or (mode == "strided" and k == tq):
                    continue
                occ_n += 1
                occ_ok += pred_occ[v, i, k] == gt_occ[v, i, k]
                dist = np.hypot(*(pred[v, i, k] - gt[v, i, k]))
                for d in within:
                    close = dist < d
                    if not gt_occ[v, i, k]:
                        within[d][1] += 1
                        within[d][0] += close
                        jac[d][1] += 1
                        jac[d][0] += close and not pred_occ[v, i, k]
                    if not pred_occ[v, i, k] and (gt_occ[v, i, k] or not close):
                        jac[d][2] += 1
        res.append(dict(oa=occ_ok / occ_n, davg=np.mean([a / c for a, c in within.values()]),
                        aj=np.mean([tp / (gp + fp) for tp, gp, fp in jac.values()])))
    return res


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("mode", ["first", "strided"])
def test_against_loops(seed, mode):
    rng = np.random.default_rng(seed)
    b, n, t = 2, 12, 9
    gt = rng.uniform(0, 64, (b, n, t, 2))
    gt_occ = rng.uniform(size=(b, n, t)) < 0.3
    pred = gt + rng.normal(0, 4, (b, n, t, 2))
    pred_occ = rng.uniform(size=(b, n, t)) < 0.3
    q = np.stack([rng.integers(0, t - 2, (b, n)), np.zeros((b, n)), np.zeros((b, n))], -1)
    m = compute_tapvid_metrics(q, gt_occ, gt, pred_occ, pred, mode)
    for v, ref in enumerate(_loop_metrics(q, gt_occ, gt, pred_occ, pred, mode)):
        assert m["occlusion_accuracy"][v] == pytest.approx(ref["oa"])
        assert m["average_pts_within_thresh"][v] == pytest.approx(ref["davg"])
        assert m["average_jaccard"][v] == pytest.approx(ref["aj"])


def test_evaluate_tracks_perfect_and_scaling():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 400, (10, 6, 2))
    vis = rng.uniform(size=(10, 6)) > 0.2
    vis[:, 0] = True
    m = evaluate_tracks(gt, vis, gt, vis, np.zeros(10, int), (480, 854))
    assert m["delta_avg"] == 1.0 and m["average_jaccard"] == 1.0 and m["occlusion_accuracy"] == 1.0
    # a 2 px error in x at 854 wide is 0.6 px at 256: within 1 px after the protocol's rescale
    m = evaluate_tracks(gt + np.array([2.0, 0.0]), vis, gt, vis, np.zeros(10, int), (480, 854))
    assert m["pts_within_1"] == 1.0
