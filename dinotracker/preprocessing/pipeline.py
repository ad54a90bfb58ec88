"""Preprocessing orchestration: video -> cached flow, trajectories, features, masks, best-buddies.

Every stage is an entry of :class:`~dinotracker.preprocessing.cache.StageCache`, keyed by
the hash of its inputs' keys, its version and every option of the config sections it reads but
those that provably do not change its output (:mod:`dinotracker.preprocessing.keys`), so changing
(say) the backbone layer recomputes features and best-buddies but reuses flow and
trajectories; an interrupted run resumes at the first missing stage.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import torch

from dinotracker.data.video import Video
from dinotracker.geometry import Resize, model_size
from dinotracker.preprocessing.cache import CacheIndex, StageCache, StageRef, array_hash, stable_hash
from dinotracker.preprocessing.keys import plain, stage_key, stage_options
from dinotracker.preprocessing.types import BestBuddies, PreprocessedVideo
from dinotracker.utils.device import resolve_device

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when a stage's on-disk format changes


def resize_frames(frames: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """uint8 [T,H,W,3] -> uint8 [T,3,h,w] with PIL's Lanczos, as the reference resizes its frames.

    PIL widens the Lanczos-3 kernel by the scale factor when downscaling (antialiasing); OpenCV's
    ``INTER_LANCZOS4`` does not, and aliases textured 1080p content (22 grey levels from PIL on average).
    """
    from PIL import Image

    h, w = hw
    if frames.shape[1:3] == (h, w):
        out = frames
    else:
        out = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(f)).resize((w, h), Image.LANCZOS))
                        for f in frames])
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def resize_masks(masks: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """[T,H,W] ids -> [T,h,w] with nearest neighbour."""
    h, w = hw
    if masks.shape[1:3] == (h, w):
        return masks
    return np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST) for m in masks])


def _container(cfg, key: str, default=None):
    return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


class _Stages:
    """The stages every use of a video shares (frames at model resolution, flow, features), in one cache."""

    def __init__(self, video: Video, backbone_cfg, flow_cfg, pre_cfg, cache_root, progress: bool, stats: dict):
        self.video, self.backbone_cfg, self.flow_cfg, self.progress, self.stats = (video, backbone_cfg, flow_cfg,
                                                                                   progress, stats)
        self.device = resolve_device(_container(pre_cfg, "device", "auto"))
        self.patch, self.stride = int(backbone_cfg.patch), int(backbone_cfg.stride)
        size = _container(pre_cfg, "size")
        self.model_hw = model_size(video.hw, short_side=_container(pre_cfg, "short_side"),
                                   size_hw=tuple(size) if size else None, multiple=self.patch)
        self.resize = Resize(video.hw, self.model_hw)
        # what the stage keys hash (keys.STAGES says which sections each stage reads)
        self.cfg = {"preprocess": plain(pre_cfg), "flow": plain(flow_cfg), "backbone": plain(backbone_cfg)}
        video_key = stable_hash([array_hash(video.frames), video.frame_indices.tolist(), CACHE_VERSION])
        self.cache = StageCache(Path(cache_root) / f"{video.name}-{video_key[:10]}",
                                verify=bool(_container(pre_cfg, "verify", True)))
        log.info("preprocessing %s: %d frames %s -> model %s, cache %s", video.name, video.num_frames,
                 video.hw, self.model_hw, self.cache.root)
        # frames at model resolution
        self.k_frames = stage_key("frames", self.cfg, {}, video=video_key, model_hw=list(self.model_hw))
        arr, _ = self.cache.get_or_compute("frames", self.k_frames, lambda: (
            {"frames": resize_frames(video.frames, self.model_hw)}, {"model_hw": self.model_hw}), stats)
        self.frames = torch.from_numpy(np.array(arr["frames"]))

    def key(self, stage: str, upstream: dict, **inputs) -> str:
        return stage_key(stage, self.cfg, upstream, **inputs)

    def estimator(self):
        from dinotracker.preprocessing.flow import build_flow

        fc = self.flow_cfg
        return build_flow(_container(fc, "method"), device=self.device, weights=_container(fc, "weights"),
                          num_updates=int(_container(fc, "num_updates") or 24),
                          dis_preset=_container(fc, "dis_preset") or "medium")

    def flow(self) -> tuple[str, torch.Tensor, torch.Tensor]:
        """Optical flow between consecutive frames (forward and backward, ``flow.dtype``): (key, forward, backward)."""
        k_flow = self.key("flow", {"frames": self.k_frames})

        def _flow():
            from dinotracker.preprocessing.flow import compute_consecutive_flows

            fwd, bwd = compute_consecutive_flows(self.estimator(), self.frames,
                                                 batch_size=int(self.flow_cfg.batch_size), progress=self.progress,
                                                 dtype=_container(self.flow_cfg, "dtype") or "float32")
            return {"forward": fwd.numpy(), "backward": bwd.numpy()}, {"method": _container(self.flow_cfg, "method")}

        arr, _ = self.cache.get_or_compute("flow", k_flow, _flow, self.stats)
        return k_flow, torch.from_numpy(np.array(arr["forward"])), torch.from_numpy(np.array(arr["backward"]))

    def features(self, need_saliency: bool):
        """Frozen backbone features (+ the saliency block's when ``need_saliency``): (key, cached arrays, keys)."""
        bb_keys = {p.split(".", 1)[1]: v for p, v in stage_options("features", self.cfg).items()
                   if p.startswith("backbone.")}
        mask_layer = int(_container(self.backbone_cfg, "mask_layer", -1))
        k_feat = self.key("features", {"frames": self.k_frames}, saliency=bool(need_saliency))

        def _features():
            return _extract_features(self.frames, self.backbone_cfg, self.device, need_saliency, mask_layer,
                                     self.progress)

        arr, _ = self.cache.get_or_compute("features", k_feat, _features, self.stats)
        return k_feat, arr, bb_keys

    def index(self, entries: dict, backbone: dict | None = None) -> CacheIndex:
        """The :class:`CacheIndex` of ``{stage: key}``."""
        return CacheIndex(name=self.video.name, cache_dir=self.cache.root.resolve(), patch=self.patch,
                          stride=self.stride, input_hw=self.resize.input_hw, model_hw=self.resize.model_hw,
                          frame_indices=self.video.frame_indices.tolist(),
                          stages={s: StageRef(s, k) for s, k in entries.items()}, backbone=backbone)


def preprocess_inference_inputs(video: Video, backbone_cfg, flow_cfg, pre_cfg, cache_root,
                                progress: bool = True) -> CacheIndex:
    """Only what tracking with a fitted model needs (frames at model resolution, frozen features) plus the
    consecutive flow (the flow-chaining baseline), cached like :func:`preprocess_video`. Returns the
    :class:`CacheIndex` of the ``frames``, ``features`` and ``flow`` entries (for
    :func:`dinotracker.inference.api.load_inference_video`). Used to track all frames of a video fitted on
    every k-th frame (paper Tab. 4)."""
    st = _Stages(video, backbone_cfg, flow_cfg, pre_cfg, cache_root, progress, {})
    k_flow = st.flow()[0]
    k_feat, _, bb_keys = st.features(need_saliency=False)
    return st.index({"frames": st.k_frames, "flow": k_flow, "features": k_feat}, backbone=bb_keys)


def preprocess_video(video: Video, backbone_cfg, flow_cfg, pre_cfg, cache_root, progress: bool = True,
                     stats: dict | None = None) -> PreprocessedVideo:
    """Run (or reuse) every preprocessing stage for ``video`` and return the training input."""
    stats = {} if stats is None else stats
    st = _Stages(video, backbone_cfg, flow_cfg, pre_cfg, cache_root, progress, stats)
    device, patch, stride, model_hw, resize, cache = st.device, st.patch, st.stride, st.model_hw, st.resize, st.cache
    frames, k_frames = st.frames, st.k_frames
    k_flow, forward, backward = st.flow()
    _estimator = st.estimator

    # chained trajectories (filtered and unfiltered from one pass)
    tcfg = pre_cfg.trajectories
    k_traj = st.key("trajectories", {"flow": k_flow})

    def _traj():
        from dinotracker.preprocessing.trajectories import chain_trajectories, make_direct_flow_fn

        direct = None
        if _container(tcfg, "direct_filter"):
            direct = make_direct_flow_fn(_estimator(), frames, fb_threshold=float(tcfg.fb_threshold))
        tr = chain_trajectories(forward.float(), backward.float(), fb_threshold=float(tcfg.fb_threshold),
                                min_length=int(tcfg.min_length), direct_flow=direct,
                                direct_threshold=float(tcfg.direct_threshold),
                                direct_window=_container(tcfg, "direct_window"),
                                direct_every=int(_container(tcfg, "direct_every") or 1), progress=progress)
        return ({"tracks": tr.tracks.numpy(), "tracks_unfiltered": tr.tracks_unfiltered.numpy()},
                {"num_tracks": int(tr.tracks.shape[0]), "num_unfiltered": int(tr.tracks_unfiltered.shape[0])})

    arr, meta_traj = cache.get_or_compute("trajectories", k_traj, _traj, stats)
    tracks = torch.from_numpy(np.array(arr["tracks"]))
    tracks_unfiltered = arr["tracks_unfiltered"]

    # frozen backbone features (+ the saliency block when masks are missing)
    k_feat, arr, bb_keys = st.features(need_saliency=video.masks is None)
    features = torch.from_numpy(np.array(arr["features"]))

    # foreground masks: the user's, else DINO saliency
    mcfg = pre_cfg.masks
    if video.masks is not None:
        k_mask = st.key("masks", {"frames": k_frames}, source="user", masks=array_hash(video.masks))

        def _masks():
            return {"fg": resize_masks(video.masks, model_hw) > 0}, {"source": "user"}
    else:
        k_mask = st.key("masks", {"frames": k_frames, "features": k_feat}, source="saliency")

        def _masks():
            from dinotracker.preprocessing.saliency import saliency_masks

            sal = torch.from_numpy(np.array(arr["saliency_features"])).float()
            fg = saliency_masks(sal, model_hw, patch, stride, threshold=float(mcfg.saliency_threshold), seed=0)
            return {"fg": fg.numpy()}, {"source": "saliency"}

    marr, mmeta = cache.get_or_compute("masks", k_mask, _masks, stats)
    fg_masks = torch.from_numpy(np.array(marr["fg"])).bool()
    _write_mask_pngs(cache.path("masks", k_mask), fg_masks)

    # foreground / background split of the trajectories
    k_split = st.key("split", {"trajectories": k_traj, "masks": k_mask})

    def _split():
        from dinotracker.preprocessing.trajectories import split_foreground

        return {"tracks_fg": split_foreground(tracks, fg_masks).numpy()}, {}

    sarr, _ = cache.get_or_compute("split", k_split, _split, stats)
    tracks_fg = torch.from_numpy(np.array(sarr["tracks_fg"])).bool()

    # DINO best-buddies, flow-filtered, with ambiguity weights
    bcfg = pre_cfg.best_buddies
    k_bb = st.key("best_buddies", {"features": k_feat, "trajectories": k_traj})

    def _bb():
        from dinotracker.preprocessing.best_buddies import compute_best_buddies

        if not bcfg.enabled or bb_keys["name"] == "none":
            bb = BestBuddies.empty()
        else:
            ref_tracks = tracks_unfiltered if bcfg.filter_with == "unfiltered" else tracks
            bb = compute_best_buddies(features, patch, stride, torch.from_numpy(np.array(ref_tracks)),
                                      topk=int(bcfg.topk), box_half=float(bcfg.box_half), iou=float(bcfg.iou),
                                      a=float(bcfg.weight_a), b=float(bcfg.weight_b),
                                      pair_batch=int(bcfg.pair_batch), device=device, progress=progress)
        return {k: getattr(bb, k).cpu().numpy() for k in BB_FIELDS}, {"num_pairs": len(bb)}

    barr, _ = cache.get_or_compute("best_buddies", k_bb, _bb, stats)
    best_buddies = BestBuddies(**{k: torch.from_numpy(np.array(barr[k])) for k in BB_FIELDS})

    index = st.index(dict(frames=k_frames, flow=k_flow, trajectories=k_traj, features=k_feat, masks=k_mask,
                          split=k_split, best_buddies=k_bb), backbone=bb_keys)
    pre = PreprocessedVideo(
        name=video.name, frames=frames, features=features, patch=patch, stride=stride, tracks=tracks,
        tracks_fg=tracks_fg, fg_masks=fg_masks, best_buddies=best_buddies, resize=resize,
        frame_indices=video.frame_indices, meta=dict(mask_source=mmeta.get("source"), stats=stats), index=index)
    _log_summary(pre, stats, meta_traj)
    index.write()
    return pre


BB_FIELDS = ("src_t", "dst_t", "src_xy", "dst_xy", "cos", "ratio", "weight")


def _extract_features(frames, backbone_cfg, device, need_saliency, mask_layer, progress):
    name = str(backbone_cfg.name)
    t = frames.shape[0]
    patch, stride = int(backbone_cfg.patch), int(backbone_cfg.stride)
    from dinotracker.geometry import patch_grid_size

    gh, gw = patch_grid_size(tuple(frames.shape[-2:]), patch, stride)
    if name == "none":
        feats = np.zeros((t, int(backbone_cfg.dim), gh, gw), np.float16)
        out = {"features": feats}
        if need_saliency:  # no features to take saliency from: the colour image's grid stands in
            small = torch.nn.functional.interpolate(frames.float() / 255.0, size=(gh, gw), mode="area")
            out["saliency_features"] = small.half().numpy()
        return out, {"backbone": "none"}
    from dinotracker.backbones import backbone_spec, build_from_spec
    from dinotracker.preprocessing.features import extract_video_features

    backbone = build_from_spec(backbone_spec(backbone_cfg), device=device)
    feats = extract_video_features(backbone, frames, layer=int(backbone_cfg.layer), facet=str(backbone_cfg.facet),
                                   batch_size=int(backbone_cfg.batch_size), device=device, progress=progress)
    out = {"features": feats.cpu().numpy()}
    if need_saliency:
        sal = extract_video_features(backbone, frames, layer=mask_layer, facet="tokens",
                                     batch_size=int(backbone_cfg.batch_size), device=device, progress=progress)
        out["saliency_features"] = sal.cpu().numpy()
    return out, {"backbone": name, "dim": int(feats.shape[1])}


def _write_mask_pngs(folder: Path, fg: torch.Tensor) -> None:
    from dinotracker.utils.atomic import atomic_path

    png = folder / "png"
    if png.is_dir():
        return
    with atomic_path(png, folder=True, keep_existing=True) as tmp:
        for i, m in enumerate(fg.numpy()):
            cv2.imwrite(str(tmp / f"{i:05d}.png"), m.astype(np.uint8) * 255)


def _log_summary(pre: PreprocessedVideo, stats: dict, meta_traj: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    n_pairs = max(pre.num_frames * (pre.num_frames - 1) // 2, 1)
    table = Table(title=f"preprocessing {pre.name}", show_lines=False)
    for col in ("stage", "cached", "time (s)", "peak host MB"):
        table.add_column(col)
    for stage, s in stats.items():
        table.add_row(stage, "yes" if s["cached"] else "no", f"{s['seconds']:.1f}", f"{s['peak_mb']:.0f}")
    Console(stderr=True).print(table)
    log.info("trajectories %d (fg %.1f%%), unfiltered %s; fg share of pixels %.1f%%; best-buddies %d "
             "(%.1f per frame pair); features %s", pre.tracks.shape[0],
             100.0 * float(pre.tracks_fg.float().mean()) if len(pre.tracks_fg) else 0.0,
             meta_traj.get("num_unfiltered", "?"), 100.0 * float(pre.fg_masks.float().mean()),
             len(pre.best_buddies), len(pre.best_buddies) / n_pairs, tuple(pre.features.shape))


def load_preprocessed(source) -> PreprocessedVideo:
    """Rebuild a :class:`PreprocessedVideo` from its :class:`CacheIndex` (or the index's dict, as kept in a
    run's ``run_info.json``) or from a cache folder (its most recent ``preprocessed.json``)."""
    index = CacheIndex.coerce(source)
    index.require("frames", "features", "trajectories", "split", "masks", "best_buddies")
    bb = index.load("best_buddies")
    return PreprocessedVideo(
        name=index.name, frames=torch.from_numpy(np.array(index.load("frames")["frames"])),
        features=torch.from_numpy(np.array(index.load("features")["features"])), patch=index.patch,
        stride=index.stride, tracks=torch.from_numpy(np.array(index.load("trajectories")["tracks"])),
        tracks_fg=torch.from_numpy(np.array(index.load("split")["tracks_fg"])).bool(),
        fg_masks=torch.from_numpy(np.array(index.load("masks")["fg"])).bool(),
        best_buddies=BestBuddies(**{k: torch.from_numpy(np.array(bb[k])) for k in BB_FIELDS}),
        resize=index.resize, frame_indices=np.asarray(index.frame_indices), meta={}, index=index)


def preprocessed_info(pre: PreprocessedVideo) -> dict:
    """``pre``'s :class:`CacheIndex` as JSON (what :func:`load_preprocessed` and :func:`dinotracker.load`
    read back)."""
    return pre.index.to_dict()
