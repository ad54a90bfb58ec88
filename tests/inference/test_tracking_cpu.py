"""CPU tracking speed-ups keep the results (issue 15): the head plan, the logsumexp whole-map head,
the anchor cap (off = the spec) and the post-fit grid cap."""

from __future__ import annotations

import torch

from dinotracker.inference.occlusion import predict_occlusion, thin_anchors
from dinotracker.inference.queries import capped_grid_step, grid_queries
from dinotracker.inference.tracker import HeadPlan, fast_full_head, full_head, head, refined_maps, track_queries


def test_logsumexp_whole_map_head_equals_softmax_head(make_model):
    model = make_model(normalized_refiner=False)
    g = torch.Generator().manual_seed(1)
    cost = torch.rand(30, 15, 23, generator=g) ** 3
    with torch.no_grad():
        torch.testing.assert_close(fast_full_head(model, cost), full_head(model, cost), atol=1e-4, rtol=0)
        # the uniform fallback (in-disc mass < 1e-8) is kept
        model.refiner.net[0].weight.fill_(1.0)
        model.refiner.net[0].bias.zero_()
        model.refiner.net[2].weight.fill_(3.0)
        model.refiner.net[2].bias.zero_()
        c = torch.zeros(1, 15, 23)
        c[:, 2, 2] = 1.0
        c[:, 9:, 14:] = 0.99
        torch.testing.assert_close(fast_full_head(model, c), full_head(model, c), atol=1e-4, rtol=0)


def test_head_plan_skips_the_window_on_flat_maps_with_the_same_result(make_model):
    model = make_model()
    g = torch.Generator().manual_seed(2)
    flat = 0.9 + 0.1 * torch.rand(600, 15, 23, generator=g)  # flat maps: the window's bound test fails
    plan = HeadPlan(probe_rows=256)
    with torch.no_grad():
        got = torch.cat([head(model, flat[i : i + 100], plan=plan) for i in range(0, 600, 100)])
        want = full_head(model, flat)
    assert not plan.use_window and plan.tried == 300  # probed 3 chunks, then whole-map only
    torch.testing.assert_close(got, want, atol=1e-3, rtol=0)


def test_anchor_cap_off_is_the_spec_and_on_bounds_the_anchors(make_model, make_video):
    model, video = make_model(), make_video()
    maps = refined_maps(model, video.frames, video.features)
    q = grid_queries((64, 96), 20.0, 0)
    tracks = track_queries(model, maps, q)
    full = predict_occlusion(model, maps, q, tracks)
    same = predict_occlusion(model, maps, q, tracks, max_anchors=maps.shape[0])
    assert torch.equal(full.occluded, same.occluded) and torch.equal(full.median, same.median)
    a = torch.tensor([[1, 1, 1, 1, 1, 0, 1, 1], [0, 1, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    kept = thin_anchors(a, 3)
    assert kept.tolist()[0] == [1, 0, 0, 1, 0, 0, 0, 1] and kept[1].tolist() == a[1].tolist()
    assert torch.equal(thin_anchors(a, None), a)
    capped = predict_occlusion(model, maps, q, tracks, max_anchors=2)
    assert torch.equal(capped.anchors, full.anchors) and torch.equal(capped.theta >= 0, full.theta >= 0)


def test_post_fit_grid_is_capped_to_the_video():
    hw = (720, 1296)
    assert len(grid_queries(hw, 16.0)) == 3645  # the post-fit grid
    step = capped_grid_step(hw, 16.0, 400)
    n = len(grid_queries(hw, step))
    assert n <= 400 and n > 300 and step > 16
    assert capped_grid_step(hw, 80.0, 400) == 80.0 and capped_grid_step(hw, 16.0, None) == 16.0


def test_fast_conv_features_match_the_plain_path_and_leave_the_model_as_it_was(make_model, make_video):
    from dinotracker.inference.api import Tracker
    from dinotracker.models.delta_dino import nnpack_available

    model, video = make_model(), make_video()
    plain = Tracker(model, video)
    fast = Tracker(model, video, fast_conv=True)
    assert fast.fast_conv and not plain.fast_conv
    a, b = plain.refined_features(), fast.refined_features()
    assert model.delta_dino.fast_conv is False  # restored after the bank was built
    scale = float(a.abs().max())
    torch.testing.assert_close(b, a, atol=2e-5 * scale, rtol=0)
    if nnpack_available():  # the fast path really ran: not the same summation as oneDNN's
        assert not torch.equal(a, b)
    q = grid_queries((128, 192), 40.0, 0)
    torch.testing.assert_close(fast.track(q)["tracks"], plain.track(q)["tracks"], atol=1e-3, rtol=0)
