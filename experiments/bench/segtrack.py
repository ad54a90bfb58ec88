"""Label propagation cost per frame: gather (ours) vs dense (the DINOv3 notebook), same inputs, same run.

Random L2-normalised features on the DAVIS patch grid (480x854 frames, patch 16: short side 480 ->
30x54 cells, 960 -> 60x107), C channels, 1 + context frames, M objects. Time = median wall time of
one ``propagate`` call (= one frame); peak memory = extra bytes over the inputs (CPU: peak RSS of a
fresh subprocess per measurement; CUDA: ``max_memory_allocated``). Also checks max |gather - dense|.

    python experiments/bench/segtrack.py                      # 480 and 960, C=384, CPU
    python experiments/bench/segtrack.py --device cuda --sizes 480 960 1440 --repeats 5
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time


def _rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _inputs(h, w, c, t, m, device, seed=0):
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    cur = F.normalize(torch.randn(h, w, c, generator=g), dim=-1).to(device)
    ctx = F.normalize(torch.randn(t, h, w, c, generator=g), dim=-1).to(device)
    probs = torch.softmax(torch.randn(t, h, w, m, generator=g), -1).to(device)
    return cur, ctx, probs


def measure(method, h, w, c, t, m, size, shape, tile, repeats, device, threads):
    """-> (seconds per frame, peak extra bytes, output on CPU)."""
    import torch

    from dinotracker.segtrack.neighbourhood import make_neighborhood_mask, neighborhood_offsets
    from dinotracker.segtrack.propagation import propagate

    torch.set_num_threads(threads)
    dev = torch.device(device)
    cur, ctx, probs = _inputs(h, w, c, t, m, dev)
    neigh = (
        make_neighborhood_mask(h, w, size, shape, device=dev)
        if method == "dense"
        else neighborhood_offsets(size, shape, h, w, device=dev)
    )  # built once per video in the driver

    def call():
        out = propagate(cur, ctx, probs, neigh, 5, 0.2, method=method, tile=tile)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return out

    if dev.type == "cuda":
        call()  # warm-up (kernels, allocator)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return statistics.median(times), max(peak, 0), out.cpu().numpy()


def _child(q, args):
    q.put(measure(*args))


def run_isolated(args, device):
    """CPU: a fresh process per measurement so that peak RSS belongs to this call alone."""
    if device != "cpu":
        return measure(*args)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q, args))
    p.start()
    res = q.get()
    p.join()
    return res


def grid_for(short_side: int, patch: int = 16, hw=(480, 854)) -> tuple[int, int]:
    from dinotracker.segtrack.features import resize_to_multiple_hw

    mh, mw = resize_to_multiple_hw(hw, short_side, patch)
    return mh // patch, mw // patch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[480, 960], help="short sides (px)")
    ap.add_argument("--channels", type=int, default=384, help="feature width C (ViT-S: 384, ViT-L: 1024)")
    ap.add_argument("--context", type=int, default=7, help="past frames; t = 1 + context")
    ap.add_argument("--objects", type=int, default=3, help="M channels incl. background")
    ap.add_argument("--size", type=float, default=12)
    ap.add_argument("--shape", default="circle")
    ap.add_argument("--tile", type=int, default=None, help="gather query tile (default: 16 CPU, 32 GPU)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-dense-above", type=int, default=100000, help="skip dense for larger short sides")
    a = ap.parse_args()
    t = 1 + a.context
    print(
        f"propagate per frame: C={a.channels}, t={t}, M={a.objects}, {a.shape} r={a.size:g}, top-5, "
        f"tile={a.tile or 'auto'}, device={a.device}, threads={a.threads}, repeats={a.repeats}"
    )
    head = (
        f"{'short':>5} {'grid':>7} | {'gather s':>9} {'gather MB':>10} | {'dense s':>9} {'dense MB':>10} | "
        f"{'speed x':>7} {'mem x':>7} | {'max|diff|':>9}"
    )
    print(head)
    print("-" * len(head))
    for s in a.sizes:
        h, w = grid_for(s)
        common = (h, w, a.channels, t, a.objects, a.size, a.shape, a.tile, a.repeats, a.device, a.threads)
        tg, mg, og = run_isolated(("gather", *common), a.device)
        if s > a.skip_dense_above:
            print(f"{s:>5} {h:>3}x{w:<3} | {tg:9.3f} {mg / 2**20:10.1f} | {'skipped':>9} {'':>10} |")
            continue
        td, md, od = run_isolated(("dense", *common), a.device)
        diff = float(abs(og - od).max())
        print(
            f"{s:>5} {h:>3}x{w:<3} | {tg:9.3f} {mg / 2**20:10.1f} | {td:9.3f} {md / 2**20:10.1f} | "
            f"{td / tg:7.1f} {md / max(mg, 1):7.1f} | {diff:9.1e}"
        )


if __name__ == "__main__":
    main()
