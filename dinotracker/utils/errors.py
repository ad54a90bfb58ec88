"""User errors in one line, before heavy imports where possible.

* :func:`precheck_argv`: checks the command line itself (``video.path=``, ``video.masks=``,
  ``video.gt=``, ``queries=``, ``mask=``, ``run=``) before Hydra, torch or Lightning are imported, so a
  typo in a path is reported in about a second instead of after a 10 s import.
* :func:`one_line_errors`: wraps a Hydra task; a user error (a bad file, a bad value: ``FileNotFoundError``,
  ``ValueError``, ``NotADirectoryError``, ``IsADirectoryError``) prints the one line ``error: <message>`` and
  exits with status 1, instead of Hydra's ``Error executing job with overrides`` and a traceback with the
  useful line last (so the cause is the last line). ``HYDRA_FULL_ERROR=1`` or ``DINOTRACKER_DEBUG=1``
  re-raises with the full traceback (README).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path

USER_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError)
HINT = "(run with HYDRA_FULL_ERROR=1 for the full traceback)"

# command-line keys that name an input that must exist: key -> what it is
PATH_KEYS = {
    "video.path": "video",
    "video.masks": "mask folder",
    "video.gt": "ground truth file",
    "queries": "queries file",
    "grid_mask": "grid mask",
    "run": "run folder",
    "mask": "first-frame mask",
    "gt_masks": "ground-truth mask folder",
    "backbone.weights": "backbone weights",
}


def debug() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR", "0") == "1" or os.environ.get("DINOTRACKER_DEBUG", "0") not in ("", "0")


def fail(message: str, status: int = 1, hint: bool = True) -> None:
    """Print ``error: <message>`` (and the debug hint) to stderr and exit with ``status``."""
    print(f"error: {message}" + (f"\n  {HINT}" if hint else ""), file=sys.stderr)
    raise SystemExit(status)


def precheck_argv(argv: list[str], keys: dict[str, str] | None = None) -> None:
    """Exit with one line when a path given on the command line does not exist (module docstring).
    Values with Hydra syntax (interpolations, sweeps, ``run:``-style prefixes) are left to the job."""
    keys = PATH_KEYS if keys is None else keys
    for arg in argv:
        if "=" not in arg or arg.startswith("-"):
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if key not in keys or value in ("", "null", "None") or any(c in value for c in "${}(),*"):
            continue
        if key == "video.path" and value in ("synthetic",):
            continue
        if re_prefixed(value):
            continue
        path = Path(value).expanduser()
        if not path.exists():
            fail(f"{keys[key]} not found: {value} ({key}=)", status=2, hint=False)


def re_prefixed(value: str) -> bool:
    """``run:<folder>`` / ``dinov2:...`` style values (a scheme, not a path; Windows drives aside)."""
    head, sep, _ = value.partition(":")
    return bool(sep) and len(head) > 1 and "/" not in head


def one_line_errors(task: Callable) -> Callable:
    """Wrap a Hydra task so that user errors end in one line (module docstring)."""

    @functools.wraps(task)
    def wrapped(cfg):
        try:
            return task(cfg)
        except USER_ERRORS as err:
            if debug():
                raise
            fail(" ".join(str(err).split()) or type(err).__name__, hint=False)  # the cause stays the last line

    return wrapped
