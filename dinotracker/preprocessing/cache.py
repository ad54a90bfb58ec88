"""A per-video preprocessing cache: one folder per video, one entry per stage.

Each stage entry lives in ``<root>/<stage>-<key>/`` where ``key`` hashes the inputs and
the part of the config that affects the stage (and, through them, every upstream key).
An entry is written into a temporary folder and renamed into place when complete, so an
interrupted run leaves no half-written entry: the next run recomputes only the stages
whose entry is missing and reuses the rest. Arrays are stored as ``.npy`` (memory-mapped
on load), small metadata as ``meta.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def stable_hash(obj, length: int = 16) -> str:
    """Hash of a JSON-able object (dicts sorted), used for cache keys."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def array_hash(arr: np.ndarray, length: int = 16) -> str:
    """Content hash of an array (shape, dtype and bytes)."""
    h = hashlib.sha256()
    h.update(str((arr.shape, str(arr.dtype))).encode())
    h.update(np.ascontiguousarray(arr).data)
    return h.hexdigest()[:length]


class StageCache:
    """Stage entries of one video under ``root``."""

    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, stage: str, key: str) -> Path:
        return self.root / f"{stage}-{key}"

    def has(self, stage: str, key: str) -> bool:
        return (self.path(stage, key) / "meta.json").is_file()

    def load(self, stage: str, key: str, mmap: bool = True) -> tuple[dict[str, np.ndarray], dict]:
        folder = self.path(stage, key)
        meta = json.loads((folder / "meta.json").read_text())
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r" if mmap else None)
                  for name in meta.get("arrays", [])}
        return arrays, meta

    def save(self, stage: str, key: str, arrays: dict[str, np.ndarray], meta: dict | None = None) -> Path:
        """Write an entry atomically (temporary folder, then rename)."""
        final = self.path(stage, key)
        tmp = self.root / f".{stage}-{key}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", np.asarray(arr))
        meta = dict(meta or {})
        meta.update(stage=stage, key=key, arrays=sorted(arrays), written=time.strftime("%Y-%m-%d %H:%M:%S"))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        if final.exists():  # a concurrent writer finished first; keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
        return final

    def get_or_compute(self, stage: str, key: str, compute: Callable[[], tuple[dict, dict]],
                       stats: dict | None = None) -> tuple[dict[str, np.ndarray], dict]:
        """Load ``stage`` if cached under ``key``, else run ``compute() -> (arrays, meta)`` and save.

        ``stats[stage]`` receives the time, peak memory and whether it was cached.
        """
        if self.has(stage, key):
            log.info("stage %-13s cached (%s)", stage, self.path(stage, key).name)
            out = self.load(stage, key)
            if stats is not None:
                stats[stage] = dict(cached=True, seconds=0.0, peak_mb=0.0)
            return out
        log.info("stage %-13s computing ...", stage)
        from dinotracker.utils.memory import PeakMemory

        t0 = time.perf_counter()
        with PeakMemory() as mem:
            arrays, meta = compute()
        dt = time.perf_counter() - t0
        meta = dict(meta or {}, seconds=dt)
        self.save(stage, key, arrays, meta)
        if stats is not None:
            stats[stage] = dict(cached=False, seconds=dt, peak_mb=mem.peak_mb)
        log.info("stage %-13s done in %.1f s (peak +%.0f MB)", stage, dt, mem.peak_mb)
        return self.load(stage, key)

    def clean_stale(self, keep: set[str]) -> list[Path]:
        """Remove entries whose ``<stage>-<key>`` name is not in ``keep``; returns what was removed."""
        removed = []
        for p in self.root.iterdir():
            if p.is_dir() and p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        return removed
