"""Ground truth files (gt.npz) and the video config -> (video, ground truth)."""

from __future__ import annotations

import numpy as np
import pytest

from dinotracker.data.sources import GroundTruth, load_gt_npz, read_gt_npz
from dinotracker.data.video import VideoError


def test_read_gt_npz_and_its_errors(tmp_path):
    pts = np.arange(2 * 3 * 2, dtype=np.float64).reshape(2, 3, 2)
    occ = np.array([[True, False, False], [False, False, True]])
    np.savez(tmp_path / "gt.npz", points_xy=pts, occluded=occ, height=480, width=854)
    d = read_gt_npz(tmp_path / "gt.npz")
    assert d["points_xy"].dtype == np.float32 and d["hw"] == (480, 854) and d["query_frame"] is None
    gt = load_gt_npz(tmp_path / "gt.npz", num_frames=3)
    np.testing.assert_array_equal(gt.query_frames, [1, 0])  # first visible frame
    np.testing.assert_array_equal(gt.queries, [[1, 2, 3], [0, 6, 7]])  # (t, x, y)
    with pytest.raises(VideoError, match="4 frames"):
        load_gt_npz(tmp_path / "gt.npz", num_frames=4)
    with pytest.raises(FileNotFoundError):
        read_gt_npz(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(VideoError, match="not a readable"):
        read_gt_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "partial.npz", points_xy=pts)
    with pytest.raises(VideoError, match="lacks"):
        read_gt_npz(tmp_path / "partial.npz")


def test_subset_frames_keeps_tracks_visible_in_the_subset():
    occ = np.array([[False, True, True, True], [True, True, False, True]])
    gt = GroundTruth(np.zeros((2, 4, 2), np.float32), occ, np.array([0, 2]))
    sub = gt.subset_frames(np.array([1, 3]))  # the first track is never visible there, the second neither
    assert len(sub.tracks) == 0
    sub = gt.subset_frames(np.array([0, 2]))
    np.testing.assert_array_equal(sub.query_frames, [0, 1])
