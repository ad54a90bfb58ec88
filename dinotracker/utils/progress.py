"""Progress lines for long steps when the output is not a terminal (a log file, CI, a pipe).

:class:`Progress` logs ``<what> <done>/<total> (<pct>%) [k=v ...] <s>/<unit> ETA <h:mm:ss>`` every
``every_n`` updates or every ``every_s`` seconds, whichever comes first, plus a last line when done.
Used by tracking, occlusion, preprocessing stages, segtrack and (through
:class:`dinotracker.training.callbacks.LogProgress`) training. Cheap: one ``time.monotonic()`` per update.
"""

from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger("dinotracker.progress")

DEFAULT_EVERY_S = float(os.environ.get("DINOTRACKER_PROGRESS_EVERY_S", "10"))


def is_terminal(stream=None) -> bool:
    """True when ``stream`` (stderr by default) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def format_duration(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def progress_line(what: str, done: int, total: int | None, elapsed: float, unit: str = "step",
                  rate_done: int | None = None, **fields) -> str:
    """One progress line (see the module docstring); ``fields`` are formatted as ``k=v``.
    ``rate_done``: the part of ``done`` that took ``elapsed`` (after a resume; default ``done``)."""
    rate_done = done if rate_done is None else rate_done
    parts = [what, f"{done}/{total}" if total else str(done)]
    if total:
        parts.append(f"({100.0 * done / total:.0f}%)")
    for k, v in fields.items():
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    if rate_done > 0:
        per = elapsed / rate_done
        parts.append(f"{per:.3g} s/{unit}" if per >= 0.01 else f"{1.0 / per:.3g} {unit}/s")
        if total and done < total:
            parts.append(f"ETA {format_duration(per * (total - done))}")
        else:
            parts.append(f"took {format_duration(elapsed)}")
    return " ".join(parts)


class Progress:
    """Log a progress line every ``every_n`` updates or ``every_s`` seconds (module docstring).

    ``start`` is where the count begins (a resumed run: the steps already done count towards
    ``total`` but not towards the rate). ``logger``: where the lines go (``dinotracker.progress``).
    """

    def __init__(self, what: str, total: int | None, every_n: int | None = None, every_s: float | None = None,
                 unit: str = "step", start: int = 0, logger: logging.Logger | None = None):
        self.what, self.total, self.unit = what, (int(total) if total else None), unit
        self.every_n = int(every_n) if every_n else None
        self.every_s = DEFAULT_EVERY_S if every_s is None else float(every_s)
        self.start = self.done = int(start)
        self.log = logger or log
        self.t0 = self._last = time.monotonic()
        self._last_n = self.done
        self.lines = 0

    def update(self, n: int = 1, **fields) -> None:
        self.done += int(n)
        now = time.monotonic()
        due_n = self.every_n is not None and self.done - self._last_n >= self.every_n
        due_s = self.every_s > 0 and now - self._last >= self.every_s
        if due_n or due_s:
            self._emit(now, **fields)

    def set(self, done: int, **fields) -> None:
        """Absolute position (e.g. a trainer's global step)."""
        self.update(int(done) - self.done, **fields)

    def finish(self, **fields) -> None:
        """The closing line (always logged once, unless the last update already said the same)."""
        if self._last_n != self.done or self.lines == 0:
            self._emit(time.monotonic(), **fields)

    def _emit(self, now: float, **fields) -> None:
        self.log.info(progress_line(self.what, self.done, self.total, now - self.t0, self.unit,
                                    rate_done=self.done - self.start, **fields))
        self._last, self._last_n = now, self.done
        self.lines += 1


def progress_iter(iterable, desc: str, total: int | None = None, disable: bool = False, leave: bool = False,
                  every_s: float | None = None, every_n: int | None = None, logger: logging.Logger | None = None,
                  **tqdm_kwargs):
    """A drop-in for ``tqdm(iterable, desc=..., total=..., disable=..., leave=...)``: the tqdm bar on a
    terminal, and :class:`Progress` log lines (``<desc> i/n (pct) s/it ETA``) when stderr is not one."""
    if disable:
        return iterable
    if is_terminal():
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, leave=leave, **tqdm_kwargs)
    if total is None:
        try:
            total = len(iterable)
        except TypeError:
            total = None
    return _logged(iterable, Progress(desc, total, every_n=every_n, every_s=every_s, unit="it", logger=logger))


def _logged(iterable, prog: Progress):
    for x in iterable:
        yield x
        prog.update(1)
    prog.finish()
