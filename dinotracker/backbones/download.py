"""Fetch an official checkpoint into the torch hub cache: a progress line, a checksum, a short timeout.

``download_checkpoint(url, dest, sha256=None)`` streams ``url`` to ``dest`` (a temporary file moved into
place only when complete and verified): the SHA-256 is compared when one is known (``sha256=`` or
``$DINOTRACKER_WEIGHTS_SHA256``), and the file must load as a state dict of tensors. Progress goes to the
log every few seconds (bytes, %, MB/s). ``fetch_weights(name)`` puts ``name``'s official file into
``torch.hub.get_dir()/checkpoints`` (``$DINOTRACKER_WEIGHTS_URL`` overrides the base URL, e.g. a mirror);
it returns None (with the reason logged) when the network is off, slow or the file is bad.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import urllib.request
from pathlib import Path

log = logging.getLogger("dinotracker.download")


class DownloadError(OSError):
    pass


def download_checkpoint(url: str, dest, sha256: str | None = None, timeout: float = 20.0,
                        every_s: float = 5.0) -> Path:
    """Download ``url`` to ``dest`` atomically and verify it (module docstring); raises :class:`DownloadError`."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part{os.getpid()}")
    h = hashlib.sha256()
    t0 = last = time.monotonic()
    done = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0)
            while True:
                block = r.read(1 << 20)
                if not block:
                    break
                f.write(block)
                h.update(block)
                done += len(block)
                now = time.monotonic()
                if now - last >= every_s:
                    last = now
                    pct = f" ({100.0 * done / total:.0f}%)" if total else ""
                    log.info("downloading %s: %.1f/%s MB%s %.1f MB/s", dest.name, done / 1e6,
                             f"{total / 1e6:.1f}" if total else "?", pct, done / 1e6 / max(now - t0, 1e-6))
        if total and done != total:
            raise DownloadError(f"{url}: got {done} of {total} bytes")
        want = (sha256 or os.environ.get("DINOTRACKER_WEIGHTS_SHA256") or "").lower()
        if want and h.hexdigest() != want:
            raise DownloadError(f"{url}: SHA-256 {h.hexdigest()} != expected {want}")
        _check_state_dict(tmp)
        os.replace(tmp, dest)
    except DownloadError:
        raise
    except (OSError, ValueError) as err:  # URLError, timeouts, refused connections, bad files
        raise DownloadError(f"{url}: {err}") from err
    finally:
        tmp.unlink(missing_ok=True)
    log.info("downloaded %s (%.1f MB in %.1f s, sha256 %s)", dest, done / 1e6, time.monotonic() - t0,
             h.hexdigest()[:12])
    return dest


def _check_state_dict(path: Path) -> None:
    from dinotracker.backbones.build import read_state_dict

    try:
        read_state_dict(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is a bad download
        raise DownloadError(f"downloaded file is not a checkpoint: {err}") from err


def fetch_weights(name: str, timeout: float = 20.0, sha256: str | None = None) -> Path | None:
    """The official checkpoint of ``name`` in the torch hub cache, downloaded when missing (module
    docstring); None when it cannot be had (offline, ``$DINOTRACKER_OFFLINE``, timeout, bad file)."""
    import torch

    from dinotracker.backbones.build import checkpoint_name, checkpoint_url

    dest = Path(torch.hub.get_dir()) / "checkpoints" / checkpoint_name(name)
    if dest.is_file():
        return dest
    if os.environ.get("DINOTRACKER_OFFLINE", "0") not in ("", "0"):
        log.info("%s: not downloading (DINOTRACKER_OFFLINE is set)", name)
        return None
    base = os.environ.get("DINOTRACKER_WEIGHTS_URL")
    url = f"{base.rstrip('/')}/{checkpoint_name(name)}" if base else checkpoint_url(name)
    log.info("downloading %s weights from %s into %s (timeout %g s)", name, url, dest.parent, timeout)
    try:
        return download_checkpoint(url, dest, sha256=sha256, timeout=timeout)
    except DownloadError as err:
        log.info("could not download %s weights: %s", name, err)
        return None
