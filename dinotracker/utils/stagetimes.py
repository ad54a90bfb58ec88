"""Wall time and peak memory of the fit job's stages, printed by the job and kept in ``timings.json``.

One :class:`StageTimes` per job; ``with times.stage("training"): ...`` records the stage's wall time, the
process's peak host RSS during it (sampled every 50 ms) and, on CUDA, the stage's peak allocated GPU memory.
``experiments/bench/fit_e2e.py`` reads ``timings.json`` of many runs (issue 13: time per stage, videos per
GPU-hour).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

from dinotracker.utils.atomic import write_text
from dinotracker.utils.memory import PeakMemory


class StageTimes:
    def __init__(self):
        self.rows: list[dict] = []
        self._t0 = time.perf_counter()

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        with PeakMemory(interval=0.05) as pm:
            try:
                yield
            finally:
                seconds = time.perf_counter() - start
        self.rows.append(dict(stage=name, seconds=round(seconds, 3), host_peak_mb=round(pm.peak_rss_mb, 1),
                              gpu_peak_mb=round(pm.cuda_peak_mb, 1)))

    @property
    def total(self) -> float:
        return round(time.perf_counter() - self._t0, 3)

    def table(self) -> str:
        """Markdown: one row per stage and the job's total (wall time since construction)."""
        lines = ["| stage | wall s | peak host RSS MB | peak GPU MB |", "|---|---|---|---|"]
        for r in self.rows:
            gpu = f"{r['gpu_peak_mb']:.0f}" if r["gpu_peak_mb"] else "-"
            lines.append(f"| {r['stage']} | {r['seconds']:.1f} | {r['host_peak_mb']:.0f} | {gpu} |")
        lines.append(f"| total (after start-up and imports) | {self.total:.1f} | | |")
        return "\n".join(lines)

    def write(self, path) -> Path:
        import json

        return write_text(path, json.dumps({"stages": self.rows, "total_seconds": self.total}, indent=1) + "\n")
