"""TAP-Vid metrics: tapnet golden vectors (ANCHORS §10.7), an independent loop formulation, wrappers."""

from __future__ import annotations

import numpy as np
import pytest

from dinotracker.evaluation import tapvid
from dinotracker.evaluation.tapvid import (
    METRIC_KEYS,
    compute_tapvid_metrics,
    evaluate_tracks,
    group_by_occlusion_rate,
    mean_over_videos,
    occlusion_rate_bins,
    track_occlusion_rates,
    video_occlusion_rate,
)

THRESHOLDS = (1, 2, 4, 8, 16)


def toy_example():
    gt = np.zeros((1, 2, 4, 2))
    gt[0, 0] = [(10, 10), (20, 10), (30, 10), (40, 10)]
    gt[0, 1] = (100, 100)
    gt_occ = np.array([[[0, 0, 0, 1], [0, 0, 1, 0]]], bool)
    query = np.array([[[0, 10, 10], [1, 100, 100]]], float)
    pred = gt.copy()
    pred[0, 0, 1] = (21.5, 10)
    pred[0, 0, 2] = (33, 14)
    pred[0, 1, 0] = (100, 120)
    pred[0, 1, 3] = (102, 100)  # exactly 2 px: not within 2
    pred_occ = np.array([[[0, 0, 0, 0], [0, 0, 1, 1]]], bool)
    return query, gt_occ, gt, pred_occ, pred


TOY_GOLDEN = {
    "first": dict(
        occlusion_accuracy=0.6,
        pts_within_1=0,
        pts_within_2=0.333333,
        pts_within_4=0.666667,
        pts_within_8=1,
        pts_within_16=1,
        jaccard_1=0,
        jaccard_2=0.2,
        jaccard_4=0.2,
        jaccard_8=0.5,
        jaccard_16=0.5,
        average_jaccard=0.28,
        average_pts_within_thresh=0.6,
    ),
    "strided": dict(
        occlusion_accuracy=0.666667,
        pts_within_1=0,
        pts_within_2=0.25,
        pts_within_4=0.5,
        pts_within_8=0.75,
        pts_within_16=0.75,
        jaccard_1=0,
        jaccard_2=0.142857,
        jaccard_4=0.142857,
        jaccard_8=0.333333,
        jaccard_16=0.333333,
        average_jaccard=0.190476,
        average_pts_within_thresh=0.45,
    ),
}


@pytest.mark.parametrize("mode", ["first", "strided"])
def test_toy_golden(mode):
    m = compute_tapvid_metrics(*toy_example(), query_mode=mode)
    assert tuple(m) == METRIC_KEYS
    for key, want in TOY_GOLDEN[mode].items():
        assert m[key].shape == (1,)
        assert round(float(m[key][0]), 6) == want, key


def random_golden_batch():
    rng = np.random.default_rng(0)
    b, n, t = 3, 50, 24
    gt = rng.uniform(0, 256, (b, n, t, 2))
    gt_occ = rng.uniform(size=(b, n, t)) < 0.2
    pred = gt + rng.normal(0, 6, (b, n, t, 2))
    pred_occ = rng.uniform(size=(b, n, t)) < 0.25
    qt = rng.integers(0, t, (b, n))
    q = np.stack([qt, rng.uniform(0, 256, (b, n)), rng.uniform(0, 256, (b, n))], -1)
    return q, gt_occ, gt, pred_occ, pred


RANDOM_GOLDEN = {
    "first": dict(
        average_jaccard=[0.202235, 0.219523, 0.198150],
        average_pts_within_thresh=[0.374038, 0.374840, 0.375771],
        occlusion_accuracy=[0.638941, 0.671848, 0.637153],
    ),
    "strided": dict(
        average_jaccard=[0.204858, 0.209159, 0.202209],
        average_pts_within_thresh=[0.369014, 0.365189, 0.374892],
        occlusion_accuracy=[0.648696, 0.659130, 0.640000],
    ),
}


