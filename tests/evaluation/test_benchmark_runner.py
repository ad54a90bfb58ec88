"""The benchmark runner: one fit job per video (Hydra multirun, submitit_local launcher), per-video CSV and
summary, and a second run that skips the finished videos."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
def _bench(tmp_path, launcher, tiny):
    overrides = "fit_overrides=[" + ",".join(f'"{o}"' for o in [*tiny, f"paths.cache_dir={tmp_path / 'cache'}"]) + "]"
    cmd = [sys.executable, "-m", "dinotracker.benchmark", "benchmark=synthetic", "benchmark.seeds=[0,1]", overrides,
           f"output_dir={tmp_path / 'bench'}"]
    if launcher:
        cmd.append(f"launcher={launcher}")
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # two benchmark runs of two fit jobs each
@pytest.mark.parametrize("launcher", [None, "submitit_local"])
def test_benchmark_runs_summarises_and_skips(tmp_path, launcher, tiny_fit_overrides):
    if launcher:
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    r = _bench(tmp_path, launcher, tiny_fit_overrides)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "bench"
    rows = list(csv.DictReader(open(out / "per_video.csv")))
    assert {r["video"] for r in rows} == {"synthetic-s0", "synthetic-s1"}
    assert {"dinotracker", "still", "dis_chaining"} <= {r["method"] for r in rows}
    summary = (out / "summary.md").read_text()
    assert "| dis_chaining |" in summary and "occlusion rate" in summary
    stamp = {p: p.stat().st_mtime for p in out.glob("*/metrics.json")}
    r = _bench(tmp_path, launcher, tiny_fit_overrides)  # again: both videos are skipped, metrics untouched
    assert r.returncode == 0, r.stderr[-3000:]
    assert {p: p.stat().st_mtime for p in out.glob("*/metrics.json")} == stamp


def test_paper_numbers_follow_the_experiment():
    from dinotracker.jobs.benchmark import paper_numbers

    paper = {"dinotracker": {"delta_avg": 0.804, "occlusion_accuracy": 0.881, "average_jaccard": 0.646}}
    rows = [dict(video="a", method="dinotracker", paper_reference=None)]
    assert paper_numbers(rows, paper) == paper
    ref = {"label": "Tab. 2 w/o L_prior", "method": "dinotracker", "delta_avg": 0.792, "occlusion_accuracy": 0.848,
           "average_jaccard": 0.61}
    rows = [dict(video="a", method="dinotracker", paper_reference=ref)]
    assert paper_numbers(rows, paper)["dinotracker"] == {"delta_avg": 0.792, "occlusion_accuracy": 0.848,
                                                         "average_jaccard": 0.61}
    raw = {"label": "Tab. 3", "method": "raw_dino", "delta_avg": 0.647}
    got = paper_numbers([dict(video="a", method="raw_dino", paper_reference=raw)], paper)
    assert got["raw_dino"] == {"delta_avg": 0.647} and got["dinotracker"] == paper["dinotracker"]


def _job(out, name, video, seed=None, metrics=None, error=None):
    job = out / name
    (job / ".hydra").mkdir(parents=True)
    overrides = [f"+video={video}", "evaluate.query_mode=first"] + ([f"video.seed={seed}"] if seed is not None else [])
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        import json

        m = {"delta_avg": metrics, "occlusion_accuracy": 0.5, "average_jaccard": metrics / 2}
        (job / "metrics.json").write_text(json.dumps({"video": name, "methods": {"dinotracker": m}}))
    if error is not None:
        (job / "error.txt").write_text(f"Traceback (most recent call last):\n  ...\n{error}\n")


def test_failed_jobs_are_listed_and_only_unfinished_videos_run_again(tmp_path):
    from omegaconf import OmegaConf

    from dinotracker.jobs.benchmark import collect, job_status, pending_videos, summarise

    out = tmp_path / "bench"
    _job(out, "blackswan", "davis_blackswan", metrics=0.6)
    _job(out, "judo", "davis_judo", error="ValueError: cannot decode frame 00003.jpg | broken")
    cfg = OmegaConf.create({"rerun": False, "benchmark": {"videos": ["davis_blackswan", "davis_judo", "x"]}})
    assert pending_videos(cfg, out) == ["davis_judo", "x"]
    cfg.rerun = True
    assert pending_videos(cfg, out) == ["davis_blackswan", "davis_judo", "x"]
    seeded = OmegaConf.create({"rerun": False, "benchmark": {"videos": ["synthetic"], "seeds": [0, 1]}})
    _job(out, "synthetic-s0", "synthetic", seed=0, metrics=0.5)
    assert pending_videos(seeded, out) == ["synthetic"]
    _job(out, "synthetic-s1", "synthetic", seed=1, metrics=0.7)
    assert pending_videos(seeded, out) == []

    jobs = job_status(out)
    assert [(j["video"], j["status"]) for j in jobs] == [("blackswan", "done"), ("judo", "failed"),
                                                          ("synthetic-s0", "done"), ("synthetic-s1", "done")]
    assert jobs[1]["error"] == "ValueError: cannot decode frame 00003.jpg | broken"
    text = summarise(collect(out), {}, out, jobs)
    assert text.startswith("# Benchmark summary (3 videos")
    assert "## Jobs (3 done, 1 failed, 0 unfinished)" in text
    assert "| judo | failed | ValueError: cannot decode frame 00003.jpg \\| broken |" in text
    rows = list(csv.DictReader(open(out / "per_video.csv")))
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["video"] == "judo" and failed[0]["delta_avg"] == ""
    assert failed[0]["error"].startswith("ValueError")
