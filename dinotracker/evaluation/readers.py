"""Readers for TAP-Vid style benchmarks, all returning :class:`TapVidSample` (numpy only).

Supported layouts:

* **Official TAP-Vid pickles** (DAVIS, Kinetics shards, RGB-Stacking): a dict ``{name: video}`` or a
  list of videos, each ``{"video": uint8 [T,H,W,3] or list of JPEG bytes, "points": float [N,T,2]
  (x, y) normalised to [0, 1], "occluded": bool [N,T]}``. Points become raster pixels as
  ``points * (W, H)`` (tapnet's convention; co-tracker's ``W - 1`` is *not* used).
* **The reference's strided pickle** (DINO_TRACKER_SPEC §5.4): ``{"videos": [{video_idx, h, w,
  query_points: {q: [[x, y], ...]}, target_points: {q: [N_q,T,2]}, occluded: {q: [N_q,T]},
  (segmentations [T,H,W])}]}`` in original-video pixels. Tracks appear once per query frame there;
  the reader de-duplicates them back into unique tracks (identical position-and-occlusion rows are
  one track) and keeps the stored queries in ``extra``.
* **Folder layout** (``/work/shared/data/tapvid_davis_mini``): ``<video>/frames/%05d.jpg`` and
  ``<video>/gt.npz`` with ``points_xy`` [N,T,2] px, ``occluded`` [N,T], ``query_frame`` [N],
  ``height``, ``width``.

Coordinates are raster (x, y) px of the input video ((0, 0) = top-left corner of the top-left
pixel; see ``dinotracker/geometry.py``). JPEGs are decoded with Pillow, as tapnet does.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dinotracker.evaluation.tapvid import QueryMode

_IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def _decode_image(data: bytes | str | Path) -> np.ndarray:
    from PIL import Image

    src = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    try:
        with Image.open(src) as img:
            if img.mode != "RGB":
                img = img.convert("RGB")
            return np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError) as err:
        where = "JPEG bytes" if isinstance(data, (bytes, bytearray)) else str(data)
        raise ValueError(f"cannot decode image from {where}: {err}") from err


class LazyFrames(Sequence):
    """Frames ``uint8 [H, W, 3]`` decoded on access from an array, encoded bytes, or image paths."""

    def __init__(self, items: np.ndarray | Sequence[bytes] | Sequence[Path]):
        if isinstance(items, np.ndarray):
            if items.ndim != 4 or items.shape[-1] != 3:
                raise ValueError(f"video array must be [T, H, W, 3], got shape {items.shape}")
            if items.dtype != np.uint8:
                raise ValueError(f"video array must be uint8, got {items.dtype}")
        elif len(items) == 0:
            raise ValueError("video has no frames")
        self._items = items
        self._cache: np.ndarray | None = items if isinstance(items, np.ndarray) else None

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return np.stack([self[j] for j in range(*i.indices(len(self)))])
        if self._cache is not None:
            return self._cache[i]
        return _decode_image(self._items[i])

    @property
    def hw(self) -> tuple[int, int]:
        """(H, W) of the frames (decodes at most the first frame)."""
        first = self[0]
        return int(first.shape[0]), int(first.shape[1])

    def load(self) -> np.ndarray:
        """All frames as ``uint8 [T, H, W, 3]`` (decoded once, then cached)."""
        if self._cache is None:
            frames = [_decode_image(x) for x in self._items]
            shapes = {f.shape for f in frames}
            if len(shapes) != 1:
                raise ValueError(f"frames have different sizes: {sorted(shapes)}")
            self._cache = np.stack(frames)
        return self._cache


@dataclass
class TapVidSample:
    """One benchmark video.

    Attributes:
        name: video name (dict key, folder name, ``video_id``, or ``<file>_<index>``).
        video: lazily decoded frames, or None when the format ships no frames (strided pickle
            without ``frames_root``); :attr:`frames` decodes them all.
        tracks: ``float32 [N, T, 2]`` GT raster (x, y) px at :attr:`hw`.
        occluded: ``bool [N, T]`` GT occlusion.
        hw: ``(H, W)`` of the pixel frame of ``tracks`` (the original video).
        query_frames: ``int [N]`` first visible frame of each track.
        extra: format-specific extras (``segmentations``, the reference pickle's stored queries, ...).
    """

    name: str
    video: LazyFrames | None
    tracks: np.ndarray
    occluded: np.ndarray
    hw: tuple[int, int]
    query_frames: np.ndarray = field(default=None)  # filled in __post_init__
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.tracks = np.asarray(self.tracks, np.float32)
        self.occluded = np.asarray(self.occluded).astype(bool)
        if self.tracks.ndim != 3 or self.tracks.shape[-1] != 2:
            raise ValueError(f"{self.name}: tracks must be [N, T, 2], got shape {self.tracks.shape}")
        if self.occluded.shape != self.tracks.shape[:2]:
            raise ValueError(
                f"{self.name}: occluded {self.occluded.shape} does not match tracks {self.tracks.shape}"
            )
        if self.video is not None and len(self.video) != self.num_frames:
            raise ValueError(f"{self.name}: {len(self.video)} frames but annotations have {self.num_frames}")
        self.hw = (int(self.hw[0]), int(self.hw[1]))
        if self.query_frames is None:
            # First visible frame; 0 for never-visible tracks (they are dropped by sample_queries).
            self.query_frames = np.argmax(self.visible, axis=1).astype(np.int64)
        self.query_frames = np.asarray(self.query_frames, np.int64)
        if self.query_frames.shape != (self.num_tracks,):
            raise ValueError(
                f"{self.name}: query_frames must be [{self.num_tracks}], got {self.query_frames.shape}"
            )

    @property
    def frames(self) -> np.ndarray:
        """``uint8 [T, H, W, 3]`` (decoded on first access)."""
        if self.video is None:
            raise ValueError(
                f"{self.name}: this sample has no frames (for the reference strided pickle, "
                "pass frames_root=<folder with one frame folder per video_idx>)"
            )
        return self.video.load()

    @property
    def visible(self) -> np.ndarray:
        return ~self.occluded

    @property
    def num_frames(self) -> int:
        return int(self.tracks.shape[1])

    @property
    def num_tracks(self) -> int:
        return int(self.tracks.shape[0])


# --------------------------------------------------------------------------------------------- queries


def sample_queries_from_arrays(
    occluded: np.ndarray, tracks: np.ndarray, mode: QueryMode | str, stride: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """TAP-Vid query sampling on ``occluded [N,T]`` and ``tracks [N,T,2]`` (x, y) px.

    * ``first``: one query per track that is ever visible, at its first visible frame.
    * ``strided``: for ``i = 0, stride, 2*stride, ...`` every track visible at frame ``i`` gives a
      query at ``i``; queries are concatenated in frame order, tracks in index order within a frame
      (tapnet's ``sample_queries_strided``).

    Returns ``queries float32 [Q, 3]`` as **(t, x, y)** px (our convention; tapnet uses (t, y, x))
    and ``track_index int64 [Q]`` (the GT row of each query; tapnet's ``trackgroup``).
    """
    mode = QueryMode.parse(mode)
    occluded = np.asarray(occluded, bool)
    tracks = np.asarray(tracks)
    if occluded.ndim != 2 or tracks.shape != occluded.shape + (2,):
        raise ValueError(f"need occluded [N,T] and tracks [N,T,2], got {occluded.shape} and {tracks.shape}")
    visible = ~occluded
    if mode is QueryMode.FIRST:
        track_index = np.flatnonzero(visible.any(axis=1))
        frames = np.argmax(visible[track_index], axis=1)
    else:
        if int(stride) != stride or stride < 1:
            raise ValueError(f"stride must be a positive integer, got {stride}")
        idx, frs = [], []
        for i in range(0, occluded.shape[1], int(stride)):
            rows = np.flatnonzero(visible[:, i])
            idx.append(rows)
            frs.append(np.full(rows.size, i))
        track_index = np.concatenate(idx) if idx else np.zeros(0, np.int64)
        frames = np.concatenate(frs) if frs else np.zeros(0, np.int64)
    track_index = track_index.astype(np.int64)
    xy = tracks[track_index, frames]
    queries = np.concatenate([frames[:, None].astype(np.float32), xy.astype(np.float32)], axis=1)
    return queries.reshape(-1, 3), track_index


def sample_queries(
    sample: TapVidSample, mode: QueryMode | str, stride: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """Queries of ``sample`` as TAP-Vid samples them; see :func:`sample_queries_from_arrays`.

    Returns ``(queries [Q, 3] (t, x, y) px, track_index [Q])``; the GT of query ``q`` is
    ``sample.tracks[track_index[q]]`` / ``sample.occluded[track_index[q]]``.
    """
    return sample_queries_from_arrays(sample.occluded, sample.tracks, mode, stride)


# --------------------------------------------------------------------------------------------- readers


def _load_pickle(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"TAP-Vid pickle not found: {path}")
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError) as err:
        raise ValueError(f"{path} is not a readable pickle ({type(err).__name__}: {err})") from err


def _official_video(name: str, entry, where: str) -> TapVidSample:
    if not isinstance(entry, dict):
        raise ValueError(
            f"{where}: video {name!r} must be a dict with 'video', 'points', 'occluded', "
            f"got {type(entry).__name__}"
        )
    missing = [k for k in ("video", "points", "occluded") if k not in entry]
    if missing:
        raise ValueError(f"{where}: video {name!r} lacks key(s) {missing} (has {sorted(entry)})")
    video = entry["video"]
    if not isinstance(video, np.ndarray):
        video = list(video)
        if video and not isinstance(video[0], (bytes, bytearray)):
            video = np.asarray(video)
    frames = LazyFrames(video)
    points = np.asarray(entry["points"], np.float32)
    if points.ndim != 3 or points.shape[-1] != 2:
        raise ValueError(f"{where}: {name!r} points must be [N, T, 2] normalised (x, y), got {points.shape}")
    h, w = frames.hw
    # float32 product, as the normalised points were made by dividing float32 pixels by (W, H).
    tracks = points * np.array([w, h], np.float32)
    return TapVidSample(name=name, video=frames, tracks=tracks, occluded=entry["occluded"], hw=(h, w))


def load_tapvid_pickle(path: str | Path) -> list[TapVidSample]:
    """An official TAP-Vid pickle (DAVIS dict, Kinetics shard, RGB-Stacking list), or the reference's
    strided pickle (detected by its top-level ``"videos"`` key). A directory loads every ``*.pkl`` in it
    (sorted), e.g. the Kinetics ``0000_of_0010.pkl`` shards."""
    path = Path(path)
    if path.is_dir():
        shards = sorted(path.glob("*.pkl"))
        if not shards:
            raise FileNotFoundError(f"no *.pkl files in {path}")
        return [s for shard in shards for s in load_tapvid_pickle(shard)]
    data = _load_pickle(path)
    if isinstance(data, dict) and "videos" in data and isinstance(data["videos"], (list, tuple)):
        return load_strided_pickle(path, data=data)
    if isinstance(data, dict):
        return [_official_video(str(name), entry, str(path)) for name, entry in data.items()]
    if isinstance(data, (list, tuple)):
        out = []
        for i, entry in enumerate(data):
            name = entry.get("video_id") if isinstance(entry, dict) else None
            out.append(
                _official_video(str(name) if name is not None else f"{path.stem}_{i:04d}", entry, str(path))
            )
        return out
    raise ValueError(
        f"{path}: expected a dict or list of videos (official TAP-Vid) or {{'videos': [...]}} "
        f"(reference strided pickle), got {type(data).__name__}"
    )


def _frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_EXTS)


def load_strided_pickle(
    path: str | Path, frames_root: str | Path | None = None, data=None
) -> list[TapVidSample]:
    """The reference implementation's benchmark pickle (``tapvid_davis_data_strided.pkl``, BADJA).

    ``frames_root``: optional folder with one sub-folder per ``video_idx`` holding that video's frames
    (``<root>/<idx>/video/*.jpg`` as the reference README lays them out, or ``<root>/<idx>/*.jpg``).
    Unique tracks are recovered by de-duplicating the per-query-frame rows; the stored queries are
    kept as ``extra["query_points"]`` (float32 [Q, 3] (t, x, y) px) with ``extra["query_track_index"]``.
    ``segmentations`` (BADJA) go to ``extra["segmentations"]``.
    """
    path = Path(path)
    if data is None:
        data = _load_pickle(path)
    if not isinstance(data, dict) or not isinstance(data.get("videos"), (list, tuple)):
        raise ValueError(f"{path}: expected the reference's strided layout {{'videos': [...]}}")
    out = []
    for i, v in enumerate(data["videos"]):
        missing = [k for k in ("video_idx", "h", "w", "target_points", "occluded") if k not in v]
        if missing:
            raise ValueError(f"{path}: videos[{i}] lacks key(s) {missing} (has {sorted(v)})")
        qs = sorted(v["target_points"], key=int)
        if not qs:
            raise ValueError(f"{path}: videos[{i}] has no query frames")
        rows = np.concatenate([np.asarray(v["target_points"][q], np.float32) for q in qs])
        occ = np.concatenate([np.asarray(v["occluded"][q]).astype(bool) for q in qs])
        if rows.ndim != 3 or rows.shape[-1] != 2 or occ.shape != rows.shape[:2]:
            raise ValueError(
                f"{path}: videos[{i}] target_points/occluded have shapes {rows.shape} / {occ.shape}"
            )
        qt = np.concatenate([np.full(len(v["target_points"][q]), int(q)) for q in qs])
        # Unique tracks in order of first appearance: rows are exact copies of the same GT track.
        key = np.concatenate([rows.reshape(len(rows), -1), occ.astype(np.float32)], axis=1)
        _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
        order = np.argsort(first)
        remap = np.empty_like(order)
        remap[order] = np.arange(order.size)
        track_index = remap[inverse.reshape(-1)]
        tracks, occluded = rows[first[order]], occ[first[order]]
        if "query_points" in v:
            qxy = np.concatenate([np.asarray(v["query_points"][q], np.float32).reshape(-1, 2) for q in qs])
        else:
            qxy = rows[np.arange(len(rows)), qt]
        extra = {
            "video_idx": v["video_idx"],
            "query_points": np.concatenate([qt[:, None], qxy], 1).astype(np.float32),
            "query_track_index": track_index.astype(np.int64),
        }
        if "segmentations" in v:
            extra["segmentations"] = np.asarray(v["segmentations"])
        video = None
        if frames_root is not None:
            d = Path(frames_root) / str(v["video_idx"])
            d = d / "video" if (d / "video").is_dir() else d
            if not d.is_dir() or not _frame_files(d):
                raise FileNotFoundError(f"no frames for video_idx {v['video_idx']} under {d}")
            video = LazyFrames(_frame_files(d))
        out.append(
            TapVidSample(
                name=str(v["video_idx"]),
                video=video,
                tracks=tracks,
                occluded=occluded,
                hw=(int(v["h"]), int(v["w"])),
                extra=extra,
            )
        )
    return out


def load_tapvid_video_dir(path: str | Path) -> TapVidSample:
    """One video in the folder layout: ``<path>/frames/*.jpg`` (sorted) + ``<path>/gt.npz``."""
    path = Path(path)
    gt_path, frame_dir = path / "gt.npz", path / "frames"
    if not gt_path.is_file():
        raise FileNotFoundError(f"missing ground truth {gt_path}")
    if not frame_dir.is_dir() or not _frame_files(frame_dir):
        raise FileNotFoundError(f"missing frames: no images in {frame_dir}")
    from dinotracker.data.sources import read_gt_npz

    gt = read_gt_npz(gt_path)
    tracks, occluded, query_frames, hw = gt["points_xy"], gt["occluded"], gt["query_frame"], gt["hw"]
    video = LazyFrames(_frame_files(frame_dir))
    if hw is None:
        hw = video.hw
    return TapVidSample(
        name=path.name, video=video, tracks=tracks, occluded=occluded, hw=hw, query_frames=query_frames
    )


def load_tapvid_folder(root: str | Path) -> list[TapVidSample]:
    """Every ``<root>/<video>/`` that has a ``gt.npz`` (sorted by name), or ``root`` itself if it has one."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    if (root / "gt.npz").is_file():
        return [load_tapvid_video_dir(root)]
    dirs = sorted(d for d in root.iterdir() if (d / "gt.npz").is_file())
    if not dirs:
        raise FileNotFoundError(f"no <video>/gt.npz folders under {root}")
    return [load_tapvid_video_dir(d) for d in dirs]


def load_tapvid(path: str | Path) -> list[TapVidSample]:
    """Any supported layout: a ``.pkl`` file, a folder of video folders (preferred when both exist),
    a single video folder, or a folder of pickle shards."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {path}")
    if path.is_file():
        return load_tapvid_pickle(path)
    if (path / "gt.npz").is_file() or any((d / "gt.npz").is_file() for d in path.iterdir() if d.is_dir()):
        return load_tapvid_folder(path)
    return load_tapvid_pickle(path)
