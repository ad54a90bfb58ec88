"""The Python API: ``dinotracker.load(run_folder)`` -> :class:`Tracker` (inputs/outputs in input pixels).

    tracker = dinotracker.load("runs/fit/horsejump/2026-...")
    out = tracker.track(queries)          # queries [N,3] (t, x, y) input px
    out["tracks"], out["visible"], out["confidence"]     # [N,T,2], [N,T], [N,T]
    grid = tracker.track_grid(step=16, frame=0, mask=None)

The model's resolution is hidden: queries are scaled to it and tracks back (raster
convention, :mod:`dinotracker.geometry`).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import torch

from dinotracker.inference.queries import grid_queries
from dinotracker.inference.tracker import predict_occlusion, refined_maps, track_queries
from dinotracker.models.tracker import DinoTracker
from dinotracker.preprocessing.types import PreprocessedVideo

log = logging.getLogger(__name__)


class Tracker:
    """A fitted DINO-Tracker bound to its video's preprocessing (frames and frozen features)."""

    def __init__(self, model: DinoTracker, video: PreprocessedVideo, device="cpu", chunk: int = 4096,
                 anchor_cos: float = 0.7, visible_cos: float = 0.6):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.video = video
        self.chunk, self.anchor_cos, self.visible_cos = int(chunk), float(anchor_cos), float(visible_cos)
        self._maps: torch.Tensor | None = None

    @property
    def patch(self) -> int:
        return self.video.patch

    @property
    def stride(self) -> int:
        return self.video.stride

    @property
    def num_frames(self) -> int:
        return self.video.num_frames

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.video.resize.input_hw

    def refined_features(self) -> torch.Tensor:
        """Refined features of every frame [T,C,h,w] (computed once, cached)."""
        if self._maps is None:
            self._maps = refined_maps(self.model, self.video.frames, self.video.features, device=self.device)
        return self._maps

    @torch.no_grad()
    def track(self, queries, occlusion: bool = True) -> dict[str, torch.Tensor]:
        """queries [N,3] (t, x, y) in input px -> dict(tracks [N,T,2] input px, visible [N,T] bool,
        confidence [N,T] float, queries [N,3]). Each query is tracked forward and backward."""
        q = torch.as_tensor(np.asarray(queries, np.float32) if not isinstance(queries, torch.Tensor) else queries)
        q = q.float().reshape(-1, 3)
        t = self.num_frames
        if q.numel() and ((q[:, 0] < 0) | (q[:, 0] > t - 1)).any():
            raise ValueError(f"query frames must be in [0, {t - 1}]")
        h, w = self.input_hw
        if q.numel() and ((q[:, 1] < 0) | (q[:, 1] > w) | (q[:, 2] < 0) | (q[:, 2] > h)).any():
            raise ValueError(f"query points must lie inside the {w}x{h} frame (x, y) in input pixels")
        qm = q.clone()
        qm[:, 1:] = self.video.resize.to_model(q[:, 1:])
        maps = self.refined_features()
        tracks = track_queries(self.model, maps, qm.to(self.device), chunk=self.chunk)
        if occlusion and len(q):
            occ, conf, _ = predict_occlusion(self.model, maps, qm.to(self.device), tracks, self.anchor_cos,
                                             self.visible_cos, chunk=self.chunk)
            visible, confidence = ~occ, conf
        else:
            visible = torch.ones(tracks.shape[:2], dtype=torch.bool, device=tracks.device)
            confidence = torch.ones(tracks.shape[:2], device=tracks.device)
        tracks = self.video.resize.to_input(tracks)
        idx = torch.arange(len(q))
        tracks[idx, q[:, 0].round().long()] = q[:, 1:].to(tracks)  # exact at the query frame
        return dict(tracks=tracks.cpu(), visible=visible.cpu(), confidence=confidence.float().cpu(), queries=q)

    def track_grid(self, step: int = 16, frame: int = 0, mask=None, occlusion: bool = True) -> dict:
        """Track a grid of points every ``step`` input px on ``frame`` (optionally inside ``mask``
        bool [H,W] at input resolution)."""
        return self.track(grid_queries(self.input_hw, step, frame, mask), occlusion=occlusion)


def _reference_checkpoints(folder: Path):
    """The reference implementation's ``delta_dino_<it>.pt`` / ``tracker_head_<it>.pt`` (largest it)."""
    its = sorted(int(m.group(1)) for p in folder.glob("delta_dino_*.pt")
                 if (m := re.fullmatch(r"delta_dino_(\d+)\.pt", p.name)))
    its = [i for i in its if (folder / f"tracker_head_{i}.pt").is_file()]
    return (folder / f"delta_dino_{its[-1]}.pt", folder / f"tracker_head_{its[-1]}.pt") if its else None


def load(run_folder, device="cpu", use_ema: bool = False, raw_features: bool = False, cache_dir=None,
         **tracker_kwargs) -> Tracker:
    """A fitted tracker from a run folder (``tracker.pt`` + ``run_info.json``), or from a folder of the
    reference implementation's checkpoints (``delta_dino_<it>.pt``, ``tracker_head_<it>.pt``) together
    with ``cache_dir`` (this package's preprocessing cache of the same video).

    ``raw_features=True`` gives the raw-DINO baseline (no Delta-DINO, no refiner: H = S).
    """
    from dinotracker.preprocessing.pipeline import load_preprocessed

    folder = Path(run_folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"run folder not found: {folder}")
    ref = _reference_checkpoints(folder)
    if (folder / "tracker.pt").is_file():
        info = json.loads((folder / "run_info.json").read_text())
        video = load_preprocessed(info["preprocessed"])
        d = torch.load(folder / "tracker.pt", map_location="cpu", weights_only=True)
        kw = dict(d["model_kwargs"])
        kw["model_hw"] = tuple(kw["model_hw"])
        state = d["ema_state_dict"] if use_ema and d.get("ema_state_dict") is not None else d["state_dict"]
        model = DinoTracker(**kw)
        model.load_state_dict(state)
    elif ref is not None:
        if cache_dir is None:
            raise ValueError(f"{folder} holds reference checkpoints: pass cache_dir=<this video's preprocessing "
                             "cache> (python -m dinotracker.preprocess +video=... makes one)")
        video = load_preprocessed(cache_dir)
        model = DinoTracker(feature_dim=int(video.features.shape[1]), patch=video.patch, stride=video.stride,
                            model_hw=video.model_hw, align_mode="reference")
        delta_sd = torch.load(ref[0], map_location="cpu", weights_only=True)
        head_sd = torch.load(ref[1], map_location="cpu", weights_only=True)
        model.load_reference_state_dicts(delta_sd, head_sd)
        log.info("loaded reference checkpoints %s, %s", ref[0].name, ref[1].name)
    else:
        raise FileNotFoundError(f"{folder} has neither tracker.pt (a dinotracker run) nor "
                                "delta_dino_<it>.pt + tracker_head_<it>.pt (reference checkpoints)")
    if raw_features:
        kw = dict(feature_dim=model.feature_dim, patch=model.patch, stride=model.stride, model_hw=model.model_hw,
                  radius=model.radius, coarse_from=model.coarse_from, use_delta=False, use_refiner=False)
        model = DinoTracker(**kw)
    return Tracker(model.eval(), video, device=device, **tracker_kwargs)
