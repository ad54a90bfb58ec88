"""Trajectory chaining benchmark: our vectorised ``chain_trajectories`` vs a naive per-point Python loop of
the same rules (DINO_TRACKER_SPEC §2.1 steps A-C), same run, same flows.

    python experiments/bench/trajectories.py          # 12 frames, 64x96 crop, direct filter on
    python experiments/bench/trajectories.py --frames 8 --height 48 --width 64 --no-direct
    python experiments/bench/trajectories.py --ours-hw 240 427         # also time ours alone on a larger crop

Data: the first frames of shared/data/horsejump/video (centre crop), else a synthetic textured image panning
over the frames. Flows: OpenCV DIS (medium), consecutive pairs and the direct s -> t flows with their
reliability masks, all computed once beforehand so that both implementations chain the very same fields.
Each implementation runs in a fresh subprocess (one torch thread by default): time of the chaining only,
peak memory = growth of resident memory during it (VmHWM after resetting it, else ru_maxrss). The naive
tracks are checked against ours (same rows in the same order, NaN pattern identical, positions within
1e-3 px).
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

DATA = Path(os.environ.get("DINOTRACKER_DATA", REPO.parent / "shared" / "data"))


# ----------------------------------------------------------------------------------------------
# naive reference: one point at a time, plain Python floats
# ----------------------------------------------------------------------------------------------

def _bilinear(flow: np.ndarray, x: float, y: float) -> tuple[float, float]:
    """flow [2,H,W] at raster (x, y): bilinear between pixel centres, cells beyond the frame count as 0
    (zero padding, as the reference's bilinear_sampler)."""
    _, h, w = flow.shape
    u, v = x - 0.5, y - 0.5
    j0, i0 = int(math.floor(u)), int(math.floor(v))
    a, b = u - j0, v - i0
    out = []
    for c in range(2):
        f = flow[c]

        def at(i, j, f=f):
            return float(f[i, j]) if 0 <= i < h and 0 <= j < w else 0.0

        top = at(i0, j0) * (1 - a) + at(i0, j0 + 1) * a
        bot = at(i0 + 1, j0) * (1 - a) + at(i0 + 1, j0 + 1) * a
        out.append(float(top * (1 - b) + bot * b))
    return out[0], out[1]


def _inside(x: float, y: float, h: int, w: int) -> bool:
    return 0.5 <= x <= w - 0.5 and 0.5 <= y <= h - 0.5


def naive_continuation(forward: np.ndarray, backward: np.ndarray, fb_threshold: float) -> np.ndarray:
    """bool [T,H,W], pixel by pixel (spec §2.1 step A)."""
    tm1, _, h, w = forward.shape
    masks = np.zeros((tm1 + 1, h, w), bool)
    for f in range(tm1):
        hit = np.zeros((h, w), bool)
        for i in range(h):
            for j in range(w):
                x, y = j + 0.5 + float(forward[f, 0, i, j]), i + 0.5 + float(forward[f, 1, i, j])
                if 0 <= x < w and 0 <= y < h:
                    hit[int(math.floor(y)), int(math.floor(x))] = True
        for i in range(h):
            for j in range(w):
                px, py = j + 0.5, i + 0.5
                x1, y1 = px + float(backward[f, 0, i, j]), py + float(backward[f, 1, i, j])
                fx, fy = _bilinear(forward[f], x1, y1)
                err = math.hypot(x1 + fx - px, y1 + fy - py)
                masks[f + 1, i, j] = err < fb_threshold and hit[i, j]
    return masks


def naive_chain(forward, backward, fb_threshold=1.5, min_length=2, direct_flow=None, direct_threshold=2.5,
                direct_window=None, direct_every=1):
    """The same rules as ``chain_trajectories``, one trajectory at a time. Returns (filtered, unfiltered)
    float32 numpy arrays [N,T,2] with rows in the same order (start frame, then raster order)."""
    forward = np.asarray(forward, np.float64)
    backward = np.asarray(backward, np.float64)
    tm1, _, h, w = forward.shape
    n_frames = tm1 + 1
    cont = naive_continuation(forward, backward, fb_threshold)
    covered = np.zeros((n_frames, h, w), bool)
    direct_cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def direct(s, t):
        if (s, t) not in direct_cache:
            flows, reliable = direct_flow(s, [t])
            direct_cache[(s, t)] = (np.asarray(flows[0], np.float64), np.asarray(reliable[0], bool))
        return direct_cache[(s, t)]

    rows_f, rows_u = [], []
    for s in range(n_frames - min_length + 1):
        new_f = []
        for i in range(h):
            for j in range(w):
                if s > 0 and cont[s, i, j] and covered[s, i, j]:
                    continue
                x0, y0 = j + 0.5, i + 0.5
                x, y = x0, y0
                row = np.full((n_frames, 2), np.nan)
                row[s] = (x, y)
                last_u = last_f = s
                alive_f = True
                for t in range(s, n_frames - 1):
                    fx, fy = _bilinear(forward[t], x, y)
                    nx, ny = x + fx, y + fy
                    bx, by = _bilinear(backward[t], nx, ny)
                    if not (math.hypot(nx + bx - x, ny + by - y) < fb_threshold and _inside(nx, ny, h, w)):
                        break
                    x, y = nx, ny
                    row[t + 1] = (x, y)
                    last_u = t + 1
                    k = t + 1 - s
                    if (alive_f and direct_flow is not None and k % direct_every == 0
                            and (direct_window is None or k <= direct_window)):
                        d, rel = direct(s, t + 1)
                        drift = math.hypot(x - (x0 + d[0, i, j]), y - (y0 + d[1, i, j]))
                        if rel[i, j] and not drift < direct_threshold:
                            alive_f = False
                    if alive_f:
                        last_f = t + 1
                if last_u - s + 1 >= min_length:
                    rows_u.append(row)
                if last_f - s + 1 >= min_length:
                    rf = row.copy()
                    rf[last_f + 1:] = np.nan
                    rows_f.append(rf)
                    new_f.append((rf, last_f))
        for rf, last in new_f:  # look-behind coverage of later frames
            for t in range(s + 1, last + 1):
                x, y = rf[t]
                if 0 <= x < w and 0 <= y < h:
                    covered[t, int(math.floor(y)), int(math.floor(x))] = True

    def stack(rows):
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, n_frames, 2), np.float32)

    return stack(rows_f), stack(rows_u)


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------