@pytest.mark.parametrize("mode", ["first", "strided"])
def test_random_golden(mode):
    m = compute_tapvid_metrics(*random_golden_batch(), query_mode=mode)
    for key, want in RANDOM_GOLDEN[mode].items():
        assert m[key].shape == (3,)
        np.testing.assert_array_equal(np.round(m[key], 6), np.array(want), err_msg=key)


def loop_metrics(query_points, gt_occ, gt, pred_occ, pred, mode, trackwise=False):
    """Independent formulation: per-(video, track, frame) Python loops over TP / FP / FN counts."""
    b, n, t = gt_occ.shape
    out = {k: np.full((b, n) if trackwise else (b,), np.nan) for k in METRIC_KEYS}
    groups = (
        [(i, [j]) for i in range(b) for j in range(n)]
        if trackwise
        else [(i, list(range(n))) for i in range(b)]
    )
    for i, tracks in groups:
        scored = correct_occ = vis = 0
        within = dict.fromkeys(THRESHOLDS, 0)
        tp, fp, fn = dict.fromkeys(THRESHOLDS, 0), dict.fromkeys(THRESHOLDS, 0), dict.fromkeys(THRESHOLDS, 0)
        for j in tracks:
            tq = int(round(query_points[i, j, 0]))
            for f in range(t):
                if (mode == "first" and f <= tq) or (mode == "strided" and f == tq):
                    continue
                scored += 1
                correct_occ += int(bool(pred_occ[i, j, f]) == bool(gt_occ[i, j, f]))
                dx = float(pred[i, j, f, 0]) - float(gt[i, j, f, 0])
                dy = float(pred[i, j, f, 1]) - float(gt[i, j, f, 1])
                dist = (dx * dx + dy * dy) ** 0.5
                gt_vis, pr_vis = not gt_occ[i, j, f], not pred_occ[i, j, f]
                vis += gt_vis
                for d in THRESHOLDS:
                    close = dist < d
                    within[d] += gt_vis and close
                    if gt_vis and pr_vis and close:
                        tp[d] += 1
                    else:
                        fn[d] += gt_vis  # a visible point not matched
                        fp[d] += pr_vis  # a predicted-visible point not matched
        idx = (i, tracks[0]) if trackwise else i
        out["occlusion_accuracy"][idx] = correct_occ / scored if scored else np.nan
        for d in THRESHOLDS:
            out[f"pts_within_{d}"][idx] = within[d] / vis if vis else np.nan
            den = tp[d] + fp[d] + fn[d]
            out[f"jaccard_{d}"][idx] = tp[d] / den if den else np.nan
        out["average_jaccard"][idx] = np.mean([out[f"jaccard_{d}"][idx] for d in THRESHOLDS])
        out["average_pts_within_thresh"][idx] = np.mean([out[f"pts_within_{d}"][idx] for d in THRESHOLDS])
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mode", ["first", "strided"])
@pytest.mark.parametrize("trackwise", [False, True])
def test_matches_loop_formulation(seed, mode, trackwise):
    rng = np.random.default_rng(100 + seed)
    b, n, t = 2, 7, 9
    gt = rng.uniform(0, 64, (b, n, t, 2))
    # Integer offsets put many points exactly on a threshold (strict '<' must exclude them).
    err = np.where(
        rng.uniform(size=(b, n, t, 1)) < 0.3,
        rng.integers(-4, 5, (b, n, t, 2)),
        rng.normal(0, 5, (b, n, t, 2)),
    )
    err[..., 1] *= rng.uniform(size=(b, n, t)) < 0.5
    pred = gt + err
    gt_occ = rng.uniform(size=(b, n, t)) < rng.uniform(0, 0.7)
    pred_occ = rng.uniform(size=(b, n, t)) < rng.uniform(0, 0.7)
    q = np.stack(
        [
            rng.integers(0, t, (b, n)) + rng.uniform(-0.3, 0.3, (b, n)),
            rng.uniform(0, 64, (b, n)),
            rng.uniform(0, 64, (b, n)),
        ],
        -1,
    ).clip(0, t - 1)
    got = compute_tapvid_metrics(q, gt_occ, gt, pred_occ, pred, mode, get_trackwise_metrics=trackwise)
    want = loop_metrics(q, gt_occ, gt, pred_occ, pred, mode, trackwise)
    for k in METRIC_KEYS:
        assert got[k].shape == want[k].shape
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=0, equal_nan=True, err_msg=k)


