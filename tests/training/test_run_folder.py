"""One writer per run folder (issue 16): a fit holds ``<run>/.fit.lock``; a second fit on the same folder
refuses naming the holder, a lock left by a killed process is taken over with a message."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dinotracker.utils.runlock import LOCK_NAME, RunFolderLocked, RunLock

REPO = Path(__file__).resolve().parents[2]
HOLD = ("import sys; from dinotracker.utils.runlock import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); sys.stdin.read(); lock.release()")


def _holder(folder: Path) -> subprocess.Popen:
    """A process holding ``folder``'s lock until its stdin closes (returns once it holds it)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, cwd=REPO, env=env)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_lock_in_process_refused_and_released(tmp_path):
    with RunLock(tmp_path) as lock:
        assert lock.held and (tmp_path / LOCK_NAME).is_file()
        with pytest.raises(RunFolderLocked, match=rf"pid {os.getpid()} on host {socket.gethostname()}"):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_NAME).exists()
    RunLock(tmp_path).acquire().release()  # free again


def test_lock_of_killed_process_is_taken_over(tmp_path, caplog):
    p = _holder(tmp_path)
    with pytest.raises(RunFolderLocked, match=f"pid {p.pid} "):
        RunLock(tmp_path).acquire()
    p.send_signal(signal.SIGKILL)
    p.wait()
    with caplog.at_level(logging.WARNING, logger="dinotracker.utils.runlock"):
        lock = RunLock(tmp_path).acquire()
    assert f"taking over the stale lock of pid {p.pid} " in caplog.text
    lock.release()


def test_second_fit_on_same_folder_refused(tmp_path, tiny_fit_overrides):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("# the running fit's config\n")
    p = _holder(run)
    try:
        cmd = [sys.executable, "-m", "dinotracker.fit", "+video=synthetic", *tiny_fit_overrides,
               f"paths.cache_dir={tmp_path / 'c'}", f"hydra.run.dir={run}"]
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    finally:
        p.stdin.close()
        p.wait()
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: run folder") and f"pid {p.pid} on host {socket.gethostname()}" in last, r.stderr
    assert not (run / "run_info.json").exists() and not (run / "checkpoints").exists()  # refused before any work
    assert (run / ".hydra" / "config.yaml").read_text() == "# the running fit's config\n"  # put back
    assert not (run / LOCK_NAME).exists()  # the holder released it
