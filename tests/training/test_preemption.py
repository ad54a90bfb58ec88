"""Preemption without a cluster: a signal mid-training saves the full state at the end of the step and leaves;
resuming from that checkpoint ends with the same state as an uninterrupted run. Plus the Slurm output parsers
and the resume rule of a requeued job."""

from __future__ import annotations

import os
import signal

import lightning as L
import pytest
import torch

from dinotracker.config import module_options
from dinotracker.training import preemption
from dinotracker.training.datamodule import CorrespondenceDataModule, toy_preprocessed_video
from dinotracker.training.module import DinoTrackerModule
from dinotracker.training.preemption import Preempted, PreemptionCheckpoint
from dinotracker.utils import slurm

SMALL = dict(flow_pairs=48, bb_pairs=32, cycle_pairs=32, bb_frame_pairs=2, cycle_frame_pairs=2)


@pytest.fixture(scope="module")
def video():
    return toy_preprocessed_video(num_frames=6, height=64, width=96, feature_dim=16, patch=8, stride=4, seed=0)


def _build(video):
    torch.manual_seed(123)
    m = DinoTrackerModule(video, **module_options(model={"radius": 12.0, "delta_channels": (8, 16, 32)},
                                                  loss={"refined_bb": {"start": 2}, "cycle": {"start": 3}},
                                                  optim={"decay_every": 2}))
    return m, CorrespondenceDataModule(video, seed=9, **SMALL)


def _trainer(root, steps, callbacks=()):
    return L.Trainer(accelerator="cpu", devices=1, max_steps=steps, max_epochs=-1, logger=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     limit_val_batches=0, default_root_dir=str(root), callbacks=list(callbacks),
                     enable_checkpointing=False)


class _SignalAt(L.Callback):
    """Sends ``sig`` to this process in the middle of step ``step`` (after its forward/backward began)."""

    def __init__(self, step, sig):
        self.step, self.sig = step, sig

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.sig)


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_signal_saves_at_step_end_and_resume_is_exact(video, tmp_path, sig):
    steps = 6
    m_a, dm_a = _build(video)
    _trainer(tmp_path / "a", steps).fit(m_a, dm_a)

    before = signal.getsignal(sig)
    cb = PreemptionCheckpoint(tmp_path / "b", requeue=False)
    m_b, dm_b = _build(video)
    tr = _trainer(tmp_path / "b", steps, [cb, _SignalAt(2, sig)])
    with pytest.raises(Preempted):
        tr.fit(m_b, dm_b)
    assert signal.getsignal(sig) == before  # handlers handed back
    ckpt = torch.load(cb.checkpoint_path, weights_only=False)
    assert ckpt["global_step"] == 3  # the step the signal arrived in was finished, not cut
    assert (tmp_path / "b" / preemption.MARKER).is_file()
    assert preemption.resume_ckpt_path(None, tmp_path / "b") == "last"

    m_c, dm_c = _build(video)
    torch.manual_seed(999)
    tr_c = _trainer(tmp_path / "b", steps, [PreemptionCheckpoint(tmp_path / "b", requeue=False)])
    tr_c.fit(m_c, dm_c, ckpt_path=str(cb.checkpoint_path))
    assert tr_c.global_step == steps
    sa, sc = m_a.state_dict(), m_c.state_dict()
    assert sa.keys() == sc.keys() and [k for k in sa if not torch.equal(sa[k], sc[k])] == []
    assert not (tmp_path / "b" / preemption.MARKER).exists()  # trained to the end: a new run starts fresh


def test_warning_signal_hands_over_to_the_earlier_handler(video, tmp_path):
    """Under submitit the USR2 handler installed before training (checkpoint + requeue) runs after the save."""
    calls = []
    old = signal.signal(signal.SIGUSR2, lambda s, f: calls.append(s))
    try:
        cb = PreemptionCheckpoint(tmp_path, requeue=False)
        m, dm = _build(video)
        with pytest.raises(Preempted):
            _trainer(tmp_path, 6, [cb, _SignalAt(1, signal.SIGUSR2)]).fit(m, dm)
        assert calls == [signal.SIGUSR2] and cb.checkpoint_path.is_file()
    finally:
        signal.signal(signal.SIGUSR2, old)


def test_resume_rule(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert preemption.resume_ckpt_path(None, tmp_path) is None
    assert preemption.resume_ckpt_path("x.ckpt", tmp_path) == "x.ckpt"
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert preemption.resume_ckpt_path(None, tmp_path) == "last"


def test_callbacks_only_inside_slurm_by_default(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"preemption": {"enabled": "auto"}})
    for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(k, raising=False)
    assert preemption.callbacks(cfg, tmp_path) == []
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    (cb,) = preemption.callbacks(cfg, tmp_path)
    assert isinstance(cb, PreemptionCheckpoint) and signal.SIGTERM in cb.signals
    assert preemption.callbacks(OmegaConf.create({"preemption": {"enabled": False}}), tmp_path) == []


def test_job_id_and_slurm_parsers():
    assert slurm.job_id({"SLURM_JOB_ID": "12"}) == "12"
    assert slurm.job_id({"SLURM_JOB_ID": "13", "SLURM_ARRAY_JOB_ID": "12", "SLURM_ARRAY_TASK_ID": "1"}) == "12_1"
    assert slurm.job_id({}) is None
    text = ("4_0|COMPLETED|00:00:45|\n4_0.batch|COMPLETED|00:00:45|12200K\n4_0.0|COMPLETED|00:00:45|891496K\n"
            "5|CANCELLED by 0|1-00:01:02|\n5.0|CANCELLED|1-00:01:02|2.5G\n")
    got = slurm.parse_sacct(text)
    assert got["4_0"] == {"state": "COMPLETED", "elapsed_s": 45.0, "max_rss_mb": pytest.approx(891496 / 1024)}
    assert got["5"] == {"state": "CANCELLED", "elapsed_s": 86462.0, "max_rss_mb": 2560.0}
    sc = slurm.parse_scontrol("JobId=9 ArrayJobId=8 ArrayTaskId=1 JobName=fit JobState=RUNNING RunTime=00:01:05 X=1")
    assert sc == {"8_1": {"state": "RUNNING", "elapsed_s": 65.0, "max_rss_mb": None}}