def test_chunking_is_invisible(monkeypatch):
    args = random_golden_batch()
    full = compute_tapvid_metrics(*args, "strided", get_trackwise_metrics=True)
    full_v = compute_tapvid_metrics(*args, "first")
    monkeypatch.setattr(tapvid, "_CHUNK_ELEMENTS", 3 * 24 * 7)  # 7 queries per chunk, uneven split
    chunked = compute_tapvid_metrics(*args, "strided", get_trackwise_metrics=True)
    chunked_v = compute_tapvid_metrics(*args, "first")
    for k in METRIC_KEYS:
        np.testing.assert_array_equal(full[k], chunked[k])
        np.testing.assert_array_equal(full_v[k], chunked_v[k])


def test_bad_inputs():
    q, go, gt, po, p = toy_example()
    with pytest.raises(ValueError, match="query_mode"):
        compute_tapvid_metrics(q, go, gt, po, p, "q_first")
    with pytest.raises(ValueError, match="pred_tracks"):
        compute_tapvid_metrics(q, go, gt, po, p[:, :1], "first")
    q_bad = q.copy()
    q_bad[0, 0, 0] = -1  # tapnet would silently wrap this to the last frame
    with pytest.raises(ValueError, match="query frames"):
        compute_tapvid_metrics(q_bad, go, gt, po, p, "strided")


def test_nothing_to_score_is_nan():
    q, go, gt, po, p = toy_example()
    q = q.copy()
    q[..., 0] = 3  # last frame: 'first' mode has no frame after it
    m = compute_tapvid_metrics(q, go, gt, po, p, "first")
    assert np.isnan(m["occlusion_accuracy"][0]) and np.isnan(m["average_jaccard"][0])


def video_case(seed=0, n=6, t=10, hw=(480, 854)):
    rng = np.random.default_rng(seed)
    gt = rng.uniform(0, 1, (n, t, 2)) * np.array([hw[1], hw[0]])
    vis = rng.uniform(size=(n, t)) < 0.7
    vis[np.arange(n), rng.integers(0, t, n)] = True
    qf = np.argmax(vis, axis=1)
    return gt.astype(np.float32), vis, qf


@pytest.mark.parametrize("mode", ["first", "strided"])
def test_evaluate_tracks_perfect_prediction(mode):
    gt, vis, qf = video_case()
    m = evaluate_tracks(gt, vis, gt, vis, qf, (480, 854), query_mode=mode)
    assert set(METRIC_KEYS) | {"delta_avg"} == set(m)
    assert all(isinstance(v, float) and v == 1.0 for v in m.values()), m
    # Predictions made at the reference's 476x854 model resolution, rescaled by pred_hw.
    pred = gt * np.array([1.0, 476 / 480], np.float32)
    m2 = evaluate_tracks(pred, vis, gt, vis, qf, (480, 854), query_mode=mode, pred_hw=(476, 854))
    assert all(v == pytest.approx(1.0) for v in m2.values()), m2


def test_evaluate_tracks_rescales_to_256():
    gt, vis, qf = video_case(1)
    pred = gt + np.array([3.0, 0.0], np.float32)  # 3 px at 854 wide = 0.9 px at 256: within 1 px there
    m = evaluate_tracks(pred, vis, gt, vis, qf, (480, 854), query_mode="strided")
    assert m["pts_within_1"] == 1.0 and m["average_jaccard"] == 1.0
    raw = evaluate_tracks(pred, vis, gt, vis, qf, (480, 854), query_mode="strided", resize_to=None)
    assert raw["pts_within_1"] == 0.0 and raw["pts_within_2"] == 0.0 and raw["pts_within_4"] == 1.0
    # Same as scaling by hand and calling the tapnet-layout function.
    s = np.array([256 / 854, 256 / 480])
    q = np.stack([qf, np.zeros_like(qf), np.zeros_like(qf)], -1)[None].astype(float)
    ref = compute_tapvid_metrics(q, ~vis[None], (gt * s)[None], ~vis[None], (pred * s)[None], "strided")
    for k in METRIC_KEYS:
        assert m[k] == pytest.approx(float(ref[k][0]), abs=1e-12)


