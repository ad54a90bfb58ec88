"""``make demo``: fit DINO-Tracker on the built-in synthetic video, offline, in minutes on a CPU.

Uses pretrained DINOv2 ViT-S/14 weights when they are present locally (``weights/`` or the
torch hub cache), else ``backbone=none`` (no DINO prior; the paper's "w/o DINO" ablation),
and says which. Extra arguments are passed on to ``python -m dinotracker.fit``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def find_local_weights(name: str = "dinov2_vits14") -> Path | None:
    """A local copy of the official checkpoint, without touching the network."""
    from dinotracker.backbones import checkpoint_name

    fname = checkpoint_name(name)
    dirs = [Path(os.environ.get("DINOTRACKER_WEIGHTS", "weights"))]
    try:
        import torch

        dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    except Exception:  # noqa: BLE001 - torch missing is reported by fit itself
        pass
    for d in dirs:
        if (d / fname).is_file():
            return d / fname
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    weights = find_local_weights()
    run_dir = Path("runs") / "demo" / time.strftime("%Y-%m-%d_%H-%M-%S")
    if weights is not None:
        backbone = ["backbone=dinov2_vits14", f"backbone.weights={weights}"]
        print(f"[demo] backbone: pretrained DINOv2 ViT-S/14 from {weights}")
    else:
        backbone = ["backbone=none", "backbone.dim=128"]
        print("[demo] backbone: none -- no DINOv2 weights found locally (put dinov2_vits14_pretrain.pth "
              "in ./weights or the torch hub cache to use them); Delta-DINO learns features from scratch")
    print("[demo] flow: OpenCV DIS (offline); video: built-in synthetic video with exact ground truth")
    cmd = [sys.executable, "-m", "dinotracker.fit", "+video=synthetic", "experiment=demo", *backbone,
           f"hydra.run.dir={run_dir}", *argv]
    print("[demo] " + " ".join(cmd[1:]), flush=True)
    rc = subprocess.call(cmd)
    if rc == 0:
        print(f"[demo] done: run folder {run_dir} (config, checkpoints, tracks.npz, tracks.mp4, metrics.json)")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
