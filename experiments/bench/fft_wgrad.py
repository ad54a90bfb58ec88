"""Delta-DINO's weight gradients: tiled FFTs (``model.fast_conv``) vs oneDNN's direct kernel, same run.

    python experiments/bench/fft_wgrad.py --threads 2            # every layer of the demo / quick_cpu / ref238 steps
    python experiments/bench/fft_wgrad.py --tiles                 # also every tile size (to refit the cost model)

Rows: one Delta-DINO layer of a training step (frames x in -> out channels at the gradient map's size; the
dilated last layer as its 2x2 polyphase batch, as the fast path runs it), the tile :func:`plan_tile` picks
("direct" = the model keeps oneDNN), best-of-3 seconds of oneDNN's ``convolution_backward`` (weight only) and
of :func:`conv_weight_grad`, the ratio, peak host RSS above the start, and the FFT result's largest
difference to the direct one relative to its largest entry.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dinotracker.models import fft_conv  # noqa: E402
from dinotracker.utils.memory import PeakMemory  # noqa: E402


def layers(frames: int, hw: tuple[int, int], chans: tuple[int, ...], out_dim: int) -> list[tuple]:
    """(batch, Ci, Co, gradient map h, w) of each 5x5 conv of Delta-DINO at model resolution ``hw`` for a step
    of ``frames`` frames (a step refines at most 8)."""
    h, w = hw
    rows, ci = [], 3
    for co in chans:
        rows.append((frames, ci, co, h, w))
        h, w, ci = (h + 1) // 2, (w + 1) // 2, co
    rows.append((4 * frames, ci, out_dim, (h + 1) // 2, (w + 1) // 2))  # dilation 2: its polyphase batch
    return rows


SHAPES = {
    "demo (half width)": layers(8, (112, 154), (32, 64, 128), 256),
    "demo": layers(8, (112, 154), (64, 128, 256), 256),
    "quick_cpu": layers(8, (238, 427), (64, 128, 256), 384),
    "ref238": layers(8, (238, 322), (64, 128, 256), 1024),
}


def best_of(fn, n: int = 3) -> tuple[float, float]:
    fn()
    times = []
    with PeakMemory() as pm:
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return min(times), pm.peak_mb


def bench_layer(b: int, ci: int, co: int, h: int, w: int, tiles: bool) -> tuple[str, float, float]:
    """One table row (after the step column) and the direct and planned seconds of one layer."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, ci, h + 4, w + 4, generator=g)
    gy = torch.randn(b, co, h, w, generator=g)
    wt = torch.empty(co, ci, 5, 5)
    tile = fft_conv.plan_tile(b, ci, co, (h, w), 5)
    td, md = best_of(lambda: fft_conv.direct_weight_grad(x, gy, wt))
    ref = fft_conv.direct_weight_grad(x, gy, wt)
    tf, mf = best_of(lambda: fft_conv.conv_weight_grad(x, gy, wt))
    err = float((fft_conv.conv_weight_grad(x, gy, wt) - ref).abs().max() / ref.abs().max())
    line = (f"{b} x {ci} -> {co} at {h} x {w} | {tile or 'direct'} | {td:.3f} | {tf:.3f} | {td / tf:.2f}x | "
            f"{md:.0f} / {mf:.0f} | {err:.1e} |")
    if tiles:
        line += " " + ", ".join(f"{t}: {best_of(lambda t=t: fft_conv.fft_weight_grad(x, gy, 5, t))[0]:.3f}"
                                for t in fft_conv.TILES) + " |"
    return line, td, tf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--shape", choices=list(SHAPES), action="append")
    ap.add_argument("--tiles", action="store_true", help="also time every tile size")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("\n| step | layer (B x Ci -> Co at h x w) | tile | direct s | FFT s | speed-up | peak MB direct / FFT | "
          "rel. diff |" + (" every tile s |" if args.tiles else ""))
    print("|---|---|---|---|---|---|---|---|" + ("---|" if args.tiles else ""))
    total = [0.0, 0.0]
    for name in args.shape or list(SHAPES):
        for layer in SHAPES[name]:
            line, td, tf = bench_layer(*layer, tiles=args.tiles)
            total[0] += td
            total[1] += tf
            print(f"| {name} | {line}", flush=True)
    print(f"\nall layers: direct {total[0]:.2f} s, ours {total[1]:.2f} s ({total[0] / total[1]:.2f}x)")


if __name__ == "__main__":
    main()
