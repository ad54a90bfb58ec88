"""A per-video preprocessing cache: one folder per video, one entry per stage.

Each stage entry lives in ``<root>/<stage>-<key>/`` where ``key`` hashes the inputs and
the part of the config that affects the stage (and, through them, every upstream key).
An entry is written into a temporary folder and renamed into place when complete, so an
interrupted run leaves no half-written entry: the next run recomputes only the stages
whose entry is missing and reuses the rest. Arrays are stored as ``.npy`` (memory-mapped
on load), small metadata as ``meta.json``.

What was written is checked on every load: ``meta.json`` records per array its file size,
shape, dtype and an xxh3-64 checksum of its bytes (``checks``); a missing, truncated,
unreadable or altered file raises :class:`CorruptEntryError` naming the file, and
:meth:`StageCache.get_or_compute` then moves the entry aside (``<entry>.corrupt-<time>``),
says so in one line, and recomputes the stage. :func:`check_cache` checks a whole cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class CorruptEntryError(Exception):
    """A cache entry file that is missing, unreadable, or not what was written."""

    def __init__(self, path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"cache entry file {self.path}: {reason}")


def content_digest(arr: np.ndarray) -> str:
    """xxh3-64 of an array's bytes (C order); reads a memory-mapped array once, chunk by chunk."""
    import xxhash

    h = xxhash.xxh3_64()
    flat = arr.reshape(-1) if arr.flags.c_contiguous else np.ascontiguousarray(arr).reshape(-1)
    step = max(1, (64 << 20) // max(flat.itemsize, 1))  # 64 MB at a time
    for i in range(0, flat.shape[0], step):
        h.update(memoryview(flat[i:i + step]).cast("B"))  # a view of a contiguous (memory-mapped) array: no copy
    return h.hexdigest()


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

    def __init__(self, root, create: bool = True, verify: bool = True):
        self.root = Path(root)
        self.verify = bool(verify)  # content checksums on load (sizes, shapes and dtypes are always checked)
        if create:
            self.root.mkdir(parents=True, exist_ok=True)

    def path(self, stage: str, key: str) -> Path:
        return self.root / f"{stage}-{key}"

    def has(self, stage: str, key: str) -> bool:
        return (self.path(stage, key) / "meta.json").is_file()

    def load(self, stage: str, key: str, mmap: bool = True, verify: bool | None = None
             ) -> tuple[dict[str, np.ndarray], dict]:
        """The entry's arrays and meta; :class:`CorruptEntryError` naming the file when one is missing,
        unreadable, or differs from what :meth:`save` recorded (size, shape, dtype; checksum when
        ``verify``, default ``self.verify``). Entries written before the checks get the readability test."""
        verify = self.verify if verify is None else verify
        folder = self.path(stage, key)
        try:
            meta = json.loads((folder / "meta.json").read_text())
            names, checks = list(meta.get("arrays", [])), dict(meta.get("checks") or {})
        except (OSError, ValueError, TypeError, AttributeError) as e:
            raise CorruptEntryError(folder / "meta.json", f"unreadable ({e})") from None
        arrays = {}
        for name in names:
            f, c = folder / f"{name}.npy", checks.get(name)
            if not f.is_file():
                raise CorruptEntryError(f, "missing")
            size = f.stat().st_size
            if c is not None and size != c["file_size"]:
                raise CorruptEntryError(f, f"{size} bytes, {c['file_size']} were written (truncated or replaced)")
            try:
                a = np.load(f, mmap_mode="r" if mmap else None, allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:
                raise CorruptEntryError(f, f"unreadable ({e})") from None
            if c is not None and (list(a.shape) != list(c["shape"]) or str(a.dtype) != c["dtype"]):
                raise CorruptEntryError(f, f"{a.dtype} {list(a.shape)}, {c['dtype']} {c['shape']} were written")
            if c is not None and verify and content_digest(a) != c["xxh3_64"]:
                raise CorruptEntryError(f, "content differs from what was written (checksum mismatch)")
            arrays[name] = a
        return arrays, meta

    def quarantine(self, stage: str, key: str, error: Exception | None = None) -> Path | None:
        """Move an entry aside (``<entry>.corrupt-<time>``, kept for inspection, never read again) and log
        one line naming the bad file. Returns the new place (None when the entry had already gone)."""
        folder = self.path(stage, key)
        aside = folder.with_name(f"{folder.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        try:
            os.replace(folder, aside)
        except FileNotFoundError:
            return None
        log.warning("%s; moved the %s entry aside to %s", error or "corrupt entry", stage, aside.name)
        return aside

    def save(self, stage: str, key: str, arrays: dict[str, np.ndarray], meta: dict | None = None) -> Path:
        """Write an entry atomically (:func:`~dinotracker.utils.atomic.atomic_path`: a uniquely named
        temporary folder, fsynced, then renamed); an entry already there (another writer's) is kept."""
        from dinotracker.utils.atomic import atomic_path

        final = self.path(stage, key)
        with atomic_path(final, folder=True, keep_existing=True) as tmp:
            checks = {}
            for name, arr in arrays.items():
                arr = np.ascontiguousarray(arr)
                np.save(tmp / f"{name}.npy", arr)
                checks[name] = dict(file_size=(tmp / f"{name}.npy").stat().st_size, shape=list(arr.shape),
                                    dtype=str(arr.dtype), xxh3_64=content_digest(arr))
            meta = dict(meta or {})
            meta.update(stage=stage, key=key, arrays=sorted(arrays), checks=checks,
                        written=time.strftime("%Y-%m-%d %H:%M:%S"))
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        return final

    def get_or_compute(self, stage: str, key: str, compute: Callable[[], tuple[dict, dict]],
                       stats: dict | None = None) -> tuple[dict[str, np.ndarray], dict]:
        """Load ``stage`` if cached under ``key``, else run ``compute() -> (arrays, meta)`` and save.

        Computing holds the entry's lock (:meth:`lock`): a second process asking for the same entry waits,
        then reads what the first wrote, so each entry is computed once however many fits share the cache.
        ``stats[stage]`` receives the time, peak memory and whether it was cached.
        """
        if self.has(stage, key):
            try:
                return self._cached(stage, key, stats)
            except CorruptEntryError:
                pass  # moved aside and recomputed under the lock below
        with self.lock(stage, key):
            if self.has(stage, key):  # computed by the process we waited for (or corrupt)
                try:
                    return self._cached(stage, key, stats)
                except CorruptEntryError as e:
                    self.quarantine(stage, key, e)
                    log.warning("stage %-13s recomputing (its cached entry was corrupt)", stage)
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
            return self.load(stage, key, verify=False)  # just written: sizes checked, no second hash

    def _cached(self, stage: str, key: str, stats: dict | None):
        log.info("stage %-13s cached (%s)", stage, self.path(stage, key).name)
        out = self.load(stage, key)
        if stats is not None:
            stats[stage] = dict(cached=True, seconds=0.0, peak_mb=0.0)
        return out

    @contextlib.contextmanager
    def lock(self, stage: str, key: str):
        """Hold ``<root>/.<stage>-<key>.lock`` (an OS file lock, released when the process dies)."""
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.root / f".{stage}-{key}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("stage %-13s being computed by another process: waiting for %s", stage, lock.lock_file)
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def clean_stale(self, keep: set[str]) -> list[Path]:
        """Remove entries whose ``<stage>-<key>`` name is not in ``keep``; returns what was removed."""
        removed = []
        for p in self.root.iterdir():
            if p.is_dir() and p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        return removed


# ---------------------------------------------------------------------- the typed index
@dataclass(frozen=True)
class StageRef:
    """One stage entry of a video's cache: the folder ``<cache_dir>/<stage>-<key>/``."""

    stage: str
    key: str

    @property
    def dirname(self) -> str:
        return f"{self.stage}-{self.key}"

    @classmethod
    def parse(cls, name: str) -> StageRef:
        """A legacy ``"<stage>-<key>"`` entry name (indexes written before :class:`CacheIndex`)."""
        stage, sep, key = str(name).rpartition("-")
        if not sep or not stage or not key:
            raise ValueError(f"not a cache entry name (<stage>-<key>): {name!r}")
        return cls(stage, key)


INDEX_FILE = "preprocessed.json"
INDEX_FORMAT = 2  # 1: the untyped dict with an "entries" list of "<stage>-<key>" strings (still read)


@dataclass
class CacheIndex:
    """Which entries of a video's cache folder make up one preprocessed video, and its geometry.

    Written as JSON (:meth:`to_dict`) into the cache folder (``preprocessed.json``, the most recent
    preprocessing of that video) and into a fitted run's ``run_info.json`` (``preprocessed``: what binds the
    fitted tracker to its video). ``stages`` maps a stage name (``frames``, ``flow``, ``trajectories``,
    ``features``, ``masks``, ``split``, ``best_buddies``) to its entry; an inference-only index
    (:func:`~dinotracker.preprocessing.pipeline.preprocess_inference_inputs`) has only some of them.
    """

    name: str
    cache_dir: Path
    patch: int
    stride: int
    input_hw: tuple[int, int]
    model_hw: tuple[int, int]
    frame_indices: list[int]
    stages: dict[str, StageRef]
    backbone: dict | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.cache_dir = Path(self.cache_dir)
        self.patch, self.stride = int(self.patch), int(self.stride)
        self.input_hw = (int(self.input_hw[0]), int(self.input_hw[1]))
        self.model_hw = (int(self.model_hw[0]), int(self.model_hw[1]))
        self.frame_indices = [int(i) for i in self.frame_indices]
        for stage, ref in self.stages.items():
            if not isinstance(ref, StageRef) or ref.stage != stage:
                raise ValueError(f"cache index stage {stage!r} holds {ref!r}")

    # ------------------------------------------------------------------ look-ups
    @property
    def resize(self):
        from dinotracker.geometry import Resize

        return Resize(self.input_hw, self.model_hw)

    def ref(self, stage: str) -> StageRef:
        if stage not in self.stages:
            raise FileNotFoundError(f"preprocessing cache {self.cache_dir} has no {stage!r} entry for "
                                    f"{self.name} (it has {sorted(self.stages)})")
        return self.stages[stage]

    def require(self, *stages: str) -> None:
        """FileNotFoundError naming the missing ones unless every stage in ``stages`` is indexed."""
        missing = [s for s in stages if s not in self.stages]
        if missing:
            raise FileNotFoundError(f"preprocessing cache {self.cache_dir} lacks {missing} entries for {self.name}")

    def path(self, stage: str) -> Path:
        return self.cache_dir / self.ref(stage).dirname

    def load(self, stage: str, verify: bool = True) -> dict[str, np.ndarray]:
        """The arrays of ``stage``'s entry (memory-mapped, checked as :meth:`StageCache.load`). A corrupt entry
        is moved aside and :class:`CorruptEntryError` says to recompute it."""
        ref = self.ref(stage)
        cache = StageCache(self.cache_dir, create=False, verify=verify)
        if not cache.has(ref.stage, ref.key):
            raise FileNotFoundError(f"preprocessing cache entry {self.cache_dir / ref.dirname} does not exist (cache "
                                    "deleted or moved? pass cache_dir=<its folder>, or rerun the preprocessing of "
                                    f"{self.name})")
        try:
            return cache.load(ref.stage, ref.key)[0]
        except CorruptEntryError as e:
            cache.quarantine(ref.stage, ref.key, e)
            raise CorruptEntryError(e.path, f"{e.reason}; the entry was moved aside: rerun the preprocessing of "
                                    f"{self.name} (python -m dinotracker.preprocess +video=... with the same "
                                    "settings) to recompute it") from None

    def moved_to(self, cache_dir) -> CacheIndex:
        """The same entries in another folder (a moved or copied cache)."""
        return replace(self, cache_dir=Path(cache_dir), stages=dict(self.stages), extra=dict(self.extra))

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        return dict(format=INDEX_FORMAT, name=self.name, cache_dir=str(self.cache_dir.resolve()), patch=self.patch,
                    stride=self.stride, input_hw=list(self.input_hw), model_hw=list(self.model_hw),
                    frame_indices=list(self.frame_indices), stages={s: r.key for s, r in sorted(self.stages.items())},
                    backbone=self.backbone, **self.extra)

    @classmethod
    def from_dict(cls, d: dict) -> CacheIndex:
        """Read :meth:`to_dict`'s dict, or the untyped index of format 1 (``entries: ["<stage>-<key>", ...]``)."""
        if not isinstance(d, dict):
            raise ValueError(f"a cache index must be a dict, got {type(d).__name__}")
        if "stages" in d:
            stages = {str(s): StageRef(str(s), str(k)) for s, k in d["stages"].items()}
        elif "entries" in d:
            refs = [StageRef.parse(e) for e in d["entries"]]
            stages = {r.stage: r for r in refs}
        else:
            raise ValueError(f"not a preprocessing cache index (no 'stages'): keys {sorted(d)}")
        known = {"format", "name", "cache_dir", "patch", "stride", "input_hw", "model_hw", "frame_indices",
                 "stages", "entries", "backbone"}
        missing = [k for k in ("cache_dir", "patch", "stride", "input_hw", "model_hw") if k not in d]
        if missing:
            raise ValueError(f"cache index lacks {missing}")
        return cls(name=str(d.get("name", "video")), cache_dir=Path(d["cache_dir"]), patch=d["patch"],
                   stride=d["stride"], input_hw=d["input_hw"], model_hw=d["model_hw"],
                   frame_indices=d.get("frame_indices") or [], stages=stages, backbone=d.get("backbone"),
                   extra={k: v for k, v in d.items() if k not in known})

    @classmethod
    def coerce(cls, source) -> CacheIndex:
        """A :class:`CacheIndex` from itself, its dict, or a cache folder (its ``preprocessed.json``)."""
        if isinstance(source, CacheIndex):
            return source
        if isinstance(source, dict):
            return cls.from_dict(source)
        return cls.read(source)

    @classmethod
    def read(cls, folder) -> CacheIndex:
        """The most recent index of a video's cache folder (``<folder>/preprocessed.json``)."""
        path = Path(folder) / INDEX_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not a preprocessing cache (no {INDEX_FILE}); run "
                                    "`python -m dinotracker.preprocess +video=...` first")
        return cls.from_dict(json.loads(path.read_text()))

    def write(self) -> Path:
        """Record this index as the cache folder's most recent ``preprocessed.json`` (atomic)."""
        from dinotracker.utils.atomic import write_text

        return write_text(self.cache_dir / INDEX_FILE, json.dumps(self.to_dict(), indent=1, default=str))


# ---------------------------------------------------------------------- whole-cache check
def check_cache(root, verify: bool = True) -> dict:
    """Check every entry under ``root`` (a cache root holding video folders, or one video's folder): each
    corrupt one is moved aside (one log line naming the file) and will be recomputed by the next run.
    Returns ``{"ok": [entry paths], "corrupt": [{"entry", "file", "reason"}], "dangling": [index entries
    that no longer exist]}``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no preprocessing cache at {root}")
    folders = [root] if (root / INDEX_FILE).is_file() or _entries(root) else sorted(
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    report: dict = {"ok": [], "corrupt": [], "dangling": []}
    for folder in folders:
        cache = StageCache(folder, create=False, verify=verify)
        for entry in _entries(folder):
            stage, key = StageRef.parse(entry.name).stage, StageRef.parse(entry.name).key
            try:
                cache.load(stage, key)
                report["ok"].append(str(entry))
            except CorruptEntryError as e:
                cache.quarantine(stage, key, e)
                report["corrupt"].append(dict(entry=str(entry), file=str(e.path), reason=e.reason))
        if (folder / INDEX_FILE).is_file():
            try:
                index = CacheIndex.read(folder)
                report["dangling"] += [str(folder / r.dirname) for r in index.stages.values()
                                       if not (folder / r.dirname / "meta.json").is_file()]
            except (ValueError, KeyError, TypeError) as e:
                report["corrupt"].append(dict(entry=str(folder), file=str(folder / INDEX_FILE), reason=str(e)))
    log.info("checked %d cache entries under %s: %d ok, %d corrupt (moved aside), %d indexed but missing",
             len(report["ok"]) + len(report["corrupt"]), root, len(report["ok"]), len(report["corrupt"]),
             len(report["dangling"]))
    return report


def _entries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and ".corrupt-" not in p.name and "-" in p.name and (p / "meta.json").exists())
