"""On a live Slurm cluster (``experiments/slurm/local_cluster.sh start``; ``make test-slurm``): the benchmark
submitted with the Slurm launcher, a fit job requeued mid-training that resumes to bit-identical weights, and
a failing job isolated in the summary and retried. Skipped when no cluster answers ``sinfo``.

Jobs run this checkout's code with this interpreter: submitit starts ``sys.executable`` in the job and
sbatch exports the environment, so ``PYTHONPATH`` is set to the checkout here.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dinotracker.utils.slurm import cluster_answers

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slurm
LAUNCHER = "slurm_local"


@pytest.fixture(scope="module", autouse=True)
def cluster():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    why = cluster_answers()
    if why:
        pytest.skip(f"no Slurm cluster: {why} (start one with experiments/slurm/local_cluster.sh start)")


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def _run(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)


def _davis_tiny(tiny: list[str]) -> list[str]:
    """The tiny fit overrides for the DAVIS cuts: the synthetic video's own keys out, 5 frames kept."""
    synthetic_only = ("video.num_frames", "video.height", "video.width", "video.num_points")
    return [o for o in tiny if not o.startswith(synthetic_only)] + ["++video.end=5", "track.export=[npz]"]


def _bench(out: Path, fit_overrides: list[str], *extra: str) -> subprocess.CompletedProcess:
    fo = "fit_overrides=[" + ",".join(f'"{o}"' for o in fit_overrides) + "]"
    return _run([sys.executable, "-m", "dinotracker.benchmark", "benchmark=tapvid_davis_mini", fo,
                 f"output_dir={out}", f"launcher={LAUNCHER}", *extra])


def test_benchmark_on_slurm_summarises_and_second_submission_skips(tmp_path, shared_data, tiny_fit_overrides):
    overrides = [*_davis_tiny(tiny_fit_overrides), f"paths.cache_dir={tmp_path / 'cache'}",
                 f"paths.data_dir={shared_data}"]
    out = tmp_path / "bench"
    r = _bench(out, overrides)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "per_video.csv")))
    assert {x["video"] for x in rows} == {"horsejump-high", "blackswan", "judo"}
    assert {x["status"] for x in rows} == {"done"}
    # the cluster's columns: every video ran as its own Slurm job, sacct (or scontrol) reported on it
    jobs = {x["video"]: x for x in rows if x["method"] == "dinotracker"}
    assert len({j["slurm_job_id"] for j in jobs.values()}) == 3 and all(j["slurm_job_id"] for j in jobs.values())
    assert all(j["slurm_state"] == "COMPLETED" for j in jobs.values()), jobs
    assert all(float(j["elapsed_s"]) > 0 and float(j["max_rss_mb"]) > 50 for j in jobs.values()), jobs
    summary = (out / "summary.md").read_text()
    assert "# Benchmark summary (3 videos" in summary and "## Jobs (3 done, 0 failed" in summary
    assert "| blackswan | done |" in summary
    submitted = sorted(p.name for p in (out / ".submitit").iterdir())
    stamp = {p: p.stat().st_mtime for p in out.glob("*/metrics.json")}

    r = _bench(out, overrides)  # again: all three finished, nothing is submitted
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "nothing to run" in r.stdout + r.stderr, r.stdout[-2000:]
    assert sorted(p.name for p in (out / ".submitit").iterdir()) == submitted
    assert {p: p.stat().st_mtime for p in out.glob("*/metrics.json")} == stamp
    assert (out / "summary.md").read_text().startswith("# Benchmark summary (3 videos")


def _job_record(run: Path, timeout: float = 300) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            return json.loads((run / "slurm.json").read_text())
        except (OSError, ValueError):
            time.sleep(0.5)
    raise AssertionError(f"no slurm.json in {run} after {timeout} s")


