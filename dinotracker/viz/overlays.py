"""Segmentation overlays that stay readable: a fill colour chosen to contrast with each object, and a
two-tone outline (dark outside, white inside) that shows on light and dark backgrounds alike.

The DAVIS palette fills a red apple with red, and only the outline shows; :func:`contrast_colors` instead
picks, per object, the candidate colour farthest (in Lab) from the object's mean colour in a reference
frame (the first), so the colours stay fixed over the video.
"""

from __future__ import annotations

import numpy as np

# saturated, mutually distinct candidates (RGB)
CANDIDATES = np.array([
    [0, 200, 255], [255, 0, 200], [60, 255, 60], [255, 220, 0], [40, 80, 255], [255, 120, 0],
    [0, 255, 190], [180, 0, 255], [255, 40, 40], [0, 140, 70],
], np.uint8)


def _lab(rgb: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(np.asarray(rgb, np.uint8).reshape(-1, 1, 3), cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(
        np.float32)


def contrast_colors(frame: np.ndarray, labels: np.ndarray) -> dict[int, tuple[int, int, int]]:
    """``{object id: RGB}`` for the objects of ``labels`` [H, W] on ``frame`` [H, W, 3]: per object the
    candidate farthest in Lab from its mean colour, objects in id order not reusing a colour."""
    cand = _lab(CANDIDATES)
    out: dict[int, tuple[int, int, int]] = {}
    used: set[int] = set()
    for k in sorted(int(v) for v in np.unique(labels) if v > 0):
        mean = frame[labels == k].reshape(-1, 3).mean(0)
        d = np.linalg.norm(cand - _lab(mean.round().clip(0, 255))[0], axis=1)
        d[list(used)] = -1.0 if len(used) < len(CANDIDATES) else d[list(used)]
        j = int(d.argmax())
        used.add(j)
        out[k] = tuple(int(c) for c in CANDIDATES[j])
    return out


def overlay_masks(frame: np.ndarray, labels: np.ndarray, colors: dict[int, tuple[int, int, int]] | None = None,
                  alpha: float = 0.45, outline: int | None = None) -> np.ndarray:
    """uint8 [H, W, 3]: ``frame`` with each object filled (``alpha``) in its colour and outlined
    (``outline`` px, default ~ frame size / 250: a dark line outside, a white one inside)."""
    import cv2

    colors = colors if colors is not None else contrast_colors(frame, labels)
    out = frame.astype(np.float32)
    h, w = labels.shape
    t = outline or max(1, int(round(min(h, w) / 250)))
    k = np.ones((2 * t + 1, 2 * t + 1), np.uint8)
    ring_in = np.zeros((h, w), bool)
    ring_out = np.zeros((h, w), bool)
    for obj in sorted(int(v) for v in np.unique(labels) if v > 0):
        m = (labels == obj).astype(np.uint8)
        col = np.array(colors.get(obj, (255, 255, 255)), np.float32)
        sel = m > 0
        out[sel] = (1 - alpha) * out[sel] + alpha * col
        ring_in |= sel & ~(cv2.erode(m, k) > 0)
        ring_out |= (cv2.dilate(m, k) > 0) & ~sel
    out[ring_out] = 0.35 * out[ring_out]
    out[ring_in] = 255
    return out.clip(0, 255).astype(np.uint8)
