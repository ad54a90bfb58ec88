"""Video input: a folder of frames or a video file, optional per-frame masks, range and stride.

Frames come back as uint8 RGB ``[T, H, W, 3]`` at the input resolution; every later
stage resizes through :class:`dinotracker.geometry.Resize`, so outputs can be mapped
back to input pixels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dinotracker.utils.atomic import commit, temp_name

FRAME_EXTS = (".jpg", ".jpeg", ".png")
VIDEO_EXTS = (".mp4", ".mov", ".avi", ".gif", ".mkv", ".webm")


class VideoError(ValueError):
    """A video or mask input that cannot be used, with a message that says why."""


@dataclass
class Video:
    """A loaded video.

    frames:        uint8 [T, H, W, 3] RGB.
    masks:         uint8 [T, H, W] object ids (0 = background; binary masks become 0/1) or None.
    frame_indices: int64 [T] index of each frame in the source (after range and stride).
    """

    frames: np.ndarray
    masks: np.ndarray | None = None
    frame_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    fps: float = 24.0
    name: str = "video"
    source: str = ""
    source_num_frames: int = 0  # frames in the source before range/stride

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])


def natural_key(name: str):
    """Sort key so that frame2 < frame10."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


def list_frames(folder) -> list[Path]:
    """Image files of a frame (or mask) folder in natural order (frame2 < frame10); errors on a missing,
    empty or mixed-format folder."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"folder not found: {folder}")
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_EXTS]
    if not files:
        raise VideoError(f"no frames (*.jpg, *.jpeg, *.png) in folder {folder}")
    exts = {".jpg" if p.suffix.lower() == ".jpeg" else p.suffix.lower() for p in files}
    if len(exts) > 1:
        raise VideoError(f"folder {folder} mixes frame formats {sorted(exts)}; keep one extension")
    return sorted(files, key=lambda p: natural_key(p.name))


def _read_image(path: Path, mode: str | None = "RGB") -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()  # forces a full decode: truncated files raise here
            if mode is not None:
                im = im.convert(mode)
            return np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise VideoError(f"cannot read frame {path}: {err}") from err


def _select(n: int, start: int, end: int | None, stride: int) -> np.ndarray:
    if stride < 1:
        raise VideoError(f"stride must be >= 1, got {stride}")
    if start < 0 or (end is not None and end <= start):
        raise VideoError(f"bad frame range start={start} end={end}")
    return np.arange(n, dtype=np.int64)[start:end:stride]


def _read_video_file(path: Path, start: int = 0, end: int | None = None, stride: int = 1,
                     max_frames: int | None = None) -> tuple[list[np.ndarray], np.ndarray, float, int, int]:
    """Decode the frames ``start:end:stride`` (at most ``max_frames``) of a video file.

    Returns (RGB frames, their source indices, fps, source frame count, frames decoded). Frames outside the
    selection are decoded (codecs are sequential) but never converted to RGB or kept, and decoding stops
    after the last frame needed; the source frame count then comes from the stream header, or from counting
    packets without decoding when the header has none.
    """
    import av

    _select(0, start, end, stride)  # validate the range before any decoding
    frames: list[np.ndarray] = []
    idx: list[int] = []
    decoded = 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.base_rate or 24.0)
            header = int(stream.frames or 0)
            stopped = False
            for i, frame in enumerate(container.decode(stream)):
                decoded = i + 1
                if i >= start and (i - start) % stride == 0:
                    frames.append(frame.to_ndarray(format="rgb24"))
                    idx.append(i)
                if (end is not None and i + 1 >= end) or (max_frames is not None and len(idx) >= max_frames):
                    stopped = True
                    break
        total = decoded
        if stopped:
            total = header if header >= decoded else _count_packets(path)
    except (av.error.FFmpegError, IndexError) as err:
        raise VideoError(f"cannot decode video file {path}: {err}") from err
    return frames, np.asarray(idx, dtype=np.int64), fps, max(total, decoded), decoded


def _count_packets(path: Path) -> int:
    """Frames of a video file's first video stream, by demuxing (no decoding)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for p in container.demux(stream) if p.size)


