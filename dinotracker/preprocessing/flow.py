"""Optical flow between frames: OpenCV DIS (offline, CPU) or torchvision RAFT (DINO_TRACKER_SPEC §2.1).

Flow maps are float32 [B,2,H,W], (dx, dy) in pixels of the input frames; the pixel [i, j] moves the raster
point (j + 0.5, i + 0.5) (:mod:`dinotracker.geometry`).

Methods (``build_flow(method=...)``):

* ``dis``: OpenCV Dense Inverse Search on grey frames. No weights, CPU only, a few tens of ms per pair at
  476x854 with the ``medium`` preset (``ultrafast`` / ``fast`` trade accuracy for speed). The offline choice.
* ``raft_large``: torchvision RAFT-large (``C_T_SKHT_V2``), the reference's model, 24 refinement updates, the
  weights' own transforms ([0,1] -> [-1,1]) and "sintel" replicate padding to a multiple of 8.
* ``raft_small``: torchvision RAFT-small (``C_T_V2``), same pipeline.

RAFT weights are looked up as: ``weights=<file>``; else ``torch.hub.get_dir()/checkpoints/<official file>``;
else a download when online. ``weights="random"`` builds a randomly initialised model (tests only).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from dinotracker.utils.progress import progress_iter as tqdm  # a bar on a terminal, log lines otherwise

log = logging.getLogger(__name__)

DIS_PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
               "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
RAFT_VARIANTS = ("raft_large", "raft_small")


def _weights_enum(variant: str):
    from torchvision.models import optical_flow as of

    return {"raft_large": of.Raft_Large_Weights, "raft_small": of.Raft_Small_Weights}[variant].DEFAULT


def raft_weights_file(variant: str) -> str:
    """The official torchvision file name, e.g. ``raft_large_C_T_SKHT_V2-ff5fadd5.pth``."""
    if variant not in RAFT_VARIANTS:
        raise ValueError(f"unknown RAFT variant {variant!r}: use one of {RAFT_VARIANTS}")
    return os.path.basename(_weights_enum(variant).url)


def _check_frames(src: torch.Tensor, dst: torch.Tensor) -> None:
    if src.dtype != torch.uint8 or dst.dtype != torch.uint8:
        raise ValueError(f"flow input must be uint8 frames, got {src.dtype} and {dst.dtype}")
    if src.ndim != 4 or src.shape[1] != 3 or src.shape != dst.shape:
        raise ValueError(f"flow input must be two uint8 [B,3,H,W] batches of equal shape, got "
                         f"{tuple(src.shape)} and {tuple(dst.shape)}")


class FlowEstimator:
    """``estimator(src, dst)``: uint8 [B,3,H,W] pairs -> float32 flow [B,2,H,W] (src -> dst), on the CPU."""

    name = "flow"

    def __call__(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class DISFlow(FlowEstimator):
    """OpenCV's Dense Inverse Search on grey frames.

    ``preset``: ``ultrafast`` | ``fast`` | ``medium`` (OpenCV's presets: patch size, stride, pyramid and
    variational-refinement iterations; ``medium`` is the accurate one and the default here, ~4x slower than
    ``ultrafast``). DIS is CPU only; ``device`` is ignored.
    """

    def __init__(self, preset: str = "medium"):
        if preset not in DIS_PRESETS:
            raise ValueError(f"flow.dis_preset must be one of {sorted(DIS_PRESETS)}, got {preset!r}")
        self.preset = preset
        self.name = f"dis-{preset}"
        self._dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])

    def __call__(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        _check_frames(src, dst)
        a = src.permute(0, 2, 3, 1).cpu().numpy()
        b = dst.permute(0, 2, 3, 1).cpu().numpy()
        out = np.empty((src.shape[0], src.shape[2], src.shape[3], 2), np.float32)
        for k in range(src.shape[0]):
            ga = cv2.cvtColor(np.ascontiguousarray(a[k]), cv2.COLOR_RGB2GRAY)
            gb = cv2.cvtColor(np.ascontiguousarray(b[k]), cv2.COLOR_RGB2GRAY)
            # OpenCV flow at pixel (x=j, y=i) moves that pixel's centre: the same per-pixel convention as ours
            out[k] = self._dis.calc(ga, gb, None)
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


class RAFTFlow(FlowEstimator):
    """torchvision RAFT: the weights' transforms, replicate padding to a multiple of 8 (split evenly, the
    reference's "sintel" ``InputPadder``), ``num_updates`` refinement iterations, flow cropped back.

    Inputs must be at least 128 px on each side (torchvision's correlation pyramid). ``chunk`` pairs go
    through the network at once (bounds GPU memory: each pair holds an all-pairs
    correlation volume of (H/8 * W/8)^2 floats).
    """

    def __init__(self, variant: str = "raft_large", weights: str | None = None, num_updates: int = 24,
                 device="cpu", state_dict: dict | None = None, chunk: int = 8):
        from torchvision.models import optical_flow as of

        if variant not in RAFT_VARIANTS:
            raise ValueError(f"unknown RAFT variant {variant!r}: use one of {RAFT_VARIANTS}")
        if int(num_updates) < 1:
            raise ValueError(f"flow.num_updates must be >= 1, got {num_updates}")
        self.name, self.num_updates, self.device = variant, int(num_updates), torch.device(device)
        self.chunk = max(1, int(chunk))
        model = getattr(of, variant)(weights=None, progress=False)
        if state_dict is None and weights != "random":
            state_dict = load_raft_weights(variant, weights)
        if state_dict is not None:
            model.load_state_dict(state_dict)
        self.model = model.eval().to(self.device)
        self.transforms = _weights_enum(variant).transforms()

    @staticmethod
    def padding(h: int, w: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) replicate padding up to a multiple of 8."""
        ph, pw = (8 - h % 8) % 8, (8 - w % 8) % 8
        return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2

    @torch.no_grad()
    def __call__(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        _check_frames(src, dst)
        h, w = src.shape[-2:]
        pad = self.padding(h, w)
        out = []
        for a in range(0, src.shape[0], self.chunk):
            x1 = F.pad(src[a:a + self.chunk].to(self.device).float() / 255.0, pad, mode="replicate")
            x2 = F.pad(dst[a:a + self.chunk].to(self.device).float() / 255.0, pad, mode="replicate")
            x1, x2 = self.transforms(x1, x2)  # (x - 0.5) / 0.5
            flow = self.model(x1, x2, num_flow_updates=self.num_updates)[-1]
            out.append(flow[..., pad[2]:pad[2] + h, pad[0]:pad[0] + w].float().cpu())
        return torch.cat(out)


def _download_state_dict(variant: str) -> dict:
    """Download the official weights into the torch hub cache (raises when offline)."""
    return _weights_enum(variant).get_state_dict(progress=True, check_hash=True)


def load_raft_weights(variant: str, weights: str | None = None) -> dict:
    """A local file, else the torch hub cache, else a download when online; a clear error otherwise."""
    fname = raft_weights_file(variant)
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / fname
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"flow.weights={weights!r} is not a file (expected torchvision's "
                                    f"{fname}, a {variant} state dict)")
        return torch.load(path, map_location="cpu", weights_only=True)
    if hub_file.is_file():
        return torch.load(hub_file, map_location="cpu", weights_only=True)
    try:
        log.info("downloading %s weights (%s) into %s", variant, fname, hub_file.parent)
        return _download_state_dict(variant)
    except Exception as err:  # noqa: BLE001 - offline or blocked: say exactly what to do
        raise FileNotFoundError(
            f"{variant} weights are not available offline. Put torchvision's {fname} "
            f"({_weights_enum(variant).url}) at {hub_file}, or pass flow.weights=<path to it>; "
            f"or use flow.method=dis, which needs no weights. (download failed: {err})") from err


def build_flow(method: str = "dis", device="cpu", weights: str | None = None, num_updates: int = 24,
               dis_preset: str = "medium") -> FlowEstimator:
    """``method``: ``dis`` | ``raft_large`` | ``raft_small`` (see the module docstring)."""
    if method == "dis":
        return DISFlow(dis_preset)
    if method in RAFT_VARIANTS:
        return RAFTFlow(method, weights=weights, num_updates=num_updates, device=device)
    raise ValueError(f"unknown flow.method {method!r}: use dis, raft_large or raft_small")


FLOW_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def compute_consecutive_flows(estimator: FlowEstimator, frames: torch.Tensor, batch_size: int = 8,
                              progress: bool = True, dtype: str = "float32") -> tuple[torch.Tensor, torch.Tensor]:
    """frames uint8 [T,3,H,W] -> (forward, backward), each ``dtype`` [T-1,2,H,W] on the CPU.

    ``forward[i]`` is the flow i -> i+1 and ``backward[i]`` the flow i+1 -> i. Each ordered pair goes through
    the estimator exactly once; ``batch_size`` consecutive pairs (2 * batch_size ordered pairs) per call.
    ``dtype`` (``flow.dtype``): ``"float32"`` (default, the reference) or ``"float16"``, half the cache
    (16 B instead of 32 B per pixel and frame pair); fp16 rounds a 100 px flow to 1/16 px and moves chained
    trajectories by up to ~1e-2 px, which flips some forward-backward decisions (docs/DESIGN.md).
    """
    if dtype not in FLOW_DTYPES:
        raise ValueError(f"flow dtype must be float32 or float16, got {dtype!r}")
    out_dtype = FLOW_DTYPES[dtype]
    if frames.ndim != 4 or frames.shape[1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 [T,3,H,W], got {frames.dtype} {tuple(frames.shape)}")
    t, _, h, w = frames.shape
    if t < 2:
        raise ValueError(f"optical flow needs at least 2 frames, got {t}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    fwd = torch.empty(t - 1, 2, h, w, dtype=out_dtype)
    bwd = torch.empty(t - 1, 2, h, w, dtype=out_dtype)
    for a in tqdm(range(0, t - 1, batch_size), desc="flow", disable=not progress, leave=False):
        b = min(a + batch_size, t - 1)
        src, dst = frames[a:b], frames[a + 1:b + 1]
        both = estimator(torch.cat([src, dst]), torch.cat([dst, src]))
        fwd[a:b] = both[: b - a].to(out_dtype)
        bwd[a:b] = both[b - a:].to(out_dtype)
    return fwd, bwd