def test_evaluate_tracks_validates():
    gt, vis, qf = video_case()
    with pytest.raises(ValueError, match="pred_visible"):
        evaluate_tracks(gt, vis[:, :3], gt, vis, qf, (480, 854))
    with pytest.raises(ValueError, match="bool"):
        evaluate_tracks(gt, vis.astype(int), gt, vis, qf, (480, 854))
    with pytest.raises(ValueError, match="query_mode"):
        evaluate_tracks(gt, vis, gt, vis, qf, (480, 854), query_mode="firstly")


def test_mean_over_videos():
    a = {"average_jaccard": 0.5, "delta_avg": 1.0, "occlusion_bins": {"bins": []}, "only_a": 3.0}
    b = {"average_jaccard": 0.25, "delta_avg": float("nan")}
    m = mean_over_videos([a, b])
    assert (
        m["average_jaccard"] == 0.375
        and np.isnan(m["delta_avg"])
        and set(m) == {"average_jaccard", "delta_avg"}
    )
    assert mean_over_videos([a, b], skip_nan=True)["delta_avg"] == 1.0
    with pytest.raises(ValueError):
        mean_over_videos([])


def test_occlusion_rates_and_bins():
    t = 10
    vis = np.ones((4, t), bool)
    vis[1, :1] = False  # rate 0.1 -> bin [0.1, 0.3)
    vis[2, :5] = False  # 0.5 -> high
    vis[3, :] = False
    vis[3, 9] = True  # 0.9 -> high
    np.testing.assert_allclose(track_occlusion_rates(vis), [0, 0.1, 0.5, 0.9])
    assert video_occlusion_rate(vis) == pytest.approx(0.375)
    rng = np.random.default_rng(3)
    gt = rng.uniform(0, 256, (4, t, 2))
    pred = gt + rng.normal(0, 3, gt.shape)
    pvis = rng.uniform(size=(4, t)) < 0.8
    qf = np.argmax(vis, axis=1)
    out = occlusion_rate_bins(pred, pvis, gt, vis, qf, (256, 256), query_mode="first")
    assert out["edges"] == [0.0, 0.1, 0.3, 1.0]
    assert [b["num_tracks"] for b in out["bins"]] == [1, 1, 2]
    for b, rows in zip(out["bins"], [[0], [1], [2, 3]]):
        ref = evaluate_tracks(
            pred[rows], pvis[rows], gt[rows], vis[rows], qf[rows], (256, 256), query_mode="first"
        )
        assert b["average_jaccard"] == ref["average_jaccard"] and b["delta_avg"] == ref["delta_avg"]
    empty = occlusion_rate_bins(
        pred[:1], pvis[:1], gt[:1], vis[:1], qf[:1], (256, 256), edges=(0.0, 0.5, 1.0)
    )
    assert empty["bins"][1]["num_tracks"] == 0 and np.isnan(empty["bins"][1]["average_jaccard"])


def test_group_videos_by_occlusion_rate():
    per_video = [{"average_jaccard": float(i)} for i in range(6)]
    rates = [0.5, 0.0, 0.2, 0.9, 0.1, 0.3]
    groups = group_by_occlusion_rate(per_video, rates)
    # Sorted by rate: videos 1, 4 | 2, 5 | 0, 3
    assert [g["average_jaccard"] for g in groups] == [2.5, 3.5, 1.5]
    assert [g["num_videos"] for g in groups] == [2, 2, 2]
    fixed = group_by_occlusion_rate(per_video, rates, edges=(0.0, 0.25, 1.0))
    assert [g["num_videos"] for g in fixed] == [3, 3] and fixed[0]["average_jaccard"] == pytest.approx(7 / 3)
