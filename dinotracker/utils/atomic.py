"""Atomic writes, the package's one way to write a file or a folder that others may read at the same time.

The content goes to a temporary name that no other process or thread can pick (pid + random token)
in the target's own folder (so the rename never crosses a file system), is flushed to disk
(``fsync``), and is renamed onto the target with ``os.replace``; a reader sees the old or the new
content, never half of it, and a crash leaves at most a dot-prefixed ``*.tmp*`` leftover. The
temporary name keeps the target's suffix (encoders that pick a format by extension still work).

    with atomic_path(out / "tracks.npz") as tmp:
        np.savez(tmp, ...)
    with atomic_path(cache / "flow-abc", folder=True) as tmp:   # a folder: filled, then renamed
        np.save(tmp / "forward.npy", fwd)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path


def temp_name(path) -> Path:
    """A unique temporary sibling of ``path`` (hidden, same suffix)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. directories on Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                _fsync(p)
        for d in sorted((p for p in path.rglob("*") if p.is_dir()), reverse=True):
            _fsync(d)
    _fsync(path)


def commit(tmp, path, keep_existing: bool = False) -> bool:
    """Flush ``tmp`` (a file or a folder tree) to disk and rename it onto ``path``. A folder cannot replace a
    non-empty folder: with ``keep_existing`` an existing ``path`` wins (``tmp`` is removed, False is
    returned), else ``FileExistsError``. True when ``tmp`` became ``path``."""
    tmp, path = Path(tmp), Path(path)
    _fsync_tree(tmp)
    if keep_existing and path.exists():
        _remove(tmp)
        return False
    try:
        os.replace(tmp, path)
    except OSError:
        if tmp.is_dir() and path.exists():
            if keep_existing:
                _remove(tmp)
                return False
            raise FileExistsError(f"{path} already exists (cannot replace a folder atomically)") from None
        raise
    _fsync(path.parent)
    return True


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path, folder: bool = False, keep_existing: bool = False) -> Iterator[Path]:
    """Yield a unique temporary path next to ``path`` (an empty folder when ``folder``); when the block ends
    without an exception it is committed onto ``path`` (:func:`commit`), otherwise removed. Parents of
    ``path`` are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    if folder:
        tmp.mkdir()
    try:
        yield tmp
        commit(tmp, path, keep_existing=keep_existing)
    finally:
        if tmp.exists():
            _remove(tmp)


def atomic_write(path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp_path)``, then commit it onto ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_text(path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
