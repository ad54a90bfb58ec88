"""DINO-Tracker losses against hand-computed cases and brute-force formulas (spec §4.3)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dinotracker.training.losses import (
    cycle_consistency_loss,
    cycle_pseudo_labels,
    dino_bb_loss,
    dino_bb_weights,
    flow_loss,
    info_nce_loss,
    info_nce_terms,
    prior_loss,
    prior_terms,
    refined_bb_loss,
    refined_best_buddies,
)

D = 1.0 / 32


def huber(x, d=D):
    x = abs(x)
    return 0.5 * x * x if x < d else d * (x - 0.5 * d)


# ----------------------------------------------------------------------------- flow
def test_flow_loss_hand_case():
    hw = (5, 9)  # scale: x 2/8 = 0.25, y 2/4 = 0.5 per px
    pred = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    tgt = torch.tensor([[1.1, 1.0], [1.0, 2.0]])
    exp = (huber(-0.1 * 0.25) + huber(0.0) + huber(-0.25) + huber(-1.0)) / 4
    assert flow_loss(pred, tgt, hw).item() == pytest.approx(exp, rel=1e-5)
    # hand values: 0.5 * 0.025^2, delta * (0.25 - delta/2), delta * (1 - delta/2)
    assert exp == pytest.approx((0.0003125 + 0.00732421875 + 0.030761718750) / 4)
    w = torch.tensor([2.0, 0.0])
    assert flow_loss(pred, tgt, hw, weights=w).item() == pytest.approx(2 * huber(-0.025) / 4, rel=1e-5)


def test_flow_loss_gradient_and_errors():
    pred = torch.zeros(3, 2, requires_grad=True)
    flow_loss(pred, torch.ones(3, 2), (476, 854)).backward()
    assert pred.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        flow_loss(torch.zeros(3, 2), torch.zeros(3, 3), (10, 10))
    with pytest.raises(ValueError):
        flow_loss(torch.zeros(3, 2), torch.zeros(2, 2), (10, 10))


# ----------------------------------------------------------------------------- InfoNCE
# 1x2 patch grid: patch 2, stride 1 -> cell centres (1, 1) and (2, 1).
P2, S1 = 2, 1


def test_info_nce_hand_case():
    maps = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # [C=2, h=1, w=2]: cell0=(1,0), cell1=(0,1)
    q = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    xy = torch.tensor([[1.0, 1.0], [2.0, 1.0]])  # positives: cell 0, cell 1
    terms = info_nce_terms(q, maps, xy, P2, S1, temperature=0.1)
    l0 = math.log(math.exp(10) + 1.0) - 10.0  # = log(1 + e^-10)
    l1 = math.log(math.exp(10) + 1.0) - 0.0
    torch.testing.assert_close(terms, torch.tensor([l0, l1]), rtol=1e-6, atol=1e-6)
    w = torch.tensor([0.5, 2.0])
    assert info_nce_loss(q, maps, xy, P2, S1, weights=w, divisor=700.0).item() == pytest.approx(
        (0.5 * l0 + 2.0 * l1) / 700, rel=1e-6)
    assert info_nce_loss(q, maps, xy, P2, S1, weights=w).item() == pytest.approx((0.5 * l0 + 2.0 * l1) / 2,
                                                                                 rel=1e-6)
    # [M, C, h, w] per-query maps and [F, C, h, w] + map_index agree with the shared map
    torch.testing.assert_close(info_nce_terms(q, maps[None].repeat(2, 1, 1, 1), xy, P2, S1), terms)
    torch.testing.assert_close(
        info_nce_terms(q, torch.stack([-maps, maps]), xy, P2, S1, map_index=torch.tensor([1, 1])), terms)


def _brute_nce(q, tmap, pos, tau):
    """-log(exp(cos(q,pos)/τ) / Σ_n exp(cos(q, T[n])/τ)) with explicit loops."""
    den = 0.0
    c, h, w = tmap.shape
    for i in range(h):
        for j in range(w):
            den += math.exp(F.cosine_similarity(q, tmap[:, i, j], dim=0, eps=1e-8).item() / tau)
    num = math.exp(F.cosine_similarity(q, pos, dim=0, eps=1e-8).item() / tau)
    return -math.log(num / den)


def _bb_case(seed=0):
    torch.manual_seed(seed)
    maps = torch.randn(3, 4, 3, 4)  # F=3 frames, C=4, 3x4 grid; patch 2 stride 2 -> centres 1 + 2k
    src_i = torch.tensor([0, 0, 2])
    dst_i = torch.tensor([1, 2, 1])
    src_rc = [(0, 0), (2, 3), (1, 2)]
    dst_rc = [(1, 1), (0, 3), (2, 0)]
    src_xy = torch.tensor([[1.0 + 2 * c, 1.0 + 2 * r] for r, c in src_rc])
    dst_xy = torch.tensor([[1.0 + 2 * c, 1.0 + 2 * r] for r, c in dst_rc])
    return maps, src_i, dst_i, src_rc, dst_rc, src_xy, dst_xy


def test_dino_bb_loss_matches_reference_formula():
    maps, si, di, src_rc, dst_rc, sxy, dxy = _bb_case()
    w = torch.tensor([0.3, 1.2, 0.7])
    l_st, l_ts = [], []
    for m in range(3):
        fs = maps[si[m], :, src_rc[m][0], src_rc[m][1]]
        ft = maps[di[m], :, dst_rc[m][0], dst_rc[m][1]]
        l_st.append(_brute_nce(fs, maps[di[m]], ft, 0.1))
        l_ts.append(_brute_nce(ft, maps[si[m]], fs, 0.1))
    ref = (sum(w[m].item() * l_st[m] / 700 for m in range(3)) + sum(w[m].item() * l_ts[m] / 700
                                                                      for m in range(3))) / 2
    got = dino_bb_loss(maps, si, sxy, di, dxy, w, patch=2, stride=2)
    assert got.item() == pytest.approx(ref, rel=1e-5)
    paper = sum(0.5 * w[m].item() * (l_st[m] + l_ts[m]) for m in range(3)) / 3
    got_paper = dino_bb_loss(maps, si, sxy, di, dxy, w, 2, 2, divisor=None)
    assert got_paper.item() == pytest.approx(paper, rel=1e-5)


def test_bb_losses_with_point_rows_equal_grid_sample_sampling():
    """The module passes point_rows(maps): same loss and gradient as grid_sample sampling, off-centre points too."""
    from dinotracker.models.tracker import point_rows

    maps, si, di, _, _, sxy, dxy = _bb_case(2)
    maps = maps.clone().requires_grad_(True)
    sxy, dxy = sxy + 0.3, dxy - 0.7  # off the patch centres: real bilinear weights
    w = torch.tensor([0.3, 1.2, 0.7])
    for fn, extra in ((dino_bb_loss, w), (refined_bb_loss, w.clamp(max=1.0))):
        ref = fn(maps, si, sxy, di, dxy, extra, 2, 2)
        got = fn(maps, si, sxy, di, dxy, extra, 2, 2, rows=point_rows(maps))
        (g_ref,), (g_got,) = torch.autograd.grad(ref, maps), torch.autograd.grad(got, maps)
        assert got.item() == pytest.approx(ref.item(), rel=1e-5)  # the losses work in fp32
        torch.testing.assert_close(g_got, g_ref, rtol=1e-4, atol=1e-7)


def test_refined_bb_loss_weights_from_affinity():
    maps, si, di, src_rc, dst_rc, sxy, dxy = _bb_case(1)
    maps.requires_grad_(True)
    aff = torch.tensor([0.9, -0.5, 0.5])
    wts = [max(2 * a ** 3, 0.0) for a in aff.tolist()]  # negative affinity -> weight 0
    tot = 0.0
    for m in range(3):
        fs = maps[si[m], :, src_rc[m][0], src_rc[m][1]].detach()
        ft = maps[di[m], :, dst_rc[m][0], dst_rc[m][1]].detach()
        l_st = _brute_nce(fs, maps[di[m]].detach(), ft, 0.1)
        l_ts = _brute_nce(ft, maps[si[m]].detach(), fs, 0.1)
        tot += wts[m] * (l_st + l_ts)
    got = refined_bb_loss(maps, si, sxy, di, dxy, aff, patch=2, stride=2)
    assert got.item() == pytest.approx(tot / (2 * 900), rel=1e-5)
    got.backward()
    assert maps.grad.abs().sum() > 0


def test_bb_losses_empty_and_bad_input():
    maps = torch.randn(2, 4, 3, 4, requires_grad=True)
    e = torch.zeros(0, dtype=torch.long)
    out = dino_bb_loss(maps, e, torch.zeros(0, 2), e, torch.zeros(0, 2), torch.zeros(0), 2, 2)
    assert out.item() == 0.0 and out.requires_grad
    with pytest.raises(ValueError):
        dino_bb_loss(maps, torch.tensor([0]), torch.zeros(1, 2), torch.tensor([1, 0]), torch.zeros(1, 2),
                     None, 2, 2)
    # the range check runs on the device (torch._assert_async: no host sync in the training step), so it is a
    # RuntimeError (a device-side assert on a GPU), not a ValueError
    for bad in ([0, 5], [-1, 0]):
        with pytest.raises(RuntimeError, match="map_index out of range"):
            info_nce_terms(torch.zeros(2, 4), maps.detach(), torch.zeros(2, 2), 2, 2, map_index=torch.tensor(bad))


def test_dino_bb_weights_reference_sign():
    r = torch.tensor([0.0, 0.7, 1.0, 0.5])
    c = torch.tensor([1.0, 1.0, 1.0, -0.5])
    w = dino_bb_weights(r, c)
    exp = [1 / (1 + math.exp(-(27 * (1 - x) - 5.7))) * max(2 * y ** 3, 0)
           for x, y in zip(r.tolist(), c.tolist())]
    torch.testing.assert_close(w, torch.tensor(exp))
    assert w[1].item() == pytest.approx(2 * 0.92, abs=0.01)  # spec: 0.92 at r = 0.7
    assert w[3].item() == 0.0


# ----------------------------------------------------------------------------- refined best buddies
def _brute_bb(a, b):
    c = a.shape[0]
    x, y = a.reshape(c, -1).T, b.reshape(c, -1).T
    aff = torch.stack([torch.stack([F.cosine_similarity(x[i], y[j], dim=0) for j in range(len(y))])
                       for i in range(len(x))])
    fwd, bwd = aff.argmax(1), aff.argmax(0)
    return {(i, int(fwd[i])): aff[i, fwd[i]].item() for i in range(len(x)) if int(bwd[fwd[i]]) == i}


@pytest.mark.parametrize("chunk", [1, 5, 4096])
def test_refined_best_buddies_vs_brute_force(chunk):
    torch.manual_seed(2)
    a, b = torch.randn(6, 3, 4), torch.randn(6, 4, 2)
    bb = refined_best_buddies(a, b, patch=2, stride=2, chunk=chunk)
    ref = _brute_bb(a, b)
    got = {(int(s), int(d)): float(v) for s, d, v in zip(bb.src_cell, bb.dst_cell, bb.affinity)}
    assert set(got) == set(ref) and len(ref) > 0
    for k in ref:
        assert got[k] == pytest.approx(ref[k], abs=1e-5)
    # coordinates are the patch centres of the cells
    for s, d, sxy, dxy in zip(bb.src_cell.tolist(), bb.dst_cell.tolist(), bb.src_xy, bb.dst_xy):
        assert sxy.tolist() == [1.0 + 2 * (s % 4), 1.0 + 2 * (s // 4)]
        assert dxy.tolist() == [1.0 + 2 * (d % 2), 1.0 + 2 * (d // 2)]


def test_refined_best_buddies_permutation():
    torch.manual_seed(3)
    a = torch.randn(8, 2, 3)
    perm = torch.randperm(6)
    b = a.reshape(8, 6)[:, perm].reshape(8, 2, 3)  # dst cell j holds src cell perm[j]
    bb = refined_best_buddies(a, b, 2, 2, chunk=4)
    assert len(bb.src_cell) == 6
    torch.testing.assert_close(perm[bb.dst_cell], bb.src_cell)
    torch.testing.assert_close(bb.affinity, torch.ones(6))


# ----------------------------------------------------------------------------- cycle
def test_cycle_pseudo_labels_hand_case():
    src = torch.tensor([[0.0, 0.0], [10.0, 10.0], [5.0, 5.0]])
    fwd = torch.tensor([[1.0, 1.0], [20.0, 20.0], [6.0, 6.0]])
    back = torch.tensor([[3.0, 4.0], [10.0, 13.0], [5.0, 9.0]])  # errors 5, 3, 4
    lab = cycle_pseudo_labels(src, fwd, back, threshold=4.0, decay=0.8)
    assert lab.keep.tolist() == [False, True, True]
    torch.testing.assert_close(lab.error, torch.tensor([5.0, 3.0, 4.0]))
    torch.testing.assert_close(lab.weights, torch.tensor([0.8 ** 5, 0.512, 0.8 ** 4]))


def test_cycle_consistency_loss_hand_case():
    hw = (5, 9)  # 0.25 / px in x, 0.5 / px in y
    src = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    pseudo = torch.tensor([[4.0, 1.0], [5.0, 2.0], [0.0, 0.0]])
    pred_fwd = torch.tensor([[4.0, 1.1], [5.0, 2.0], [0.0, 0.0]], requires_grad=True)
    pred_bwd = torch.tensor([[1.0, 1.0], [2.0, 4.0], [9.0, 9.0]], requires_grad=True)
    w = torch.tensor([0.5, 0.8, 1.0])
    keep = torch.tensor([True, True, False])
    fwd = (0.5 * (huber(0.0) + huber(0.1 * 0.5)) + 0.8 * 0.0) / 4
    bwd = (0.5 * 0.0 + 0.8 * (huber(0.0) + huber(2 * 0.5))) / 4
    got = cycle_consistency_loss(pred_fwd, pred_bwd, src, pseudo, w, hw, keep=keep)
    assert got.item() == pytest.approx(0.5 * (fwd + bwd), rel=1e-5)
    s = cycle_consistency_loss(pred_fwd, pred_bwd, src, pseudo, w, hw, keep=keep, reduction="sum")
    assert s.item() == pytest.approx(0.5 * 4 * (fwd + bwd), rel=1e-5)
    got.backward()
    assert pred_fwd.grad[2].abs().sum() == 0 and pred_bwd.grad[1].abs().sum() > 0


def test_cycle_forward_term_vanishes_with_same_model_labels():
    """Spec §4.3: with pseudo-labels from the current model the forward term is exactly 0."""
    src = torch.rand(4, 2) * 50
    pred_fwd = (torch.rand(4, 2) * 50).requires_grad_(True)
    pseudo = pred_fwd.detach().clone()
    pred_bwd = (src + 1.0).requires_grad_(True)
    lab = cycle_pseudo_labels(src, pseudo, pred_bwd.detach())
    loss = cycle_consistency_loss(pred_fwd, pred_bwd, src, pseudo, lab.weights, (64, 64), keep=lab.keep)
    loss.backward()
    assert pred_fwd.grad.abs().sum() == 0 and pred_bwd.grad.abs().sum() > 0


def test_cycle_loss_nothing_kept_is_zero_and_attached():
    p = torch.zeros(2, 2, requires_grad=True)
    out = cycle_consistency_loss(p, p, torch.ones(2, 2), torch.ones(2, 2), torch.ones(2), (8, 8),
                                 keep=torch.tensor([False, False]))
    assert out.item() == 0.0 and out.requires_grad


# ----------------------------------------------------------------------------- prior
def test_prior_terms_hand_case():
    raw = torch.zeros(1, 2, 1, 2)
    raw[0, :, 0, 0] = torch.tensor([3.0, 4.0])  # norm 5
    raw[0, :, 0, 1] = torch.tensor([1.0, 0.0])
    ref = torch.zeros_like(raw)
    ref[0, :, 0, 0] = torch.tensor([6.0, 8.0])  # 2x raw: norm term 1, angle 0
    ref[0, :, 0, 1] = torch.tensor([0.0, 1.0])  # same norm, orthogonal: norm 0, angle 1
    ln, la = prior_terms(ref, raw)
    assert ln.item() == pytest.approx(0.5) and la.item() == pytest.approx(0.5)
    assert prior_loss(ref, raw, 1e-4, 2e-4).item() == pytest.approx(0.5e-4 + 1e-4)
    ln2, la2 = prior_terms(raw, raw)
    assert ln2.item() == pytest.approx(0.0, abs=1e-7) and la2.item() == pytest.approx(0.0, abs=1e-7)
    # channel-last layout
    ln3, la3 = prior_terms(ref.permute(0, 2, 3, 1), raw.permute(0, 2, 3, 1), dim=-1)
    assert ln3.item() == pytest.approx(0.5) and la3.item() == pytest.approx(0.5)
    with pytest.raises(ValueError):
        prior_terms(ref, raw[..., :1])


def test_losses_drive_gradients_into_delta_dino():
    """dino-bb + prior on refined features reach Delta-DINO's (zero-initialised) last conv."""
    from dinotracker.models import DinoTracker

    torch.manual_seed(6)
    t = DinoTracker(16, 14, 7, (70, 98))
    frames, raw = torch.rand(2, 3, 70, 98), torch.randn(2, 16, 9, 13)
    feats = t.refine(frames, raw)
    sxy = torch.tensor([[7.0, 7.0], [28.0, 35.0]])
    dxy = torch.tensor([[14.0, 7.0], [28.0, 42.0]])
    loss = dino_bb_loss(feats, torch.tensor([0, 0]), sxy, torch.tensor([1, 1]), dxy, torch.ones(2), 14, 7)
    loss = loss + prior_loss(feats, raw, 1e-4, 1e-4)
    loss.backward()
    assert t.delta_dino.layers[-2].weight.grad.abs().sum() > 0