def load_frames(n: int, hw: tuple[int, int], seed: int = 0) -> tuple[torch.Tensor, str]:
    """uint8 [n,3,h,w]: a centre crop of horsejump, else a synthetic panning texture."""
    import cv2

    h, w = hw
    folder = DATA / "horsejump" / "video"
    files = sorted(folder.glob("*.jpg")) + sorted(folder.glob("*.png")) if folder.is_dir() else []
    if len(files) >= n:
        imgs = [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files[:n]]
        H, W = imgs[0].shape[:2]
        if H < h or W < w:
            raise ValueError(f"crop {hw} larger than the frames {(H, W)}")
        a, b = (H - h) // 2, (W - w) // 2
        arr = np.stack([im[a:a + h, b:b + w] for im in imgs])
        source = f"horsejump {H}x{W}, centre crop"
    else:
        rng = np.random.default_rng(seed)
        noise = rng.uniform(0, 255, (h + 4 * n + 8, w + 4 * n + 8, 3)).astype(np.float32)
        big = cv2.GaussianBlur(noise, (0, 0), 2)
        arr = np.stack([big[2 * k:2 * k + h, 3 * k:3 * k + w] for k in range(n)])
        arr = arr.clip(0, 255).astype(np.uint8)
        source = "synthetic panning texture"
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).contiguous(), source


def prepare(frames: torch.Tensor, direct: bool, window, every) -> dict:
    from dinotracker.preprocessing.flow import build_flow, compute_consecutive_flows
    from dinotracker.preprocessing.trajectories import direct_targets, make_direct_flow_fn

    est = build_flow("dis", dis_preset="medium")
    fwd, bwd = compute_consecutive_flows(est, frames, progress=False)
    out = {"forward": fwd.float(), "backward": bwd.float(), "direct": {}}
    if direct:
        fn = make_direct_flow_fn(est, frames)
        n = frames.shape[0]
        for s in range(n - 1):
            ts = direct_targets(s, n, window, every)
            if ts:
                flows, rel = fn(s, ts)
                for k, t in enumerate(ts):
                    out["direct"][(s, t)] = (flows[k], rel[k])
    return out


# ----------------------------------------------------------------------------------------------
# measurement (child process)
# ----------------------------------------------------------------------------------------------

