"""DIS flow-chaining baseline on TAP-Vid-DAVIS-mini at full resolution (no training needed).

    python experiments/bench/flow_baseline.py [--data ../shared/data] [--query-mode first|strided]

For every video: consecutive DIS flows at 854x480, each ground-truth query chained forward and backward
(occluded after a failed forward-backward check), scored with the TAP-Vid protocol (256x256); the
table lists per-video metrics and their mean (the benchmark figure), next to the still-point baseline.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from dinotracker.data.sources import load_gt_npz  # noqa: E402
from dinotracker.data.video import load_video  # noqa: E402
from dinotracker.evaluation.baselines import flow_chaining_baseline, still_baseline  # noqa: E402
from dinotracker.evaluation.readers import sample_queries_from_arrays  # noqa: E402
from dinotracker.evaluation.tapvid import evaluate_tracks, mean_over_videos  # noqa: E402
from dinotracker.preprocessing.flow import build_flow, compute_consecutive_flows  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--query-mode", default="first", choices=["first", "strided"])
    args = ap.parse_args()
    root = Path(args.data) / "tapvid_davis_mini"
    if not root.is_dir():
        print(f"skip: {root} not found")
        return
    rows = {"dis_chaining": [], "still": []}
    print("| video | method | δ_avg | OA | AJ | time (s) |\n|---|---|---|---|---|---|")
    for vdir in sorted(p for p in root.iterdir() if (p / "gt.npz").is_file()):
        video = load_video(vdir / "frames")
        gt = load_gt_npz(vdir / "gt.npz", video.num_frames)
        q, idx = sample_queries_from_arrays(gt.occluded, gt.tracks, args.query_mode)
        q = torch.from_numpy(np.asarray(q, np.float32))
        t0 = time.perf_counter()
        frames = torch.from_numpy(video.frames).permute(0, 3, 1, 2).contiguous()
        fwd, bwd = compute_consecutive_flows(build_flow("dis"), frames, progress=False)
        tracks, vis = flow_chaining_baseline(q, fwd.float(), bwd.float())
        dt = time.perf_counter() - t0
        for name, (tr, vi) in {"dis_chaining": (tracks, vis), "still": still_baseline(q, video.num_frames)}.items():
            m = evaluate_tracks(tr.numpy(), vi.numpy(), gt.tracks[idx], ~gt.occluded[idx], q[:, 0].long().numpy(),
                                video.hw, query_mode=args.query_mode)
            rows[name].append(m)
            print(f"| {vdir.name} | {name} | {100 * m['delta_avg']:.1f} | {100 * m['occlusion_accuracy']:.1f} | "
                  f"{100 * m['average_jaccard']:.1f} | {dt if name == 'dis_chaining' else 0:.1f} |")
    for name, ms in rows.items():
        m = mean_over_videos(ms)
        print(f"| **mean** | {name} | {100 * m['delta_avg']:.1f} | {100 * m['occlusion_accuracy']:.1f} | "
              f"{100 * m['average_jaccard']:.1f} | |")


if __name__ == "__main__":
    main()
