"""End-to-end fit benchmark: time and peak memory per stage, and videos per hour with concurrent fits.

    # issue 13's GPU rows (random-weight ViT-L/14 and RAFT are fine for timing):
    python experiments/bench/fit_e2e.py --jobs 1 2 4 -- experiment=paper video.num_frames=100 \
        video.height=480 video.width=854 backbone.source=random flow=raft_large flow.weights=random
    # a CPU smoke run, with dbd4dc7's fit job as the in-run baseline (git worktree add /tmp/base dbd4dc7):
    python experiments/bench/fit_e2e.py --jobs 1 2 --baseline /tmp/base -- experiment=quick_cpu trainer.max_steps=20

Each concurrency level ``c`` starts ``c`` independent ``python -m dinotracker.fit +video=synthetic`` jobs at once
(``video.seed`` = job index, so each is its own video with its own preprocessing cache), each with
``OMP_NUM_THREADS`` = cores // c (``--threads-per-job``: two 2-thread fits on 2 cores measured 0.51x the
throughput of one), and waits for all:
``c`` videos in the level's wall time, i.e. ``3600 c / wall`` videos per hour on this machine (on a GPU: how far
several fits sharing one GPU fill it). Per-stage rows come from each job's ``timings.json`` (written by the fit
job itself: wall time, peak host RSS, peak GPU memory per stage), averaged over the level's jobs.
``--baseline DIR`` runs the one-job level once more with that checkout's package (``PYTHONPATH=DIR``), same
overrides, and puts its wall time beside ours (an older checkout writes no ``timings.json``: total only).
Arguments after ``--`` go to every fit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_level(n: int, overrides: list[str], root: Path, pythonpath: Path | None = None,
              threads: int | None = None) -> dict:
    """``n`` concurrent fits -> {"wall": s, "runs": [run folders], "failed": [...]}; ``threads``: each job's
    ``OMP_NUM_THREADS`` (torch's intra-op threads; None: the environment's)."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    root.mkdir(parents=True, exist_ok=True)
    procs = []
    start = time.perf_counter()
    for k in range(n):
        run = root / f"job{k}"
        cmd = [sys.executable, "-m", "dinotracker.fit", "+video=synthetic", f"video.seed={k}", *overrides,
               f"paths.cache_dir={root / f'cache{k}'}", f"hydra.run.dir={run}"]
        log = open(root / f"job{k}.log", "w")
        procs.append((run, log, subprocess.Popen(cmd, cwd=pythonpath or REPO, env=env, stdout=log,
                                                 stderr=subprocess.STDOUT)))
    failed = []
    for run, log, p in procs:
        if p.wait() != 0:
            failed.append(f"{run} (exit {p.returncode}, see {log.name})")
        log.close()
    return {"wall": time.perf_counter() - start, "runs": [r for r, _, _ in procs], "failed": failed}


def stage_means(runs: list[Path]) -> list[dict]:
    """Per-stage mean seconds and max peaks over the runs' timings.json (stages in the first run's order)."""
    tables = [json.loads((r / "timings.json").read_text()) for r in runs if (r / "timings.json").is_file()]
    if not tables:
        return []
    rows = []
    for i, first in enumerate(tables[0]["stages"]):
        same = [t["stages"][i] for t in tables if len(t["stages"]) > i and t["stages"][i]["stage"] == first["stage"]]
        rows.append(dict(stage=first["stage"], seconds=sum(r["seconds"] for r in same) / len(same),
                         host_peak_mb=max(r["host_peak_mb"] for r in same),
                         gpu_peak_mb=max(r["gpu_peak_mb"] for r in same)))
    total = sum(t["total_seconds"] for t in tables) / len(tables)
    rows.append(dict(stage="total (after start-up and imports)", seconds=total, host_peak_mb=None, gpu_peak_mb=None))
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 4], help="concurrency levels")
    ap.add_argument("--baseline", type=Path, default=None, help="a checkout whose fit job is the in-run baseline")
    ap.add_argument("--out", type=Path, default=None, help="keep the run folders here (default: a temp folder)")
    ap.add_argument("--threads-per-job", type=int, default=None,
                    help="OMP_NUM_THREADS of each job (default: CPU cores // concurrent jobs, at least 1, so that "
                         "concurrent fits do not oversubscribe the cores; 0: leave the environment's)")
    args = ap.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if any(j < 1 for j in args.jobs):
        raise SystemExit(f"--jobs must be >= 1, got {args.jobs}")
    root = args.out or Path(tempfile.mkdtemp(prefix="fit_e2e_"))
    import torch

    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    print(f"fit end to end on {dev}, torch {torch.__version__}; overrides: {' '.join(overrides) or '(none)'}")
    print(f"run folders under {root}")
    def threads(n: int) -> int | None:
        if args.threads_per_job == 0:
            return None
        return args.threads_per_job or max(1, (os.cpu_count() or 1) // n)

    levels = {}
    for n in args.jobs:
        levels[n] = run_level(n, overrides, root / f"ours_{n}", threads=threads(n))
        for f in levels[n]["failed"]:
            print(f"FAILED: {f}")
    base = None
    if args.baseline is not None:
        base = run_level(1, overrides, root / "baseline_1", pythonpath=args.baseline.resolve(), threads=threads(1))
        for f in base["failed"]:
            print(f"FAILED (baseline): {f}")

    one = levels.get(1) or levels[min(levels)]
    print(f"\n### Stages (mean of the {len(one['runs'])} job(s) of the {min(levels)}-job level)\n")
    print("| stage | wall s | peak host RSS MB | peak GPU MB |\n|---|---|---|---|")
    for r in stage_means(one["runs"]):
        host = "" if r["host_peak_mb"] is None else f"{r['host_peak_mb']:.0f}"
        gpu = "" if r["gpu_peak_mb"] is None else (f"{r['gpu_peak_mb']:.0f}" if r["gpu_peak_mb"] else "-")
        print(f"| {r['stage']} | {r['seconds']:.1f} | {host} | {gpu} |")
    if base is not None and 1 in levels:
        b, o = base["wall"], levels[1]["wall"]
        print(f"\n| one fit, wall s | baseline ({args.baseline}) | ours | speed-up |\n|---|---|---|---|\n"
              f"| python -m dinotracker.fit | {b:.1f} | {o:.1f} | {b / o:.2f}x |")
    print("\n### Throughput\n\n| concurrent fits | threads per job | wall s | videos per hour | vs 1 job |\n"
          "|---|---|---|---|---|")
    per_hour = {n: 3600.0 * n / lv["wall"] for n, lv in levels.items()}
    ref = per_hour.get(1)
    for n, lv in levels.items():
        rel = f"{per_hour[n] / ref:.2f}x" if ref else ""
        print(f"| {n} | {threads(n) or 'env'} | {lv['wall']:.1f} | {per_hour[n]:.1f} | {rel} |")
    return 1 if any(lv["failed"] for lv in levels.values()) or (base and base["failed"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