def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) so that it measures from now on (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_kb(reset_ok: bool) -> int:
    if reset_ok:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(impl: str, data_path: str, out_path: str, cfg: dict) -> None:
    torch.set_num_threads(cfg["threads"])
    from dinotracker.preprocessing.trajectories import chain_trajectories

    data = torch.load(data_path, weights_only=False)
    table = data["direct"]

    def direct_fn(s, ts):
        return torch.stack([table[(s, t)][0] for t in ts]), torch.stack([table[(s, t)][1] for t in ts])

    kwargs = dict(fb_threshold=cfg["fb"], min_length=cfg["min_length"],
                  direct_flow=direct_fn if cfg["direct"] else None, direct_threshold=cfg["direct_threshold"],
                  direct_window=cfg["window"], direct_every=cfg["every"])
    # warm-up (torch's lazy initialisation, thread pool) on a tiny field, outside the measurement
    tiny = torch.zeros(1, 2, 8, 8)
    chain_trajectories(tiny, tiny, progress=False)
    before = _rss_kb()
    reset_ok = _reset_peak()
    t0 = time.perf_counter()
    if impl == "ours":
        tr = chain_trajectories(data["forward"], data["backward"], progress=False, **kwargs)
        filt, unf = tr.tracks.numpy(), tr.tracks_unfiltered.numpy()
    else:
        filt, unf = naive_chain(data["forward"].numpy(), data["backward"].numpy(), **kwargs)
    dt = time.perf_counter() - t0
    peak = max(_peak_kb(reset_ok) - before, 0)
    np.savez(out_path, filtered=filt, unfiltered=unf)
    print(json.dumps({"time_s": dt, "peak_mb": peak / 1024}))


def run_child(impl: str, data_path: str, cfg: dict, tmp: str):
    out = os.path.join(tmp, f"{impl}.npz")
    res = subprocess.run([sys.executable, __file__, "--child", impl, "--child-data", data_path,
                          "--child-out", out, "--child-cfg", json.dumps(cfg)],
                         capture_output=True, text=True, check=True)
    stats = json.loads(res.stdout.strip().splitlines()[-1])
    arr = np.load(out)
    return stats, arr["filtered"], arr["unfiltered"]


def same_tracks(a: np.ndarray, b: np.ndarray, tol: float = 1e-3) -> tuple[bool, str]:
    if a.shape != b.shape:
        return False, f"shapes differ {a.shape} vs {b.shape}"
    na, nb = np.isnan(a), np.isnan(b)
    if (na != nb).any():
        return False, f"{int((na != nb).any(axis=(1, 2)).sum())} rows differ in validity"
    diff = float(np.abs(np.nan_to_num(a) - np.nan_to_num(b)).max()) if a.size else 0.0
    return diff <= tol, f"max |diff| {diff:.2e} px"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=96)
    ap.add_argument("--no-direct", action="store_true", help="chain without the direct-flow filter")
    ap.add_argument("--direct-window", type=int, default=None)
    ap.add_argument("--direct-every", type=int, default=1)
    ap.add_argument("--fb-threshold", type=float, default=1.5)
    ap.add_argument("--direct-threshold", type=float, default=2.5)
    ap.add_argument("--min-length", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: fair vs the naive loop)")
    ap.add_argument("--ours-hw", type=int, nargs=2, default=[240, 427],
                    help="also time ours alone at this crop size (0 0 to skip)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-data", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-cfg", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.child_data, args.child_out, json.loads(args.child_cfg))
        return

    torch.set_num_threads(args.threads)
    cfg = {"fb": args.fb_threshold, "min_length": args.min_length, "direct": not args.no_direct,
           "direct_threshold": args.direct_threshold, "window": args.direct_window,
           "every": args.direct_every,
           "threads": args.threads}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        frames, source = load_frames(args.frames, (args.height, args.width))
        t0 = time.perf_counter()
        data = prepare(frames, cfg["direct"], args.direct_window, args.direct_every)
        t_flow = time.perf_counter() - t0
        path = os.path.join(tmp, "data.pt")
        torch.save(data, path)
        print(f"data: {source}; T={args.frames}, {args.height}x{args.width}; DIS flows "
              f"({len(data['direct'])} direct pairs) in {t_flow:.1f} s; direct filter {cfg['direct']}")
        ours, of, ou = run_child("ours", path, cfg, tmp)
        naive, nf, nu = run_child("naive", path, cfg, tmp)
        ok_f, msg_f = same_tracks(of, nf)
        ok_u, msg_u = same_tracks(ou, nu)
        size = f"{args.height}x{args.width}x{args.frames}"
        rows.append(("naive (per-point loop)", size, naive, nf.shape[0], nu.shape[0]))
        rows.append(("ours (vectorised)", size, ours, of.shape[0], ou.shape[0]))
        if args.ours_hw and min(args.ours_hw) > 0:
            big, _ = load_frames(args.frames, tuple(args.ours_hw))
            bpath = os.path.join(tmp, "big.pt")
            torch.save(prepare(big, cfg["direct"], args.direct_window, args.direct_every), bpath)
            bstats, bf, bu = run_child("ours", bpath, cfg, tmp)
            rows.append(("ours (vectorised)", f"{args.ours_hw[0]}x{args.ours_hw[1]}x{args.frames}", bstats,
                         bf.shape[0], bu.shape[0]))

    head = ["size HxWxT", "time s", "peak MB", "N filt", "N unfilt"]
    print(f"\n{'implementation':<24}" + "".join(f"{c:>{16 if i == 0 else 10}}" for i, c in enumerate(head)))
    for name, size, st, n_f, n_u in rows:
        print(f"{name:<24}{size:>16}{st['time_s']:>10.3f}{st['peak_mb']:>10.1f}{n_f:>10d}{n_u:>10d}")
    print(f"\nspeed-up ours vs naive: {naive['time_s'] / max(ours['time_s'], 1e-9):.1f}x; "
          f"peak memory ratio naive/ours: {naive['peak_mb'] / max(ours['peak_mb'], 1e-3):.2f}")
    print(f"identical tracks: filtered {ok_f} ({msg_f}), unfiltered {ok_u} ({msg_u})")
    if not (ok_f and ok_u):
        sys.exit(1)


if __name__ == "__main__":
    main()