def load_video(path, masks=None, start: int = 0, end: int | None = None, stride: int = 1,
               max_frames: int | None = None, name: str | None = None, min_frames: int = 2) -> Video:
    """Load frames (folder or video file) and optional per-frame masks.

    ``start``/``end``/``stride`` select source frames ``start:end:stride`` (fit on every
    k-th frame); masks, when given, must have one file per source frame and the frames'
    size. Raises :class:`VideoError` with a clear message on bad input.
    """
    if path is None or str(path) == "":
        raise VideoError("no video given: pass a folder of frames or a video file")
    path = Path(path).expanduser()
    if not path.exists():
        raise VideoError(f"video not found: {path}")
    fps = 24.0
    if path.is_dir():
        files = list_frames(path)
        idx = _select(len(files), start, end, stride)
        if max_frames is not None:
            idx = idx[:max_frames]
        frames = [_read_image(files[i]) for i in idx]
        total = len(files)
    elif path.suffix.lower() in VIDEO_EXTS:
        frames, idx, fps, total, decoded = _read_video_file(path, start, end, stride, max_frames)
        if decoded == 0:
            raise VideoError(f"video file {path} has no decodable frames")
    else:
        raise VideoError(f"unsupported video input {path}: give a folder of {FRAME_EXTS} frames "
                         f"or a video file {VIDEO_EXTS}")
    if len(frames) < min_frames:
        raise VideoError(f"{path} gives {len(frames)} frame(s) (of {total}) after range/stride; "
                         f"tracking needs at least {min_frames}")
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise VideoError(f"frames of {path} have different sizes: {sorted(shapes)}")
    video = Video(frames=np.stack(frames), frame_indices=idx, fps=fps / stride,
                  name=name or (path.stem if path.is_file() else path.name), source=str(path),
                  source_num_frames=total)
    if masks is not None:
        video.masks = load_masks(masks, total, video.hw)[idx]
    return video


def davis_palette() -> np.ndarray:
    """The DAVIS / PASCAL VOC colour map [256, 3] uint8 (id k -> colour; 255 = void, (224, 224, 192))."""
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
    """A mask image as uint8 object ids [H, W] (0 = background).

    Palette PNGs keep their indices. Greyscale: only {0, 255} -> binary 0/1; a few small distinct values
    (<= 64 of them, max < 255) are ids as stored; anything else (a soft or JPEG-compressed mask) is
    thresholded at ``threshold`` -> 0/1. RGB images whose colours are all DAVIS palette entries map back
    to their ids.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P":
                return np.asarray(im).astype(np.uint8)
            if im.mode in ("RGB", "RGBA"):
                rgb = np.asarray(im.convert("RGB"))
                if not (rgb[..., 0] == rgb[..., 1]).all() or not (rgb[..., 1] == rgb[..., 2]).all():
                    return _rgb_to_ids(rgb, path)
            arr = np.asarray(im.convert("L") if im.mode not in ("L", "I", "I;16") else im)
    except (OSError, UnidentifiedImageError) as err:
        raise VideoError(f"cannot read mask {path}: {err}") from err
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
    if any(c not in lut for c in colours.tolist()):
        raise VideoError(f"colour mask {path} has colours outside the DAVIS palette; save it as a palette "
                         "(P mode) or greyscale id PNG")
    ids = np.array([lut[c] for c in colours.tolist()], np.uint8)
    return ids[np.searchsorted(colours, key)]


def write_mask(path, labels: np.ndarray) -> Path:
    """Write uint8 ids [H, W] as a palette PNG with the DAVIS palette (what DAVIS tools read)."""
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


def load_masks(folder, num_frames: int, hw: tuple[int, int]) -> np.ndarray:
    """Per-frame masks from a folder: uint8 [T, H, W]; count and size must match the video."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise VideoError(f"mask folder not found: {folder}")
    files = list_frames(folder)
    if len(files) != num_frames:
        raise VideoError(f"{len(files)} masks in {folder} but the video has {num_frames} frames")
    out = np.stack([read_mask(p) for p in files])
    if out.shape[1:] != tuple(hw):
        raise VideoError(f"masks in {folder} are {out.shape[1:]} but frames are {tuple(hw)}")
    return out


