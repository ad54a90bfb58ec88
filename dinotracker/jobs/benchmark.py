"""``python -m dinotracker.benchmark benchmark=<name>``: fit + evaluate every video of a benchmark.

Each video is one independent ``dinotracker.fit`` job of a Hydra multirun (so any Hydra
launcher works: sequential, joblib, ``submitit_local``, ``submitit_slurm``); job folders are
``<output_dir>/<video>/``. A job whose ``metrics.json`` exists is skipped (``fit`` checks
``skip_if_done``), so a benchmark interrupted half-way resumes where it stopped. At the end
the per-video metrics are collected into ``per_video.csv`` and ``summary.md`` (mean of
per-video metrics, the paper's numbers beside them, and the per-occlusion-rate breakdown
of paper Fig. 6).

Failures stay per video: a job that fails (bad video) leaves ``error.txt`` and the others go on; its
row in ``per_video.csv`` and the jobs table of ``summary.md`` carry the error. Running the benchmark
again skips the finished videos (nothing is submitted when all are finished) and retries the failed
ones. Jobs that ran under Slurm (``launcher=slurm``/``slurm_local``) add their job id, state, elapsed
time and max RSS (``sacct``, else ``scontrol``, else the job's own ``slurm.json``) to those rows.
"""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dinotracker.jobs.cli import hydra_entry

log = logging.getLogger("dinotracker.benchmark")
METRICS = ("delta_avg", "occlusion_accuracy", "average_jaccard")
JOB_FIELDS = ("status", "error", "slurm_job_id", "slurm_state", "elapsed_s", "max_rss_mb")


def fit_command(cfg: DictConfig, out: Path, videos: list[str] | None = None) -> list[str]:
    bench = cfg.benchmark
    seeds = bench.get("seeds")
    videos = list(bench.videos) if videos is None else videos
    cmd = [sys.executable, "-m", "dinotracker.fit", "-m", "+video=" + ",".join(videos),
           f"evaluate.query_mode={bench.query_mode}", "skip_if_done=true",
           f"hydra.sweep.dir={out}", "hydra.sweep.subdir=${video.name}", *list(cfg.fit_overrides)]
    if seeds:
        cmd.append("video.seed=" + ",".join(str(s) for s in seeds))
    if cfg.launcher:
        cmd.append(f"hydra/launcher={cfg.launcher}")
    if cfg.rerun:
        cmd.append("skip_if_done=false")
    return cmd


def _job_overrides(job: Path) -> tuple[str | None, str | None]:
    """(``+video=`` value, ``video.seed=`` value) of a job folder, from Hydra's ``.hydra/overrides.yaml``."""
    try:
        overrides = OmegaConf.to_container(OmegaConf.load(job / ".hydra" / "overrides.yaml"))
    except (OSError, ValueError):
        return None, None
    got = {}
    for o in overrides or []:
        key, _, val = str(o).partition("=")
        got[key.lstrip("+~")] = val
    return got.get("video"), got.get("video.seed")


def pending_videos(cfg: DictConfig, out: Path) -> list[str]:
    """The benchmark's videos with at least one (video, seed) job that has no ``metrics.json`` yet."""
    if cfg.rerun:
        return list(cfg.benchmark.videos)
    done = {_job_overrides(p.parent) for p in out.glob("*/metrics.json")}
    seeds = [str(s) for s in cfg.benchmark.get("seeds") or []] or [None]
    return [v for v in cfg.benchmark.videos if any((v, s) not in done for s in seeds)]


def job_dirs(out: Path) -> list[Path]:
    """The benchmark's job folders (Hydra wrote ``.hydra/`` into each)."""
    return sorted(p.parent for p in out.glob("*/.hydra"))


def _last_line(path: Path) -> str | None:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    return lines[-1][:300] if lines else None


