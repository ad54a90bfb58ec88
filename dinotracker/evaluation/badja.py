"""BADJA keypoint-tracking metrics and the reader for the shared BADJA annotations (numpy only).

Metrics (paper Sec. 4; reference ``eval/metrics.py::compute_badja_metrics_for_video``), in the pixel
frame of the foreground masks:

* ``delta_seg``: share of scored points with ``|pred - gt| < 0.2 * sqrt(A_t)``, ``A_t`` = foreground
  area (pixels) at frame ``t`` (PCK-T);
* ``delta_3px``: share with ``|pred - gt| < 3`` px;

both x100, pooled over all scored (track, frame) pairs of the video.

Which points are scored (DINO_TRACKER_SPEC §5.5, mismatch M9):

* ``protocol="reference"`` (default, what the released code does and what its numbers use): every
  GT-visible annotated point at frames ``t >= 1``; frame 0 is skipped whatever the query frame.
* ``protocol="paper"`` (Appendix A.6): each keypoint is queried once, at its first visible annotated
  frame ``t_q``, and GT-visible annotated points at ``t > t_q`` are scored.

The two agree when every keypoint is first visible at frame 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dinotracker.utils.arrays import read_npz

BADJA_PROTOCOLS = ("reference", "paper")


def badja_metrics(
    pred_tracks: np.ndarray,
    gt_tracks: np.ndarray,
    gt_visible: np.ndarray,
    fg_masks: np.ndarray,
    frames: Sequence[int] | None = None,
    protocol: str = "reference",
    query_frames: np.ndarray | None = None,
    pred_hw: tuple[int, int] | None = None,
    seg_factor: float = 0.2,
    px_threshold: float = 3.0,
) -> dict[str, float]:
    """BADJA ``delta_seg`` and ``delta_3px`` (x100) of one video.

    Args:
        pred_tracks: ``[N, T, 2]`` predicted raster (x, y) px, at ``pred_hw`` (default: the masks' size).
        gt_tracks: ``[N, T, 2]`` GT (x, y) px in the masks' pixel frame (NaN allowed where not scored).
        gt_visible: ``[N, T]`` bool; False on frames without annotation is fine.
        fg_masks: ``[T, H, W]`` foreground masks (bool, or > 0 = foreground).
        frames: annotated frame indices; only these are scored (None = every frame).
        protocol: ``"reference"`` or ``"paper"`` (module docstring).
        query_frames: ``[N]`` query frame per track for ``"paper"``; default = first GT-visible
            annotated frame.
        pred_hw: ``(H, W)`` of the predictions' pixel frame; they are rescaled to the masks' size.
        seg_factor, px_threshold: 0.2 and 3 px in the paper.

    Returns ``{"delta_seg": float, "delta_3px": float}`` in [0, 100]; NaN if nothing is scored.
    """
    if protocol not in BADJA_PROTOCOLS:
        raise ValueError(f"protocol must be one of {BADJA_PROTOCOLS}, got {protocol!r}")
    pred = np.asarray(pred_tracks, np.float64)
    gt = np.asarray(gt_tracks, np.float64)
    vis = np.asarray(gt_visible)
    masks = np.asarray(fg_masks)
    if gt.ndim != 3 or gt.shape[-1] != 2:
        raise ValueError(f"gt_tracks must be [N, T, 2] (x, y) px, got shape {gt.shape}")
    n, t = gt.shape[:2]
    if pred.shape != gt.shape:
        raise ValueError(f"pred_tracks {pred.shape} must match gt_tracks {gt.shape}")
    if vis.shape != (n, t) or vis.dtype != bool:
        raise ValueError(f"gt_visible must be bool [{n}, {t}], got {vis.dtype} {vis.shape}")
    if masks.ndim != 3 or masks.shape[0] != t:
        raise ValueError(f"fg_masks must be [T={t}, H, W], got shape {masks.shape}")
    if pred_hw is not None:
        h, w = masks.shape[1:]
        pred = pred * np.array([w / pred_hw[1], h / pred_hw[0]])
    annotated = np.ones(t, bool)
    if frames is not None:
        frames = np.asarray(frames, np.int64).reshape(-1)
        if frames.size and (frames.min() < 0 or frames.max() >= t):
            raise ValueError(f"frames must lie in [0, {t}), got {frames.tolist()}")
        annotated = np.zeros(t, bool)
        annotated[frames] = True
    scored = vis & annotated[None]
    ts = np.arange(t)
    if protocol == "reference":
        scored &= ts[None] >= 1
    else:
        if query_frames is None:
            has = scored.any(axis=1)
            query_frames = np.where(has, np.argmax(scored, axis=1), t)  # never-visible tracks score nothing
        query_frames = np.asarray(query_frames, np.int64)
        if query_frames.shape != (n,):
            raise ValueError(f"query_frames must be [{n}], got {query_frames.shape}")
        scored &= ts[None] > query_frames[:, None]
    if not scored.any():
        return {"delta_seg": float("nan"), "delta_3px": float("nan")}
    ii, tt = np.nonzero(scored)
    dist = np.sqrt(np.sum((pred[ii, tt] - gt[ii, tt]) ** 2, axis=-1))
    area = (masks > 0).reshape(t, -1).sum(axis=1).astype(np.float64)
    thr_seg = seg_factor * np.sqrt(area[tt])
    return {
        "delta_seg": float(np.mean(dist < thr_seg) * 100.0),
        "delta_3px": float(np.mean(dist < px_threshold) * 100.0),
    }


@dataclass
class BadjaAnnotations:
    """Sparse BADJA keypoints of one video.

    Attributes:
        name: video name.
        frame_index: ``int [K]`` annotated frame indices (into the video's frames).
        joints_xy: ``float32 [K, J, 2]`` raster (x, y) px at ``hw``.
        visible: ``bool [K, J]``.
        hw: ``(H, W)`` of the pixel frame of ``joints_xy``.
    """

    name: str
    frame_index: np.ndarray
    joints_xy: np.ndarray
    visible: np.ndarray
    hw: tuple[int, int]

    def dense(self, num_frames: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """``(tracks float32 [J, T, 2] (NaN on unannotated frames), visible bool [J, T], frames)``."""
        if self.frame_index.size and self.frame_index.max() >= num_frames:
            raise ValueError(
                f"{self.name}: annotation at frame {self.frame_index.max()} >= num_frames {num_frames}"
            )
        j = self.joints_xy.shape[1]
        tracks = np.full((j, num_frames, 2), np.nan, np.float32)
        visible = np.zeros((j, num_frames), bool)
        tracks[:, self.frame_index] = self.joints_xy.transpose(1, 0, 2)
        visible[:, self.frame_index] = self.visible.T
        return tracks, visible, [int(f) for f in self.frame_index]

    def query_frames(self) -> np.ndarray:
        """``int [J]`` first visible annotated frame of each joint (-1 if never visible)."""
        has = self.visible.any(axis=0)
        return np.where(has, self.frame_index[np.argmax(self.visible, axis=0)], -1).astype(np.int64)


def load_badja_npz(path: str | Path, hw: tuple[int, int] = (480, 854)) -> BadjaAnnotations:
    """Read ``<video>_480p.npz``: ``frame_index [K]``, ``joints_xy_480p [K, J, 2]`` (x, y) px,
    ``visible [K, J]``.

    ``hw`` is the pixel frame of the joints (854x480 DAVIS frames for the shared data).
    """
    path = Path(path)
    z = read_npz(path, ("frame_index", "joints_xy_480p", "visible"), "BADJA annotations")
    fi, xy, vis = z["frame_index"].astype(np.int64), z["joints_xy_480p"].astype(np.float32), z["visible"]
    if xy.ndim != 3 or xy.shape[-1] != 2 or xy.shape[0] != fi.shape[0] or vis.shape != xy.shape[:2]:
        raise ValueError(
            f"{path}: inconsistent shapes frame_index {fi.shape}, joints {xy.shape}, visible {vis.shape}"
        )
    name = path.stem.removesuffix("_480p")
    return BadjaAnnotations(name=name, frame_index=fi, joints_xy=xy, visible=vis.astype(bool), hw=tuple(hw))


def load_fg_masks(folder: str | Path, num_frames: int | None = None) -> np.ndarray:
    """Foreground masks ``bool [T, H, W]`` from ``folder/*.png`` (sorted): any non-zero value (binary
    0/255 or a DAVIS palette id) is foreground. ``num_frames`` keeps the first ``num_frames``."""
    from PIL import Image

    folder = Path(folder)
    files = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no mask PNGs in {folder}")
    if num_frames is not None:
        if len(files) < num_frames:
            raise ValueError(f"{folder} has {len(files)} masks, fewer than num_frames={num_frames}")
        files = files[:num_frames]
    masks = []
    for f in files:
        with Image.open(f) as img:
            m = np.asarray(img)
        masks.append((m.max(axis=-1) if m.ndim == 3 else m) > 0)
    shapes = {m.shape for m in masks}
    if len(shapes) != 1:
        raise ValueError(f"masks in {folder} have different sizes: {sorted(shapes)}")
    return np.stack(masks)
