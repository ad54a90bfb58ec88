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


def list_frames(folder: Path) -> list[Path]:
    """Image files of a frame folder in natural order; errors on empty or mixed folders."""
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


def _read_video_file(path: Path, keep: set[int] | None) -> tuple[list[np.ndarray], float]:
    import av

    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.base_rate or 24.0)
            for i, frame in enumerate(container.decode(stream)):
                if keep is None or i in keep:
                    frames.append(frame.to_ndarray(format="rgb24"))
    except (av.error.FFmpegError, IndexError) as err:
        raise VideoError(f"cannot decode video file {path}: {err}") from err
    return frames, fps


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
        all_frames, fps = _read_video_file(path, None)
        if not all_frames:
            raise VideoError(f"video file {path} has no decodable frames")
        idx = _select(len(all_frames), start, end, stride)
        if max_frames is not None:
            idx = idx[:max_frames]
        frames = [all_frames[i] for i in idx]
        total = len(all_frames)
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


def read_mask(path: Path) -> np.ndarray:
    """A mask PNG/JPG as uint8 object ids: palette PNGs keep their indices, grey 0/255 -> 0/1."""
    with Image.open(path) as im:
        try:
            im.load()
        except OSError as err:
            raise VideoError(f"cannot read mask {path}: {err}") from err
        if im.mode == "P":
            return np.asarray(im).astype(np.uint8)
        arr = np.asarray(im.convert("L"))
    values = np.unique(arr)
    if set(values.tolist()) <= {0, 255}:
        return (arr >= 128).astype(np.uint8)  # binary 0/255
    if values.size <= 32:
        return arr.astype(np.uint8)  # grey object ids (0, 1, 2, ...)
    return (arr >= 128).astype(np.uint8)  # a JPEG-compressed binary mask: threshold half-way


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


def write_video(path, frames: np.ndarray, fps: float = 24.0, crf: int = 18, lossless: bool = False) -> Path:
    """Write uint8 [T, H, W, 3] RGB frames to an mp4 (H.264; ``lossless`` uses qp=0 in yuv444p).

    Odd sizes are padded by one pixel (yuv420p needs even sizes). Written atomically.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    frames = np.asarray(frames)
    t, h, w = frames.shape[:3]
    ph, pw = h + (h % 2), w + (w % 2)
    with av.open(str(tmp), mode="w") as container:
        try:
            stream = container.add_stream("libx264", rate=int(round(fps)) or 1)
            stream.options = {"qp": "0"} if lossless else {"crf": str(crf)}
            stream.pix_fmt = "yuv444p" if lossless else "yuv420p"
        except (av.error.FFmpegError, ValueError):  # no libx264 in this FFmpeg build
            stream = container.add_stream("mpeg4", rate=int(round(fps)) or 1)
            stream.pix_fmt = "yuv420p"
        stream.width, stream.height = pw, ph
        for f in frames:
            if (ph, pw) != (h, w):
                f = np.pad(f, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)
    return path
