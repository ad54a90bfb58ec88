"""Mask and video I/O for segmentation tracking: DAVIS palette PNGs, frame readers, a streaming overlay mp4.

Masks are uint8 id maps (0 = background, k = object k). Written PNGs are palette ("P") images with the
DAVIS palette, named ``%05d.png`` like DAVIS annotations, so the official evaluation reads them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dinotracker.data.video import natural_key

FRAME_EXTS = (".jpg", ".jpeg", ".png")
VIDEO_EXTS = (".mp4", ".mov", ".avi", ".gif", ".mkv", ".webm")


def davis_palette() -> np.ndarray:
    """The DAVIS/PASCAL-VOC palette uint8 [256, 3]: id 1 = (128,0,0), 2 = (0,128,0), 3 = (128,128,0) ..."""
    pal = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def read_mask(path, threshold: int = 128) -> np.ndarray:
    """A mask image as uint8 ids [H, W].

    Palette PNGs keep their indices. Greyscale: only {0, 255} -> binary 0/1; a few small distinct values
    (<= 64 of them, max < 255) are ids as stored; anything else (a soft or JPEG mask) is thresholded at
    ``threshold`` -> 0/1. RGB images whose colours are all DAVIS palette entries map back to their ids.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask not found: {path}")
    with Image.open(path) as im:
        im.load()
        if im.mode == "P":
            return np.asarray(im).astype(np.uint8)
        if im.mode in ("RGB", "RGBA"):
            rgb = np.asarray(im.convert("RGB"))
            if not (rgb[..., 0] == rgb[..., 1]).all() or not (rgb[..., 1] == rgb[..., 2]).all():
                return _rgb_to_ids(rgb, path)
        arr = np.asarray(im.convert("L") if im.mode not in ("L", "I", "I;16") else im)
    values = np.unique(arr)
    if set(values.tolist()) <= {0, 255}:
        return (arr >= 128).astype(np.uint8)
    if values.size <= 64 and values.max() < 255:
        return arr.astype(np.uint8)
    return (arr >= threshold).astype(np.uint8)


def _rgb_to_ids(rgb: np.ndarray, path) -> np.ndarray:
    pal = davis_palette().astype(np.int64)
    key = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    pal_key = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    lut = {int(k): i for i, k in reversed(list(enumerate(pal_key)))}
    colours = np.unique(key)
    missing = [c for c in colours.tolist() if c not in lut]
    if missing:
        raise ValueError(
            f"colour mask {path} has colours outside the DAVIS palette; save it as a palette "
            "(P mode) or greyscale id PNG"
        )
    ids = np.array([lut[c] for c in colours.tolist()], np.uint8)
    return ids[np.searchsorted(colours, key)]


def write_mask(path, labels: np.ndarray) -> Path:
    """Write uint8 ids [H, W] as a palette PNG with the DAVIS palette."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be [H, W], got {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError("palette PNGs hold ids 0..255")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    im.putpalette(davis_palette().reshape(-1).tolist())
    im.save(path)
    return path


def list_images(folder) -> list[Path]:
    """Image files of a folder in natural order (frame2 < frame10)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder not found: {folder}")
    files = sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_EXTS),
        key=lambda p: natural_key(p.name),
    )
    if not files:
        raise ValueError(f"no images ({', '.join(FRAME_EXTS)}) in {folder}")
    return files


class FrameReader:
    """Lazy uint8 [H, W, 3] RGB frames ``start:end:stride`` of a folder (natural sort) or a video file
    (PyAV), decoded one at a time as they are iterated (memory stays flat on long videos). ``len()`` comes
    from the file listing, or from the stream header for video files. The CLI's fallback when
    ``dinotracker.data.video`` is unavailable."""

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
            self.files = list_images(self.path)[start:end:stride]
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


class Mp4Writer:
    """Streaming H.264 yuv420p mp4 writer (PyAV), falling back to mpeg4 when libx264 is missing.
    Odd sizes are padded by one edge pixel (yuv420p needs even sizes)."""

    def __init__(self, path, fps: float = 24.0, crf: int = 20):
        self.path, self.fps, self.crf = Path(path), float(fps), int(crf)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.container = self.stream = None
        self.codec = None

    def _open(self, h: int, w: int):
        import av

        self.container = av.open(str(self.path), mode="w")
        rate = max(1, int(round(self.fps)))
        try:
            self.stream = self.container.add_stream("libx264", rate=rate)
            self.stream.options = {"crf": str(self.crf)}
            self.codec = "libx264"
        except (av.error.FFmpegError, ValueError, av.codec.codec.UnknownCodecError):
            self.stream = self.container.add_stream("mpeg4", rate=rate)
            self.codec = "mpeg4"
        self.stream.pix_fmt = "yuv420p"
        self.stream.width, self.stream.height = w + w % 2, h + h % 2

    def write(self, frame: np.ndarray) -> None:
        import av

        h, w = frame.shape[:2]
        if self.container is None:
            self._open(h, w)
        if h % 2 or w % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        for packet in self.stream.encode(vf):
            self.container.mux(packet)

    def close(self) -> None:
        if self.container is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
            self.container.close()
            self.container = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
