"""Delta-DINO, BlurPool, refiner and tracker head against hand-computed / brute-force references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dinotracker.geometry import patch_center_grid
from dinotracker.models import (
    BlurPool2d,
    DeltaDINO,
    DinoTracker,
    NormalizedConv2d,
    Refiner,
    align_to_patch_grid,
    cosine_cost_volume,
    sample_points,
)

# Tiny geometry: 70x98 model px, patch 14, stride 7 -> 9x13 patch grid; CNN map 9x13 too.
HW, P, S, C = (70, 98), 14, 7, 16


def n_params(m):
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def small_tracker(**kw):
    torch.manual_seed(0)
    return DinoTracker(C, P, S, HW, **kw)


# ----------------------------------------------------------------------------- parameter counts
def test_delta_dino_parameter_count_matches_reference():
    m = DeltaDINO(out_dim=1024)
    assert n_params(m) == 7_586_816
    convs = [x for x in m.layers if isinstance(x, torch.nn.Conv2d)]
    assert [c.weight.numel() + c.bias.numel() for c in convs] == [4_864, 204_928, 819_456, 6_554_624]
    assert [c.dilation[0] for c in convs] == [1, 1, 1, 2]
    assert [c.padding[0] for c in convs] == [2, 2, 2, 4]
    assert all(c.padding_mode == "reflect" for c in convs)


@pytest.mark.parametrize("normalized", [True, False])
def test_refiner_parameter_count(normalized):
    assert n_params(Refiner(16, normalized=normalized)) == 305


def test_tracker_parameter_groups_and_ablations():
    t = DinoTracker(1024, 14, 7, (476, 854))
    assert t.grid_hw == (67, 121)
    assert sum(p.numel() for p in t.delta_parameters()) == 7_586_816
    assert sum(p.numel() for p in t.head_parameters()) == 305
    t2 = DinoTracker(8, 14, 7, (70, 98), use_delta=False, use_refiner=False)
    assert t2.delta_dino is None and t2.refiner is None and n_params(t2) == 0


# ----------------------------------------------------------------------------- BlurPool
def _reflect(i, n):
    if i < 0:
        return -i
    if i > n - 1:
        return 2 * (n - 1) - i
    return i


def test_blurpool_matches_brute_force_loops():
    torch.manual_seed(1)
    x = torch.randn(1, 2, 5, 7)
    out = BlurPool2d(2)(x)
    assert out.shape == (1, 2, 3, 4)  # ceil(n / 2)
    k = [1.0, 3.0, 3.0, 1.0]
    ref = torch.zeros_like(out)
    for c in range(2):
        for i in range(3):
            for j in range(4):
                acc = 0.0
                for a in range(4):
                    for b in range(4):
                        # padded index 2i + a corresponds to input index 2i + a - 1 (pad 1 before)
                        acc += k[a] * k[b] / 64.0 * float(x[0, c, _reflect(2 * i + a - 1, 5),
                                                            _reflect(2 * j + b - 1, 7)])
                ref[0, c, i, j] = acc
    torch.testing.assert_close(out, ref)


def test_blurpool_hand_case_and_centre():
    # x = 0..7 along width, constant along height. Padded row: [1, 0..7, 6, 5].
    x = torch.arange(8.0).repeat(4, 1)[None, None]
    out = BlurPool2d(1)(x)[0, 0, 0]
    # out0 = (1*1 + 3*0 + 3*1 + 1*2) / 8; interior outputs reproduce the linear ramp at the
    # pixel-index position 2i + 0.5, i.e. raster 2i + 1 (the output cell's centre).
    assert out[0].item() == pytest.approx(6 / 8)
    assert out[1].item() == pytest.approx(2.5)
    assert out[2].item() == pytest.approx(4.5)
    assert out[3].item() == pytest.approx((1 * 5 + 3 * 6 + 3 * 7 + 1 * 6) / 8)


def test_blurpool_rejects_bad_input():
    with pytest.raises(ValueError):
        BlurPool2d(3)(torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError):
        BlurPool2d(1)(torch.zeros(1, 1, 2, 8))


# ----------------------------------------------------------------------------- NormalizedConv2d
def test_normalized_conv_kernels_sum_to_one_and_match_explicit_conv():
    torch.manual_seed(2)
    conv = NormalizedConv2d(3, 4, 3, padding=1)
    w = conv.normalized_weight()
    torch.testing.assert_close(w.sum(dim=(2, 3)), torch.ones(4, 3))
    x = torch.randn(2, 3, 6, 5)
    ref_w = torch.empty_like(conv.weight)
    for o in range(4):
        for i in range(3):
            ref_w[o, i] = conv.weight[o, i] / conv.weight[o, i].sum()
    torch.testing.assert_close(conv(x), F.conv2d(x, ref_w, conv.bias, padding=1))


def test_normalized_conv_tiny_and_zero_sums_stay_finite():
    conv = NormalizedConv2d(1, 2, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0
        conv.weight[0, 0, 0, 1] = -1.0  # sum exactly 0 -> +1e-8 (the reference divides by 0 here)
        conv.weight[1, 0, 1, 1] = -1e-9  # |sum| < eps, negative -> -1e-8
    w = conv.normalized_weight()
    assert torch.isfinite(w).all()
    assert w[0, 0, 0, 0].item() == pytest.approx(1e8)
    assert w[1, 0, 1, 1].item() == pytest.approx(0.1)


# ----------------------------------------------------------------------------- Delta-DINO
def test_delta_dino_zero_at_init_and_refine_equals_raw():
    t = small_tracker()
    frames = torch.rand(3, 3, *HW)
    raw = torch.randn(3, C, 9, 13)
    d = t.delta_dino(frames)
    assert d.shape == (3, C, 9, 13)  # ceil(70/8)=9, ceil(98/8)=13
    assert torch.count_nonzero(d) == 0
    torch.testing.assert_close(t.refine(frames, raw), raw)
    torch.testing.assert_close(t.refine(frames, raw.half()), raw.half().float())  # fp16 raw -> fp32
    t.eval()
    torch.testing.assert_close(t.refine(frames, raw, chunk_size=2), raw)
    last_bn = t.delta_dino.layers[-1]
    assert torch.all(last_bn.weight == 0.05) and torch.all(last_bn.bias == 0)


def test_delta_dino_output_size_and_small_input_error():
    m = DeltaDINO(out_dim=8, channels=(4, 4, 4))
    assert m(torch.rand(1, 3, 50, 70)).shape == (1, 8, 7, 9)
    assert m.output_size((476, 854)) == (60, 107)
    with pytest.raises(ValueError, match="too small"):
        m(torch.rand(1, 3, 30, 70))  # 4 rows after three halvings <= pad 4


# ----------------------------------------------------------------------------- alignment
@pytest.mark.parametrize("mode,offset", [("center", 4.0), ("reference", 0.5)])
def test_align_to_patch_grid_linear_map(mode, offset):
    h8, w8 = 9, 13
    jj, ii = torch.meshgrid(torch.arange(h8, dtype=torch.float32), torch.arange(w8, dtype=torch.float32),
                            indexing="ij")
    cnn = torch.stack([ii, jj])[None]  # channel 0 = column index, channel 1 = row index
    out = align_to_patch_grid(cnn, (9, 13), P, S, cnn_stride=8, mode=mode)
    centres = patch_center_grid((9, 13), P, S)
    exp_x = ((centres[..., 0] - offset) / 8).clamp(0, w8 - 1)
    exp_y = ((centres[..., 1] - offset) / 8).clamp(0, h8 - 1)
    torch.testing.assert_close(out[0, 0], exp_x)
    torch.testing.assert_close(out[0, 1], exp_y)
    if mode == "center":  # centre k=0 at raster 7 -> CNN cell 0 (centre raster 4) + 3/8
        assert out[0, 0, 0, 0].item() == pytest.approx(3 / 8)


def test_align_center_mode_is_geometrically_exact_end_to_end():
    """Blur-pool a ramp image I = pixel column index (value x - 0.5 at raster x) three times and
    align: in "center" mode every interior patch centre reads the ramp at its own raster
    position; "reference" mode reads it 3.5 px further right."""
    img = torch.arange(128.0).repeat(64, 1)[None, None]
    x = img
    for _ in range(3):
        x = BlurPool2d(1)(x)
    grid = (8, 17)
    cx = patch_center_grid(grid, 14, 7)[0, :, 0]
    interior = (cx > 24) & (cx < 128 - 24)  # away from the reflect-padded borders
    out = align_to_patch_grid(x, grid, 14, 7, mode="center")[0, 0, 0]
    torch.testing.assert_close(out[interior], cx[interior] - 0.5)
    out_ref = align_to_patch_grid(x, grid, 14, 7, mode="reference")[0, 0, 0]
    torch.testing.assert_close(out_ref[interior], cx[interior] - 0.5 + 3.5)


def test_align_grid_has_no_grad_but_features_do():
    cnn = torch.randn(1, 2, 5, 6, requires_grad=True)
    align_to_patch_grid(cnn, (4, 5), P, S).sum().backward()
    assert cnn.grad is not None and cnn.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- cost volume
def _explicit_cos(q, maps):
    return F.cosine_similarity(q[:, None, None], maps.permute(1, 2, 0), dim=-1, eps=1e-8)


def test_cost_volume_equals_explicit_cosine_with_broadcasting():
    torch.manual_seed(3)
    t = small_tracker()
    maps = torch.randn(4, C, 9, 13)
    q = torch.randn(5, 4, C)  # [Q, T, C] against [T, C, h, w]
    cost = t.cost_volume(q, maps)
    assert cost.shape == (5, 4, 9, 13) and cost.dtype == torch.float32
    for a in range(5):
        for b in range(4):
            ref = torch.relu(F.cosine_similarity(q[a, b][:, None, None], maps[b], dim=0, eps=1e-8))
            torch.testing.assert_close(cost[a, b], ref, atol=1e-5, rtol=1e-5)
    raw = cosine_cost_volume(q, maps)
    assert (raw < 0).any()  # ReLU is applied by cost_volume only
    # maps with a leading singleton broadcast against [T, Q, C]
    cost2 = t.cost_volume(q.transpose(0, 1), maps[:, None])
    torch.testing.assert_close(cost2, cost.transpose(0, 1))
    # per-row target frames
    idx = torch.tensor([2, 0, 2, 3, 1])
    cost3 = t.cost_volume(q[:, 0], maps, target_index=idx)
    for a in range(5):
        torch.testing.assert_close(cost3[a], torch.relu(cosine_cost_volume(q[a, 0], maps[idx[a]])))


def test_cost_volume_rejects_bad_shapes():
    t = small_tracker()
    with pytest.raises(ValueError):
        t.cost_volume(torch.randn(3, C + 1), torch.randn(3, C, 9, 13))
    with pytest.raises(ValueError):
        t.cost_volume(torch.randn(3, C), torch.randn(2, C, 9, 13))


def test_sample_features_at_patch_centres_returns_cells():
    t = small_tracker()
    maps = torch.randn(2, C, 9, 13)
    xy = torch.tensor([[[7.0, 7.0], [7.0 + 7 * 12, 7.0 + 7 * 8], [7.0 + 7 * 3, 7.0 + 7 * 5]]]).repeat(2, 1, 1)
    f = t.sample_features(maps, xy)
    torch.testing.assert_close(f[:, 0], maps[:, :, 0, 0])
    torch.testing.assert_close(f[:, 1], maps[:, :, 8, 12])
    torch.testing.assert_close(f[:, 2], maps[:, :, 5, 3])
    mid = t.sample_features(maps, torch.tensor([[[10.5, 7.0]]]).repeat(2, 1, 1))[:, 0]
    torch.testing.assert_close(mid, 0.5 * (maps[:, :, 0, 0] + maps[:, :, 0, 1]))
    g = sample_points(maps, torch.tensor([1, 0]), xy[0, :2], P, S)
    torch.testing.assert_close(g, torch.stack([maps[1, :, 0, 0], maps[0, :, 8, 12]]))


# ----------------------------------------------------------------------------- heatmap / soft-argmax
def test_heatmap_is_a_distribution_and_identity_refiner():
    t = small_tracker(use_refiner=False)
    cost = torch.rand(2, 3, 9, 13)
    probs = t.heatmap(cost)
    torch.testing.assert_close(probs.sum(dim=(-2, -1)), torch.ones(2, 3))
    torch.testing.assert_close(probs, torch.softmax(cost.reshape(2, 3, -1), -1).reshape(2, 3, 9, 13))
    t2 = small_tracker()
    torch.testing.assert_close(t2.heatmap(cost).sum(dim=(-2, -1)), torch.ones(2, 3))


def _centre(r, c):
    return torch.tensor([S * c + P / 2, S * r + P / 2])


def test_soft_argmax_delta_peak_gives_cell_centre():
    t = small_tracker()
    probs = torch.zeros(1, 9, 13)
    probs[0, 4, 6] = 1.0
    xy = t.soft_argmax(probs, probs.clone())
    torch.testing.assert_close(xy[0], _centre(4, 6))


def test_soft_argmax_two_peaks_inside_and_outside_radius():
    t = small_tracker()  # radius 35 px = 5 strides
    probs = torch.zeros(1, 9, 13)
    probs[0, 2, 2] = 0.5
    probs[0, 2, 7] = 0.3  # exactly 35 px away: inside (<=)
    probs[0, 2, 8] = 0.2  # 42 px away: outside
    xy = t.soft_argmax(probs, probs.clone())[0]
    exp = (0.5 * _centre(2, 2) + 0.3 * _centre(2, 7)) / 0.8
    torch.testing.assert_close(xy, exp)
    probs[0, 2, 7] = 0.0
    probs[0, 6, 5] = 0.3  # offset (3, 4) strides = 35 px exactly: inside
    exp = (0.5 * _centre(2, 2) + 0.3 * _centre(6, 5)) / 0.8
    torch.testing.assert_close(t.soft_argmax(probs, probs.clone())[0], exp)


def test_soft_argmax_uniform_fallback_and_coarse_source():
    t = small_tracker()
    cost = torch.zeros(1, 9, 13)
    cost[0, 4, 6] = 1.0  # raw argmax
    probs = torch.zeros(1, 9, 13)
    probs[0, 0, 0] = 1.0  # all refined mass far away (> 35 px from (4, 6))
    xy = t.soft_argmax(probs, cost)[0]
    # brute force: uniform mean of the centres within 35 px of cell (4, 6)
    pts = [_centre(r, c) for r in range(9) for c in range(13)
           if math.hypot(S * (r - 4), S * (c - 6)) <= 35.0]
    torch.testing.assert_close(xy, torch.stack(pts).mean(0))
    assert len(pts) == 81 - 2  # 81 cells in a 35 px disc, rows -1 and 9 are off the grid
    t_ref = small_tracker(coarse_from="refined")
    torch.testing.assert_close(t_ref.soft_argmax(probs, cost)[0], _centre(0, 0))


def test_soft_argmax_random_against_brute_force():
    torch.manual_seed(4)
    t = small_tracker(radius=20.0)
    cost = torch.rand(3, 9, 13)
    probs = torch.softmax(torch.randn(3, 9 * 13), -1).reshape(3, 9, 13)
    xy = t.soft_argmax(probs, cost)
    for b in range(3):
        r0, c0 = divmod(int(cost[b].argmax()), 13)
        num, den = torch.zeros(2), 0.0
        for r in range(9):
            for c in range(13):
                if math.hypot(S * (r - r0), S * (c - c0)) <= 20.0:
                    num += probs[b, r, c] * _centre(r, c)
                    den += float(probs[b, r, c])
        torch.testing.assert_close(xy[b], num / den)


def test_tracker_rejects_bad_config():
    with pytest.raises(ValueError):
        DinoTracker(8, 14, 7, (70, 98), coarse_from="argmax")
    with pytest.raises(ValueError):
        DinoTracker(8, 14, 7, (70, 98), radius=0)
    t = small_tracker()
    with pytest.raises(ValueError):
        t.refine(torch.rand(2, 3, 70, 98), torch.randn(2, C, 8, 13))
    with pytest.raises(ValueError):
        t.refine(torch.rand(2, 3, 72, 98), torch.randn(2, C, 9, 13))


# ----------------------------------------------------------------------------- end to end
def test_forward_shapes_autocast_and_gradients_reach_delta_and_refiner():
    from dinotracker.training.losses import flow_loss

    torch.manual_seed(5)
    t = small_tracker()
    t.train()
    frames = torch.rand(2, 3, *HW)
    raw = torch.randn(2, C, 9, 13)
    feats = t.refine(frames, raw)
    src = torch.tensor([[20.0, 30.0], [50.0, 40.0], [80.0, 20.0]])
    q = t.sample_points(feats, torch.tensor([0, 0, 1]), src)
    xy, probs, cost = t(q, feats, target_index=torch.tensor([1, 1, 0]))
    assert xy.shape == (3, 2) and probs.shape == cost.shape == (3, 9, 13)
    loss = flow_loss(xy, src + 3.0, HW)
    loss.backward()
    last_conv = t.delta_dino.layers[-2]
    assert last_conv.weight.grad is not None and last_conv.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in t.refiner.parameters())
    # autocast: head maths stays fp32 and matches
    t.eval()
    with torch.no_grad():
        ref = t(q, feats, target_index=torch.tensor([1, 1, 0]))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats_ac = t.refine(frames, raw)
            out = t(q, feats_ac, target_index=torch.tensor([1, 1, 0]))
    assert all(o.dtype == torch.float32 for o in out)
    torch.testing.assert_close(out[0], ref[0], atol=0.5, rtol=0)


def test_load_reference_state_dicts_key_mapping():
    src = small_tracker()
    with torch.no_grad():
        for p in src.parameters():
            p.uniform_(-1, 1)
    head_sd = {k.replace("net.", "cnn_refiner.", 1): v for k, v in src.refiner.state_dict().items()}
    dst = DinoTracker(C, P, S, HW, align_mode="reference")
    dst.load_reference_state_dicts(src.delta_dino.state_dict(), head_sd)
    for a, b in zip(src.parameters(), dst.parameters()):
        torch.testing.assert_close(a, b)
    assert "layers.3.filt" in dst.delta_dino.state_dict()  # antialiased_cnns BlurPool buffer name
