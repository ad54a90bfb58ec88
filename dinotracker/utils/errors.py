"""Command-line error reporting shared by the ``python -m dinotracker.<verb>`` commands."""

from __future__ import annotations

import functools

USER_ERRORS = (ValueError, FileNotFoundError)


def cli_errors(task):
    """``task(cfg)`` for the command line: a bad setting or input (:data:`USER_ERRORS`) ends the command with
    its message as the last line (``error: ...``, exit status 1) instead of a traceback followed by Hydra's
    ``HYDRA_FULL_ERROR`` hint. The Python API (``task`` itself) still raises the exception."""

    @functools.wraps(task)
    def wrapped(cfg):
        try:
            return task(cfg)
        except USER_ERRORS as err:
            raise SystemExit(f"error: {err}") from None

    return wrapped
