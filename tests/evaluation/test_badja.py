"""BADJA delta_seg / delta_3px: hand-computed case, the reference's loops, and the shared annotations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dinotracker.evaluation.badja import badja_metrics, load_badja_npz, load_fg_masks

SHARED = Path(__file__).parents[2].parent / "shared" / "data"
BADJA_NPZ = SHARED / "badja" / "horsejump-high_480p.npz"
MASKS = SHARED / "horsejump" / "masks"
needs_badja = pytest.mark.skipif(
    not (BADJA_NPZ.is_file() and MASKS.is_dir()),
    reason="shared data (../shared/data/badja, horsejump) not available",
)


def hand_case():
    masks = np.zeros((3, 10, 10), bool)
    masks[0, :5, :5] = True  # area 25
    masks[1] = True  # area 100 -> seg threshold 0.2 * 10 = 2 px
    masks[2, 5:, 5:] = True  # area 25 -> 1 px
    gt = np.full((2, 3, 2), 4.0)
    vis = np.array([[1, 1, 1], [0, 1, 1]], bool)
    err = np.array([[0.0, 1.5, 2.5], [9.0, 3.0, 0.5]])  # along x
    pred = gt.copy()
    pred[..., 0] += err
    return pred, gt, vis, masks


def test_hand_computed_reference_protocol():
    pred, gt, vis, masks = hand_case()
    # Scored: (0,1) 1.5 | (0,2) 2.5 | (1,1) 3.0 | (1,2) 0.5; frame 0 is never scored.
    m = badja_metrics(pred, gt, vis, masks)
    assert m == {"delta_seg": pytest.approx(50.0), "delta_3px": pytest.approx(75.0)}  # 3.0 is not < 3
    m = badja_metrics(pred, gt, vis, masks, frames=[0, 2])  # only (0,2) and (1,2)
    assert m == {"delta_seg": pytest.approx(50.0), "delta_3px": pytest.approx(100.0)}


def test_hand_computed_paper_protocol():
    pred, gt, vis, masks = hand_case()
    # Track 0 queried at frame 0 (scores 1, 2), track 1 at frame 1 (scores 2).
    m = badja_metrics(pred, gt, vis, masks, protocol="paper")
    assert m["delta_seg"] == pytest.approx(200 / 3) and m["delta_3px"] == pytest.approx(100.0)
    # Annotated frames 0, 2: track 1's first visible annotated frame is 2, nothing after it.
    m = badja_metrics(pred, gt, vis, masks, frames=[0, 2], protocol="paper")
    assert m == {"delta_seg": pytest.approx(0.0), "delta_3px": pytest.approx(100.0)}
    m = badja_metrics(pred, gt, vis, masks, protocol="paper", query_frames=np.array([1, 1]))
    assert m == {"delta_seg": pytest.approx(50.0), "delta_3px": pytest.approx(100.0)}


def reference_loops(pred, gt, occluded, masks):
    """The reference implementation's loops (eval/metrics.py), transcribed."""
    masks = (masks > 0).astype(np.float32)
    seg, px3 = [], []
    for i in range(gt.shape[0]):
        for t in range(1, masks.shape[0]):
            thr = 0.2 * np.sqrt(np.sum(masks[t]))
            if occluded[i, t] == 0:
                dist = np.sqrt(np.sum((pred[i, t] - gt[i, t]) ** 2))
                seg.append(float(dist < thr))
                px3.append(float(dist < 3.0))
    return 100 * np.mean(seg), 100 * np.mean(px3)


@pytest.mark.parametrize("seed", range(3))
def test_matches_reference_loops(seed):
    rng = np.random.default_rng(seed)
    n, t = 6, 8
    masks = rng.uniform(size=(t, 12, 16)) < rng.uniform(0.05, 0.6, (t, 1, 1))
    gt = rng.uniform(0, 16, (n, t, 2))
    pred = gt + rng.normal(0, 2.5, gt.shape)
    occ = rng.uniform(size=(n, t)) < 0.3
    m = badja_metrics(pred, gt, ~occ, masks)
    want = reference_loops(pred, gt, occ, masks)
    assert (m["delta_seg"], m["delta_3px"]) == pytest.approx(want, abs=1e-9)
    # Predictions at another resolution are rescaled to the masks' pixel frame.
    m2 = badja_metrics(pred * np.array([2.0, 0.5]), gt, ~occ, masks, pred_hw=(6, 32))
    assert (m2["delta_seg"], m2["delta_3px"]) == pytest.approx(want, abs=1e-9)


def test_badja_errors_and_empty():
    pred, gt, vis, masks = hand_case()
    with pytest.raises(ValueError, match="protocol"):
        badja_metrics(pred, gt, vis, masks, protocol="pck")
    with pytest.raises(ValueError, match="fg_masks"):
        badja_metrics(pred, gt, vis, masks[:2])
    with pytest.raises(ValueError, match="frames"):
        badja_metrics(pred, gt, vis, masks, frames=[5])
    m = badja_metrics(pred, gt, np.zeros_like(vis), masks)
    assert np.isnan(m["delta_seg"]) and np.isnan(m["delta_3px"])


@needs_badja
def test_reader_on_shared_badja():
    ann = load_badja_npz(BADJA_NPZ)
    assert ann.name == "horsejump-high" and ann.hw == (480, 854)
    np.testing.assert_array_equal(ann.frame_index, [0, 2, 7, 8, 18, 26, 36, 39, 47, 49])
    assert ann.joints_xy.shape == (10, 37, 2) and ann.visible.shape == (10, 37)
    xy = ann.joints_xy[ann.visible]
    assert (
        (xy[:, 0] >= 0).all()
        and (xy[:, 0] <= 854).all()
        and (xy[:, 1] >= 0).all()
        and (xy[:, 1] <= 480).all()
    )
    masks = load_fg_masks(MASKS)
    assert masks.shape == (50, 480, 854) and masks.dtype == bool
    tracks, vis, frames = ann.dense(50)
    assert tracks.shape == (37, 50, 2) and vis.shape == (37, 50) and frames == ann.frame_index.tolist()
    assert vis.sum() == ann.visible.sum() and np.isnan(tracks[:, 1]).all()
    # Annotated keypoints lie on the horse (or within a few px of its mask).
    jj, tt = np.nonzero(vis)
    on_fg = masks[tt, tracks[jj, tt, 1].astype(int).clip(0, 479), tracks[jj, tt, 0].astype(int).clip(0, 853)]
    assert on_fg.mean() > 0.8
    qf = ann.query_frames()
    assert qf.shape == (37,) and set(qf[~ann.visible.any(0)]) == {-1}
    pred = np.nan_to_num(tracks)
    for protocol in ("reference", "paper"):
        assert badja_metrics(pred, tracks, vis, masks, frames, protocol) == {
            "delta_seg": 100.0,
            "delta_3px": 100.0,
        }
    shifted = pred + np.array([4.0, 0.0], np.float32)  # 4 px: beyond 3 px, well within 0.2 * sqrt(area)
    m = badja_metrics(shifted, tracks, vis, masks, frames)
    assert m == {"delta_seg": 100.0, "delta_3px": 0.0}
    with pytest.raises(ValueError, match="num_frames"):
        ann.dense(40)


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_badja_npz(tmp_path / "none.npz")
    np.savez(tmp_path / "bad.npz", frame_index=np.arange(2))
    with pytest.raises(ValueError, match="joints_xy_480p"):
        load_badja_npz(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError):
        load_fg_masks(tmp_path)