def test_similarity_math_stays_fp32_under_autocast():
    """Under bf16 autocast (bf16-mixed training) the contrastive losses, their gradients and the refined
    best buddies equal the fp32 computation: their cosine matmuls run with autocast disabled."""
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 64, 6, 9, generator=g, requires_grad=True)
    m = 40
    src_i, dst_i = torch.randint(0, 3, (m,), generator=g), torch.randint(0, 3, (m,), generator=g)
    cells = torch.randint(0, 6 * 9, (2, m), generator=g)
    xy = torch.stack([cells % 9 * 7.0 + 7, cells // 9 * 7.0 + 7], -1)  # patch centres (x, y)
    w = torch.rand(m, generator=g)

    def run(autocast: bool):
        maps.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):  # forward only, as Lightning
            loss = dino_bb_loss(maps, src_i, xy[0], dst_i, xy[1], w, 14, 7)
            bb = refined_best_buddies(maps[0].detach(), maps[1].detach(), 14, 7)
        loss.backward()
        return loss.detach(), maps.grad.clone(), bb

    l32, g32, bb32 = run(False)
    l16, g16, bb16 = run(True)
    assert l16.dtype == torch.float32
    torch.testing.assert_close(l16, l32, rtol=1e-6, atol=0)
    torch.testing.assert_close(g16, g32, rtol=1e-5, atol=1e-9)
    assert torch.equal(bb16.src_cell, bb32.src_cell) and torch.equal(bb16.dst_cell, bb32.dst_cell)
    torch.testing.assert_close(bb16.affinity, bb32.affinity, rtol=1e-6, atol=0)
