"""One writer per run folder: ``<run>/.fit.lock``, locked (``flock``) while a fit writes there.

The lock is an OS file lock on ``.fit.lock``, so it ends with its process however that process ends
(``kill -9`` included), and the file holds JSON ``{pid, host, started, slurm_job_id}`` of the holder.

* A second fit on the same folder cannot take the lock and refuses with :class:`RunFolderLocked`, one
  line naming the holder's pid and host.
* A file left with a holder's JSON but no lock on it is *stale* (its process died without releasing,
  e.g. ``kill -9`` before ``ckpt_path=last``): the next fit takes it over and logs whose it was.
* A released lock is removed (a finished run folder has no ``.fit.lock``).

``protect``: files (relative to the folder) whose content the holder records in the lock; a refused
second writer puts them back before it exits. Hydra writes ``.hydra/*.yaml`` of every launch before the
task runs, so without this a refused launch would leave its own config in the running fit's folder.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_NAME = ".fit.lock"
HYDRA_FILES = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml")


class RunFolderLocked(RuntimeError):
    """Another live process holds the run folder's lock."""


def describe(holder: dict) -> str:
    """``pid 123 on host h, started ...`` for a holder's JSON."""
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"


class RunLock:
    """``with RunLock(folder): ...``: hold ``folder/.fit.lock`` (see the module docstring)."""

    def __init__(self, folder, protect=HYDRA_FILES):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.protect = tuple(protect or ())
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> dict | None:
        """The JSON in the lock file (None: no file or empty; {} when unreadable)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        if not text.strip():
            return None
        try:
            return json.loads(text)
        except ValueError:
            return {}

    def acquire(self) -> RunLock:
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        me = dict(pid=os.getpid(), host=socket.gethostname(), started=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                  slurm_job_id=os.environ.get("SLURM_JOB_ID"))
        me["protected"] = {p: (self.folder / p).read_text() for p in self.protect if (self.folder / p).is_file()}
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held by a live process
                os.close(fd)
                holder = self.holder() or {}
                self._restore(holder)
                raise RunFolderLocked(
                    f"run folder {self.folder} is in use by another fit ({describe(holder)}): wait for it to "
                    "finish or choose another hydra.run.dir"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # released (unlinked) between our open and flock: lock the new file instead
                os.close(fd)
                continue
            previous = self.holder()
            if previous is not None:
                log.warning("run folder %s: taking over the stale lock of %s (that process ended without "
                            "releasing it)", self.folder, describe(previous))
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            os.fsync(fd)
            self._fd = fd
            return self
        raise RunFolderLocked(f"could not take the lock {self.path} (contended); try again")

    def _restore(self, holder: dict) -> None:
        for rel, text in (holder.get("protected") or {}).items():
            p = self.folder / rel
            try:
                if not p.is_file() or p.read_text() != text:
                    p.write_text(text)
            except OSError:
                pass

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            self.path.unlink(missing_ok=True)  # before unlocking: a waiter re-checks the inode
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _global_zero() -> bool:
    """Whether this process is rank 0 (DDP children re-run the entry point with these variables set)."""
    return all(os.environ.get(v, "0") in ("", "0") for v in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


@contextmanager
def run_folder_lock(folder):
    """Hold ``folder``'s :class:`RunLock` (rank 0 only) for a fit job; a held lock ends the command with a
    one-line ``error: ...`` (:class:`SystemExit`)."""
    if not _global_zero():
        yield None
        return
    lock = RunLock(folder)
    try:
        lock.acquire()
    except RunFolderLocked as err:
        raise SystemExit(f"error: {err}") from None
    try:
        yield lock
    finally:
        lock.release()
