"""TAP-Vid readers (folder layout, official and reference pickles) and TAP-Vid query sampling."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from dinotracker.evaluation.readers import (
    TapVidSample,
    load_strided_pickle,
    load_tapvid,
    load_tapvid_folder,
    load_tapvid_pickle,
    load_tapvid_video_dir,
    sample_queries,
    sample_queries_from_arrays,
)

SHARED = Path(__file__).parents[2].parent / "shared" / "data"
MINI = SHARED / "tapvid_davis_mini"
needs_mini = pytest.mark.skipif(
    not (MINI / "tapvid_davis_mini.pkl").is_file(),
    reason="shared data (../shared/data/tapvid_davis_mini) not available",
)


def hand_case():
    # 3 tracks x 11 frames; track 2 is never visible.
    occ = np.ones((3, 11), bool)
    occ[0, [0, 1, 2, 5, 6, 10]] = False
    occ[1, [3, 4, 5, 10]] = False
    tracks = np.arange(3 * 11 * 2, dtype=np.float32).reshape(3, 11, 2)
    return occ, tracks


def test_strided_sampling_hand_case():
    occ, tracks = hand_case()
    q, idx = sample_queries_from_arrays(occ, tracks, "strided", stride=5)
    # Frame 0: track 0; frame 5: tracks 0, 1; frame 10: tracks 0, 1 (frame order, then track order).
    np.testing.assert_array_equal(idx, [0, 0, 1, 0, 1])
    np.testing.assert_array_equal(q[:, 0], [0, 5, 5, 10, 10])
    np.testing.assert_array_equal(q[:, 1:], tracks[idx, q[:, 0].astype(int)])
    q3, idx3 = sample_queries_from_arrays(occ, tracks, "strided", stride=3)  # frames 0, 3, 6, 9
    np.testing.assert_array_equal(idx3, [0, 1, 0])
    np.testing.assert_array_equal(q3[:, 0], [0, 3, 6])


def test_first_sampling_hand_case():
    occ, tracks = hand_case()
    q, idx = sample_queries_from_arrays(occ, tracks, "first")
    np.testing.assert_array_equal(idx, [0, 1])  # the never-visible track is dropped
    np.testing.assert_array_equal(q[:, 0], [0, 3])
    np.testing.assert_array_equal(q[1, 1:], tracks[1, 3])
    assert q.dtype == np.float32 and idx.dtype == np.int64


def test_sampling_errors():
    occ, tracks = hand_case()
    with pytest.raises(ValueError, match="stride"):
        sample_queries_from_arrays(occ, tracks, "strided", stride=0)
    with pytest.raises(ValueError, match="query_mode"):
        sample_queries_from_arrays(occ, tracks, "q_first")
    with pytest.raises(ValueError, match="tracks"):
        sample_queries_from_arrays(occ, tracks[:, :5], "first")


@needs_mini
def test_folder_and_pickle_agree():
    folder = load_tapvid_folder(MINI)
    pkl = {s.name: s for s in load_tapvid_pickle(MINI / "tapvid_davis_mini.pkl")}
    assert sorted(s.name for s in folder) == sorted(pkl) == ["blackswan", "horsejump-high", "judo"]
    for a in folder:
        b = pkl[a.name]
        assert a.hw == b.hw == (480, 854)
        assert a.num_frames == b.num_frames == 32
        assert a.tracks.dtype == np.float32 and a.tracks.shape == (a.num_tracks, 32, 2)
        np.testing.assert_allclose(a.tracks, b.tracks, atol=1e-3)
        np.testing.assert_array_equal(a.occluded, b.occluded)
        np.testing.assert_array_equal(a.query_frames, b.query_frames)  # gt.npz's vs first visible
        fa, fb = a.frames, b.frames
        assert fa.shape == (32, 480, 854, 3) and fa.dtype == np.uint8
        np.testing.assert_array_equal(fa, fb)
        np.testing.assert_array_equal(a.video[7], fa[7])
        for mode in ("first", "strided"):
            qa, ia = sample_queries(a, mode)
            qb, ib = sample_queries(b, mode)
            np.testing.assert_array_equal(ia, ib)
            np.testing.assert_allclose(qa, qb, atol=1e-3)
            # A query sits on its GT track at a visible frame.
            t = qa[:, 0].astype(int)
            assert a.visible[ia, t].all()
    assert [s.name for s in load_tapvid(MINI)] == [s.name for s in folder]


@needs_mini
def test_reference_strided_pickle_roundtrip(tmp_path):
    """Write the mini set in the reference's strided layout; the reader recovers the unique tracks."""
    samples = load_tapvid_folder(MINI)
    videos = []
    for i, s in enumerate(samples):
        q, idx = sample_queries(s, "strided")
        qs = sorted(set(q[:, 0].astype(int).tolist()))
        sel = {f: idx[q[:, 0] == f] for f in qs}
        videos.append(
            dict(
                video_idx=i,
                h=s.hw[0],
                w=s.hw[1],
                query_points={f: s.tracks[r, f].tolist() for f, r in sel.items()},
                target_points={f: s.tracks[r] for f, r in sel.items()},
                occluded={f: s.occluded[r] for f, r in sel.items()},
            )
        )
    path = tmp_path / "strided.pkl"
    path.write_bytes(pickle.dumps({"videos": videos}))
    frames_root = tmp_path / "frames"
    frames_root.mkdir()
    for i, s in enumerate(samples):  # both layouts: <root>/<idx>/video/*.jpg and <root>/<idx>/*.jpg
        if i == 1:
            (frames_root / "1").mkdir()
            (frames_root / "1" / "video").symlink_to(MINI / s.name / "frames")
        else:
            (frames_root / str(i)).symlink_to(MINI / s.name / "frames")
    loaded = load_tapvid_pickle(path)
    assert len(loaded) == 3
    for s, r in zip(samples, loaded):
        # Only tracks visible at some multiple of 5 survive the strided layout; every one does here.
        q, idx = sample_queries(s, "strided")
        kept = np.unique(idx)
        np.testing.assert_array_equal(r.tracks, s.tracks[kept])
        np.testing.assert_array_equal(r.occluded, s.occluded[kept])
        assert r.hw == s.hw and r.video is None
        np.testing.assert_array_equal(r.extra["query_points"], q)
        np.testing.assert_array_equal(r.tracks[r.extra["query_track_index"]], s.tracks[idx])
        rq, ridx = sample_queries(r, "strided")
        np.testing.assert_array_equal(rq, q)
    with pytest.raises(ValueError, match="no frames"):
        _ = loaded[0].frames
    with_frames = load_strided_pickle(path, frames_root=frames_root)
    for s, r in zip(samples, with_frames):
        np.testing.assert_array_equal(r.video[3], s.video[3])
        assert len(r.video) == s.num_frames
    with pytest.raises(FileNotFoundError, match="video_idx 0"):
        load_strided_pickle(path, frames_root=tmp_path / "nothing")


