"""Segmentation-tracking I/O on top of :mod:`dinotracker.data.video`: a lazy frame reader for long videos
and the mask overlay drawn into the output mp4.

Masks are uint8 id maps (0 = background, k = object k), read and written (DAVIS palette PNGs named
``%05d.png``, which the official evaluation reads) by :mod:`dinotracker.data.video`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dinotracker.data.video import VIDEO_EXTS, davis_palette, list_frames


class FrameReader:
    """Lazy uint8 [H, W, 3] RGB frames ``start:end:stride`` of a folder (natural sort) or a video file
    (PyAV), decoded one at a time as they are iterated (memory stays flat on long videos). ``len()`` comes
    from the file listing, or from the stream header for video files."""

    def __init__(self, path, start: int = 0, end: int | None = None, stride: int = 1):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"video not found: {self.path}")
        if stride < 1 or start < 0:
            raise ValueError(f"bad frame range start={start} stride={stride}")
        self.start, self.end, self.stride = start, end, stride
        self.fps = 24.0
        self.files = None
        if self.path.is_dir():
            self.files = list_frames(self.path)[start:end:stride]
            if not self.files:
                raise ValueError(f"no frames of {self.path} in range {start}:{end}:{stride}")
        elif self.path.suffix.lower() in VIDEO_EXTS:
            import av

            with av.open(str(self.path)) as c:
                s = c.streams.video[0]
                self.fps = float(s.average_rate or 24.0) / stride
                self._count = s.frames or None
        else:
            raise ValueError(f"unsupported video {self.path}: a folder of frames or {VIDEO_EXTS}")
        self.name = self.path.name if self.path.is_dir() else self.path.stem

    def __len__(self) -> int:
        if self.files is not None:
            return len(self.files)
        if self._count is None:
            raise TypeError("frame count unknown for this video file")
        return len(range(self._count)[self.start : self.end : self.stride])

    def __iter__(self):
        if self.files is not None:
            for p in self.files:
                with Image.open(p) as im:
                    yield np.asarray(im.convert("RGB"))
            return
        import av

        keep = range(self.start, self.end if self.end is not None else 1 << 62, self.stride)
        with av.open(str(self.path)) as c:
            for i, fr in enumerate(c.decode(c.streams.video[0])):
                if self.end is not None and i >= self.end:
                    break
                if i in keep:
                    yield fr.to_ndarray(format="rgb24")


def overlay(frame: np.ndarray, labels: np.ndarray, alpha: float = 0.5, contour: bool = True) -> np.ndarray:
    """Colour the objects of ``labels`` over ``frame`` (DAVIS palette), with white outlines. uint8 [H,W,3]."""
    import cv2

    pal = davis_palette()
    out = frame.astype(np.float32)
    fg = labels > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * pal[labels[fg]]
    out = out.astype(np.uint8)
    if contour:
        edges = np.zeros(labels.shape, np.uint8)
        for k in np.unique(labels[fg]):
            m = (labels == k).astype(np.uint8)
            edges |= cv2.morphologyEx(m, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
        out[edges > 0] = 255
    return out
