"""Weights before work: find a backbone's weights (or their absence) before preprocessing starts.

* :func:`local_weights`: the file a backbone config would load, without touching the network
  (``backbone.weights``, then ``$DINOTRACKER_WEIGHTS`` / ``weights/``, then the torch hub cache).
* :func:`resolve_backbone`: with ``backbone_fallback`` set (``experiment=quick_cpu`` sets ``none``) a
  backbone whose weights are not on this machine is replaced by the fallback, with one log line; without
  it, missing weights raise the one-line :func:`~dinotracker.backbones.build.missing_weights_message`
  here, before preprocessing, instead of after minutes of flow and trajectories.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import OmegaConf, open_dict

log = logging.getLogger("dinotracker.backbones")


def weights_dirs() -> list[Path]:
    """Folders searched for official checkpoint files, in order."""
    dirs = [Path(os.environ.get("DINOTRACKER_WEIGHTS", "weights"))]
    try:
        import torch

        dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    except ImportError:
        pass
    return dirs


def local_weights(name: str, weights=None) -> Path | None:
    """The local weights of backbone ``name`` (``weights`` if it exists, else the official file name in
    :func:`weights_dirs`); None when there are none. Never downloads."""
    from dinotracker.backbones.build import checkpoint_name

    if weights:
        p = Path(str(weights)).expanduser()
        return p if p.exists() else None
    fname = checkpoint_name(name)
    for d in weights_dirs():
        if (d / fname).is_file():
            return d / fname
    return None


def needs_weights(bcfg) -> bool:
    return str(bcfg.name) != "none" and str(bcfg.get("source") or "auto") not in ("random", "none")


def resolve_backbone(cfg, fallback: str | None = None) -> bool:
    """Check (and possibly replace) ``cfg.backbone`` in place before any work (module docstring).
    Returns True when the fallback was taken."""
    bcfg = cfg.backbone
    if not needs_weights(bcfg):
        return False
    found = local_weights(str(bcfg.name), bcfg.get("weights"))
    if found is not None:
        if not bcfg.get("weights") and Path(found).parent.name != "checkpoints":
            with open_dict(bcfg):
                bcfg.weights = str(found)  # from ./weights or $DINOTRACKER_WEIGHTS
        return False
    if bcfg.get("weights"):
        from dinotracker.backbones.build import missing_weights_message

        raise FileNotFoundError(f"backbone.weights={bcfg.weights} not found. "
                                + missing_weights_message(str(bcfg.name)))
    fallback = fallback or cfg.get("backbone_fallback")
    if fallback:
        from dinotracker.utils.confdir import config_dir

        new = OmegaConf.load(config_dir() / "backbone" / f"{fallback}.yaml")
        log.info("backbone %s: no weights on this machine, using backbone=%s instead (backbone_fallback=%s; "
                 "put %s in ./weights or the torch hub cache to use DINO)", bcfg.name, fallback, fallback,
                 _file(str(bcfg.name)))
        with open_dict(cfg):
            cfg.backbone = new
        return True
    if os.environ.get("DINOTRACKER_OFFLINE", "0") not in ("", "0"):
        from dinotracker.backbones.build import missing_weights_message

        raise FileNotFoundError(missing_weights_message(str(bcfg.name), "DINOTRACKER_OFFLINE is set"))
    _download_now(str(bcfg.name))
    return False


def _download_now(name: str, timeout_s: float = 20.0) -> None:
    """Fetch the official checkpoint into the torch hub cache now (a short socket timeout), so that an
    offline machine fails before preprocessing with the one-line message."""
    import socket

    from dinotracker.backbones.build import _hub_state

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        _hub_state(name)
    finally:
        socket.setdefaulttimeout(old)


def _file(name: str) -> str:
    from dinotracker.backbones.build import checkpoint_name

    return checkpoint_name(name)