def test_official_list_layout_and_shards(tmp_path):
    rng = np.random.default_rng(0)
    video = rng.integers(0, 255, (4, 6, 8, 3), dtype=np.uint8)
    pts = rng.uniform(0, 1, (5, 4, 2)).astype(np.float32)
    occ = rng.uniform(size=(5, 4)) < 0.3
    entry = {"video": video, "points": pts, "occluded": occ}
    shards = tmp_path / "kinetics"
    shards.mkdir()
    (shards / "0000_of_0002.pkl").write_bytes(pickle.dumps([entry, dict(entry, video_id="abc")]))
    (shards / "0001_of_0002.pkl").write_bytes(pickle.dumps({"x": entry}))
    out = load_tapvid_pickle(shards)
    assert [s.name for s in out] == ["0000_of_0002_0000", "abc", "x"]
    s = out[0]
    assert s.hw == (6, 8)
    np.testing.assert_allclose(s.tracks, pts * np.array([8, 6]))
    np.testing.assert_array_equal(s.frames, video)
    np.testing.assert_array_equal(s.query_frames, np.argmax(~occ, axis=1))


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_tapvid_pickle(tmp_path / "missing.pkl")
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"this is not a pickle")
    with pytest.raises(ValueError, match="not a readable pickle"):
        load_tapvid_pickle(bad)
    nokey = tmp_path / "nokey.pkl"
    nokey.write_bytes(
        pickle.dumps({"v": {"video": np.zeros((2, 4, 4, 3), np.uint8), "points": np.zeros((1, 2, 2))}})
    )
    with pytest.raises(ValueError, match="occluded"):
        load_tapvid_pickle(nokey)
    wrong = tmp_path / "wrong.pkl"
    wrong.write_bytes(pickle.dumps(42))
    with pytest.raises(ValueError, match="expected a dict or list"):
        load_tapvid_pickle(wrong)
    mismatch = tmp_path / "mismatch.pkl"
    mismatch.write_bytes(
        pickle.dumps(
            {
                "v": {
                    "video": np.zeros((3, 4, 4, 3), np.uint8),
                    "points": np.zeros((1, 2, 2)),
                    "occluded": np.zeros((1, 2), bool),
                }
            }
        )
    )
    with pytest.raises(ValueError, match="3 frames"):
        load_tapvid_pickle(mismatch)
    (tmp_path / "vid" / "frames").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="gt.npz"):
        load_tapvid_video_dir(tmp_path / "vid")
    np.savez(tmp_path / "vid" / "gt.npz", points_xy=np.zeros((1, 2, 2)), occluded=np.zeros((1, 2), bool))
    with pytest.raises(FileNotFoundError, match="frames"):
        load_tapvid_video_dir(tmp_path / "vid")
    with pytest.raises(FileNotFoundError):
        load_tapvid(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="occluded"):
        TapVidSample("x", None, np.zeros((2, 3, 2)), np.zeros((2, 4), bool), (4, 4))


@needs_mini
@pytest.mark.parametrize("mode", ["first", "strided"])
def test_protocol_parity_with_tapnet_pipeline(mode):
    """Reader + evaluate_tracks == tapnet's pipeline (normalised points x 256, preds x 256/W)."""
    from dinotracker.evaluation.tapvid import compute_tapvid_metrics, evaluate_tracks

    raw = pickle.loads((MINI / "tapvid_davis_mini.pkl").read_bytes())
    rng = np.random.default_rng(7)
    for s in load_tapvid_pickle(MINI / "tapvid_davis_mini.pkl"):
        q, idx = sample_queries(s, mode)
        gt_px, vis = s.tracks[idx], s.visible[idx]
        pred_px = gt_px + rng.normal(0, 6, gt_px.shape).astype(np.float32)
        pred_vis = rng.uniform(size=vis.shape) < 0.85
        ours = evaluate_tracks(pred_px, pred_vis, gt_px, vis, q[:, 0].astype(int), s.hw, query_mode=mode)
        # tapnet: target_points = points * 256 on the resized video, predictions rescaled by 256 / W.
        h, w = s.hw
        target = raw[s.name]["points"][idx] * 256.0
        pred256 = pred_px * np.array([256.0 / w, 256.0 / h])
        qp = np.stack([q[:, 0], q[:, 2] * 256 / h, q[:, 1] * 256 / w], -1)[None]
        ref = compute_tapvid_metrics(qp, ~vis[None], target[None], ~pred_vis[None], pred256[None], mode)
        for k, v in ref.items():
            assert ours[k] == pytest.approx(float(v[0]), abs=1e-12), (s.name, k)
