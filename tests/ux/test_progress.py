"""Progress in every long step when the output is not a terminal: training, tracking (issue 15)."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dinotracker.utils.progress import Progress, progress_line

REPO = Path(__file__).resolve().parents[2]


def test_progress_line_counts_and_eta():
    line = progress_line("train step", 40, 60, 20.0, loss=0.0123)
    assert line.startswith("train step 40/60 (67%) loss=0.0123 0.5 s/step ETA 0:00:10"), line
    assert "took 0:00:30" in progress_line("train step", 60, 60, 30.0)


def test_progress_after_resume_counts_the_whole_run(caplog):
    # resumed at 41 of 100: the count is of the whole run (never 90/59), the rate of this process's steps
    p = Progress("train step", 100, every_n=10, every_s=0, start=41, logger=logging.getLogger("t"))
    with caplog.at_level(logging.INFO, logger="t"):
        for s in range(42, 101):
            p.set(s)
        p.finish()
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs[0].startswith("train step 51/100 (51%)"), msgs
    assert msgs[-1].startswith("train step 100/100 (100%)") and len(msgs) == len(set(msgs)) == 6


def _fit(tmp_path, tiny, *extra):
    run = tmp_path / "run"
    args = ["+video=synthetic", *tiny, f"paths.cache_dir={tmp_path / 'c'}", f"hydra.run.dir={run}", *extra]
    r = subprocess.run([sys.executable, "-m", "dinotracker.fit", *args], cwd=REPO, capture_output=True,
                       text=True, timeout=600)  # stdout/stderr are pipes: not a terminal
    assert r.returncode == 0, r.stderr[-3000:]
    return run, r


@pytest.mark.slow
def test_redirected_fit_logs_progress_once_per_line(tmp_path, tiny_fit_overrides):
    over = [o for o in tiny_fit_overrides if not o.startswith(("trainer.max_steps", "callbacks="))]
    run, r = _fit(tmp_path, over, "trainer.max_steps=60", "callbacks=default", "callbacks.lr_monitor=null",
                  "callbacks.track_viz=null", "callbacks.loss_curves=null", "callbacks.model_checkpoint=null",
                  "callbacks.progress_bar.every_n_steps=20", "track.grid_step=24")
    text = (run / "fit.log").read_text()
    steps = re.findall(r"train step (\d+)/60 \(\d+%\)", text)
    assert len(steps) >= 2 and steps[-1] == "60", text[-2000:]
    assert "loss=" in text and "s/step" in text
    lines = [ln.split("] - ", 1)[-1] for ln in text.splitlines() if ln.strip()]
    dup = {ln for ln in lines if lines.count(ln) > 1}
    assert not dup, dup
    out_lines = [ln for ln in r.stdout.splitlines() + r.stderr.splitlines() if "Trainer.fit` stopped" in ln]
    assert len(out_lines) == 1, out_lines  # Lightning's own console handler no longer doubles it
    # the post-fit grid reports its progress and time
    assert re.search(r"tracking \d+ points \d+/\d+", text) and "grid of" in text and " s -> " in text

    # a redirected `track` logs progress too
    t = subprocess.run([sys.executable, "-m", "dinotracker.track", f"run={run}", "grid_step=12",
                        f"out={tmp_path / 'g.npz'}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert t.returncode == 0, t.stderr[-3000:]
    assert re.search(r"tracking \d+ points \d+/\d+ \(100%\)", t.stdout + t.stderr), t.stdout[-2000:]
    assert re.search(r"occlusion of \d+ points \d+/\d+ \(100%\)", t.stdout + t.stderr)


def test_progress_iter_logs_lines_when_not_a_terminal(caplog, monkeypatch):
    from dinotracker.utils import progress as P

    monkeypatch.setattr(P, "is_terminal", lambda stream=None: False)
    with caplog.at_level(logging.INFO, logger="t2"):
        out = list(P.progress_iter(range(5), desc="flow", every_s=0, every_n=1, logger=logging.getLogger("t2")))
    assert out == list(range(5))
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs[0].startswith("flow 1/5 (20%)") and msgs[-1].startswith("flow 5/5 (100%)") and len(msgs) == 5
    assert list(P.progress_iter(range(3), desc="x", disable=True)) == [0, 1, 2]