def job_status(out: Path) -> list[dict]:
    """One row per job folder: video, status (done / failed / running), error and the Slurm columns."""
    from dinotracker.utils import slurm

    jobs = []
    for job in job_dirs(out):
        rec = {}
        if (job / slurm.RECORD).is_file():
            try:
                rec = json.loads((job / slurm.RECORD).read_text())
            except ValueError:
                rec = {}
        jobs.append(dict(video=job.name, status=None, error=None, slurm_job_id=rec.get("job_id"), slurm_state=None,
                         elapsed_s=_record_elapsed(rec), max_rss_mb=rec.get("max_rss_mb"), outcome=rec.get("outcome")))
    ids = [j["slurm_job_id"] for j in jobs if j["slurm_job_id"]]
    acct, source = slurm.job_accounting(ids) if ids else ({}, "none")
    for j in jobs:
        job = out / j["video"]
        a = acct.get(j["slurm_job_id"] or "", {})
        j["slurm_state"] = a.get("state")
        for k in ("elapsed_s", "max_rss_mb"):
            if a.get(k) is not None:
                j[k] = a[k]
            if j[k] is not None:
                j[k] = round(float(j[k]), 1)
        j["accounting"] = source if a else ("job record" if j["slurm_job_id"] else None)
        if (job / "metrics.json").is_file():
            j["status"] = "done"
        elif (job / "error.txt").is_file():
            j.update(status="failed", error=_last_line(job / "error.txt"))
        elif j["slurm_state"] in ACTIVE:
            j["status"] = "running"
        else:  # died without writing error.txt: killed (memory, time), crashed
            why = [f"Slurm state {j['slurm_state']}"] if j["slurm_state"] else []
            why += [f"job outcome {j['outcome']}"] if j["outcome"] else []
            last = _submitit_error(out, j["slurm_job_id"]) if j["slurm_job_id"] else None
            j.update(status="failed", error=f"no metrics.json ({', '.join(why) or 'no error.txt'})"
                     + (f": {last}" if last else ""))
    return jobs


ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING", "RESIZING", "SUSPENDED", "PREEMPTED",
          "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SIGNALING", "STAGE_OUT"}


def _record_elapsed(rec: dict) -> float | None:
    try:
        t0 = time.mktime(time.strptime(rec["started_at"], "%Y-%m-%dT%H:%M:%S"))
        t1 = time.mktime(time.strptime(rec["ended_at"], "%Y-%m-%dT%H:%M:%S"))
    except (KeyError, TypeError, ValueError):
        return None
    return t1 - t0


def _submitit_error(out: Path, job_id: str) -> str | None:
    """The last line of the submitit stderr log of ``job_id`` (a job that died without error.txt)."""
    for err in sorted((out / ".submitit").glob(f"{job_id}*/*_log.err")):
        return _last_line(err)
    return None


def collect(out: Path) -> list[dict]:
    rows = []
    for path in sorted(out.glob("*/metrics.json")):
        m = json.loads(path.read_text())
        for method, vals in m["methods"].items():
            rows.append(dict(video=m["video"], method=method, **{k: vals.get(k) for k in METRICS},
                             occlusion_bins=vals.get("occlusion_bins"), paper_reference=m.get("paper_reference"),
                             job=path.parent.name))
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


