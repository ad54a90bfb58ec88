"""Preprocessing benchmark: every stage on a real video, time and peak memory per stage, and the
two heavy algorithms against naive baselines in the same run.

    python experiments/bench/preprocess.py                    # horsejump, DIS, random ViT-S/14, short side 224
    python experiments/bench/preprocess.py --short-side 336 --frames 50

Part 1 runs :func:`dinotracker.preprocessing.pipeline.preprocess_video` on ``../shared/data/horsejump``
(flow=dis, ViT-S/14 architecture with random weights: no download) into a fresh cache and
prints the per-stage table. Part 2 calls the best-buddy and chaining benchmarks
(``best_buddies.py``, ``trajectories.py`` beside this file), which time ours against a naive
per-pair / per-point loop.
"""

from __future__ import annotations

import argparse
import runpy
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def stage_table(args) -> None:
    import torch

    from dinotracker.data.video import load_video
    from dinotracker.preprocessing.pipeline import preprocess_video

    data = Path(args.data)
    if not (data / "horsejump").is_dir():
        print(f"skip: {data}/horsejump not found")
        return
    video = load_video(data / "horsejump" / "video", masks=None if args.saliency else data / "horsejump" / "masks",
                       end=args.frames)
    backbone = OmegaConf.create(dict(name="dinov2_vits14", weights=None, source="random", dim=384, patch=14,
                                     stride=7, layer=7, facet="tokens", mask_layer=-1, batch_size=2))
    flow = OmegaConf.create(dict(method="dis", weights=None, num_updates=24, dis_preset="medium", batch_size=8))
    pre_cfg = OmegaConf.load(REPO / "conf" / "preprocess" / "default.yaml")
    pre_cfg.size = None
    pre_cfg.short_side = args.short_side
    pre_cfg.trajectories.direct_window = args.direct_window
    torch.manual_seed(0)
    stats: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        pre = preprocess_video(video, backbone, flow, pre_cfg, tmp, progress=False, stats=stats)
        total = time.perf_counter() - t0
    print(f"\nhorsejump: {video.num_frames} frames {video.hw} -> model {pre.model_hw}, grid {pre.grid_hw}; "
          f"device cpu, {torch.get_num_threads()} threads")
    print("| stage | time (s) | peak host memory (MB) |\n|---|---|---|")
    for k, s in stats.items():
        print(f"| {k} | {s['seconds']:.2f} | {s['peak_mb']:.0f} |")
    print(f"| **total** | {total:.2f} | |")
    print(f"trajectories {pre.tracks.shape[0]}, fg {float(pre.tracks_fg.float().mean()):.2f}, "
          f"best-buddies {len(pre.best_buddies)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--short-side", type=int, default=224)
    ap.add_argument("--direct-window", type=int, default=None)
    ap.add_argument("--saliency", action="store_true", help="ignore the masks and compute saliency masks")
    ap.add_argument("--skip-naive", action="store_true")
    args = ap.parse_args()
    stage_table(args)
    if not args.skip_naive:
        for name in ("best_buddies.py", "trajectories.py"):
            path = Path(__file__).with_name(name)
            if path.is_file():
                print(f"\n== {name}")
                sys.argv = [str(path)]
                runpy.run_path(str(path), run_name="__main__")


if __name__ == "__main__":
    main()
