"""``python -m dinotracker.benchmark benchmark=<name>``: fit + evaluate every video of a benchmark.

Each video is one independent ``dinotracker.fit`` job of a Hydra multirun (so any Hydra
launcher works: sequential, joblib, ``submitit_local``, ``submitit_slurm``); job folders are
``<output_dir>/<video>/``. A job whose ``metrics.json`` exists is skipped (``fit`` checks
``skip_if_done``), so a benchmark interrupted half-way resumes where it stopped. At the end
the per-video metrics are collected into ``per_video.csv`` and ``summary.md`` (mean of
per-video metrics, the paper's numbers beside them, and the per-occlusion-rate breakdown
of paper Fig. 6).
"""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dinotracker.jobs.cli import hydra_entry

log = logging.getLogger("dinotracker.benchmark")
METRICS = ("delta_avg", "occlusion_accuracy", "average_jaccard")


def fit_command(cfg: DictConfig, out: Path) -> list[str]:
    bench = cfg.benchmark
    seeds = bench.get("seeds")
    cmd = [sys.executable, "-m", "dinotracker.fit", "-m", "+video=" + ",".join(bench.videos),
           f"evaluate.query_mode={bench.query_mode}", "skip_if_done=true",
           f"hydra.sweep.dir={out}", "hydra.sweep.subdir=${video.name}", *list(cfg.fit_overrides)]
    if seeds:
        cmd.append("video.seed=" + ",".join(str(s) for s in seeds))
    if cfg.launcher:
        cmd.append(f"hydra/launcher={cfg.launcher}")
    if cfg.rerun:
        cmd.append("skip_if_done=false")
    return cmd


def collect(out: Path) -> list[dict]:
    rows = []
    for path in sorted(out.glob("*/metrics.json")):
        m = json.loads(path.read_text())
        for method, vals in m["methods"].items():
            rows.append(dict(video=m["video"], method=method, **{k: vals.get(k) for k in METRICS},
                             occlusion_bins=vals.get("occlusion_bins"), paper_reference=m.get("paper_reference")))
    return rows


def paper_numbers(rows: list[dict], paper: dict) -> dict:
    """The benchmark's published numbers per method, replaced by the experiment's own ``paper_reference``
    (e.g. Tab. 2 "w/o L_prior" for ``experiment=ablation/no_prior``) when the fits carry one."""
    out = {k: dict(v) for k, v in paper.items()}
    for r in rows:
        ref = r.get("paper_reference")
        if ref:
            out[ref.get("method", "dinotracker")] = {k: ref[k] for k in METRICS if ref.get(k) is not None}
    return out


def summarise(rows: list[dict], paper: dict, out: Path) -> str:
    with open(out / "per_video.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["video", "method", *METRICS])
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in ["video", "method", *METRICS]})
    methods = sorted({r["method"] for r in rows}, key=lambda m: (m != "dinotracker", m))
    lines = [f"# Benchmark summary ({len({r['video'] for r in rows})} videos; mean of per-video metrics)", "",
             "| method | δ_avg | OA | AJ | paper δ_avg | paper OA | paper AJ |", "|---|---|---|---|---|---|---|"]
    for m in methods:
        vals = [r for r in rows if r["method"] == m]
        mean = {k: sum(v[k] for v in vals) / len(vals) for k in METRICS}
        p = paper.get(m, {})
        cells = [f"{100 * mean[k]:.1f}" for k in METRICS] + [f"{100 * p[k]:.1f}" if k in p else "–" for k in METRICS]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    binned = [r for r in rows if r.get("occlusion_bins") and r["occlusion_bins"].get("bins")]
    if binned:
        labels = [f"{b['lo']:.1f}-{b['hi']:.1f}" for b in binned[0]["occlusion_bins"]["bins"]]
        lines += ["", "## By the track's occlusion rate (paper Fig. 6): δ_avg / AJ (%), mean over videos", "",
                  "| method | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        for m in methods:
            per_bin = [[r["occlusion_bins"]["bins"][i] for r in binned if r["method"] == m] for i in range(len(labels))]
            cells = []
            for got in per_bin:
                got = [g for g in got if g.get("num_tracks", 0) > 0]
                if not got:
                    cells.append("–")
                    continue
                d = sum(g["delta_avg"] for g in got) / len(got)
                a = sum(g["average_jaccard"] for g in got) / len(got)
                cells.append(f"{100 * d:.1f} / {100 * a:.1f}")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


def run(cfg: DictConfig) -> None:
    out = Path(str(cfg.output_dir)).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cmd = fit_command(cfg, out)
    log.info("launching: %s", " ".join(cmd[1:]))
    rc = subprocess.call(cmd)
    rows = collect(out)
    if not rows:
        raise SystemExit(f"no finished videos under {out} (fit exited with {rc})")
    paper = cfg.benchmark.get("paper")
    print(summarise(rows, paper_numbers(rows, OmegaConf.to_container(paper) if paper else {}), out))
    if rc != 0:
        log.warning("some jobs failed (exit code %d); the summary covers the finished videos", rc)


main = hydra_entry(run, "benchmark", needs_video=False)

if __name__ == "__main__":
    main()
