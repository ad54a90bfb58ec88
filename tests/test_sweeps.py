"""Sweeps: the Optuna search config runs trials of the fit job and optimises the returned metric; a failing
trial returns NaN instead of ending the sweep."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # several fit jobs each


def _fit(tmp_path, tiny, *args):
    cmd = [sys.executable, "-m", "dinotracker.fit", "-m", "+video=synthetic", *tiny,
           f"paths.cache_dir={tmp_path / 'c'}", f"hydra.sweep.dir={tmp_path / 'sweep'}", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_optuna_search_runs_trials(tmp_path, tiny_fit_overrides):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    r = _fit(tmp_path, tiny_fit_overrides, "hparams_search=optuna_aj", "hydra.sweeper.n_trials=2",
             "hydra.sweeper.sampler.n_startup_trials=1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(list((tmp_path / "sweep").glob("*/metrics.json"))) == 2
    assert "best_value" in (tmp_path / "sweep" / "optimization_results.yaml").read_text()


def test_failed_job_does_not_end_sweep(tmp_path, tiny_fit_overrides):
    # the second job asks for a model resolution smaller than one patch and fails; the first still finishes
    r = _fit(tmp_path, tiny_fit_overrides, "preprocess.short_side=56,7")
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(list((tmp_path / "sweep").glob("*/metrics.json"))) == 1
    assert len(list((tmp_path / "sweep").glob("*/error.txt"))) == 1
