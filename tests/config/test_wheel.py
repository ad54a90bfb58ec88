"""The configs ship in the wheel: ``experiments/wheel_check.sh`` (= ``make wheel-check``) builds it, installs
it (no deps) into a clean virtual environment that borrows this environment's dependencies, and runs the
entry point from outside the checkout (--help, --cfg job, the missing-video error, every console script)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_contains_configs_and_runs(tmp_path):
    pytest.importorskip("setuptools")
    r = subprocess.run(["bash", str(REPO / "experiments" / "wheel_check.sh"), str(tmp_path)], cwd=REPO,
                       env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PY": sys.executable},
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "[wheel-check] OK" in r.stdout
    assert (tmp_path / "venv" / "lib").is_dir() and next((tmp_path / "dist").glob("dinotracker-*.whl"))
