"""Preemption and requeue of a fit job (Slurm): save the full training state, leave, resume when run again.

Slurm warns a job before ending it: ``--signal=USR2@<s>`` (the submitit launcher's ``signal_delay_s``,
sent ``s`` seconds before the time limit or on preemption) and SIGTERM (``scontrol requeue``, ``scancel``,
preemption; SIGKILL follows ``KillWait`` seconds later). :class:`PreemptionCheckpoint` turns any of these
into: finish the current optimisation step, write ``checkpoints/last.ckpt`` (model, EMA teacher, optimiser,
LR schedule, loop counters, callback states: everything ``trainer.save_checkpoint`` stores), then

* on the warning signal: hand over to the handler that was installed before training (submitit's, which
  requeues the job with the same arguments) or, without one, ``scontrol requeue`` the job itself;
* on SIGTERM: exit (Slurm itself requeues a requeued/preempted job, or it was cancelled).

Either way the process leaves with :class:`Preempted` (a ``SystemExit``, so neither the multirun's
per-job error handling nor submitit records it as a failed result). When the job runs again in the same
run folder, :func:`resume_ckpt_path` resumes from ``last.ckpt``; a step's batch is a pure function of the
step (see :mod:`dinotracker.training.sampler`), so the resumed job ends with the same weights as one that
was never interrupted.

The signal handlers only set a flag: saving from inside a handler could catch the model between
``backward`` and ``optimizer.step`` (Lightning's own SLURM auto-requeue saves right in the handler).
Single-process fits only (one video per job, the usual case): with several ranks the callback stays out
of the way and Lightning's SLURM handling applies.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from pathlib import Path

import lightning as L

from dinotracker.utils import slurm

log = logging.getLogger("dinotracker.fit")

MARKER = "preempted.json"


class Preempted(SystemExit):
    """The job saved its state on a Slurm signal and leaves so that it can be requeued."""


def _signum(name) -> signal.Signals:
    if isinstance(name, int):
        return signal.Signals(name)
    name = str(name).upper()
    return signal.Signals[name if name.startswith("SIG") else "SIG" + name]


class PreemptionCheckpoint(L.Callback):
    """Save ``<run>/checkpoints/last.ckpt`` at the end of the step during which one of ``signals`` arrived,
    then leave (see the module docstring). ``warning_signals`` are the ones after which the job asks to be
    requeued; the others (SIGTERM) only save and leave. ``requeue``: ``auto`` (requeue on a warning signal
    inside a Slurm job), ``true`` or ``false``."""

    def __init__(self, run_dir, signals=("USR1", "USR2", "TERM"), warning_signals=("USR1", "USR2"),
                 requeue="auto"):
        self.run_dir = Path(run_dir)
        self.signals = [_signum(s) for s in signals]
        self.warning = {_signum(s) for s in warning_signals}
        self.requeue = requeue
        self.received: signal.Signals | None = None
        # the handlers from before the Trainer (submitit's USR2 checkpoint-and-requeue), to hand over to
        self._before = {s: signal.getsignal(s) for s in self.signals}
        self._replaced: dict = {}

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.ckpt"

    def _handler(self, signum, frame) -> None:
        if self.received is None:
            self.received = signal.Signals(signum)
            log.warning("received %s: saving the training state at the end of this step", self.received.name)

    def on_train_start(self, trainer, pl_module) -> None:
        # after Lightning's _SignalConnector (which installs its own SIGTERM/SIGUSR1 handlers), so ours win
        if threading.current_thread() is not threading.main_thread():
            log.warning("not in the main thread: preemption signals are not handled")
            return
        if trainer.world_size > 1:  # ranks could see the signal in different steps: a collective save would hang
            log.warning("%d processes: preemption left to Lightning's SLURM handling (hpc_ckpt)", trainer.world_size)
            return
        for s in self.signals:
            self._replaced[s] = signal.getsignal(s)
            signal.signal(s, self._handler)

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()
        if trainer.is_global_zero:  # trained to the end: a later run of this folder starts from its config again
            (self.run_dir / MARKER).unlink(missing_ok=True)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()

    def _restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for s, h in self._replaced.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        self._replaced = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.received is None:
            return
        sig = self.received
        path = self.checkpoint_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, path)
            slurm.record_job(self.run_dir, preempted_at_step=int(trainer.global_step), preempted_by=sig.name)
            (self.run_dir / MARKER).write_text(f'{{"step": {int(trainer.global_step)}, "signal": "{sig.name}"}}\n')
        log.warning("%s: state at step %d saved to %s", sig.name, trainer.global_step, path)
        if sig in self.warning:
            self._restore()
            self._hand_over(sig)
        raise Preempted(f"preempted by {sig.name} at step {trainer.global_step}; resumes from {path}")

    def _hand_over(self, sig: signal.Signals) -> None:
        before = self._before.get(sig)
        if callable(before):  # submitit: dumps the same submission, `scontrol requeue`s it, sys.exit
            before(int(sig), None)
            return
        want = self.requeue
        jid = slurm.job_id()
        if str(want).lower() == "false" or want is False or jid is None:
            return
        log.warning("requeueing Slurm job %s", jid)
        r = subprocess.run(["scontrol", "requeue", jid], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            log.error("scontrol requeue %s failed: %s", jid, r.stderr.strip())


def callbacks(cfg, out: Path) -> list:
    """The preemption callback for a fit job, per ``cfg.preemption`` (``enabled``: auto = inside a Slurm job)."""
    pcfg = cfg.get("preemption") or {}
    enabled = pcfg.get("enabled", "auto")
    if str(enabled).lower() == "auto":
        enabled = slurm.job_id() is not None
    if str(enabled).lower() in ("false", "0", "none") or not enabled:
        return []
    return [PreemptionCheckpoint(out, signals=list(pcfg.get("signals") or ("USR1", "USR2", "TERM")),
                                 warning_signals=list(pcfg.get("warning_signals") or ("USR1", "USR2")),
                                 requeue=pcfg.get("requeue", "auto"))]


def resume_ckpt_path(ckpt_path, out: Path):
    """``ckpt_path`` as configured, except that a job that was preempted (``preempted.json`` in its run
    folder) or requeued by Slurm (``SLURM_RESTART_COUNT`` > 0) resumes from ``last`` when nothing was set."""
    if ckpt_path not in (None, "", "null"):
        return ckpt_path
    if (Path(out) / MARKER).is_file() or slurm.restart_count() > 0:
        log.info("requeued/preempted job: resuming from this run folder's last checkpoint")
        return "last"
    return ckpt_path
