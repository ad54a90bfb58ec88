"""DINO best-buddies benchmark: ours vs the reference's algorithm (naive loops), same run, same data.

    python experiments/bench/best_buddies.py                       # 50 frames, C=384, 34x61 grid, CPU
    python experiments/bench/best_buddies.py --naive-frames 50     # measure the naive MNN on every pair
    python experiments/bench/best_buddies.py --device cuda

Data: a smooth random feature "scene" that translates over the frames plus noise (so best-buddy counts and
NMS ambiguity are realistic), and synthetic flow trajectories following the same motion.

Stages (each ours vs naive, each method in a fresh subprocess so peak memory is its own):

1. mutual NNs. Naive = the reference (spec §2.5 5a): full affinity per *ordered* pair s != t, one pair
   at a time, normalise by the norm product, two argmaxes. Ours = unordered pairs, batched GEMMs.
2. trajectory filter. Naive = the reference (5c): nearest trajectory to every grid point of every frame in
   chunks of 30 points over all trajectories, then a lookup per ordered pair. Ours = pruned exact search
   over the distinct best-buddy points only.
3. NMS ratio. Naive = the reference (5d): per ordered pair, cosine map + top-k + torchvision batched_nms,
   then a Python loop that symmetrises r with a linear search per best buddy. Ours = fast exact top-2.

When a naive stage is measured on fewer frames (``--naive-frames``, ``--naive-filter-frames``,
``--naive-nms-frames``) its time for all frames is extrapolated linearly in the number of ordered pairs
(or frames) and printed as "extrapolated"; the "measured" ratio always compares ours and naive on the same
subset. Peak memory: resident memory above the level before the call (sampled from /proc) on CPU,
torch.cuda.max_memory_allocated on CUDA.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

PATCH, STRIDE = 14, 7


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------

def shifts(T: int) -> np.ndarray:
    """Integer per-frame scene offset in grid cells (x, y): a slow pan with a little wobble."""
    t = np.arange(T)
    return np.stack([np.round(0.4 * t), np.round(2 * np.sin(t / 6.0))], 1).astype(int)


def make_features(T: int, C: int, h: int, w: int, seed: int, noise: float = 1.6) -> torch.Tensor:
    """[T, C, h, w] float16: a smooth scene panning over the frames plus per-frame noise ``noise``.

    noise 1.6 gives ~50 % of the cells a best buddy and a median ambiguity ratio near the weight's
    mid-point (r ~ 0.79), a plausible stand-in for real DINO features.
    """
    g = torch.Generator().manual_seed(seed)
    sh = shifts(T)
    H0, W0 = h + int(np.abs(sh[:, 1]).max()) + 2, w + int(sh[:, 0].max()) + 2
    coarse = torch.randn(1, C, max(2, H0 // 3), max(2, W0 // 3), generator=g)
    scene = torch.nn.functional.interpolate(coarse, size=(H0, W0), mode="bilinear", align_corners=False)[0]
    scene = scene + 0.5 * torch.randn(C, H0, W0, generator=g)
    oy = int(np.abs(sh[:, 1]).max())
    feats = torch.stack([scene[:, oy + sh[t, 1]: oy + sh[t, 1] + h, sh[t, 0]: sh[t, 0] + w]
                         for t in range(T)])
    return (feats + noise * torch.randn(feats.shape, generator=g)).half()  # the cache stores float16


def make_tracks(N: int, T: int, h: int, w: int, seed: int) -> torch.Tensor:
    """[N, T, 2] raster tracks moving with the scene, random contiguous segments, NaN elsewhere."""
    g = torch.Generator().manual_seed(seed + 1)
    H, W = (h - 1) * STRIDE + PATCH, (w - 1) * STRIDE + PATCH
    motion = torch.from_numpy(-shifts(T) * STRIDE).float()  # scene content moves opposite to the crop
    start_xy = torch.rand(N, 2, generator=g) * torch.tensor([W, H])
    xy = start_xy[:, None] + (motion[None] - motion[None, :1]) + 0.5 * torch.randn(N, T, 2, generator=g)
    s = torch.randint(0, T, (N,), generator=g)
    length = torch.randint(2, max(3, T // 3), (N,), generator=g)
    tt = torch.arange(T)[None]
    absent = (tt < s[:, None]) | (tt >= (s + length)[:, None])
    absent |= ((xy < 0) | (xy > torch.tensor([W, H]))).any(-1)
    xy[absent] = float("nan")
    return xy


# ----------------------------------------------------------------------------------------------
# naive baselines (the reference's algorithms)
# ----------------------------------------------------------------------------------------------

def coords_grid(h: int, w: int, device) -> torch.Tensor:
    ys = torch.arange(h, device=device) * STRIDE + PATCH // 2
    xs = torch.arange(w, device=device) * STRIDE + PATCH // 2
    yy, xx = torch.meshgrid(ys.float(), xs.float(), indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)


@torch.no_grad()
def naive_mnn(features: torch.Tensor, frames: int, device) -> dict:
    """Reference 5a: every ordered pair, one at a time."""
    T, C, h, w = features.shape
    feats = features[:frames].float().to(device).reshape(frames, C, h * w).permute(0, 2, 1)
    grid = coords_grid(h, w, device)
    out = {}
    for s in range(frames):
        for t in range(frames):
            if s == t:
                continue
            fs, ft = feats[s], feats[t]
            rng = torch.arange(fs.shape[0], device=device)
            aff = torch.einsum("nc,mc->nm", fs, ft)
            aff = aff / torch.clamp(fs.norm(dim=1)[:, None] * ft.norm(dim=1)[None], min=1e-8)
            amax_s = torch.argmax(aff, dim=1)
            amax_t = torch.argmax(aff, dim=0)
            src = rng == amax_t[amax_s]
            tgt = amax_s[src]
            out[(s, t)] = (grid[src].cpu(), grid[tgt].cpu(), aff[rng[src], tgt].cpu())
    return out


@torch.no_grad()
def naive_filter(bbs: dict, tracks: torch.Tensor, frames: int, h: int, w: int, device) -> dict:
    """Reference 5c: nearest trajectory for every grid point of every frame (chunks of 30), then lookups."""
    traj = tracks.to(device)
    grid = coords_grid(h, w, device)
    closest = {}
    for t in range(frames):
        at_t = traj[:, t]
        idx = []
        for i in range(0, grid.shape[0], 30):
            d = torch.norm(at_t[None] - grid[i:i + 30, None], dim=2)
            idx.append(torch.nan_to_num(d, nan=math.inf).argmin(-1))
        closest[t] = torch.cat(idx).reshape(h, w)
    invalid = traj.isnan().any(-1)
    keep = {}
    for (s, t), (sxy, txy, _) in bbs.items():
        si = ((sxy.to(device) - 7) // STRIDE).long()
        ti = ((txy.to(device) - 7) // STRIDE).long()
        ns = closest[s][si[:, 1], si[:, 0]]
        nt = closest[t][ti[:, 1], ti[:, 0]]
        keep[(s, t)] = (invalid[ns, t] & invalid[nt, s]).cpu()
    return keep


@torch.no_grad()
def naive_nms(bbs: dict, features: torch.Tensor, topk: int, box: float, iou: float, device) -> dict:
    """Reference 5d: per ordered pair sims + top-k + batched_nms, then the per-BB Python symmetrisation."""
    from torchvision.ops import batched_nms

    T, C, h, w = features.shape
    emb = features.float().to(device)
    grid = coords_grid(h, w, device)
    k = min(topk, h * w)

    def one(sxy, s, t):
        if sxy.shape[0] == 0:  # the reference stores None and skips
            return torch.zeros(0)
        fxy = ((sxy.to(device) - 7) / STRIDE).long()
        sf = emb[s, :, fxy[:, 1], fxy[:, 0]]  # C x n
        sim = torch.einsum("cn,chw->nhw", sf, emb[t])
        sim = sim / torch.clamp(sf.norm(dim=0)[:, None, None] * emb[t].norm(dim=0)[None], min=1e-8)
        sim = sim.reshape(sf.shape[1], -1)
        top = torch.topk(sim, k=k, sorted=False, dim=1)
        c = grid[top.indices]
        boxes = torch.cat([c - box, c + box], -1)
        rows = torch.arange(sim.shape[0], device=device)[:, None].repeat(1, k).reshape(-1)
        keep = batched_nms(boxes.reshape(-1, 4), top.values.reshape(-1), rows, iou)
        mask = torch.zeros(sim.shape[0] * k, device=device)
        mask[keep] = 1
        vals = torch.topk(top.values * mask.view(-1, k), k=min(2, k), dim=1).values
        return (vals[:, 1] / vals[:, 0]).cpu()

    r = {key: one(v[0], *key) for key, v in bbs.items()}
    for (s, t) in list(r):
        if s > t:
            continue
        rs, rt = r[(s, t)], r[(t, s)]
        src_st, tgt_st = bbs[(s, t)][0], bbs[(s, t)][1]
        src_ts = bbs[(t, s)][0]
        for i in range(len(rs)):
            j = int(torch.norm(src_ts - tgt_st[i][None], dim=1).argmin())
            m = max(float(rs[i]), float(rt[j]))
            rs[i] = m
            rt[j] = m
        del src_st
    return r


# ----------------------------------------------------------------------------------------------
# workers (fresh process each: peak memory is the method's own)
# ----------------------------------------------------------------------------------------------

class RssPeak:
    """Peak resident memory above the level at start, sampled every 2 ms from /proc (Linux).

    Falls back to ru_maxrss growth where /proc is absent (then allocations below an earlier peak
    read as 0).
    """

    def __enter__(self):
        import threading

        self.page = os.sysconf("SC_PAGE_SIZE")
        self.base = self.peak = self._now()
        self.maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _now(self) -> int:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * self.page
        except OSError:
            return 0

    def _run(self):
        while not self.stop.wait(0.002):
            self.peak = max(self.peak, self._now())

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self._now())
        if self.base == 0:
            self.mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.maxrss0) / 1024.0
        else:
            self.mb = (self.peak - self.base) / 2**20


FIELDS = ("src_t", "dst_t", "src_xy", "dst_xy", "cos", "ratio", "weight")


def _bb_to_np(bb) -> dict:
    return {k: getattr(bb, k).numpy() for k in FIELDS}


def _bb_from_np(d):
    from dinotracker.preprocessing.types import BestBuddies

    return BestBuddies(**{k: torch.from_numpy(np.array(d[k])) for k in FIELDS})


def _ordered_dict_from_bb(bb, frames: int) -> dict:
    """Our unordered BBs within frames < ``frames`` -> the reference's dict over ordered pairs."""
    out = {}
    for s in range(frames):
        for t in range(s + 1, frames):
            m = (bb.src_t == s) & (bb.dst_t == t)
            out[(s, t)] = (bb.src_xy[m], bb.dst_xy[m], bb.cos[m])
            out[(t, s)] = (bb.dst_xy[m], bb.src_xy[m], bb.cos[m])
    return out


