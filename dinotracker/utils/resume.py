"""What to tell a user about a run folder whose fit did not finish (killed or preempted): it has training
checkpoints but no ``tracker.pt``."""

from __future__ import annotations

import shlex
from pathlib import Path


def checkpoint_step(ckpt_path) -> int:
    """The ``global_step`` stored in a Lightning checkpoint (memory-mapped read: no tensor is loaded)."""
    import torch

    ck = torch.load(str(ckpt_path), map_location="cpu", mmap=True, weights_only=False)
    return int(ck.get("global_step", 0))


def latest_checkpoint(folder) -> Path | None:
    """``checkpoints/last.ckpt`` of a run folder, else its newest ``checkpoints/*.ckpt``, else None."""
    ck = Path(folder) / "checkpoints"
    if (ck / "last.ckpt").is_file():
        return ck / "last.ckpt"
    found = sorted(ck.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def resume_command(folder) -> str:
    """``python -m dinotracker.fit <the run's own overrides> ckpt_path=last hydra.run.dir=<folder>``; the
    overrides come from ``.hydra/overrides.yaml`` when the folder has one (else ``+video=...`` is left to fill)."""
    folder = Path(folder)
    args: list[str] = []
    ov = folder / ".hydra" / "overrides.yaml"
    if ov.is_file():
        from omegaconf import OmegaConf

        args = [str(a) for a in OmegaConf.load(ov) or []]
    args = [a for a in args if not a.lstrip("+~").startswith(("ckpt_path=", "hydra.run.dir="))]
    if not args:
        args = ["+video=<the run's video>", "<the run's other overrides>"]
    return " ".join(["python -m dinotracker.fit", *map(shlex.quote, args), "ckpt_path=last",
                     shlex.quote(f"hydra.run.dir={folder}")])


def unfinished_run_message(folder, ckpt: Path) -> str:
    """One paragraph: the run has a checkpoint but no tracker.pt, and the command that finishes it."""
    step = ""
    try:
        step = f" (step {checkpoint_step(ckpt)})"
    except Exception:  # noqa: BLE001 - the hint must not fail on an unreadable checkpoint
        pass
    return (f"{folder} has no tracker.pt: its fit did not finish, but a training checkpoint exists, {ckpt}{step}. "
            f"Resume it (training continues to trainer.max_steps, then tracker.pt is written): "
            f"{resume_command(folder)}   To export the weights as they are, add trainer.max_steps=<that step>.")
