"""``dinotracker.evaluation.compute_tapvid_metrics``: the name users swap in from tapnet, same signature
(``query_points`` [B, N, 3] as (t, y, x), ``gt_occluded``, ``gt_tracks``, ``pred_occluded``, ``pred_tracks``,
``query_mode``), checked by hand and against the copy of tapnet's function in the reference repository."""

from __future__ import annotations

import inspect
import os
import types
from pathlib import Path

import numpy as np
import pytest

import dinotracker.evaluation as evaluation
from dinotracker.evaluation import compute_tapvid_metrics, tapvid

REF_METRICS = Path(os.environ.get("DINOTRACKER_REF", "/work/ref/dino-tracker")) / "eval" / "metrics.py"


def test_exported_with_tapnets_signature():
    assert "compute_tapvid_metrics" in evaluation.__all__
    assert compute_tapvid_metrics is tapvid.compute_tapvid_metrics
    params = list(inspect.signature(compute_tapvid_metrics).parameters)
    assert params[:6] == ["query_points", "gt_occluded", "gt_tracks", "pred_occluded", "pred_tracks", "query_mode"]


def test_by_hand():
    # one video, 2 tracks, 4 frames, queried at t=0 and t=2; errors 0, 1.5, 3, 20 px along x
    q = np.array([[[0, 5, 5], [2, 5, 5]]], np.float32)  # (t, y, x)
    gt = np.zeros((1, 2, 4, 2), np.float32)
    pred = gt.copy()
    pred[0, 0, :, 0] = [0, 1.5, 3, 20]
    pred[0, 1, :, 0] = [0, 0, 0, 0]
    gt_occ = np.zeros((1, 2, 4), bool)
    gt_occ[0, 1, 3] = True
    pred_occ = np.zeros((1, 2, 4), bool)  # predicts track 1 visible at t=3: one occlusion error
    m = compute_tapvid_metrics(q, gt_occ, gt, pred_occ, pred, "first")
    # scored: track 0 at t=1,2,3 (visible), track 1 at t=3 (occluded): 4 entries, 3 visible
    assert m["occlusion_accuracy"][0] == pytest.approx(3 / 4)
    assert m["pts_within_1"][0] == pytest.approx(0 / 3) and m["pts_within_2"][0] == pytest.approx(1 / 3)
    assert m["pts_within_4"][0] == pytest.approx(2 / 3) and m["pts_within_16"][0] == pytest.approx(2 / 3)
    # jaccard_4 = TP / (visible + FP): TP 2 (t=1,2 of track 0), FP 2 (track 0 at t=3 too far, track 1 occluded)
    assert m["jaccard_4"][0] == pytest.approx(2 / (3 + 2))
    strided = compute_tapvid_metrics(q, gt_occ, gt, pred_occ, pred, "strided")
    # strided also scores track 1 at t=0,1 (visible, exact)
    assert strided["pts_within_1"][0] == pytest.approx(2 / 5)


def _reference_function():
    if not REF_METRICS.is_file():
        pytest.skip(f"reference implementation not found at {REF_METRICS}")
    src = REF_METRICS.read_text().replace("from data.tapvid import get_video_config_by_video_id", "")
    mod = types.ModuleType("reference_tapvid_metrics")
    exec(compile(src, str(REF_METRICS), "exec"), mod.__dict__)  # noqa: S102 - the reference's own file
    return mod.compute_tapvid_metrics


@pytest.mark.parametrize("mode", ["first", "strided"])
@pytest.mark.parametrize("trackwise", [False, True])
def test_matches_the_reference_copy_of_tapnet(mode, trackwise):
    ref = _reference_function()
    rng = np.random.default_rng(7)
    b, n, t = 3, 40, 12
    gt = rng.uniform(0, 256, (b, n, t, 2)).astype(np.float32)
    pred = (gt + rng.normal(0, 6, gt.shape)).astype(np.float32)
    gt_occ = rng.random((b, n, t)) < 0.25
    pred_occ = rng.random((b, n, t)) < 0.25
    q = np.stack([rng.integers(0, t, (b, n)), rng.uniform(0, 256, (b, n)), rng.uniform(0, 256, (b, n))], -1)
    args = (q.astype(np.float32), gt_occ, gt, pred_occ, pred, mode)
    with np.errstate(invalid="ignore", divide="ignore"):  # tracks with nothing to score: NaN in both
        want = ref(*args, get_trackwise_metrics=trackwise)
    got = compute_tapvid_metrics(*args, get_trackwise_metrics=trackwise)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, equal_nan=True, err_msg=k)
