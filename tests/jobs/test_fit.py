"""The fast tier's end-to-end fit: ``python -m dinotracker.fit`` for 2 steps on a tiny synthetic video (so a
broken fit job fails ``make test``), and ``dinotracker.load`` on its run folder in a fresh interpreter,
which must not import Lightning (the inference path is plain torch: ``models.checkpoint``)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory, tiny_fit_overrides) -> Path:
    tmp = tmp_path_factory.mktemp("fit")
    cmd = [sys.executable, "-m", "dinotracker.fit", "+video=synthetic", *tiny_fit_overrides,
           f"paths.cache_dir={tmp / 'cache'}", f"hydra.run.dir={tmp / 'run'}"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp / "run"


def test_fit_job_writes_the_run_folder(fitted_run):
    for name in ("tracker.pt", "run_info.json", "tracks.npz", "metrics.json", "metrics.md", ".hydra/config.yaml"):
        assert (fitted_run / name).is_file(), name
    metrics = json.loads((fitted_run / "metrics.json").read_text())
    assert {"dinotracker", "still"} <= set(metrics["methods"])
    assert 0.0 <= metrics["methods"]["dinotracker"]["delta_avg"] <= 1.0


def test_fit_job_times_its_stages(fitted_run):
    """timings.json (issue 13: time and peak memory per stage, printed by the job itself)."""
    t = json.loads((fitted_run / "timings.json").read_text())
    names = [r["stage"] for r in t["stages"]]
    assert names[:3] == ["preprocessing", "training", "tracking + occlusion (post-fit grid)"]
    assert "evaluation (ground-truth queries, baselines)" in names
    assert all(r["seconds"] > 0 and r["host_peak_mb"] > 50 for r in t["stages"])
    assert sum(r["seconds"] for r in t["stages"]) <= t["total_seconds"]
    assert "| training |" in (fitted_run / "fit.log").read_text()


LOAD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import dinotracker

    tracker = dinotracker.load(sys.argv[1])
    q = np.load(sys.argv[1] + "/tracks.npz")["queries"]
    out = tracker.track(q, occlusion=False)
    np.save(sys.argv[2], out["tracks"].numpy())
    print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning",
                                                                          "lightning_fabric"))))
""")


def test_load_does_not_import_lightning(fitted_run, tmp_path):
    r = subprocess.run([sys.executable, "-c", LOAD, str(fitted_run), str(tmp_path / "tracks.npy")], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []
    # and it is the fitted tracker: the fit job's own export of the same queries
    want = np.load(fitted_run / "tracks.npz")["tracks"]
    np.testing.assert_allclose(np.load(tmp_path / "tracks.npy"), want, atol=1e-3)
