"""experiments/bench/fit_e2e.py: per-stage table from the jobs' timings.json and videos per hour for 1 and 2
concurrent fits (tiny fits; the numbers themselves are not checked, only that they are the jobs' own)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_fit_e2e_bench_prints_stages_and_throughput(tmp_path, tiny_fit_overrides):
    r = subprocess.run([sys.executable, "experiments/bench/fit_e2e.py", "--jobs", "1", "2", "--out", str(tmp_path),
                        "--", *tiny_fit_overrides], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = r.stdout
    runs = sorted((tmp_path / "ours_2").glob("job*/timings.json"))
    assert len(runs) == 2 and {json.loads(p.read_text())["stages"][0]["stage"] for p in runs} == {"preprocessing"}
    one = json.loads((tmp_path / "ours_1" / "job0" / "timings.json").read_text())
    train = next(s for s in one["stages"] if s["stage"] == "training")
    assert f"| training | {train['seconds']:.1f} |" in out  # the job's own number, not a re-measurement
    rows = dict(re.findall(r"^\| (\d) \| \w+ \| [\d.]+ \| ([\d.]+) \|", out, re.M))
    assert set(rows) == {"1", "2"} and all(float(v) > 0 for v in rows.values())
    # the two concurrent jobs fitted two different videos (video.seed = job index)
    names = {json.loads((tmp_path / "ours_2" / f"job{k}" / "run_info.json").read_text())["video"]["name"]
             for k in (0, 1)}
    assert names == {"synthetic-s0", "synthetic-s1"}
