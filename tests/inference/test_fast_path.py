"""Fast batched inference against the per-query reference algorithm, exports, queries, API."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dinotracker.geometry import Resize, patch_grid_size
from dinotracker.inference.api import Tracker
from dinotracker.inference.export import load_npz, save_csv, save_npz, save_tapvid_pickle
from dinotracker.inference.queries import grid_queries, read_queries
from dinotracker.inference.reference import occlusion_loop, track_queries_loop
from dinotracker.inference.tracker import predict_occlusion, refined_maps, track_queries
from dinotracker.models.tracker import DinoTracker
from dinotracker.preprocessing.types import BestBuddies, PreprocessedVideo


def _video(t=6, h=48, w=64, c=16, patch=8, stride=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    gh, gw = patch_grid_size((h, w), patch, stride)
    # features that move with the frame index: a smooth random field shifted by 1 cell per frame
    base = torch.randn(1, c, gh, gw + t, generator=g)
    base = torch.nn.functional.avg_pool2d(base, 3, 1, 1)
    feats = torch.stack([base[0, :, :, k:k + gw] for k in range(t)]).half()
    frames = torch.randint(0, 255, (t, 3, h, w), generator=g, dtype=torch.uint8)
    return PreprocessedVideo(name="toy", frames=frames, features=feats, patch=patch, stride=stride,
                             tracks=torch.zeros(0, t, 2), tracks_fg=torch.zeros(0, dtype=torch.bool),
                             fg_masks=torch.zeros(t, h, w, dtype=torch.bool), best_buddies=BestBuddies.empty(),
                             resize=Resize((h * 2, w * 2), (h, w)), frame_indices=np.arange(t))


def _model(video, seed=0):
    torch.manual_seed(seed)
    m = DinoTracker(video.features.shape[1], video.patch, video.stride, video.model_hw, radius=10.0)
    with torch.no_grad():  # perturb so the refiner and Delta-DINO are not the identity
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


@pytest.fixture(scope="module")
def setup():
    video = _video()
    model = _model(video)
    maps = refined_maps(model, video.frames, video.features)
    g = torch.Generator().manual_seed(1)
    n = 7
    q = torch.stack([torch.randint(0, video.num_frames, (n,), generator=g).float(),
                     4 + torch.rand(n, generator=g) * 56, 4 + torch.rand(n, generator=g) * 40], 1)
    return video, model, maps, q


def test_fast_equals_per_query(setup):
    video, model, maps, q = setup
    fast = track_queries(model, maps, q, chunk=5)  # a chunk smaller than T exercises the chunking
    slow = track_queries_loop(model, maps, q)
    assert torch.allclose(fast, slow, atol=1e-4)
    assert torch.equal(fast[torch.arange(len(q)), q[:, 0].long()], q[:, 1:])  # query frame exact


def test_occlusion_equals_per_query(setup):
    video, model, maps, q = setup
    tracks = track_queries(model, maps, q)
    for anchor in (0.7, 0.2, -1.0):  # few, some and all frames as anchors
        occ, conf, diag = predict_occlusion(model, maps, q, tracks, anchor_cos=anchor, visible_cos=0.3, chunk=13)
        ref = occlusion_loop(model, maps, q, tracks, anchor_cos=anchor, visible_cos=0.3)
        assert torch.equal(occ, ref), anchor
        assert ((conf >= 0) & (conf <= 1)).all()
        # anchors are never occluded by the distance test
        assert not (diag["median"][diag["cos"] >= anchor] > diag["theta"][:, None].expand_as(diag["cos"])[
            diag["cos"] >= anchor]).any()


def test_api_input_pixels_and_backward(setup):
    video, model, _, _ = setup
    tr = Tracker(model, video)
    q = torch.tensor([[3.0, 40.0, 30.0], [0.0, 100.0, 70.0]])  # input px (video is 2x the model size)
    out = tr.track(q)
    assert out["tracks"].shape == (2, video.num_frames, 2)
    assert torch.allclose(out["tracks"][0, 3], q[0, 1:]) and torch.allclose(out["tracks"][1, 0], q[1, 1:])
    # frames before the query frame are tracked too (backward), inside the input frame
    assert torch.isfinite(out["tracks"][0, :3]).all()
    assert (out["tracks"][..., 0] <= 128).all() and (out["tracks"][..., 1] <= 96).all()
    with pytest.raises(ValueError, match="query frames"):
        tr.track(torch.tensor([[99.0, 1.0, 1.0]]))
    with pytest.raises(ValueError, match="inside"):
        tr.track(torch.tensor([[0.0, 1000.0, 1.0]]))


def test_moving_features_are_tracked(setup):
    """Features shift by one cell (stride px) per frame: the raw-feature tracker follows them."""
    video, _, maps, _ = setup
    raw = DinoTracker(video.features.shape[1], video.patch, video.stride, video.model_hw, radius=6.0,
                      use_delta=False, use_refiner=False)
    q = torch.tensor([[2.0, 36.0, 20.0]])
    tracks = track_queries(raw, video.features.float(), q)
    expect_x = 36.0 - (torch.arange(video.num_frames) - 2) * video.stride
    inside = (expect_x > 8) & (expect_x < 56)
    assert torch.allclose(tracks[0, inside, 0], expect_x[inside], atol=1.5)


def test_grid_and_query_files(tmp_path):
    g = grid_queries((40, 60), 20, frame=2)
    assert g.shape == (6, 3) and (g[:, 0] == 2).all() and set(g[:, 1]) == {10, 30, 50}
    mask = np.zeros((40, 60), bool)
    mask[:20, :30] = True
    assert grid_queries((40, 60), 20, 0, mask).shape == (1, 3)
    np.savez(tmp_path / "q.npz", queries=g)
    assert np.array_equal(read_queries(tmp_path / "q.npz"), g)
    (tmp_path / "q.csv").write_text("x,y,t\n1.5,2.5,3\n4,5,0\n")
    assert np.array_equal(read_queries(tmp_path / "q.csv"), np.array([[3, 1.5, 2.5], [0, 4, 5]], np.float32))
    (tmp_path / "n.csv").write_text("3,1.5,2.5\n")
    assert read_queries(tmp_path / "n.csv").shape == (1, 3)
    with pytest.raises(FileNotFoundError):
        read_queries(tmp_path / "missing.csv")


def test_exports_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    tracks = rng.uniform(0, 50, (4, 5, 2)).astype(np.float32)
    vis = rng.uniform(size=(4, 5)) > 0.3
    conf = rng.uniform(size=(4, 5)).astype(np.float32)
    q = np.concatenate([np.zeros((4, 1)), tracks[:, 0]], 1)
    d = load_npz(save_npz(tmp_path / "t.npz", tracks, vis, conf, q))
    assert np.array_equal(d["tracks"], tracks) and np.array_equal(d["visible"], vis)
    rows = np.loadtxt(save_csv(tmp_path / "t.csv", tracks, vis, conf), delimiter=",", skiprows=1)
    assert rows.shape == (20, 6)
    assert np.allclose(rows[:, 2:4].reshape(4, 5, 2), tracks, atol=1e-3)
    assert np.array_equal(rows[:, 4].reshape(4, 5).astype(bool), vis)
    import pickle

    frames = np.zeros((5, 50, 100, 3), np.uint8)
    with open(save_tapvid_pickle(tmp_path / "t.pkl", "v", frames, tracks, vis), "rb") as f:
        p = pickle.load(f)["v"]
    assert np.allclose(p["points"] * np.array([100, 50]), tracks, atol=1e-4)
    assert np.array_equal(p["occluded"], ~vis)
