"""Optical flow between frames: OpenCV DIS (offline, CPU) or torchvision RAFT.

Flow maps are float32 [B,2,H,W] (dx, dy) in pixels; the pixel [i, j] moves the raster point
(j + 0.5, i + 0.5) (:mod:`dinotracker.geometry`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

RAFT_FILES = {"raft_large": "raft_large_C_T_SKHT_V2-ff5fadd5.pth", "raft_small": "raft_small_C_T_V2-01064c6d.pth"}
DIS_PRESETS = {"ultrafast": 0, "fast": 1, "medium": 2}


class FlowEstimator:
    """``estimator(src, dst)``: uint8 [B,3,H,W] pairs -> float32 flow [B,2,H,W] (src -> dst)."""

    name = "flow"

    def __call__(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class DISFlow(FlowEstimator):
    """OpenCV's Dense Inverse Search on grey frames (``preset`` ultrafast | fast | medium).

    Needs no weights; medium is a good speed/accuracy balance for chaining on CPU.
    """

    def __init__(self, preset: str = "medium"):
        if preset not in DIS_PRESETS:
            raise ValueError(f"flow.dis_preset must be one of {sorted(DIS_PRESETS)}, got {preset!r}")
        self.preset = preset
        self.name = f"dis-{preset}"
        self._dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])

    def __call__(self, src, dst):
        out = []
        for a, b in zip(src, dst):
            ga = cv2.cvtColor(np.ascontiguousarray(a.permute(1, 2, 0).cpu().numpy()), cv2.COLOR_RGB2GRAY)
            gb = cv2.cvtColor(np.ascontiguousarray(b.permute(1, 2, 0).cpu().numpy()), cv2.COLOR_RGB2GRAY)
            out.append(torch.from_numpy(self._dis.calc(ga, gb, None)).permute(2, 0, 1))
        return torch.stack(out).float()


class RAFTFlow(FlowEstimator):
    """torchvision RAFT (large as the reference, 24 updates) with replicate padding to a multiple of 8."""

    def __init__(self, variant: str = "raft_large", weights: str | None = None, num_updates: int = 24,
                 device="cpu", state_dict: dict | None = None):
        from torchvision.models import optical_flow as of

        if variant not in RAFT_FILES:
            raise ValueError(f"unknown RAFT variant {variant!r}: use raft_large or raft_small")
        self.name, self.num_updates, self.device = variant, int(num_updates), torch.device(device)
        model = getattr(of, variant)(weights=None, progress=False)
        if state_dict is None:
            state_dict = load_raft_weights(variant, weights)
        model.load_state_dict(state_dict)
        self.model = model.eval().to(self.device)

    @torch.no_grad()
    def __call__(self, src, dst):
        h, w = src.shape[-2:]
        ph, pw = (8 - h % 8) % 8, (8 - w % 8) % 8
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)

        def prep(x):
            x = x.to(self.device).float() / 255.0 * 2.0 - 1.0  # the weights' transforms: [0,1] -> [-1,1]
            return F.pad(x, pad, mode="replicate")

        flow = self.model(prep(src), prep(dst), num_flow_updates=self.num_updates)[-1]
        return flow[..., pad[2]:pad[2] + h, pad[0]:pad[0] + w].float().cpu()


def load_raft_weights(variant: str, weights: str | None) -> dict:
    """A local file, else the torch hub cache, else a download when online; a clear error otherwise."""
    fname = RAFT_FILES[variant]
    candidates = [Path(weights)] if weights else []
    candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / fname)
    for path in candidates:
        if path.is_file():
            return torch.load(path, map_location="cpu", weights_only=True)
    if weights:
        raise FileNotFoundError(f"RAFT weights not found: {weights}")
    try:
        from torchvision.models import optical_flow as of

        enum = {"raft_large": of.Raft_Large_Weights, "raft_small": of.Raft_Small_Weights}[variant]
        return enum.DEFAULT.get_state_dict(progress=True)
    except Exception as err:  # noqa: BLE001 - offline: say exactly what to do
        raise FileNotFoundError(
            f"{variant} weights are not available offline: put {fname} in {Path(torch.hub.get_dir()) / 'checkpoints'} "
            f"or pass flow.weights=<path>; or use flow=dis, which needs no weights ({err})") from err


def build_flow(method: str = "dis", device="cpu", weights: str | None = None, num_updates: int = 24,
               dis_preset: str = "medium") -> FlowEstimator:
    """``method``: dis | raft_large | raft_small."""
    if method == "dis":
        return DISFlow(dis_preset)
    if method in RAFT_FILES:
        return RAFTFlow(method, weights=weights, num_updates=num_updates, device=device)
    raise ValueError(f"unknown flow method {method!r}: use dis, raft_large or raft_small")


def compute_consecutive_flows(estimator: FlowEstimator, frames: torch.Tensor, batch_size: int = 8,
                              progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """frames uint8 [T,3,H,W] -> (forward [T-1,2,H,W], backward [T-1,2,H,W]) in fp16.

    forward[i] is i -> i+1 and backward[i] is i+1 -> i; each ordered pair is computed once.
    """
    t = frames.shape[0]
    if t < 2:
        raise ValueError("optical flow needs at least 2 frames")
    fwd, bwd = [], []
    for a in tqdm(range(0, t - 1, batch_size), desc="flow", disable=not progress, leave=False):
        b = min(a + batch_size, t - 1)
        src, dst = frames[a:b], frames[a + 1:b + 1]
        both = estimator(torch.cat([src, dst]), torch.cat([dst, src]))
        fwd.append(both[: b - a].half())
        bwd.append(both[b - a:].half())
    return torch.cat(fwd), torch.cat(bwd)