def write_frames(folder, frames: np.ndarray, ext: str = ".png") -> list[Path]:
    """Write uint8 [T, H, W, 3] frames as %05d images (PNG is lossless)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, f in enumerate(frames):
        p = folder / f"{i:05d}{ext}"
        Image.fromarray(f).save(p)
        paths.append(p)
    return paths


class Mp4Writer:
    """Streaming mp4 writer (PyAV): frames (uint8 [H, W, 3] RGB) are encoded as they arrive, so memory stays
    flat, into a temporary file that replaces ``path`` on :meth:`close` (an interrupted write leaves no
    half-written file behind). H.264 yuv420p, odd sizes padded by one edge pixel (yuv420p needs even sizes);
    ``lossless``: qp 0 in yuv444p. Falls back to mpeg4 when this FFmpeg build has no libx264."""

    def __init__(self, path, fps: float = 24.0, crf: int = 20, lossless: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temp_name(self.path if self.path.suffix else self.path.with_suffix(".mp4"))
        self.rate = max(1, int(round(float(fps))))
        self.crf, self.lossless = int(crf), bool(lossless)
        self.container = self.stream = self.codec = None
        self.size: tuple[int, int] | None = None
        self.frames = 0

    def _open(self, h: int, w: int) -> None:
        import av

        self.container = av.open(str(self.tmp), mode="w", format="mp4")
        try:
            self.stream = self.container.add_stream("libx264", rate=self.rate)
            # veryfast: ~3x faster than the default preset at the same crf (a slightly larger file)
            self.stream.options = {"qp": "0"} if self.lossless else {"crf": str(self.crf), "preset": "veryfast"}
            self.stream.pix_fmt = "yuv444p" if self.lossless else "yuv420p"
            self.codec = "libx264"
        except (av.error.FFmpegError, ValueError):  # no libx264 here (UnknownCodecError is a ValueError)
            self.stream = self.container.add_stream("mpeg4", rate=self.rate)
            self.stream.pix_fmt = "yuv420p"
            self.codec = "mpeg4"
        self.size = (h, w)
        self.stream.width, self.stream.height = w + w % 2, h + h % 2

    def write(self, frame: np.ndarray) -> None:
        import av

        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 [H, W, 3] RGB, got {frame.dtype} {frame.shape}")
        h, w = frame.shape[:2]
        if self.container is None:
            self._open(h, w)
        elif (h, w) != self.size:
            raise ValueError(f"frame {self.frames} is {h}x{w}, the video is {self.size[0]}x{self.size[1]}")
        if h % 2 or w % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> Path:
        """Flush, close and move the file into place; ValueError when no frame was written."""
        if self.container is None:
            raise ValueError(f"no frames written to {self.path}")
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
            self.container.close()
            commit(self.tmp, self.path)
        finally:
            self.container = None
            self.tmp.unlink(missing_ok=True)
        return self.path

    def abort(self) -> None:
        """Drop what was written (the target file is left as it was)."""
        if self.container is not None:
            self.container.close()
            self.container = None
        self.tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_video(path, frames, fps: float = 24.0, crf: int = 18, lossless: bool = False) -> Path:
    """Write uint8 RGB frames ([T, H, W, 3] or any iterable of [H, W, 3]) to an mp4 atomically (see
    :class:`Mp4Writer`; ``lossless`` uses qp=0 in yuv444p)."""
    with Mp4Writer(path, fps=fps, crf=crf, lossless=lossless) as w:
        for f in frames:
            w.write(f)
    return Path(path)
