"""Build the video (and its ground truth, when there is one) from a ``video`` config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dinotracker.data.video import Video, VideoError, load_video
from dinotracker.utils.arrays import read_npz


@dataclass
class GroundTruth:
    """Ground-truth tracks in input raster px: tracks [N,T,2] (x, y), occluded [N,T] bool,
    query_frames [N] int (first visible frame)."""

    tracks: np.ndarray
    occluded: np.ndarray
    query_frames: np.ndarray

    @property
    def queries(self) -> np.ndarray:
        """[N, 3] (t, x, y) at the query frames."""
        n = np.arange(len(self.tracks))
        xy = self.tracks[n, self.query_frames]
        return np.concatenate([self.query_frames[:, None].astype(np.float32), xy], 1).astype(np.float32)

    def subset_frames(self, idx: np.ndarray) -> GroundTruth:
        """Ground truth restricted to source frames ``idx`` (frame range / stride)."""
        tracks, occ = self.tracks[:, idx], self.occluded[:, idx]
        keep = (~occ).sum(1) >= 1
        tracks, occ = tracks[keep], occ[keep]
        return GroundTruth(tracks, occ, np.argmax(~occ, axis=1).astype(np.int64))


def read_gt_npz(path) -> dict:
    """The arrays of a ``gt.npz`` (TAP-Vid folder layout): ``points_xy`` [N,T,2] (x, y) px, ``occluded`` [N,T]
    bool, ``query_frame`` [N] int or None, ``hw`` (height, width) or None. FileNotFoundError when missing,
    :class:`VideoError` (a ValueError) when unreadable or incomplete."""
    z = read_npz(path, ("points_xy", "occluded"), "ground truth file", VideoError)
    return dict(points_xy=z["points_xy"].astype(np.float32), occluded=z["occluded"].astype(bool),
                query_frame=z["query_frame"].astype(np.int64) if "query_frame" in z else None,
                hw=(int(z["height"]), int(z["width"])) if {"height", "width"} <= set(z) else None)


def load_gt_npz(path, num_frames: int) -> GroundTruth:
    """:class:`GroundTruth` of a ``gt.npz`` (:func:`read_gt_npz`) checked against the video's frame count."""
    d = read_gt_npz(path)
    tracks, occ = d["points_xy"], d["occluded"]
    q = d["query_frame"] if d["query_frame"] is not None else np.argmax(~occ, axis=1)
    if tracks.shape[1] != num_frames or occ.shape != tracks.shape[:2]:
        raise VideoError(f"{path}: tracks {tracks.shape} / occluded {occ.shape} do not match "
                         f"the video's {num_frames} frames")
    return GroundTruth(tracks, occ, q)


def video_from_config(cfg) -> tuple[Video, GroundTruth | None]:
    """``cfg`` is the ``video`` config group (kind synthetic or path)."""
    kind = cfg.get("kind", "path")
    start, end, stride = int(cfg.get("start", 0) or 0), cfg.get("end"), int(cfg.get("stride", 1) or 1)
    if kind == "synthetic":
        from dinotracker.data.synthetic import make_synthetic_video

        syn = make_synthetic_video(num_frames=int(cfg.num_frames), height=int(cfg.height),
                                   width=int(cfg.width), num_objects=int(cfg.num_objects),
                                   num_points=int(cfg.num_points), seed=int(cfg.seed),
                                   speed=float(cfg.get("speed", 1.0)),
                                   saturation=float(cfg.get("saturation", 1.0)))
        idx = np.arange(syn.frames.shape[0])[start:end:stride]
        if len(idx) < 2:
            raise VideoError(f"frame range start={start} end={end} stride={stride} leaves {len(idx)} frame(s)")
        video = Video(frames=syn.frames[idx], masks=(syn.masks[idx] > 0).astype(np.uint8),
                      frame_indices=idx, fps=syn.fps / stride, name=str(cfg.name), source="synthetic",
                      source_num_frames=syn.frames.shape[0])
        gt = GroundTruth(syn.tracks, syn.occluded, syn.query_frames).subset_frames(idx)
        return video, gt
    if kind != "path":
        raise VideoError(f"unknown video kind {kind!r}: use 'synthetic' or 'path'")
    video = load_video(cfg.path, masks=cfg.get("masks"), start=start, end=end, stride=stride,
                       name=str(cfg.get("name") or Path(str(cfg.path)).stem))
    gt = None
    if cfg.get("gt"):
        gt = load_gt_npz(cfg.gt, video.source_num_frames).subset_frames(video.frame_indices)
    return video, gt
