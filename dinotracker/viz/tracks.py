"""Track visualisation: an mp4 of the video with tracks, and a still PNG grid of sample frames.

* Colour: each track's colour comes from its position at the query frame on a hue wheel around
  the image centre (hue = angle, saturation grows with the distance from the centre), so nearby
  points share colours and the colours stay fixed over time.
* Trails: the last ``trail`` segments of each track, fading with age (drawn only between
  visible points, and not across jumps of more than a tenth of the frame diagonal).
* Visible points are filled discs; occluded points hollow circles (co-tracker's convention); both
  with a dark rim so that they stand out on busy or same-coloured backgrounds.
* Ground truth (optional): a white cross at each visible GT point and a red line from the
  prediction to it (the error).

Every frame is drawn exactly once (no repeated first frames, co-tracker #174). Frames are RGB
uint8 [T, H, W, 3] at the resolution of the tracks (input px, raster convention: pixel (i, j) has
its centre at (j + 0.5, i + 0.5)). Video: PyAV, H.264 yuv420p (``libx264``), falling back to
``mpeg4`` when the FFmpeg build lacks libx264; odd sizes are padded by one pixel; written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from dinotracker.data.video import write_video
from dinotracker.utils.arrays import to_numpy

SUBPIX = 4  # cv2 fixed-point shift: draw at 1/16 px
OUTLINE = (20, 20, 20)  # the rim around every dot


def track_colors(xy: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """RGB uint8 [N, 3] from points xy [N, 2] (the query positions) on a hue wheel around the centre."""
    h, w = hw
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    d = (xy - np.array([w / 2.0, h / 2.0])) / (np.array([w, h]) / 2.0)
    hue = (np.degrees(np.arctan2(d[:, 1], d[:, 0])) % 360.0) / 2.0  # OpenCV hue in [0, 180)
    sat = 255.0 * (0.35 + 0.65 * np.clip(np.hypot(d[:, 0], d[:, 1]) / math.sqrt(2.0), 0.0, 1.0))
    hsv = np.stack([hue, sat, np.full_like(hue, 255.0)], -1).round().astype(np.uint8)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]


def _fix(p: np.ndarray) -> np.ndarray:
    """Raster (x, y) -> cv2 fixed-point pixel-index coordinates (centre of pixel j is index j)."""
    return np.round((p - 0.5) * (1 << SUBPIX)).astype(np.int64)


def _query_positions(tracks, query_frames):
    n = tracks.shape[0]
    if query_frames is None:  # first frame where the track is finite
        fin = np.isfinite(tracks).all(-1)
        query_frames = np.where(fin.any(1), fin.argmax(1), 0)
    qf = np.asarray(query_frames, int).reshape(-1)
    return tracks[np.arange(n), qf]


def render_frames(
    frames,
    tracks,
    visible=None,
    trail: int = 8,
    radius: int | None = None,
    gt_tracks=None,
    gt_visible=None,
    query_frames=None,
    colors=None,
):
    """Yield RGB uint8 [H, W, 3] frames with tracks drawn (see the module docstring).

    frames [T, H, W, 3] uint8 RGB; tracks [N, T, 2] px; visible bool [N, T] (all True when None);
    gt_tracks [N, T, 2] / gt_visible [N, T] optional; query_frames [N] pick each track's colour
    position (default: its first finite frame); colors RGB uint8 [N, 3] override the hue wheel.
    """
    frames = to_numpy(frames)
    tracks = to_numpy(tracks).astype(np.float64)
    t_len, h, w = frames.shape[:3]
    n = tracks.shape[0]
    if tracks.ndim != 3 or tracks.shape[1] != t_len or tracks.shape[2] != 2:
        raise ValueError(f"tracks must be [N, T={t_len}, 2], got {tracks.shape}")
    visible = np.ones((n, t_len), bool) if visible is None else to_numpy(visible).astype(bool)
    if visible.shape != (n, t_len):
        raise ValueError(f"visible must be [N, T] = {(n, t_len)}, got {visible.shape}")
    radius = radius or max(2, int(round(min(h, w) / 110)))  # ~6.5 px at 720p, 2 px at 240p
    if colors is None:
        colors = (
            track_colors(_query_positions(tracks, query_frames), (h, w)) if n else np.zeros((0, 3), np.uint8)
        )
    colors = [tuple(int(c) for c in col) for col in np.asarray(colors)]
    finite = np.isfinite(tracks).all(-1)
    fix = _fix(np.nan_to_num(tracks))
    if gt_tracks is not None:
        gt = to_numpy(gt_tracks).astype(np.float64)
        gt_vis = np.ones((n, t_len), bool) if gt_visible is None else to_numpy(gt_visible).astype(bool)
        gt_vis &= np.isfinite(gt).all(-1)
        gt_fix = _fix(np.nan_to_num(gt))
    thick = max(1, radius // 2)
    max_jump = 0.1 * math.hypot(h, w)
    for i in range(t_len):
        img = np.ascontiguousarray(frames[i]).copy()
        # trails: oldest first, each age blended with its own alpha (fading)
        for age in range(min(trail, i), 0, -1):
            j = i - age
            seg = visible[:, j] & visible[:, j + 1] & finite[:, j] & finite[:, j + 1]
            # no trail across a jump of more than a tenth of the frame diagonal (a lost track would
            # otherwise draw a line through the whole picture)
            seg &= np.hypot(*(np.nan_to_num(tracks[:, j + 1] - tracks[:, j])).T) <= max_jump
            if not seg.any():
                continue
            layer = img.copy()
            for k in np.nonzero(seg)[0]:
                cv2.line(layer, tuple(fix[k, j]), tuple(fix[k, j + 1]), colors[k], thick, cv2.LINE_AA, SUBPIX)
            alpha = max(0.1, 1.0 - (age - 1) / max(trail, 1))
            cv2.addWeighted(layer, alpha, img, 1.0 - alpha, 0.0, dst=img)
        if gt_tracks is not None:
            for k in np.nonzero(gt_vis[:, i])[0]:
                if finite[k, i]:
                    cv2.line(
                        img, tuple(fix[k, i]), tuple(gt_fix[k, i]), (255, 40, 40), 1, cv2.LINE_AA, SUBPIX
                    )
                c = gt_fix[k, i]
                r = radius << SUBPIX
                cv2.line(
                    img, (c[0] - r, c[1] - r), (c[0] + r, c[1] + r), (255, 255, 255), 1, cv2.LINE_AA, SUBPIX
                )
                cv2.line(
                    img, (c[0] - r, c[1] + r), (c[0] + r, c[1] - r), (255, 255, 255), 1, cv2.LINE_AA, SUBPIX
                )
        for k in np.nonzero(finite[:, i])[0]:
            centre = tuple(fix[k, i])
            # a dark rim first, so that a dot stands out on any background (busy or of its own colour)
            if visible[k, i]:
                cv2.circle(img, centre, (radius + 1) << SUBPIX, OUTLINE, -1, cv2.LINE_AA, SUBPIX)
                cv2.circle(img, centre, radius << SUBPIX, colors[k], -1, cv2.LINE_AA, SUBPIX)
            else:  # occluded: hollow
                cv2.circle(img, centre, radius << SUBPIX, OUTLINE, 3, cv2.LINE_AA, SUBPIX)
                cv2.circle(img, centre, radius << SUBPIX, colors[k], 1, cv2.LINE_AA, SUBPIX)
        yield img


def draw_tracks_video(
    path,
    frames,
    tracks,
    visible=None,
    fps: float = 10.0,
    trail: int = 8,
    gt_tracks=None,
    gt_visible=None,
    query_frames=None,
    radius: int | None = None,
) -> Path:
    """Write an mp4 of ``frames`` [T, H, W, 3] uint8 RGB with ``tracks`` [N, T, 2] (px of the frames)
    drawn (module docstring); ``visible`` [N, T]; optional ground truth ``gt_tracks``/``gt_visible``."""
    frames = to_numpy(frames)
    if frames.ndim == 4 and frames.shape[1] == 3 and frames.shape[-1] != 3:  # [T, 3, H, W] -> HWC
        frames = frames.transpose(0, 2, 3, 1)
    it = render_frames(
        frames,
        tracks,
        visible,
        trail=trail,
        radius=radius,
        gt_tracks=gt_tracks,
        gt_visible=gt_visible,
        query_frames=query_frames,
    )
    return write_video(path, it, fps=fps, crf=20)


def draw_tracks_grid(
    path,
    frames,
    tracks,
    visible=None,
    num: int = 6,
    cols: int = 3,
    tile_width: int = 320,
    trail: int = 8,
    gt_tracks=None,
    gt_visible=None,
    query_frames=None,
) -> Path:
    """A still PNG grid of ``num`` evenly spaced frames with tracks drawn (same style as the video).

    Returns the path; the image is also returned by :func:`tracks_grid_image`.
    """
    img = tracks_grid_image(
        frames,
        tracks,
        visible,
        num=num,
        cols=cols,
        tile_width=tile_width,
        trail=trail,
        gt_tracks=gt_tracks,
        gt_visible=gt_visible,
        query_frames=query_frames,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from dinotracker.utils.atomic import atomic_path

    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path}")
    return path


def tracks_grid_image(
    frames,
    tracks,
    visible=None,
    num: int = 6,
    cols: int = 3,
    tile_width: int = 320,
    trail: int = 8,
    gt_tracks=None,
    gt_visible=None,
    query_frames=None,
) -> np.ndarray:
    """RGB uint8 grid image of ``num`` evenly spaced frames (labelled t=...)."""
    frames = to_numpy(frames)
    if frames.ndim == 4 and frames.shape[1] == 3 and frames.shape[-1] != 3:
        frames = frames.transpose(0, 2, 3, 1)
    t_len, h, w = frames.shape[:3]
    ids = np.unique(np.linspace(0, t_len - 1, max(1, min(num, t_len))).round().astype(int))
    drawn = list(
        render_frames(
            frames,
            tracks,
            visible,
            trail=trail,
            gt_tracks=gt_tracks,
            gt_visible=gt_visible,
            query_frames=query_frames,
        )
    )
    scale = min(1.0, tile_width / w)
    tw, th = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    cols = max(1, min(cols, len(ids)))
    rows = math.ceil(len(ids) / cols)
    canvas = np.zeros((rows * th, cols * tw, 3), np.uint8)
    for j, t in enumerate(ids):
        tile = cv2.resize(drawn[t], (tw, th), interpolation=cv2.INTER_AREA)
        cv2.putText(tile, f"t={t}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        r, c = divmod(j, cols)
        canvas[r * th : (r + 1) * th, c * tw : (c + 1) * tw] = tile
    return canvas
