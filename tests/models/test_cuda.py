"""CUDA checks (skipped without a GPU): CPU/GPU parity and one full-size 476x854 training step."""

from __future__ import annotations

import time

import pytest
import torch

from dinotracker.models import DinoTracker
from dinotracker.training.losses import (
    cycle_consistency_loss,
    cycle_pseudo_labels,
    dino_bb_loss,
    flow_loss,
    prior_loss,
    refined_bb_loss,
    refined_best_buddies,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_cpu_cuda_parity_small():
    torch.manual_seed(0)
    t = DinoTracker(16, 14, 7, (70, 98)).eval()
    with torch.no_grad():
        for p in t.delta_dino.layers[-2].parameters():
            p.normal_(0, 0.05)
    frames, raw = torch.rand(3, 3, 70, 98), torch.randn(3, 16, 9, 13)
    src = torch.rand(20, 2) * torch.tensor([98.0, 70.0])
    fi, ti = torch.randint(0, 3, (20,)), torch.randint(0, 3, (20,))
    outs = []
    for dev in ("cpu", "cuda"):
        m = t.to(dev)
        with torch.no_grad():
            f = m.refine(frames.to(dev), raw.to(dev))
            q = m.sample_points(f, fi.to(dev), src.to(dev))
            outs.append([o.cpu() for o in m(q, f, target_index=ti.to(dev))] + [f.cpu()])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def test_full_size_training_step_bf16():
    dev = torch.device("cuda")
    torch.manual_seed(1)
    hw, n_frames, c = (476, 854), 8, 1024
    t = DinoTracker(c, 14, 7, hw).to(dev).train()
    frames = torch.rand(n_frames, 3, *hw, device=dev)
    raw = torch.randn(n_frames, c, 67, 121, device=dev, dtype=torch.float16)
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        feats = t.refine(frames, raw)
        m = 512
        src = torch.rand(m, 2, device=dev) * torch.tensor([854.0, 476.0], device=dev)
        si, di = torch.randint(0, n_frames, (m,), device=dev), torch.randint(0, n_frames, (m,), device=dev)
        q = t.sample_points(feats, si, src)
        xy, probs, cost = t(q, feats, target_index=di)
        loss = flow_loss(xy, src + 2.0, hw)
        # BB: 1024 pairs at patch centres
        cells = torch.randint(0, 67 * 121, (2, 1024), device=dev)
        grid = t.centers
        bb_src_t = torch.randint(0, n_frames, (1024,), device=dev)
        bb_dst_t = (bb_src_t + 1) % n_frames
        loss = loss + 2.5e-4 * dino_bb_loss(feats, bb_src_t, grid[cells[0]], bb_dst_t, grid[cells[1]],
                                            torch.ones(1024, device=dev), 14, 7)
        bb = refined_best_buddies(feats[0].detach(), feats[1].detach(), 14, 7)
        k = min(256, len(bb.affinity))
        z, o = torch.zeros(k, dtype=torch.long, device=dev), torch.ones(k, dtype=torch.long, device=dev)
        loss = loss + 5e-5 * refined_bb_loss(feats, z, bb.src_xy[:k], o, bb.dst_xy[:k], bb.affinity[:k],
                                             14, 7)
        with torch.no_grad():
            fwd, _, _ = t(q, feats, target_index=di)
            back, _, _ = t(t.sample_points(feats, di, fwd), feats, target_index=si)
        lab = cycle_pseudo_labels(src, fwd, back)
        pf, _, _ = t(q, feats, target_index=di)
        pb, _, _ = t(t.sample_points(feats, di, fwd), feats, target_index=si)
        loss = loss + 0.5 * cycle_consistency_loss(pf, pb, src, fwd, lab.weights, hw, keep=lab.keep)
        loss = loss + prior_loss(feats, raw, 1e-4, 1e-4)
    loss.backward()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2 ** 30
    print(f"\nfull-size step: {dt * 1000:.0f} ms (incl. first-call overheads), peak {peak:.2f} GiB, "
          f"refined BBs {len(bb.affinity)}, cycle kept {int(lab.keep.sum())}/{m}")
    assert torch.isfinite(loss)
    assert xy.dtype == torch.float32 and probs.dtype == torch.float32
    assert t.delta_dino.layers[-2].weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in t.refiner.parameters())
    assert peak < 40


def test_inference_chunk_broadcast_shapes():
    dev = torch.device("cuda")
    t = DinoTracker(1024, 14, 7, (476, 854)).to(dev).eval()
    maps = torch.randn(16, 1024, 67, 121, device=dev, dtype=torch.float16)
    maps = maps / maps.float().norm(dim=1, keepdim=True).half()
    q = torch.randn(64, 16, 1024, device=dev, dtype=torch.float16)
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        xy, probs, cost = t(q, maps, target_normalized=True)
        ref = t(q[:, 3], maps[3], target_normalized=True)[0]
    assert xy.shape == (64, 16, 2)
    torch.testing.assert_close(xy[:, 3], ref, atol=1e-3, rtol=0)
    print(f"\ninference chunk 64x16: peak {torch.cuda.max_memory_allocated() / 2 ** 30:.2f} GiB")
