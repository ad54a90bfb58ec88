"""Loggers that continue a run folder's logs on resume (``ckpt_path=last``) instead of starting over.

* CSV (:class:`ContinuedCSVLogger`): Lightning's CSVLogger deletes ``metrics.csv`` when it starts. Here
  the rows logged *before* the checkpoint (step < the checkpoint's global step) are kept and the rows
  after it, which the resumed fit logs again, are dropped, so every step appears exactly once. A
  half-written last line (``kill -9`` during a write) is dropped too.
* TensorBoard: same version folder (``version: ""``) and ``purge_step`` = the checkpoint's step, so
  TensorBoard hides the events the killed run wrote after the checkpoint.
* W&B: one run per run folder, its ``id`` derived from the folder (:func:`wandb_run_id`) with
  ``resume="allow"``: a resumed fit continues its own run, and each job of a multirun gets its own run
  (:func:`own_experiments` closes a job's run so the next job does not "reuse" it).

:func:`logger_config` applies this to a ``logger.<name>`` config before it is instantiated.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
import sys
from contextlib import contextmanager
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from dinotracker.utils.atomic import atomic_path
from dinotracker.utils.resume import checkpoint_step  # noqa: F401  (re-exported for the fit job)

log = logging.getLogger(__name__)

CSV_TARGETS = ("lightning.pytorch.loggers.CSVLogger", "lightning.pytorch.loggers.csv_logs.CSVLogger",
               "pytorch_lightning.loggers.CSVLogger")
TB_TARGETS = ("lightning.pytorch.loggers.TensorBoardLogger",
              "lightning.pytorch.loggers.tensorboard.TensorBoardLogger", "pytorch_lightning.loggers.TensorBoardLogger")


def wandb_run_id(folder) -> str:
    """A W&B run id for a run folder: its name (sanitised) + 8 hex digits of its absolute path."""
    folder = Path(folder).resolve()
    digest = hashlib.sha1(str(folder).encode()).hexdigest()[:8]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", folder.name).strip("-")[:40] or "run"
    return f"{name}-{digest}"


def logger_config(name: str, lcfg: dict, out: Path, resume_step: int | None) -> dict:
    """``lcfg`` (a resolved ``logger.<name>`` config) made to continue/own the run folder ``out``."""
    lcfg = dict(lcfg)
    target = str(lcfg.get("_target_"))
    if target in CSV_TARGETS:
        lcfg["_target_"] = f"{__name__}.ContinuedCSVLogger"
        lcfg["resume_step"] = resume_step
    elif target in TB_TARGETS and resume_step is not None:
        lcfg.setdefault("purge_step", resume_step)
    elif name == "wandb" or "WandbLogger" in target:
        if lcfg.get("id") is None:
            lcfg["id"] = wandb_run_id(out)
        lcfg.setdefault("resume", "allow")
        lcfg["save_dir"] = str(lcfg.get("save_dir") or out)
    return lcfg


class _ContinuedWriter(ExperimentWriter):
    def __init__(self, log_dir: str, keep_before: int | None):
        self.keep_before = keep_before
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if self.keep_before is None or not path.is_file():
            return super()._check_log_dir_exists()  # a fresh run: Lightning's behaviour
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = list(reader)
        complete = [r for r in rows if None not in r.values() and None not in r and r.get("step") not in ("", None)]
        kept = [r for r in complete if int(float(r["step"])) < self.keep_before]
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header)
            w.writeheader()
            w.writerows(kept)
        self.metrics_keys = header
        log.info("metrics.csv: kept %d rows before step %d, dropped %d logged after the checkpoint",
                 len(kept), self.keep_before, len(rows) - len(kept))


class ContinuedCSVLogger(CSVLogger):
    """Lightning's CSVLogger that, given ``resume_step``, continues an existing ``metrics.csv`` (module
    docstring) instead of deleting it."""

    def __init__(self, *args, resume_step: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.resume_step = None if resume_step is None else int(resume_step)

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuedWriter(self.log_dir, self.resume_step)
        return self._experiment


def _wandb_run():
    wandb = sys.modules.get("wandb")
    return None if wandb is None else getattr(wandb, "run", None)


@contextmanager
def own_experiments():
    """Around one fit job: finish the W&B run the job opened (not one the caller had open before), so that
    the next job of a multirun starts its own run instead of "reusing" this one."""
    before = _wandb_run()
    try:
        yield
    finally:
        run = _wandb_run()
        if run is not None and run is not before:
            run.finish()
