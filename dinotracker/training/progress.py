"""Training progress: a bar on a terminal, log lines otherwise, both counting optimiser steps.

* :class:`StepRichProgressBar`: Lightning's Rich bar with ``global_step / max_steps`` for a step-based
  run (``max_epochs=-1``), so a resumed run reads ``60/100`` and not the epoch-local ``90/59``.
* :class:`LogProgress`: when stderr is not a terminal (a redirected run, CI), a line every
  ``every_n_steps`` steps or ``every_s`` seconds: ``train step 40/60 (67%) loss=0.0123 1.2 s/step ETA
  0:00:24`` (the rate counts this process's steps, the count and ETA the whole run).
"""

from __future__ import annotations

import logging
import math

from lightning.pytorch.callbacks import ProgressBar

from dinotracker.utils.progress import Progress, is_terminal

log = logging.getLogger("dinotracker.fit")


def _step_total(trainer) -> int | None:
    ms = trainer.max_steps
    return int(ms) if trainer.max_epochs == -1 and ms is not None and ms > 0 else None


def _loss(trainer) -> float | None:
    for key in ("train/loss", "loss", "train_loss"):
        v = trainer.callback_metrics.get(key)
        if v is not None:
            try:
                v = float(v)
            except (TypeError, ValueError):
                continue
            if math.isfinite(v):
                return v
    return None


class LogProgress(ProgressBar):
    """Progress as log lines (module docstring). A :class:`ProgressBar`, so Lightning adds no bar of its own."""

    def __init__(self, every_n_steps: int = 50, every_s: float = 30.0):
        super().__init__()
        self.every_n, self.every_s = max(1, int(every_n_steps)), float(every_s)
        self._enabled = True
        self._progress: Progress | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def on_train_start(self, trainer, pl_module) -> None:
        total = _step_total(trainer)
        self._progress = Progress("train step", total, every_n=self.every_n, every_s=self.every_s,
                                  start=int(trainer.global_step), logger=log)
        if trainer.global_step:
            log.info("resumed at step %d of %s", trainer.global_step, total if total else "?")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._progress is None or not self._enabled or not trainer.is_global_zero:
            return
        loss = _loss(trainer)
        self._progress.set(int(trainer.global_step), **({} if loss is None else {"loss": loss}))

    def on_train_end(self, trainer, pl_module) -> None:
        if self._progress is not None and self._enabled and trainer.is_global_zero:
            loss = _loss(trainer)
            self._progress.finish(**({} if loss is None else {"loss": loss}))


def step_rich_progress_bar():
    """:class:`StepRichProgressBar` (defined lazily: ``rich`` is optional)."""
    from lightning.pytorch.callbacks import RichProgressBar

    class StepRichProgressBar(RichProgressBar):
        @property
        def total_train_batches(self):
            total = _step_total(self.trainer)
            return total if total else super().total_train_batches

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            # count optimiser steps of the whole run (the parent shows batch_idx + 1)
            idx = trainer.global_step - 1 if _step_total(trainer) else batch_idx
            super().on_train_batch_end(trainer, pl_module, outputs, batch, idx)

    return StepRichProgressBar()


def progress_callback(every_n_steps: int = 50, every_s: float = 30.0):
    """The bar on a terminal (Rich when installed, else tqdm), :class:`LogProgress` otherwise."""
    if not is_terminal():
        return LogProgress(every_n_steps=every_n_steps, every_s=every_s)
    try:
        import rich  # noqa: F401

        return step_rich_progress_bar()
    except ImportError:
        from lightning.pytorch.callbacks import TQDMProgressBar

        return TQDMProgressBar()


def dedupe_lightning_logging() -> None:
    """``import lightning`` adds its own console handler to the ``lightning`` logger *and* lets records
    propagate, so under Hydra's logging every Lightning line is printed twice (``INFO: ...`` and the
    formatted line, which also goes to the log file). Drop that handler when the root logger has one."""
    root = logging.getLogger()
    if not root.handlers:
        return
    lg = logging.getLogger("lightning")
    for h in list(lg.handlers):
        if type(h) is logging.StreamHandler:
            lg.removeHandler(h)
