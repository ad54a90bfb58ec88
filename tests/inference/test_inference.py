"""Fast batched inference vs the reference's per-query algorithm, occlusion, API, conversion, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dinotracker.inference.api import InferenceVideo, Tracker, load
from dinotracker.inference.occlusion import lower_median, predict_occlusion
from dinotracker.inference.queries import as_queries, grid_queries, queries_to_model
from dinotracker.inference.reference import occlusion_loop, occlusion_one, track_queries_loop
from dinotracker.inference.tracker import FeatureBank, refined_maps, track_queries
from dinotracker.models.checkpoint import reference_to_state_dict, state_dict_to_reference


def _queries(n, t, hw, seed=5):
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    return torch.cat(
        [
            torch.randint(0, t, (n, 1), generator=g).float(),
            2 + torch.rand(n, 1, generator=g) * (w - 4),
            2 + torch.rand(n, 1, generator=g) * (h - 4),
        ],
        1,
    )


@pytest.fixture
def setup(make_model, make_video):
    model, video = make_model(), make_video()
    maps = refined_maps(model, video.frames, video.features)
    q = torch.cat(
        [_queries(7, 8, (64, 96)), torch.tensor([[0, 36.0, 32.0], [3, 50.0, 20.0], [7, 4.0, 60.0]])]
    )
    return model, video, maps, q


@pytest.mark.parametrize("force_query", [True, False])
def test_fast_tracks_equal_per_query_reference(setup, force_query):
    model, _, maps, q = setup
    fast = track_queries(model, maps, q, chunk=7, force_query=force_query)
    ref = track_queries_loop(model, maps, q, redundant=True, force_query=force_query)
    lean = track_queries_loop(model, maps[:], q[:3], redundant=False, force_query=force_query)
    assert fast.shape == (len(q), 8, 2)
    torch.testing.assert_close(fast, ref, atol=1e-3, rtol=0)
    torch.testing.assert_close(fast[:3], lean, atol=1e-3, rtol=0)
    tq = q[:, 0].long()
    exact = (fast[torch.arange(len(q)), tq] == q[:, 1:]).all()
    assert bool(exact) == force_query  # unforced, the query frame is re-predicted (reference)


@pytest.mark.parametrize("force_query", [True, False])
def test_fast_occlusion_equals_per_query_reference(setup, force_query):
    model, _, maps, q = setup
    tracks = track_queries(model, maps, q, force_query=force_query)
    fast = predict_occlusion(model, maps, q, tracks, chunk=5, query_block=4)
    ref = [occlusion_one(model, maps, int(q[i, 0]), tracks[i]) for i in range(len(q))]
    assert torch.equal(fast.occluded, torch.stack([r[0] for r in ref]))
    assert torch.equal(occlusion_loop(model, maps, q[:2], tracks[:2]), fast.occluded[:2])
    # non-trivial case: some points occluded, some visible, some queries with several anchors
    assert 0 < fast.occluded.float().mean() < 1 and (fast.anchors.sum(1) > 1).any()
    for i, (_, cos, med, theta) in enumerate(ref):
        torch.testing.assert_close(fast.cos[i], cos, atol=1e-5, rtol=0)
        torch.testing.assert_close(fast.median[i], med, atol=1e-3, rtol=0)
        assert abs(float(fast.theta[i]) - float(theta)) < 1e-3


def test_chunking_does_not_change_results(setup):
    model, _, maps, q = setup
    a = track_queries(model, maps, q, chunk=3)
    b = track_queries(model, FeatureBank(maps), q, chunk=10_000)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    oa = predict_occlusion(model, maps, q, a, chunk=3, query_block=1)
    ob = predict_occlusion(model, maps, q, a, chunk=10_000)
    assert torch.equal(oa.occluded, ob.occluded)
    torch.testing.assert_close(oa.confidence, ob.confidence, atol=1e-5, rtol=0)


def test_lower_median_matches_torch_median():
    g = torch.Generator().manual_seed(0)
    d = torch.rand(20, 9, 6, generator=g)
    mask = torch.rand(20, 9, generator=g) > 0.4
    mask[0] = False
    got = lower_median(d, mask)
    for i in range(20):
        want = torch.zeros(6) if not mask[i].any() else torch.median(d[i, mask[i]], dim=0).values
        torch.testing.assert_close(got[i], want)


def test_confidence_consistent_with_binary_rule(setup):
    model, _, maps, q = setup
    tracks = track_queries(model, maps, q)
    o = predict_occlusion(model, maps, q, tracks)
    assert ((o.confidence >= 0) & (o.confidence <= 1)).all()
    assert (o.confidence[~o.occluded] >= 0.5).all()  # visible => >= 0.5
    assert o.occluded[o.confidence < 0.5].all()  # < 0.5 => occluded
    # the cosine rule alone: c < 0.6 => confidence < 0.5
    assert (o.confidence[o.cos < 0.6] < 0.5).all()


def test_tracker_api_query_frame_exact_and_input_pixels(make_model, make_video):
    model, video = make_model(), make_video()  # input 128x192, model 64x96
    tr = Tracker(model, video)
    q = torch.tensor([[0, 71.3, 64.9], [5, 100.25, 30.5], [7, 3.0, 120.0]])
    out = tr.track(q)
    assert out["tracks"].shape == (3, 8, 2) and out["tracks"].dtype == torch.float32
    assert out["visible"].dtype == torch.bool and out["confidence"].shape == (3, 8)
    tq = q[:, 0].long()
    assert torch.equal(out["tracks"][torch.arange(3), tq], q[:, 1:])
    assert out["visible"][torch.arange(3), tq].all()
    # input px = 2 x model px
    maps = tr.refined_features()
    model_tracks = track_queries(model, maps, queries_to_model(q, video.resize))
    torch.testing.assert_close(out["tracks"], model_tracks * 2, atol=1e-4, rtol=0)
    no_occ = tr.track(q.numpy(), occlusion=False)
    assert no_occ["visible"].all()
    torch.testing.assert_close(no_occ["tracks"], out["tracks"])


def test_backward_tracking_from_middle_frame(make_model, make_translating_video):
    video, gt, occluded, queries = make_translating_video()
    model = make_model(48, use_delta=False, use_refiner=False)
    tr = Tracker(model, video)
    mid = 4
    vis_mid = ~occluded[:, mid]
    q = torch.cat([torch.full((int(vis_mid.sum()), 1), float(mid)), gt[vis_mid, mid]], 1)
    out = tr.track(q, occlusion=False)
    before = ~occluded[vis_mid, :mid]
    err = (out["tracks"][:, :mid] - gt[vis_mid, :mid]).norm(dim=-1)
    assert before.sum() > 20
    assert float(err[before].median()) < 1.0, err[before]
    assert float((err[before] < 2.0).float().mean()) > 0.9


def test_occlusion_beats_all_visible_when_points_leave(make_model, make_translating_video):
    video, gt, occluded, queries = make_translating_video()
    model = make_model(48, use_delta=False, use_refiner=False)
    out = Tracker(model, video).track(queries)
    visible_gt = ~occluded
    assert 0.15 < float(occluded.float().mean()) < 0.5
    acc = float((out["visible"] == visible_gt).float().mean())
    acc_all_visible = float(visible_gt.float().mean())
    assert acc > acc_all_visible + 0.01, (acc, acc_all_visible)
    # points still in view are tracked (query frame 0, 8 px / frame)
    err = (out["tracks"] - gt).norm(dim=-1)
    assert float(err[visible_gt].median()) < 1.0


def test_refined_features_and_fp16_storage(make_model, make_video):
    model, video = make_model(), make_video()
    tr = Tracker(model, video)
    with torch.no_grad():
        want = model.refine(video.frames[2:4].float() / 255, video.features[2:4].float())
    torch.testing.assert_close(tr.refined_features([2, 3]), want, atol=1e-5, rtol=1e-5)
    assert tr.refined_features().shape == (8, 16, 15, 23)
    assert (tr.patch, tr.stride) == (8, 4)
    half = Tracker(model, video, storage_dtype=torch.float16)
    assert half.refined_features().dtype == torch.float16
    q = _queries(8, 8, (128, 192), seed=1)
    a, b = tr.track(q, occlusion=False)["tracks"], half.track(q, occlusion=False)["tracks"]
    assert float(((a - b).norm(dim=-1) < 0.5).float().mean()) > 0.9


def test_query_validation_and_grid():
    with pytest.raises(ValueError, match="integers"):
        as_queries([[0.5, 1, 1]], 8, (10, 10))
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        as_queries([[8, 1, 1]], 8, (10, 10))
    with pytest.raises(ValueError, match="inside"):
        as_queries([[0, 11, 1]], 8, (10, 10))
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        as_queries(np.zeros((2, 2)), 8, (10, 10))
    g = grid_queries((40, 60), 10, frame=3)
    assert g.shape == (24, 3) and (g[:, 0] == 3).all()
    assert sorted(set(g[:, 1].tolist())) == [5, 15, 25, 35, 45, 55]
    mask = np.zeros((40, 60), bool)
    mask[:20, :30] = True
    gm = grid_queries((40, 60), 10, mask=mask)
    assert gm.shape == (6, 3) and (gm[:, 1] < 30).all() and (gm[:, 2] < 20).all()
    with pytest.raises(ValueError, match="mask"):
        grid_queries((40, 60), 10, mask=np.ones((10, 10)))


def test_tracker_track_grid(make_model, make_video):
    tr = Tracker(make_model(), make_video())
    out = tr.track_grid(32, frame=2)
    assert out["queries"].shape == (24, 3) and out["tracks"].shape == (24, 8, 2)
    assert torch.equal(out["tracks"][:, 2], out["queries"][:, 1:])


# ------------------------------------------------------------------ checkpoints and run folders
REF_DELTA_SHAPES = {  # spec §3.1 (C = 1024): layer index -> conv weight shape
    "layers.0.weight": (64, 3, 5, 5),
    "layers.4.weight": (128, 64, 5, 5),
    "layers.8.weight": (256, 128, 5, 5),
    "layers.12.weight": (1024, 256, 5, 5),
    "layers.13.weight": (1024,),
    "layers.3.filt": (64, 1, 4, 4),
}


def test_reference_key_conversion_round_trip():
    from dinotracker.models.tracker import DinoTracker

    model = DinoTracker(1024, 14, 7, (98, 98))
    ours = model.state_dict()
    delta, head = state_dict_to_reference(ours)
    for k, shape in REF_DELTA_SHAPES.items():
        assert tuple(delta[k].shape) == shape, k
    assert tuple(head["cnn_refiner.0.weight"].shape) == (16, 1, 3, 3)
    assert tuple(head["cnn_refiner.2.weight"].shape) == (1, 16, 3, 3)
    trainable = sum(v.numel() for k, v in delta.items() if k.endswith(("weight", "bias")) and "filt" not in k)
    assert trainable == 7_586_816  # spec §3.1
    assert sum(v.numel() for v in head.values()) == 305  # spec §3.3
    back = reference_to_state_dict({"module." + k: v for k, v in delta.items()}, head)
    assert back.keys() == ours.keys()
    assert all(torch.equal(back[k], ours[k]) for k in ours)
    with pytest.raises(ValueError):
        reference_to_state_dict({"conv1.weight": torch.zeros(1)}, None)


def _write_cache(root, video: InferenceVideo):
    from dinotracker.preprocessing.cache import StageCache

    cache = StageCache(root)
    cache.save("frames", "k1", {"frames": video.frames.numpy()})
    cache.save("features", "k2", {"features": video.features.numpy()})
    info = dict(
        name=video.name,
        cache_dir=str(root),
        patch=video.patch,
        stride=video.stride,
        input_hw=list(video.resize.input_hw),
        model_hw=list(video.resize.model_hw),
        frame_indices=list(range(video.num_frames)),
        entries=["frames-k1", "features-k2"],
    )
    (root / "preprocessed.json").write_text(json.dumps(info))
    return info


def _write_run(folder, model, info):
    folder.mkdir(parents=True, exist_ok=True)
    kw = dict(
        feature_dim=model.feature_dim,
        patch=model.patch,
        stride=model.stride,
        model_hw=list(model.model_hw),
        radius=model.radius,
    )
    torch.save(
        {"model_kwargs": kw, "state_dict": model.state_dict(), "ema_state_dict": None}, folder / "tracker.pt"
    )
    (folder / "run_info.json").write_text(
        json.dumps(
            dict(
                preprocessed=info,
                cache_dir=info["cache_dir"],
                input_hw=info["input_hw"],
                model_hw=info["model_hw"],
                video=dict(name="tiny", fps=12.0),
            )
        )
    )


def test_load_run_folder_and_reference_checkpoints(tmp_path, make_model, make_video):
    import dinotracker

    model, video = make_model(), make_video()
    info = _write_cache(tmp_path / "cache", video)
    _write_run(tmp_path / "run", model, info)
    q = _queries(6, 8, (128, 192), seed=2)
    want = Tracker(model, video).track(q)
    got = dinotracker.load(tmp_path / "run").track(q)
    for k in ("tracks", "visible", "confidence"):
        torch.testing.assert_close(got[k], want[k])
    # the reference's checkpoint folder: plain state dicts, the largest iteration wins
    ref_model = make_model(align_mode="reference", seed=3, radius=35.0)  # the reference's R
    d = tmp_path / "ref" / "models" / "dino_tracker"
    d.mkdir(parents=True)
    delta, head = state_dict_to_reference(ref_model.state_dict())
    for it, scale in ((2500, 0.0), (10000, 1.0)):
        torch.save({k: v * scale for k, v in delta.items()}, d / f"delta_dino_{it}.pt")
        torch.save(head, d / f"tracker_head_{it}.pt")
    torch.save(delta, d / "delta_dino_99999.pt")  # no matching head: ignored
    with pytest.raises(ValueError, match="cache_dir"):
        load(tmp_path / "ref")
    conv = load(tmp_path / "ref", cache_dir=tmp_path / "cache")
    assert conv.model.align_mode == "reference"
    torch.testing.assert_close(conv.track(q)["tracks"], Tracker(ref_model, video).track(q)["tracks"])
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "cache")


def test_track_cli_writes_exports(tmp_path, make_model, make_video):
    from omegaconf import OmegaConf

    from dinotracker import config_dir as conf_dir
    from dinotracker.inference.export import load_csv, load_npz
    from dinotracker.jobs.track import run

    model, video = make_model(), make_video()
    info = _write_cache(tmp_path / "cache", video)
    _write_run(tmp_path / "run", model, info)
    qfile = tmp_path / "q.csv"
    qfile.write_text("t,x,y\n0,10.5,20\n3,100,60\n")
    cfg = OmegaConf.load(conf_dir() / "track.yaml")
    cfg.pop("defaults")
    cfg.pop("hydra")
    cfg.run, cfg.queries, cfg.out = str(tmp_path / "run"), str(qfile), str(tmp_path / "out" / "tr.npz")
    cfg.export = ["npz", "csv", "pkl", "mp4"]
    res = run(cfg)
    names = sorted(p.name for p in res["written"])
    assert names == ["tr.csv", "tr.mp4", "tr.npz", "tr.pkl", "tr.png"]
    z = load_npz(tmp_path / "out" / "tr.npz")
    assert z["tracks"].shape == (2, 8, 2) and z["queries"].tolist()[1] == [3, 100, 60]
    np.testing.assert_allclose(load_csv(tmp_path / "out" / "tr.csv")["tracks"], z["tracks"], atol=1e-3)
    cfg.queries, cfg.out, cfg.export, cfg.grid_step = None, None, ["npz"], 48
    res = run(cfg)
    assert res["written"][0].name == "tracks_grid48_f0.npz" and res["tracks"].shape == (12, 8, 2)


@pytest.mark.parametrize("kw", [dict(), dict(normalized_refiner=False), dict(use_refiner=False)])
def test_windowed_head_equals_whole_map_head(make_model, kw):
    from dinotracker.inference.tracker import full_head, head, refine_logits

    model = make_model(**kw)
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(40, 15, 23, generator=g) ** 4
    cost[0] = 0
    cost[0, 0, 0] = 1  # argmax in a corner: the disc and the refiner window leave the grid
    cost[1] = 0
    cost[1, 14, 22] = 1
    with torch.no_grad():
        torch.testing.assert_close(head(model, cost), full_head(model, cost), atol=1e-3, rtol=0)
        if model.refiner is not None:
            want = model.refiner(cost[:, None])[:, 0]
            torch.testing.assert_close(refine_logits(model, cost), want, atol=1e-4, rtol=1e-4)


def test_windowed_head_uniform_fallback_rows(make_model):
    """Rows whose disc holds < 1e-8 of the refined mass take the whole-map path (uniform in-disc weights)."""
    from dinotracker.inference.tracker import full_head, head

    model = make_model(normalized_refiner=False)
    with torch.no_grad():
        model.refiner.net[0].weight.fill_(1.0)
        model.refiner.net[0].bias.zero_()
        model.refiner.net[2].weight.fill_(3.0)
        model.refiner.net[2].bias.zero_()
    cost = torch.zeros(2, 15, 23)
    cost[:, 2, 2] = 1.0  # isolated raw argmax ...
    cost[:, 9:, 14:] = 0.99  # ... far from a large block that dominates the refined heatmap
    cost[1, 9:, 14:] = 0.2  # second row: the disc keeps its mass
    with torch.no_grad():
        got, want = head(model, cost), full_head(model, cost)
    torch.testing.assert_close(got, want, atol=1e-3, rtol=0)
    # row 0 is the uniform fallback: the mean of the in-grid disc cells around (2, 2)
    assert abs(float(got[0, 0]) - float(got[0, 1])) < 1e-4  # symmetric disc, clipped at the same border


def test_track_module_runs_as_a_command(tmp_path, make_model, make_video):
    """``python -m dinotracker.track run=... grid_step=...`` through Hydra (conf/track.yaml)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    info = _write_cache(tmp_path / "cache", make_video())
    _write_run(tmp_path / "run", make_model(), info)
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [
        sys.executable,
        "-m",
        "dinotracker.track",
        f"run={tmp_path / 'run'}",
        "grid_step=64",
        f"out={tmp_path / 'o.npz'}",
        "export=[npz,csv]",
        "device=cpu",
    ]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "o.npz").is_file() and (tmp_path / "o.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "o.csv", "o.npz", "run"]  # no Hydra litter
    r = subprocess.run(
        [sys.executable, "-m", "dinotracker.track", f"run={tmp_path / 'run'}", "export=[gif]"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0 and "unknown" in (r.stderr + r.stdout)
