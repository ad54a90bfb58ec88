"""Track pictures: an mp4 with coloured points and fading trails, and a still grid of frames.

Colours follow the query's position (hue by angle around the frame centre, brightness by
radius), so neighbouring points share colours and swaps stand out. Visible points are filled
discs, occluded ones hollow circles; with ground truth, its points are white crosses joined
to the prediction by error lines.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from dinotracker.data.video import write_video


def _np(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def track_colors(xy: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """uint8 RGB [N,3] from query positions [N,2] (x, y)."""
    h, w = hw
    d = (xy - np.array([w / 2, h / 2])) / (np.array([w, h]) / 2)
    hue = ((np.arctan2(d[:, 1], d[:, 0]) + np.pi) / (2 * np.pi) * 179).astype(np.uint8)
    val = (150 + 105 * np.clip(np.linalg.norm(d, axis=1), 0, 1)).astype(np.uint8)
    hsv = np.stack([hue, np.full_like(hue, 230), val], 1)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]


def render_frames(frames, tracks, visible, trail: int = 8, radius: int | None = None, gt_tracks=None,
                  gt_visible=None, query_frames=None) -> np.ndarray:
    """frames uint8 [T,H,W,3], tracks [N,T,2] (x, y) px, visible [N,T] -> uint8 [T,H,W,3] drawn."""
    frames, tracks, visible = np.asarray(frames), _np(tracks).astype(np.float64), _np(visible).astype(bool)
    t, h, w = frames.shape[:3]
    n = tracks.shape[0]
    if tracks.shape[:2] != (n, t) or visible.shape != (n, t):
        raise ValueError(f"tracks {tracks.shape} / visible {visible.shape} do not match {t} frames")
    qf = np.zeros(n, int) if query_frames is None else np.asarray(query_frames, int)
    colors = track_colors(tracks[np.arange(n), qf], (h, w)) if n else np.zeros((0, 3), np.uint8)
    radius = radius or max(2, int(round(min(h, w) / 160)))
    shift = 4  # sub-pixel drawing
    s = float(1 << shift)
    out = np.empty_like(frames)
    for i in range(t):
        canvas = (frames[i].astype(np.float32) * 0.85).astype(np.uint8).copy()
        overlay = canvas.copy()
        for k in range(max(0, i - trail), i):  # fading trails
            a = (k - i + trail + 1) / (trail + 1)
            ok = visible[:, k] & visible[:, k + 1]
            for j in np.flatnonzero(ok):
                p0 = tuple(int(v * s) for v in tracks[j, k] - 0.5)
                p1 = tuple(int(v * s) for v in tracks[j, k + 1] - 0.5)
                cv2.line(overlay, p0, p1, tuple(int(c * a) for c in colors[j].tolist()), 1, cv2.LINE_AA, shift)
        canvas = overlay
        if gt_tracks is not None:
            g, gv = _np(gt_tracks), _np(gt_visible).astype(bool)
            for j in np.flatnonzero(gv[:, i]):
                pg = tuple(int(v * s) for v in g[j, i] - 0.5)
                pp = tuple(int(v * s) for v in tracks[j, i] - 0.5)
                cv2.line(canvas, pg, pp, (255, 60, 60), 1, cv2.LINE_AA, shift)
                cv2.drawMarker(canvas, tuple(int(v) for v in g[j, i]), (255, 255, 255), cv2.MARKER_CROSS,
                               2 * radius + 2, 1)
        for j in range(n):
            p = tuple(int(v * s) for v in tracks[j, i] - 0.5)
            col = tuple(int(c) for c in colors[j].tolist())
            cv2.circle(canvas, p, int(radius * s), col, -1 if visible[j, i] else 1, cv2.LINE_AA, shift)
        out[i] = canvas
    return out


def draw_tracks_video(path, frames, tracks, visible, fps: float = 10.0, trail: int = 8, gt_tracks=None,
                      gt_visible=None, query_frames=None) -> Path:
    """Write the rendered frames as an H.264 mp4."""
    return write_video(path, render_frames(frames, tracks, visible, trail, gt_tracks=gt_tracks,
                                           gt_visible=gt_visible, query_frames=query_frames), fps=fps)


def draw_tracks_grid(path, frames, tracks, visible, num: int = 6, cols: int = 3, tile_width: int = 320) -> Path:
    """A still PNG grid of ``num`` evenly spaced frames with the tracks drawn."""
    drawn = render_frames(frames, tracks, visible)
    idx = np.linspace(0, len(drawn) - 1, min(num, len(drawn))).round().astype(int)
    h, w = drawn.shape[1:3]
    th = int(round(h * tile_width / w))
    tiles = [cv2.resize(drawn[i], (tile_width, th), interpolation=cv2.INTER_AREA) for i in idx]
    for i, tile in zip(idx, tiles):
        cv2.putText(tile, f"t={i}", (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    rows = [np.concatenate(tiles[r:r + cols] + [np.zeros_like(tiles[0])] * (cols - len(tiles[r:r + cols])), 1)
            for r in range(0, len(tiles), cols)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, 0), cv2.COLOR_RGB2BGR))
    return path
