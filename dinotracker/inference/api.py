"""The Python API: ``dinotracker.load(run_folder)`` -> :class:`Tracker` (inputs and outputs in input pixels).

    tracker = dinotracker.load("runs/fit/horsejump/2026-...")
    out = tracker.track(queries)            # queries [N, 3] (t, x, y) input px
    out["tracks"], out["visible"], out["confidence"]      # [N, T, 2], [N, T], [N, T]
    grid = tracker.track_grid(16, frame=0, mask=None)
    feats = tracker.refined_features()      # [T, C, h, w] (segmentation tracking)

The model resolution is hidden: queries are scaled to it and tracks back (raster convention,
:mod:`dinotracker.geometry`).

Run folder files read: ``tracker.pt`` (``{"model_kwargs", "state_dict", "ema_state_dict"}``) and
``run_info.json`` (``preprocessed``: the run's :class:`~dinotracker.preprocessing.cache.CacheIndex`, see
:func:`run_video_index`; ``input_hw``/``model_hw`` are checked against the cache). Only the ``frames`` and
``features`` cache entries are loaded (memory-mapped), never trajectories or best-buddies.

Reference checkpoints (AssafSinger94/dino-tracker ``delta_dino_<it>.pt`` + ``tracker_head_<it>.pt``) load
with a preprocessing cache of the same video; the key mapping and architecture choices are in
:mod:`dinotracker.models.checkpoint`, which also reads ``tracker.pt``. Nothing here imports the training
stack (Lightning, losses, sampler).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dinotracker.geometry import Resize
from dinotracker.inference.occlusion import cosine_confidence, predict_occlusion, track_cosines
from dinotracker.inference.queries import as_queries, grid_queries, queries_to_model
from dinotracker.inference.tracker import FeatureBank, default_storage_dtype, refined_maps, track_queries
from dinotracker.models.checkpoint import find_reference_checkpoints, tracker_from_export, tracker_from_reference
from dinotracker.models.tracker import DinoTracker
from dinotracker.utils.progress import Progress
from dinotracker.utils.resume import latest_checkpoint, unfinished_run_message

log = logging.getLogger(__name__)


@dataclass
class InferenceVideo:
    """What inference needs of a preprocessed video (a subset of ``PreprocessedVideo``).

    frames uint8 [T, 3, H, W] at ``resize.model_hw``; features [T, C, h, w] frozen backbone features.
    """

    name: str
    frames: torch.Tensor
    features: torch.Tensor
    patch: int
    stride: int
    resize: Resize
    meta: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


class Tracker:
    """A fitted DINO-Tracker bound to its video's frames and frozen features.

    Args:
        model: the :class:`DinoTracker` (put in eval mode here).
        video: a ``PreprocessedVideo`` or :class:`InferenceVideo` (``frames``, ``features``,
            ``resize``; ``patch``/``stride`` must match the model's).
        device: where features and maths live.
        chunk: default number of (query, frame) heatmaps evaluated at once; peak memory is about
            ``chunk * h * w * 200`` bytes (refiner scratch: shifted copies and 16 channels) plus the
            feature bank.
        anchor_cos, visible_cos: occlusion thresholds (spec §5.2: 0.7, 0.6).
        storage_dtype: feature bank dtype (default fp32; fp16 halves memory but may flip near-ties).
        feature_chunk: frames per Delta-DINO call when refining.
        max_anchors: occlusion's median over at most this many anchor frames per query (None: all, the
            spec; see :func:`~dinotracker.inference.occlusion.predict_occlusion`), a CPU speed option.
        fast_conv: Delta-DINO's convolutions through NNPACK when refining on a CPU (~2.5x faster; features
            within ~2e-6 relative of the oneDNN path, see ``model.fast_conv``); ignored elsewhere.
    """

    def __init__(
        self,
        model: DinoTracker,
        video,
        device="cpu",
        chunk: int = 512,
        anchor_cos: float = 0.7,
        visible_cos: float = 0.6,
        storage_dtype: torch.dtype | None = None,
        feature_chunk: int = 8,
        max_anchors: int | None = None,
        fast_conv: bool = False,
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        if (model.patch, model.stride) != (int(video.patch), int(video.stride)):
            raise ValueError(
                f"model patch/stride {(model.patch, model.stride)} != video's {(video.patch, video.stride)}"
            )
        if tuple(video.features.shape[-2:]) != tuple(model.grid_hw):
            raise ValueError(f"feature grid {tuple(video.features.shape[-2:])} != model grid {model.grid_hw}")
        self.video = video
        self.chunk = int(chunk)
        self.anchor_cos, self.visible_cos = float(anchor_cos), float(visible_cos)
        self.storage_dtype = storage_dtype or default_storage_dtype(self.device)
        self.feature_chunk = int(feature_chunk)
        self.max_anchors = int(max_anchors) if max_anchors else None
        self.fast_conv = bool(fast_conv)
        self._bank: FeatureBank | None = None

    # ------------------------------------------------------------------ properties
    @property
    def patch(self) -> int:
        return self.model.patch

    @property
    def stride(self) -> int:
        return self.model.stride

    @property
    def num_frames(self) -> int:
        return int(self.video.frames.shape[0])

    @property
    def resize(self) -> Resize:
        return self.video.resize

    @property
    def input_hw(self) -> tuple[int, int]:
        return tuple(self.video.resize.input_hw)

    @property
    def model_hw(self) -> tuple[int, int]:
        return tuple(self.video.resize.model_hw)

    # ------------------------------------------------------------------ features
    @property
    def bank(self) -> FeatureBank:
        """Refined features of all frames, computed once (no grad) and cached."""
        if self._bank is None:
            delta = self.model.delta_dino
            before = None if delta is None else delta.fast_conv
            if delta is not None:
                delta.fast_conv = self.fast_conv
            try:
                maps = refined_maps(
                    self.model,
                    self.video.frames,
                    self.video.features,
                    chunk=self.feature_chunk,
                    device=self.device,
                    dtype=self.storage_dtype,
                )
            finally:
                if delta is not None:
                    delta.fast_conv = before
            self._bank = FeatureBank(maps)
        return self._bank

    def refined_features(self, frames=None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Refined features F = Phi + Delta(I) [T', C, h, w] of ``frames`` (indices/slice; all when None),
        on ``self.device`` in the bank's storage dtype unless ``dtype`` is given. Cell k of the grid
        is centred at model raster ``stride * k + patch / 2``."""
        maps = self.bank.maps
        if frames is not None:
            maps = (
                maps[frames]
                if isinstance(frames, slice)
                else maps[torch.as_tensor(frames, device=maps.device)]
            )
        return maps if dtype is None else maps.to(dtype)

    # ------------------------------------------------------------------ tracking
    @torch.no_grad()
    def track(
        self, queries, occlusion: bool = True, chunk: int | None = None, force_query: bool = True
    ) -> dict[str, torch.Tensor]:
        """Track queries [N, 3] (t, x, y) in input px (tensor/array/list) through the whole video.

        Returns CPU tensors: ``tracks`` float32 [N, T, 2] (x, y) input px, ``visible`` bool [N, T],
        ``confidence`` float32 [N, T] in [0, 1] (see :mod:`.occlusion`; without occlusion it is the
        cosine term only and ``visible`` is all True), ``queries`` float32 [N, 3] (t, x, y) input px.
        The query frame returns the query exactly (``force_query``).
        """
        q = as_queries(queries, self.num_frames, self.input_hw)
        chunk = int(chunk or self.chunk)
        qm = queries_to_model(q, self.resize).to(self.device)
        t0 = time.perf_counter()
        bank = self.bank
        t1 = time.perf_counter()
        n, t = len(q), self.num_frames
        prog = Progress(f"tracking {n} points", n * t, unit="heatmap", logger=log)
        tracks = track_queries(self.model, bank, qm, chunk=chunk, force_query=force_query, progress=prog)
        prog.finish()
        t2 = time.perf_counter()
        tq = qm[:, 0].round().long()
        if occlusion and len(q):
            prog = Progress(f"occlusion of {n} points", n * t, unit="anchor", logger=log)
            occ = predict_occlusion(
                self.model, bank, qm, tracks, self.anchor_cos, self.visible_cos, chunk=chunk, progress=prog,
                max_anchors=self.max_anchors,
            )
            prog.finish()
            visible, confidence = ~occ.occluded, occ.confidence
        else:
            visible = torch.ones(tracks.shape[:2], dtype=torch.bool, device=tracks.device)
            confidence = (
                cosine_confidence(track_cosines(self.model, bank.maps, tracks, tq), self.visible_cos)
                if len(q)
                else torch.ones(tracks.shape[:2], device=tracks.device)
            )
        log.info(
            "tracked %d points x %d frames in %.1f s (features %.1f s, positions %.1f s, occlusion %.1f s)",
            n, t, time.perf_counter() - t0, t1 - t0, t2 - t1, time.perf_counter() - t2,
        )
        out_tracks = self.resize.to_input(tracks).float().cpu()
        if force_query and len(q):  # exact in input px too (no model-px round trip)
            out_tracks[torch.arange(len(q)), q[:, 0].long()] = q[:, 1:]
        return dict(tracks=out_tracks, visible=visible.cpu(), confidence=confidence.float().cpu(), queries=q)

    def track_grid(
        self, step: float = 16, frame: int = 0, mask=None, occlusion: bool = True, chunk: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Track a grid every ``step`` input px on ``frame`` (optionally inside ``mask`` bool [H, W]
        at input resolution); same outputs as :meth:`track` (``queries`` are the grid points)."""
        if not 0 <= int(frame) < self.num_frames:
            raise ValueError(f"grid frame must be in [0, {self.num_frames}), got {frame}")
        return self.track(
            grid_queries(self.input_hw, step, int(frame), mask), occlusion=occlusion, chunk=chunk
        )


# ---------------------------------------------------------------------- loading
def load_inference_video(source) -> InferenceVideo:
    """Frames and features of a preprocessed video from its cache index (a
    :class:`~dinotracker.preprocessing.cache.CacheIndex`, its dict as in ``run_info["preprocessed"]``, or a
    cache folder: its ``preprocessed.json``), memory-mapped; only those two entries are read."""
    from dinotracker.preprocessing.cache import CacheIndex

    index = CacheIndex.coerce(source)
    index.require("frames", "features")
    return InferenceVideo(
        name=index.name,
        frames=torch.from_numpy(np.array(index.load("frames")["frames"])),
        features=torch.from_numpy(np.array(index.load("features")["features"])),
        patch=index.patch,
        stride=index.stride,
        resize=index.resize,
        meta=index.to_dict(),
    )


def run_video_index(info: dict, info_path, cache_dir=None):
    """The one binding of a fitted run to its video: the cache index recorded in ``run_info.json``
    (``preprocessed``), in ``cache_dir`` instead when the cache was moved. Run folders from before the
    index had a ``cache_dir`` only: that folder's most recent ``preprocessed.json``."""
    from dinotracker.preprocessing.cache import CacheIndex

    if isinstance(info.get("preprocessed"), dict):
        index = CacheIndex.from_dict(info["preprocessed"])
        return index.moved_to(cache_dir) if cache_dir is not None else index
    if cache_dir is not None or info.get("cache_dir"):
        return CacheIndex.read(Path(cache_dir if cache_dir is not None else info["cache_dir"]))
    raise ValueError(f"{info_path} names no preprocessing cache; pass cache_dir=")


def load(
    run_folder,
    device="cpu",
    use_ema: bool = False,
    raw_features: bool = False,
    cache_dir=None,
    backbone=None,
    video=None,
    **tracker_kwargs,
) -> Tracker:
    """A :class:`Tracker` from a run folder (``tracker.pt`` + ``run_info.json``) or from a folder of the
    reference implementation's checkpoints together with ``cache_dir`` (this package's preprocessing
    cache of the same video).

    ``use_ema``: the teacher (EMA) weights when the run saved them. ``raw_features=True`` gives the
    raw-DINO baseline: no Delta-DINO and no refiner (H = softmax(S)).
    ``cache_dir`` overrides the run's cache location (a moved cache: the run's own entries are read there).
    ``video``: track other frames than the fitted ones, an :class:`InferenceVideo` or a cache index (e.g.
    every frame of a video fitted on every k-th frame, from
    :func:`~dinotracker.preprocessing.pipeline.preprocess_inference_inputs`); it must have the run's input and
    model resolution. ``backbone``: for a LoRA-tuned run
    (``experiment=ablation/lora_tune``), the frozen backbone it was fitted on (default: rebuilt from the
    spec in ``tracker.pt``, e.g. when its weight file moved). Other keyword arguments go to
    :class:`Tracker` (``chunk``, ``anchor_cos``, ``visible_cos``, ``storage_dtype``).
    """
    folder = Path(run_folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"run folder not found: {folder}")
    if (folder / "tracker.pt").is_file():
        info_path = folder / "run_info.json"
        if not info_path.is_file():
            raise FileNotFoundError(f"{folder} has tracker.pt but no run_info.json")
        info = json.loads(info_path.read_text())
        if video is None:
            video = load_inference_video(run_video_index(info, info_path, cache_dir))
        elif not isinstance(video, InferenceVideo):  # another video's index (e.g. all frames of a subsampled fit)
            video = load_inference_video(video)
        for key in ("input_hw", "model_hw"):
            if key in info and tuple(info[key]) != tuple(getattr(video.resize, key)):
                raise ValueError(f"run_info {key}={info[key]} but the cache has {getattr(video.resize, key)}")
        d = torch.load(folder / "tracker.pt", map_location="cpu", weights_only=True)
        if raw_features:  # the frozen features alone: no LoRA backbone to rebuild
            d = {**d, "model_kwargs": {**d["model_kwargs"], "lora": None}}
            d["state_dict"] = {k: v for k, v in d["state_dict"].items() if not k.startswith("lora.")}
            d["ema_state_dict"] = None
        model = tracker_from_export(d, use_ema=use_ema, backbone=backbone)
    else:
        ref = find_reference_checkpoints(folder)
        if ref is None and (ckpt := latest_checkpoint(folder)) is not None:
            raise FileNotFoundError(unfinished_run_message(folder, ckpt))
        if ref is None:
            raise FileNotFoundError(
                f"{folder} has neither tracker.pt (a dinotracker run) nor "
                "delta_dino_<it>.pt + tracker_head_<it>.pt (reference checkpoints)"
            )
        if cache_dir is None:
            raise ValueError(
                f"{folder} holds reference checkpoints: pass cache_dir=<this video's preprocessing "
                "cache> (python -m dinotracker.preprocess +video=... makes one)"
            )
        video = load_inference_video(Path(cache_dir))
        model = tracker_from_reference(ref[0], ref[1], feature_dim=int(video.features.shape[1]), patch=video.patch,
                                       stride=video.stride, model_hw=video.resize.model_hw)
        log.info("loaded reference checkpoints %s, %s (iteration %d)", ref[0].name, ref[1].name, ref[2])
    if raw_features:  # F = Phi and H = softmax(S): nearest-neighbour tracking on the frozen features
        model = DinoTracker(
            feature_dim=model.feature_dim,
            patch=model.patch,
            stride=model.stride,
            model_hw=model.model_hw,
            radius=model.radius,
            coarse_from=model.coarse_from,
            use_delta=False,
            use_refiner=False,
        )
    return Tracker(model.eval(), video, device=device, **tracker_kwargs)
