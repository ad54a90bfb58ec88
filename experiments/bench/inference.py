"""Inference benchmark: the fast batched path vs the reference's per-query path, measured in the same run.

    python experiments/bench/inference.py                          # CPU defaults (~1-2 min)
    python experiments/bench/inference.py --queries 2000 --device cuda

Setup: a T-frame video with C-dim features on a realistic patch grid (default 50 frames, C=384,
245x434 model px, patch 14 / stride 7 -> 34x61 grid), a randomly initialised DinoTracker with
every parameter perturbed (a non-trivial Delta-DINO and refiner). Features are a smooth random
field drifting by one cell every other frame plus noise, so tracks, cosines and anchor sets look
like a real video's (many anchors per query, some occlusions).

Rows:
* refine (``--refine``): F = Phi + Delta(I) for all frames (shared by both paths: the reference
  caches it too); by default skipped and F = Phi + a random residual;
* positions: tracks of all queries;
* full: positions + occlusion (§5.2).
The per-query path (``dinotracker.inference.reference``: a Python loop over queries, the reference's
(T+1)-map frame sets and redundant all-frame correlation, a loop over anchors for occlusion) runs
on a subset of ``--ref-queries`` queries; its time is scaled linearly to all queries (labelled
"scaled"), which is exact up to per-query variation since queries are independent. Peak memory:
host RSS above the start on CPU, ``torch.cuda.max_memory_allocated`` on CUDA. The fast path's
outputs on the subset are checked against the per-query path's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from dinotracker.inference.occlusion import predict_occlusion  # noqa: E402
from dinotracker.inference.reference import occlusion_loop, track_queries_loop  # noqa: E402
from dinotracker.inference.tracker import (  # noqa: E402
    FeatureBank,
    logit_upper_bound,
    refined_maps,
    track_queries,
)
from dinotracker.models.tracker import DinoTracker  # noqa: E402
from dinotracker.utils.memory import PeakMemory  # noqa: E402


def make_inputs(t, c, hw, patch, stride, seed=0, noise=0.15):
    g = torch.Generator().manual_seed(seed)
    gh, gw = 1 + (hw[0] - patch) // stride, 1 + (hw[1] - patch) // stride
    base = torch.randn(1, c, gh + 4, gw + t // 2 + 4, generator=g)
    base = F.avg_pool2d(base, 3, 1, 1)[0] * 3.0
    feats = torch.stack([base[:, 2 : 2 + gh, 2 + k // 2 : 2 + k // 2 + gw] for k in range(t)])
    feats = (feats + noise * torch.randn(feats.shape, generator=g)).to(torch.float16)
    frames = torch.randint(0, 256, (t, 3, *hw), generator=g, dtype=torch.uint8)
    return frames, feats


def make_model(c, hw, patch, stride, refiner="smooth", seed=0):
    """Random-init tracker, every parameter perturbed. ``refiner="smooth"``: each refiner kernel is a
    3x3 binomial blur plus noise (well-conditioned, like a trained smoothing refiner); ``"random"``:
    PyTorch's init plus noise, whose NormalizedConv2d kernel sums are near zero (huge effective
    weights), so the windowed head's fallback bound is loose and nearly every heatmap takes the
    whole-map path."""
    torch.manual_seed(seed)
    m = DinoTracker(c, patch, stride, hw)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        if refiner == "smooth":
            blur = torch.tensor([1.0, 2.0, 1.0])
            blur = (blur[:, None] * blur[None]) / 16
            for conv in (m.refiner.net[0], m.refiner.net[2]):
                conv.weight.copy_(
                    blur.expand_as(conv.weight)
                    * (1.0 + 0.5 * torch.rand(conv.weight.shape[:2] + (1, 1), generator=g))
                )
                conv.bias.zero_()
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        m.delta_dino.layers[-1].weight.mul_(0.1)  # Delta small next to Phi, as after training
    return m.eval()


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    peak = mem.cuda_peak_mb if device.type == "cuda" else mem.peak_mb
    return out, dt, peak


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--hw", type=int, nargs=2, default=[245, 434], help="model resolution H W")
    ap.add_argument("--patch", type=int, default=14)
    ap.add_argument("--stride", type=int, default=7)
    ap.add_argument("--half", action="store_true", help="fp16 feature bank for the fast path (fp32 maths)")
    ap.add_argument("--refiner", choices=["smooth", "random"], default="smooth")
    ap.add_argument("--noise", type=float, default=0.6, help="feature noise (sets the anchor count)")
    ap.add_argument("--ref-queries", type=int, default=4, help="per-query path runs on this many queries")
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    ap.add_argument(
        "--refine",
        action="store_true",
        help="also time Delta-DINO refinement (shared by both paths; slow on CPU); otherwise the "
        "refined maps are the features plus a random residual",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    t, n, hw = args.frames, args.queries, tuple(args.hw)
    frames, feats = make_inputs(t, args.dim, hw, args.patch, args.stride, noise=args.noise)
    model = make_model(args.dim, hw, args.patch, args.stride, refiner=args.refiner).to(dev)
    g = torch.Generator().manual_seed(1)
    q = torch.cat(
        [
            torch.randint(0, t, (n, 1), generator=g).float(),
            args.patch / 2 + torch.rand(n, 1, generator=g) * (hw[1] - args.patch),
            args.patch / 2 + torch.rand(n, 1, generator=g) * (hw[0] - args.patch),
        ],
        1,
    ).to(dev)
    nr = min(args.ref_queries, n)
    print(
        f"T={t} frames, N={n} queries, C={args.dim}, model {hw[0]}x{hw[1]}, grid "
        f"{feats.shape[-2]}x{feats.shape[-1]}, device {dev}, threads {torch.get_num_threads()}, "
        f"per-query path on {nr} queries (time scaled x{n / nr:.1f})"
    )

    if args.refine:
        maps, t_ref, m_ref = timed(lambda: refined_maps(model, frames, feats, device=dev), dev)
        rows = [("refine features (shared, once)", t_ref, m_ref, None, None)]
    else:
        maps = (feats.float() + 0.1 * torch.randn(feats.shape, generator=g)).to(dev)
        rows = []
    bank = FeatureBank(maps.half() if args.half else maps)

    fast_pos, t_fp, m_fp = timed(lambda: track_queries(model, bank, q, chunk=args.chunk), dev)
    occ, t_fo, m_fo = timed(lambda: predict_occlusion(model, bank, q, fast_pos, chunk=args.chunk), dev)
    anchors = float(occ.anchors.sum(1).float().mean())
    ref_pos, t_rp, m_rp = timed(lambda: track_queries_loop(model, maps, q[:nr]), dev)
    ref_occ, t_ro, m_ro = timed(lambda: occlusion_loop(model, maps, q[:nr], fast_pos[:nr]), dev)
    scale = n / nr
    rows += [
        ("positions", t_fp, m_fp, t_rp * scale, m_rp),
        (
            "full (positions + occlusion)",
            t_fp + t_fo,
            max(m_fp, m_fo),
            (t_rp + t_ro) * scale,
            max(m_rp, m_ro),
        ),
    ]

    pos_err = float((fast_pos[:nr] - ref_pos).norm(dim=-1).max())
    occ_agree = float((occ.occluded[:nr] == ref_occ).float().mean())
    unit = "CUDA peak MB" if dev.type == "cuda" else "peak RSS MB"
    print(f"\n| stage | fast (s) | fast {unit} | per-query (s, scaled) | per-query {unit} | speed-up |")
    print("|---|---|---|---|---|---|")
    for name, tf, mf, tr, mr in rows:
        if tr is None:
            print(f"| {name} | {tf:.2f} | {mf:.0f} | – | – | – |")
        else:
            print(f"| {name} | {tf:.2f} | {mf:.0f} | {tr:.1f} | {mr:.0f} | {tr / tf:.1f}x |")
    occ_rate = float(occ.occluded.float().mean())
    print(
        f"\nmean anchors per query {anchors:.1f} of {t}; predicted occluded {occ_rate:.1%}; refiner "
        f"{args.refiner} (logit bound {logit_upper_bound(model):.1f})"
    )
    print(
        f"check on the {nr}-query subset: max |fast - per-query| track difference {pos_err:.2e} px, "
        f"occlusion agreement {occ_agree:.1%}"
    )


if __name__ == "__main__":
    main()
