"""DAVIS-2017 J&F on hand-made masks with hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dinotracker.evaluation.davis import (
    SequenceEvaluator,
    boundary_tolerance,
    db_eval_boundary,
    db_eval_iou,
    db_statistics,
    disk,
    evaluate_sequence,
    f_measure,
    seg2bmap,
    summarize,
    write_csv,
)


def square(hw, r0, c0, n):
    m = np.zeros(hw, bool)
    m[r0 : r0 + n, c0 : c0 + n] = True
    return m


def test_jaccard_by_hand():
    a = square((50, 50), 10, 10, 10)
    b = square((50, 50), 10, 13, 10)  # shifted 3 px right: overlap 10 x 7
    assert db_eval_iou(a, b) == pytest.approx(70 / 130)
    c = square((50, 50), 12, 13, 10)  # shifted (2, 3): overlap 8 x 7
    assert db_eval_iou(a, c) == pytest.approx(56 / (200 - 56))
    assert db_eval_iou(np.zeros((5, 5)), np.zeros((5, 5))) == 1.0  # empty union
    assert db_eval_iou(a, np.zeros_like(a)) == 0.0
    np.testing.assert_allclose(db_eval_iou(np.stack([a, a]), np.stack([b, a])), [70 / 130, 1.0])


def test_seg2bmap_is_the_ring_offset_towards_the_origin():
    """Square rows/cols 10..19 -> boundary = perimeter of rows/cols 9..19 (11 x 11 ring, 40 px)."""
    b = seg2bmap(square((30, 30), 10, 10, 10))
    ring = square((30, 30), 9, 9, 11) & ~square((30, 30), 10, 10, 9)
    np.testing.assert_array_equal(b, ring)
    assert b.sum() == 40


def test_disk_and_tolerance():
    ref = np.array([[1 if x * x + y * y <= 64 else 0 for x in range(-8, 9)] for y in range(-8, 9)], np.uint8)
    np.testing.assert_array_equal(disk(8), ref)
    assert disk(1).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    assert boundary_tolerance((480, 854)) == 8  # spec: 8 px at 480x854, 9 at 480x910, 10 at 480x1152
    assert boundary_tolerance((480, 910)) == 9
    assert boundary_tolerance((480, 1152)) == 10
    assert boundary_tolerance((10, 10), 3) == 3


def test_f_coincident_far_and_partial():
    a = square((60, 60), 10, 10, 10)
    assert f_measure(a, a) == 1.0
    far = square((60, 60), 40, 40, 10)  # tolerance ceil(0.008 * 84.9) = 1 px: nothing matches
    assert f_measure(far, a) == 0.0
    # prediction = A + a far 5x5 blob: precision = 40 / (40 + 20) (blob ring = perimeter of 6x6), recall 1
    pred = a | square((60, 60), 45, 45, 5)
    p, r = 40 / 60, 1.0
    assert f_measure(pred, a) == pytest.approx(2 * p * r / (p + r))  # 0.8
    # special cases
    empty = np.zeros_like(a)
    assert f_measure(empty, a) == 0.0 and f_measure(a, empty) == 0.0 and f_measure(empty, empty) == 1.0


def test_f_tolerance_is_inclusive_at_davis_size():
    """Horizontal edges 8 px apart at 480x854 (tolerance 8) match fully; 9 px apart do not match at all."""
    gt = np.zeros((480, 854), bool)
    gt[100:] = True
    near, far = np.zeros_like(gt), np.zeros_like(gt)
    near[108:], far[109:] = True, True
    assert f_measure(near, gt) == 1.0
    assert f_measure(far, gt) == 0.0
    np.testing.assert_allclose(db_eval_boundary(np.stack([gt, gt]), np.stack([near, far])), [1.0, 0.0])


def test_statistics_by_hand():
    m, rec, dec = db_statistics(np.array([1, 1, 1, 1, 0, 0, 0, 0], float))
    # bins (official index rule) = v[0:3], v[2:5], v[4:6], v[5:8] -> decay = 1 - 0
    assert (m, rec, dec) == (0.5, 0.5, 1.0)
    long = np.r_[np.ones(150), np.zeros(150)]  # > 255 frames: the official uint8 indices would wrap
    assert db_statistics(long)[2] == 1.0


def test_sequence_excludes_first_and_last_frames_and_void():
    hw = (40, 50)
    gt = np.zeros((5, *hw), np.uint8)
    for t in range(5):
        gt[t][square(hw, 5, 5 + t, 10)] = 1
        gt[t][square(hw, 20, 30, 8)] = 2
    gt[2, 0:2, 0:2] = 255  # void -> background
    pred = gt.copy()
    pred[2][pred[2] == 255] = 0
    pred[0] = 0  # wrong on the first and last frames only
    pred[4] = 0
    j, f = evaluate_sequence(gt, pred)
    assert j.shape == f.shape == (2, 3)
    assert np.all(j == 1.0) and np.all(f == 1.0)
    # object 2 missing on frame 1: J = 0, F = 0 for that frame only -> mean 2/3
    pred[1][pred[1] == 2] = 0
    j, f = evaluate_sequence(gt, pred)
    np.testing.assert_allclose(j.mean(1), [1.0, 2 / 3])
    np.testing.assert_allclose(f.mean(1), [1.0, 2 / 3])


def test_summary_averages_objects_not_sequences(tmp_path):
    per_seq = {
        "a": (np.array([[1.0, 1.0]]), np.array([[1.0, 1.0]])),
        "b": (np.array([[0.0, 0.0], [0.0, 0.0]]), np.array([[0.5, 0.5], [0.5, 0.5]])),
    }
    s = summarize(per_seq)
    assert s["global"]["J-Mean"] == pytest.approx(1 / 3)  # (1 + 0 + 0) / 3 objects
    assert s["global"]["F-Mean"] == pytest.approx(2 / 3)
    assert s["global"]["J&F-Mean"] == pytest.approx(0.5)
    assert list(s["objects"]) == ["a_1", "b_1", "b_2"]
    g, _ = write_csv(s, tmp_path)
    assert g.read_text().splitlines()[0].startswith("J&F-Mean,J-Mean")


def test_errors():
    ev = SequenceEvaluator("x")
    ev.add(np.ones((4, 4), np.uint8), np.ones((4, 4), np.uint8))
    with pytest.raises(ValueError, match="objects"):
        ev.add(np.ones((4, 4), np.uint8), np.full((4, 4), 2, np.uint8))
    with pytest.raises(ValueError, match=">= 3 frames"):
        ev.scores()
    assert math.isnan(db_statistics(np.array([]))[0])