def _release_requeued(job_id: str, timeout: float = 120) -> None:
    """Slurm holds a requeued batch job for ~2 minutes (Reason=BeginTime); let it start now."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        state = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
        if "JobState=PENDING" in state:
            if "Reason=BeginTime" not in state:
                return
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True)
        elif "JobState=RUNNING" in state and "Restarts=1" in state:
            return
        time.sleep(0.5)
    raise AssertionError(f"requeued job {job_id} did not come back: {state}")


def _tensors(d, prefix="") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_tensors(v, f"{prefix}{k}."))
        elif isinstance(v, torch.Tensor):
            out[prefix + k] = v
    return out


def test_requeued_fit_resumes_to_the_same_weights(tmp_path, tiny_fit_overrides):
    steps = 80
    fit = [o for o in tiny_fit_overrides if not o.startswith(("trainer.max_steps", "callbacks"))]
    fit += [f"trainer.max_steps={steps}", "callbacks.track_viz=null", "callbacks.loss_curves=null",
            "callbacks.lr_monitor=null", "callbacks.progress_bar=null",
            "callbacks.model_checkpoint.every_n_train_steps=5", f"paths.cache_dir={tmp_path / 'cache'}",
            "track.export=[npz]"]
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "dinotracker.fit", "-m", f"hydra/launcher={LAUNCHER}", "+video=synthetic", *fit,
           f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        run = sweep / "0_synthetic-s0"
        first = run / "checkpoints" / "step_000005.ckpt"
        t0 = time.time()
        while not first.is_file():
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.time() - t0 < 400, "no first checkpoint"
            time.sleep(0.1)
        job = _job_record(run)["job_id"]
        r = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        _release_requeued(job)
        log, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, log[-3000:]
    rec = json.loads((run / "slurm.json").read_text())
    # interrupted mid-training, by the requeue's SIGTERM, and resumed by the same job after one restart
    assert rec["job_id"] == job and rec["restarts"] == 1 and rec["outcome"] == "done", rec
    assert rec["preempted_by"] == "SIGTERM" and 5 <= rec["preempted_at_step"] < steps, rec
    fit_log = (run / "fit.log").read_text()
    assert "Restored all states from the checkpoint" in fit_log and not (run / "preempted.json").exists()

    ref = tmp_path / "ref"  # the same config, never interrupted (here, not on the cluster)
    r = _run([sys.executable, "-m", "dinotracker.fit", "+video=synthetic", *fit, f"hydra.run.dir={ref}"])
    assert r.returncode == 0, r.stderr[-3000:]
    a = _tensors(torch.load(run / "tracker.pt", weights_only=True))
    b = _tensors(torch.load(ref / "tracker.pt", weights_only=True))
    assert a.keys() == b.keys() and len(a) > 10
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_failing_job_is_reported_and_retried(tmp_path, shared_data, tiny_fit_overrides):
    confs = tmp_path / "conf"
    (confs / "video").mkdir(parents=True)
    frames = tmp_path / "broken_frames"
    frames.mkdir()
    for i in range(5):
        (frames / f"{i:05d}.jpg").write_bytes(b"not a jpeg")
    broken = confs / "video" / "broken.yaml"
    broken.write_text(f"kind: path\nname: broken\npath: {frames}\nmasks: null\ngt: null\nstart: 0\nend: null\n"
                      "stride: 1\n")
    overrides = [*_davis_tiny(tiny_fit_overrides), f"paths.cache_dir={tmp_path / 'cache'}",
                 f"paths.data_dir={shared_data}", f"hydra.searchpath=[file://{confs}]"]
    out = tmp_path / "bench"
    r = _bench(out, overrides, "benchmark.videos=[davis_blackswan,broken]")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    rows = {x["video"]: x for x in csv.DictReader(open(out / "per_video.csv"))}
    assert rows["blackswan"]["status"] == "done" and rows["blackswan"]["delta_avg"]
    assert rows["broken"]["status"] == "failed" and rows["broken"]["error"] and rows["broken"]["slurm_job_id"]
    summary = (out / "summary.md").read_text()
    assert "# Benchmark summary (1 videos" in summary and "## Jobs (1 done, 1 failed" in summary
    line = next(x for x in summary.splitlines() if x.startswith("| broken | failed |"))
    assert rows["broken"]["error"][:40].replace("|", "\\|") in line
    done = {p: p.stat().st_mtime for p in out.glob("*/metrics.json")}

    # fixed (the real horsejump-high frames under the same name): the rerun retries broken, skips blackswan
    src = shared_data / "tapvid_davis_mini" / "horsejump-high"
    broken.write_text(f"kind: path\nname: broken\npath: {src / 'frames'}\nmasks: {src / 'masks'}\n"
                      f"gt: {src / 'gt.npz'}\nstart: 0\nend: null\nstride: 1\n")
    r = _bench(out, overrides, "benchmark.videos=[davis_blackswan,broken]")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    rows = {x["video"]: x for x in csv.DictReader(open(out / "per_video.csv")) if x["method"] == "dinotracker"}
    assert set(rows) == {"blackswan", "broken"} and {x["status"] for x in rows.values()} == {"done"}
    assert not (out / "broken" / "error.txt").exists()
    assert {p: p.stat().st_mtime for p in done} == done  # blackswan was not run again
    assert "## Jobs (2 done, 0 failed" in (out / "summary.md").read_text()