def _fmt_s(s) -> str:
    if s is None:
        return "–"
    s = int(round(float(s)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def summarise(rows: list[dict], paper: dict, out: Path, jobs: list[dict] | None = None) -> str:
    """``per_video.csv`` (one row per video and method; failed videos one row with their error; the job's
    Slurm columns beside the metrics) and ``summary.md``; returns the Markdown."""
    jobs = jobs or []
    by_job = {j["video"]: j for j in jobs}
    fields = ["video", "method", *METRICS, *JOB_FIELDS]
    with open(out / "per_video.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            j = by_job.get(r.get("job"), {"status": "done"})
            w.writerow({**{k: r[k] for k in ["video", "method", *METRICS]}, **{k: j.get(k) for k in JOB_FIELDS}})
        for j in jobs:
            if j["status"] != "done":
                w.writerow({"video": j["video"], "method": "", **{k: j.get(k) for k in JOB_FIELDS}})
    lines = _metric_lines(rows, paper) if rows else ["# Benchmark summary (no finished videos)"]
    if jobs:
        failed = [j for j in jobs if j["status"] != "done"]
        slurm_cols = any(j.get("slurm_job_id") for j in jobs)
        sources = sorted({j["accounting"] for j in jobs if j.get("accounting")})
        lines += ["", f"## Jobs ({len(jobs) - len(failed)} done, "
                  f"{sum(j['status'] == 'failed' for j in jobs)} failed, "
                  f"{sum(j['status'] == 'running' for j in jobs)} unfinished)", ""]
        if slurm_cols:
            lines += [f"Slurm accounting from: {', '.join(sources) or 'none'}", "",
                      "| video | status | Slurm job | state | elapsed | max RSS (MB) | error |",
                      "|---|---|---|---|---|---|---|"]
            for j in jobs:
                rss = "–" if j.get("max_rss_mb") is None else f"{j['max_rss_mb']:.0f}"
                lines.append(f"| {j['video']} | {j['status']} | {j.get('slurm_job_id') or '–'} | "
                             f"{j.get('slurm_state') or '–'} | {_fmt_s(j.get('elapsed_s'))} | {rss} | "
                             f"{_md(j.get('error'))} |")
        else:
            lines += ["| video | status | error |", "|---|---|---|"]
            lines += [f"| {j['video']} | {j['status']} | {_md(j.get('error'))} |" for j in jobs]
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


def _md(text) -> str:
    return "" if not text else str(text).replace("|", "\\|").replace("\n", " ")


def _metric_lines(rows: list[dict], paper: dict) -> list[str]:
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
    return lines


def wait_for_slurm_jobs(out: Path, timeout_s: float = 24 * 3600) -> None:
    """After the launcher returned (a failed job makes submitit return early), wait until none of this
    benchmark's Slurm jobs (``.submitit/<job id>/`` folders) is pending or running."""
    from dinotracker.utils import slurm

    ids = [p.name for p in (out / ".submitit").glob("*") if p.is_dir()]
    t0 = time.time()
    while (active := slurm.active_jobs(ids)) and time.time() - t0 < timeout_s:
        log.info("waiting for Slurm jobs %s", ", ".join(active))
        time.sleep(min(30.0, 1.0 + (time.time() - t0) / 10))


def run(cfg: DictConfig) -> None:
    out = Path(str(cfg.output_dir)).resolve()
    out.mkdir(parents=True, exist_ok=True)
    videos = pending_videos(cfg, out)
    rc = 0
    if videos:
        cmd = fit_command(cfg, out, videos)
        log.info("launching: %s", " ".join(cmd[1:]))
        rc = subprocess.call(cmd)
        if cfg.launcher and "slurm" in str(cfg.launcher):
            wait_for_slurm_jobs(out)  # submitit returns on result files: jobs may still be ending (or running)
    else:
        log.info("all %d videos already have metrics.json: nothing to run (rerun=true runs them again)",
                 len(cfg.benchmark.videos))
    rows = collect(out)
    jobs = job_status(out)
    paper = cfg.benchmark.get("paper")
    print(summarise(rows, paper_numbers(rows, OmegaConf.to_container(paper) if paper else {}), out, jobs))
    if not rows:
        raise SystemExit(f"no finished videos under {out} (fit exited with {rc})")
    failed = [j["video"] for j in jobs if j["status"] != "done"]
    if rc != 0 or failed:
        log.warning("%d job(s) did not finish (%s; fit exited with %d): see %s; running the benchmark again "
                    "retries them", len(failed), ", ".join(failed) or "?", rc, out / "summary.md")


main = hydra_entry(run, "benchmark", needs_video=False)

if __name__ == "__main__":
    main()
