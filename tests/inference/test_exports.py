"""Export round trips (NPZ, CSV, TAP-Vid pickle), query readers, atomic writes."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from dinotracker.inference.export import (
    load_csv,
    load_npz,
    load_tapvid_pickle,
    save_csv,
    save_exports,
    save_npz,
    save_tapvid_pickle,
)
from dinotracker.inference.queries import read_queries


@pytest.fixture
def tracks():
    rng = np.random.default_rng(0)
    tr = (rng.random((5, 7, 2)) * [96, 64]).astype(np.float32)
    vis = rng.random((5, 7)) > 0.3
    conf = rng.random((5, 7)).astype(np.float32)
    q = np.stack(
        [np.arange(5) % 7, tr[np.arange(5), np.arange(5) % 7, 0], tr[np.arange(5), np.arange(5) % 7, 1]], 1
    )
    return tr, vis, conf, q.astype(np.float32)


def test_npz_round_trip(tmp_path, tracks):
    tr, vis, conf, q = tracks
    p = save_npz(
        tmp_path / "a" / "t.npz",
        torch.from_numpy(tr),
        torch.from_numpy(vis),
        conf,
        q,
        fps=12.0,
        input_hw=[64, 96],
    )
    z = load_npz(p)
    assert (
        z["tracks"].dtype == np.float32 and z["visible"].dtype == bool and z["confidence"].dtype == np.float32
    )
    np.testing.assert_array_equal(z["tracks"], tr)
    np.testing.assert_array_equal(z["visible"], vis)
    np.testing.assert_array_equal(z["confidence"], conf)
    np.testing.assert_array_equal(z["queries"], q)
    assert float(z["fps"]) == 12.0 and z["input_hw"].tolist() == [64, 96]
    assert "top-left corner" in str(z["coord_convention"])
    assert [f.name for f in (tmp_path / "a").iterdir()] == ["t.npz"]  # no temporary left behind
    with pytest.raises(ValueError):
        save_npz(tmp_path / "b.npz", tr, vis[:, :3], conf, q)


def test_csv_round_trip(tmp_path, tracks):
    tr, vis, conf, _ = tracks
    p = save_csv(tmp_path / "t.csv", tr, vis, conf)
    lines = p.read_text().splitlines()
    assert lines[0] == "point_id,frame,x,y,visible,confidence" and len(lines) == 1 + 5 * 7
    assert lines[1].split(",")[:2] == ["0", "0"] and lines[2].split(",")[:2] == ["0", "1"]
    back = load_csv(p)
    np.testing.assert_allclose(back["tracks"], tr, atol=5e-4)
    np.testing.assert_array_equal(back["visible"], vis)
    np.testing.assert_allclose(back["confidence"], conf, atol=5e-6)


def test_tapvid_pickle_layout_and_round_trip(tmp_path, tracks):
    tr, vis, _, _ = tracks
    frames = np.zeros((7, 64, 96, 3), np.uint8)
    p = save_tapvid_pickle(tmp_path / "t.pkl", "vid", frames, tr, vis)
    with open(p, "rb") as f:
        raw = pickle.load(f)
    e = raw["vid"]
    assert set(e) == {"video", "points", "occluded"}
    np.testing.assert_allclose(e["points"][..., 0], tr[..., 0] / 96, rtol=1e-6)
    np.testing.assert_allclose(e["points"][..., 1], tr[..., 1] / 64, rtol=1e-6)
    assert ((e["points"] >= 0) & (e["points"] <= 1)).all()
    np.testing.assert_array_equal(e["occluded"], ~vis)
    back = load_tapvid_pickle(p)["vid"]
    np.testing.assert_allclose(back["tracks"], tr, atol=1e-4)
    np.testing.assert_array_equal(back["visible"], vis)
    p2 = save_tapvid_pickle(tmp_path / "n.pkl", "vid", None, tr, vis, hw=(64, 96))
    np.testing.assert_allclose(load_tapvid_pickle(p2, hw=(64, 96))["vid"]["tracks"], tr, atol=1e-4)


def test_read_queries_npz_csv_npy(tmp_path, tracks):
    _, _, _, q = tracks
    save_npz(tmp_path / "q.npz", np.zeros((5, 7, 2)), np.ones((5, 7), bool), None, q)
    np.testing.assert_array_equal(read_queries(tmp_path / "q.npz").numpy(), q)
    np.save(tmp_path / "q.npy", q)
    np.testing.assert_array_equal(read_queries(tmp_path / "q.npy").numpy(), q)
    (tmp_path / "plain.csv").write_text("0,10.5,20\n3, 100, 60\n")
    assert read_queries(tmp_path / "plain.csv").tolist() == [[0, 10.5, 20], [3, 100, 60]]
    (tmp_path / "hdr.csv").write_text("x,y,frame\n10.5,20,0\n100,60,3\n")  # any column order by name
    assert read_queries(tmp_path / "hdr.csv").tolist() == [[0, 10.5, 20], [3, 100, 60]]
    (tmp_path / "bad.csv").write_text("a,b,c\n1,2,3\n")
    with pytest.raises(ValueError, match="header"):
        read_queries(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError):
        read_queries(tmp_path / "missing.csv")


def test_save_exports_formats(tmp_path, tracks):
    tr, vis, conf, q = tracks
    out = save_exports(tmp_path / "x" / "tr", ["npz", "csv", "pkl", "mp4"], tr, vis, conf, q, hw=(64, 96), fps=24.0)
    assert sorted(p.name for p in out) == ["tr.csv", "tr.npz", "tr.pkl"]  # mp4 is the viz's job
    with pytest.raises(ValueError, match="unknown export"):
        save_exports(tmp_path / "tr", ["json"], tr, vis, conf, q)
