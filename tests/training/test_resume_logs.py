"""Logs that survive a resume (issue 16): a fit killed with SIGKILL after a checkpoint and resumed with
``ckpt_path=last`` has one CSV row per step 0..max_steps-1 (rows before the checkpoint kept as written,
rows after it logged once by the resumed fit), TensorBoard in the same version folder, and one W&B run
id for the folder; each job of a multirun gets its own W&B run."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAX_STEPS, EVERY, KILL_AT = 12, 3, 8  # checkpoints at 3, 6, 9; killed at 8 -> resumes from 6


def _env(tmp_path):
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(Path(__file__).parent)]),
                WANDB_MODE="offline", WANDB_SILENT="true", WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"),
                WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"), WANDB_API_KEY="")


def _overrides(tiny, tmp_path, *extra):
    keep = [o for o in tiny if not o.startswith(("callbacks=", "logger=", "trainer.max_steps="))]
    return ["+video=synthetic", *keep, f"paths.cache_dir={tmp_path / 'c'}", "logger=many_loggers",
            f"trainer.max_steps={MAX_STEPS}", "trainer.log_every_n_steps=1", "track.enabled=false",
            "callbacks=default", "callbacks.progress_bar=null", "callbacks.lr_monitor=null",
            "callbacks.track_viz=null", "callbacks.loss_curves=null",
            f"callbacks.model_checkpoint.every_n_train_steps={EVERY}", *extra]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _wandb_ids(run: Path) -> set[str]:
    return {p.name.rsplit("-", 1)[1] for p in (run / "wandb").glob("offline-run-*")}


@pytest.mark.slow
def test_csv_tensorboard_wandb_continue_after_kill9(tmp_path, tiny_fit_overrides):
    pytest.importorskip("wandb")
    pytest.importorskip("tensorboard")
    run, marker = tmp_path / "run", tmp_path / "held"
    cmd = [sys.executable, "-m", "dinotracker.fit", *_overrides(tiny_fit_overrides, tmp_path), f"hydra.run.dir={run}"]
    hold = ["+callbacks.hold._target_=fit_hold.HoldAt", f"+callbacks.hold.step={KILL_AT}",
            f"+callbacks.hold.marker={marker}"]
    p = subprocess.Popen(cmd + hold, cwd=REPO, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    try:
        while not marker.exists():  # the fit reached step KILL_AT and blocks there
            if p.poll() is not None:
                pytest.fail(f"fit ended before step {KILL_AT}: {p.stderr.read()[-3000:]}")
            time.sleep(0.2)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    before = {int(r["step"]): r for r in _rows(run / "csv" / "metrics.csv")}
    assert set(before) >= set(range(EVERY * (KILL_AT // EVERY) + 1)), sorted(before)  # rows past the checkpoint too
    r = subprocess.run(cmd + ["ckpt_path=last"], cwd=REPO, env=_env(tmp_path), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "taking over the stale lock" in r.stderr + (run / "fit.log").read_text()

    rows = _rows(run / "csv" / "metrics.csv")
    steps = [int(x["step"]) for x in rows if x.get("train/loss")]
    assert steps == list(range(MAX_STEPS))  # continuous, no duplicates
    resumed_from = EVERY * (KILL_AT // EVERY)
    for x in rows:  # rows before the checkpoint are the killed run's own
        s = int(x["step"])
        if s < resumed_from and x.get("train/loss"):
            assert x["train/loss"] == before[s]["train/loss"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb_dirs = [p for p in (run / "tensorboard").iterdir() if p.is_dir()]
    assert not tb_dirs, f"TensorBoard started a new version folder: {tb_dirs}"
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2
    acc = EventAccumulator(str(run / "tensorboard")).Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(MAX_STEPS))  # purged after the checkpoint

    ids = _wandb_ids(run)
    assert len(list((run / "wandb").glob("offline-run-*"))) == 2 and len(ids) == 1, ids  # same W&B run resumed


@pytest.mark.slow
def test_each_multirun_job_gets_its_own_wandb_run(tmp_path, tiny_fit_overrides):
    pytest.importorskip("wandb")
    keep = [o for o in tiny_fit_overrides if not o.startswith("logger=")]
    cmd = [sys.executable, "-m", "dinotracker.fit", "-m", "+video=synthetic", *keep, "logger=many_loggers",
           f"paths.cache_dir={tmp_path / 'c'}", f"hydra.sweep.dir={tmp_path / 'sweep'}", "track.enabled=false",
           "seed=1,2"]
    r = subprocess.run(cmd, cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and (p / "fit.log").is_file())
    assert len(jobs) == 2
    ids = [_wandb_ids(j) for j in jobs]
    assert all(len(i) == 1 for i in ids), ids  # each job has its own wandb/ with one run
    assert ids[0] != ids[1]


def test_csv_logger_continues_from_the_resume_step(tmp_path):
    from dinotracker.training.loggers import ContinuedCSVLogger

    d = tmp_path / "csv"
    d.mkdir()
    lines = ["epoch,step,train/loss"] + [f"0,{s},{s / 10}" for s in range(10)] + ["0,10"]  # last: half-written
    (d / "metrics.csv").write_text("\n".join(lines))
    lg = ContinuedCSVLogger(str(tmp_path), name="csv", version="", resume_step=6)
    for s in (6, 7):
        lg.log_metrics({"train/loss": 100.0 + s, "lr": 0.1}, step=s)  # a new column too
    lg.save()
    rows = _rows(d / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(8))
    assert [float(r["train/loss"]) for r in rows] == [s / 10 for s in range(6)] + [106.0, 107.0]
    assert rows[0]["lr"] == "" and rows[-1]["lr"] == "0.1"
    fresh = ContinuedCSVLogger(str(tmp_path), name="csv", version="")  # no resume: a new file, as Lightning does
    fresh.log_metrics({"train/loss": 1.0}, step=0)
    fresh.save()
    assert len(_rows(d / "metrics.csv")) == 1


def test_own_experiments_finishes_only_the_jobs_run(monkeypatch):
    import types

    from dinotracker.training.loggers import own_experiments

    class Run:
        finished = False

        def finish(self):
            self.finished = True
            fake.run = None

    fake = types.SimpleNamespace(run=None)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with own_experiments():
        fake.run = job = Run()  # the job's WandbLogger opened a run
    assert job.finished and fake.run is None
    fake.run = callers = Run()
    with own_experiments():
        pass  # the logger reused the caller's open run
    assert not callers.finished and fake.run is callers