def worker(a) -> dict:
    from dinotracker.preprocessing import best_buddies as B

    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    T = a.sub if a.sub else a.frames
    feats = make_features(a.frames, a.channels, a.grid[0], a.grid[1], a.seed, a.noise)[:T]
    nms_kw = dict(topk=a.topk, box_half=a.box_half, iou=a.iou)
    if a.job in ("ours_filter", "naive_filter", "ours_pipe"):
        tracks = make_tracks(a.tracks, a.frames, a.grid[0], a.grid[1], a.seed)[:, :T].contiguous()
    if a.inp:
        bb = _bb_from_np(np.load(a.inp))
        if a.sub:  # the pairs within the first ``sub`` frames
            bb = B._select(bb, (bb.src_t < T) & (bb.dst_t < T))
    # warm-up on a tiny problem (thread pools, lazy library init) so no method pays it in its timing
    tiny = make_features(3, 8, 4, 5, 0)
    B.compute_best_buddies(tiny, PATCH, STRIDE, torch.zeros(1, 3, 2), device=dev, progress=False)
    naive_mnn(tiny, 2, dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    mem = RssPeak().__enter__()
    t0 = time.perf_counter()
    if a.job == "ours_mnn":
        res = B.mutual_nearest_neighbours(feats, PATCH, STRIDE, pair_batch=a.pair_batch, device=dev,
                                          progress=False)
    elif a.job == "ours_pipe":
        res = B.compute_best_buddies(feats, PATCH, STRIDE, tracks, pair_batch=a.pair_batch, device=dev,
                                     progress=False, **nms_kw)
    elif a.job == "ours_filter":
        res = B.filter_by_trajectories(bb, tracks, device=dev)
    elif a.job == "ours_nms":
        res = B.ambiguity_ratio(bb, feats, PATCH, STRIDE, device=dev, **nms_kw)
    elif a.job == "naive_mnn":
        res = naive_mnn(feats, T, dev)
    elif a.job == "naive_filter":
        res = naive_filter(_ordered_dict_from_bb(bb, T), tracks, T, a.grid[0], a.grid[1], dev)
    elif a.job == "naive_nms":
        res = naive_nms(_ordered_dict_from_bb(bb, T), feats, a.topk, a.box_half, a.iou, dev)
    else:
        raise ValueError(a.job)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    mem.__exit__(None, None, None)
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else mem.mb
    # results for the cross-checks, in the reference's layout where the naive method produced them
    if a.job in ("ours_mnn", "ours_pipe", "ours_filter"):
        np.savez(a.out, **_bb_to_np(res))
    elif a.job == "ours_nms":
        np.savez(a.out, r=res.numpy(), **_bb_to_np(bb))
    elif a.job == "naive_mnn":
        np.savez(a.out, **{f"s{s}_{t}": np.concatenate([v[0].numpy(), v[1].numpy(), v[2].numpy()[:, None]], 1)
                           for (s, t), v in res.items()})
    else:  # naive filter / nms: one array per ordered pair, aligned with _ordered_dict_from_bb(bb)
        np.savez(a.out, **{f"s{s}_{t}": v.numpy() for (s, t), v in res.items()})
    return dict(seconds=secs, peak_mb=peak, frames=T, n_in=len(bb) if a.inp else 0)


def run_job(args, job: str, out: str, inp: str = "", sub: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--job", job, "--out", out, "--inp", inp, "--sub", str(sub),
           "--frames", str(args.frames), "--channels", str(args.channels), "--grid", *map(str, args.grid),
           "--tracks", str(args.tracks), "--pair-batch", str(args.pair_batch), "--device", args.device,
           "--topk", str(args.topk), "--box-half", str(args.box_half), "--iou", str(args.iou),
           "--seed", str(args.seed), "--threads", str(args.threads), "--noise", str(args.noise)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    if p.returncode != 0:
        raise RuntimeError(f"{job} failed:\n{p.stderr[-3000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    wall = time.perf_counter() - t0
    print(f"  {job:13s} {res['frames']:3d} frames: {res['seconds']:8.2f} s (process {wall:.0f} s)",
          flush=True)
    return res


def _keys(bb, mask=None) -> set:
    m = torch.ones(len(bb), dtype=torch.bool) if mask is None else mask
    return {(int(a), int(b), *map(float, p), *map(float, q)) for a, b, p, q in
            zip(bb.src_t[m], bb.dst_t[m], bb.src_xy[m], bb.dst_xy[m])}


# ----------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--channels", type=int, default=384)
    ap.add_argument("--grid", type=int, nargs=2, default=[34, 61], metavar=("H", "W"))
    ap.add_argument("--tracks", type=int, default=200_000)
    ap.add_argument("--noise", type=float, default=1.6, help="per-frame feature noise (BB density)")
    ap.add_argument("--naive-frames", type=int, default=10, help="frames for the naive MNN (<= frames)")
    ap.add_argument("--naive-filter-frames", type=int, default=3)
    ap.add_argument("--naive-nms-frames", type=int, default=5)
    ap.add_argument("--pair-batch", type=int, default=8)
    ap.add_argument("--topk", type=int, default=400)
    ap.add_argument("--box-half", type=float, default=30.0)
    ap.add_argument("--iou", type=float, default=0.2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--job", default="", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    ap.add_argument("--inp", default="", help=argparse.SUPPRESS)
    ap.add_argument("--sub", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.job:
        print(json.dumps(worker(args)))
        return

    T = args.frames
    nf, ff, mf = (min(T, args.naive_frames), min(T, args.naive_filter_frames), min(T, args.naive_nms_frames))
    h, w = args.grid
    print(f"best-buddies benchmark: T={T}, C={args.channels}, grid {h}x{w} ({h * w} cells), "
          f"{args.tracks} trajectories, device {args.device}, "
          f"{args.threads or torch.get_num_threads()} torch threads per worker")
    rows, checks = [], []
    with tempfile.TemporaryDirectory() as tmp:
        f = lambda name: os.path.join(tmp, name + ".npz")  # noqa: E731

        # ---- 1. mutual nearest neighbours (ours on all frames and on the naive's subset)
        o_mnn = run_job(args, "ours_mnn", f("ours_mnn"))
        o_mnn_sub = run_job(args, "ours_mnn", f("ours_mnn_sub"), sub=nf)
        n_mnn = run_job(args, "naive_mnn", f("naive_mnn"), sub=nf)
        bb_all = _bb_from_np(np.load(f("ours_mnn")))
        nd = np.load(f("naive_mnn"))
        n_diff, n_naive = 0, 0
        for s in range(nf):
            for t in range(nf):
                if s == t:
                    continue
                arr = nd[f"s{s}_{t}"]
                n_naive += len(arr)
                a, b = min(s, t), max(s, t)
                m = ((bb_all.src_t == a) & (bb_all.dst_t == b)).numpy()
                mine = np.concatenate([bb_all.src_xy.numpy()[m], bb_all.dst_xy.numpy()[m]], 1)
                mine = mine if s < t else mine[:, [2, 3, 0, 1]]
                n_diff += len({tuple(r) for r in arr[:, :4].tolist()} ^ {tuple(r) for r in mine.tolist()})
        checks.append(f"MNN: {len(bb_all)} best buddies over {T * (T - 1) // 2} unordered frame pairs "
                      f"({len(bb_all) / (T * (T - 1) / 2) / (h * w):.0%} of cells); same pairs as the naive "
                      f"loop on {nf} frames ({n_naive} ordered = 2 x {n_naive // 2}): "
                      f"{n_diff == 0} ({n_diff} differ; float near-ties, as the two normalise differently)")
        naive_mnn_T = n_mnn["seconds"] * (T * (T - 1)) / (nf * (nf - 1))
        rows.append(("MNN", f"{nf} frames (measured)", o_mnn_sub["seconds"], n_mnn["seconds"],
                     o_mnn_sub["peak_mb"], n_mnn["peak_mb"]))
        rows.append(("MNN", f"{T} frames" + ("" if nf == T else ", naive extrapolated"), o_mnn["seconds"],
                     naive_mnn_T, o_mnn["peak_mb"], n_mnn["peak_mb"]))

        # ---- 2. trajectory filter (on our MNN output)
        o_f = run_job(args, "ours_filter", f("ours_filter"), inp=f("ours_mnn"))
        n_f = run_job(args, "naive_filter", f("naive_filter"), inp=f("ours_mnn"), sub=ff)
        bb_f = _bb_from_np(np.load(f("ours_filter")))
        nfd = np.load(f("naive_filter"))
        naive_keep = set()
        for s in range(ff):
            for t in range(s + 1, ff):
                idx = ((bb_all.src_t == s) & (bb_all.dst_t == t)).nonzero().squeeze(1)
                naive_keep |= _keys(bb_all, idx[torch.from_numpy(nfd[f"s{s}_{t}"]).bool()])
        ours_keep = _keys(bb_f, (bb_f.src_t < ff) & (bb_f.dst_t < ff))
        checks.append(f"filter: kept {len(bb_f)} of {len(bb_all)}; within the first {ff} frames ours "
                      f"{len(ours_keep)}, naive {len(naive_keep)}, same pairs: {ours_keep == naive_keep}")
        naive_filter_T = n_f["seconds"] * T / ff  # the per-frame nearest-trajectory search dominates
        rows.append(("filter", f"{T} frames" + ("" if ff == T else f", naive {ff} frames extrapolated"),
                     o_f["seconds"], naive_filter_T, o_f["peak_mb"], n_f["peak_mb"]))

        # ---- 3. NMS ratio on the filtered pairs within the first mf frames (standalone, measured)
        o_n = run_job(args, "ours_nms", f("ours_nms"), inp=f("ours_filter"), sub=mf)
        n_n = run_job(args, "naive_nms", f("naive_nms"), inp=f("ours_filter"), sub=mf)
        od, nnd = np.load(f("ours_nms")), np.load(f("naive_nms"))
        bb_n = _bb_from_np(od)
        diff = 0.0
        for s in range(mf):
            for t in range(s + 1, mf):
                m = ((bb_n.src_t == s) & (bb_n.dst_t == t)).numpy()
                if m.any():
                    diff = max(diff, float(np.abs(od["r"][m] - nnd[f"s{s}_{t}"]).max()))
        checks.append(f"NMS ratio: {len(bb_n)} pairs in the first {mf} frames, "
                      f"max |r_ours - r_naive| = {diff:.1e}")
        naive_nms_T = n_n["seconds"] * len(bb_f) / max(len(bb_n), 1)  # cost per best buddy
        rows.append(("NMS ratio", f"{len(bb_n)} BBs (measured)", o_n["seconds"], n_n["seconds"],
                     o_n["peak_mb"], n_n["peak_mb"]))

        # ---- 4. the whole stage: compute_best_buddies (ratio fused into the MNN pass)
        o_p = run_job(args, "ours_pipe", f("ours_pipe"))
        bb_p = _bb_from_np(np.load(f("ours_pipe")))
        od_r = {k: v for k, v in zip(_keys_list(bb_n), od["r"].tolist())}
        pr = [(rv, od_r[k]) for k, rv in zip(_keys_list(bb_p), bb_p.ratio.tolist()) if k in od_r]
        checks.append(f"pipeline: {len(bb_p)} weighted pairs (same as MNN + filter: "
                      f"{_keys(bb_p) == _keys(bb_f)}); fused r vs standalone r on {len(pr)} pairs: max diff "
                      f"{max((abs(a - b) for a, b in pr), default=0.0):.1e}")
        naive_total = naive_mnn_T + naive_filter_T + naive_nms_T
        rows.append(("**all (compute_best_buddies)**", f"{T} frames, {len(bb_f)} BBs; naive = sum of the "
                     "three, extrapolated", o_p["seconds"], naive_total, o_p["peak_mb"],
                     max(n_mnn["peak_mb"], n_f["peak_mb"], n_n["peak_mb"])))

    print()
    for c in checks:
        print(c)
    print("\n| stage | setting | ours (s) | naive (s) | speed-up | ours peak (MB) | naive peak (MB) |")
    print("|---|---|---|---|---|---|---|")
    for name, setting, to, tn, po, pn in rows:
        ratio = tn / max(to, 1e-9)
        print(f"| {name} | {setting} | {to:.2f} | {tn:.2f} | {ratio:.1f}x | {po:.0f} | {pn:.0f} |")
    print("peak = resident memory above the level before the call (CPU, sampled) or max allocated (CUDA).")


def _keys_list(bb) -> list:
    return [(int(a), int(b), *map(float, p), *map(float, q)) for a, b, p, q in
            zip(bb.src_t, bb.dst_t, bb.src_xy, bb.dst_xy)]


if __name__ == "__main__":
    main()
