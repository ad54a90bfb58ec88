"""Track exports (NPZ, long CSV, TAP-Vid pickle) and their readers; every write is atomic
(:mod:`dinotracker.utils.atomic`: a unique temporary file in the same folder, then ``os.replace``).

* NPZ: ``tracks`` float32 [N, T, 2] (x, y) input px (raster: (0, 0) is the top-left corner of the
  top-left pixel), ``visible`` bool [N, T], ``confidence`` float32 [N, T], ``queries`` float32 [N, 3]
  (t, x, y) input px, ``input_hw``, ``fps``, ``video``, ``coord_convention``: the ``tracks.npz`` schema
  of :mod:`dinotracker.inference.tracks_schema` (``write_tracks`` / the checking ``read_tracks``), which
  :func:`save_exports` and the fit job write; :func:`save_npz` is the unchecked low-level writer.
* CSV: one row per point per frame, ``point_id,frame,x,y,visible,confidence``.
* TAP-Vid pickle (the layout of ``tapvid_davis.pkl``): ``{name: {"video": uint8 [T, H, W, 3],
  "points": float32 [N, T, 2] (x / W, y / H) in [0, 1], "occluded": bool [N, T]}}``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from dinotracker.inference.queries import read_queries  # noqa: F401  (re-exported reader)
from dinotracker.utils.arrays import to_numpy
from dinotracker.utils.atomic import atomic_write  # noqa: F401  (used below; re-exported)

COORD_CONVENTION = "raster xy input px: (0,0) = top-left corner of the top-left pixel, centres at +0.5"
CSV_HEADER = ("point_id", "frame", "x", "y", "visible", "confidence")


def _check(tracks, visible, confidence=None):
    tracks, visible = to_numpy(tracks).astype(np.float32), to_numpy(visible).astype(bool)
    if tracks.ndim != 3 or tracks.shape[-1] != 2 or visible.shape != tracks.shape[:2]:
        raise ValueError(
            f"expected tracks [N, T, 2] and visible [N, T], got {tracks.shape} and {visible.shape}"
        )
    conf = visible.astype(np.float32) if confidence is None else to_numpy(confidence).astype(np.float32)
    if conf.shape != visible.shape:
        raise ValueError(f"confidence must be [N, T] = {visible.shape}, got {conf.shape}")
    return tracks, visible, conf


def save_npz(path, tracks, visible, confidence=None, queries=None, **meta) -> Path:
    """Write the NPZ export (module docstring); ``meta`` values become extra arrays (e.g. fps=24)."""
    tracks, visible, conf = _check(tracks, visible, confidence)
    q = np.zeros((tracks.shape[0], 3), np.float32) if queries is None else to_numpy(queries).astype(np.float32)
    if q.shape != (tracks.shape[0], 3):
        raise ValueError(f"queries must be [N, 3] (t, x, y), got {q.shape}")
    arrays = dict(
        tracks=tracks, visible=visible, confidence=conf, queries=q, coord_convention=COORD_CONVENTION
    )
    arrays.update({k: np.asarray(v) for k, v in meta.items() if v is not None})

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    return atomic_write(path, write)


def load_npz(path) -> dict[str, np.ndarray]:
    """All arrays of an NPZ export."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def save_csv(path, tracks, visible, confidence=None) -> Path:
    """Long CSV: ``point_id,frame,x,y,visible,confidence`` (x, y input px with 3 decimals)."""
    tracks, visible, conf = _check(tracks, visible, confidence)
    n, t = visible.shape
    pid, fr = np.meshgrid(np.arange(n), np.arange(t), indexing="ij")
    data = np.stack(
        [
            pid.ravel(),
            fr.ravel(),
            tracks[..., 0].ravel(),
            tracks[..., 1].ravel(),
            visible.ravel().astype(int),
            conf.ravel(),
        ],
        1,
    )

    def write(tmp):
        np.savetxt(
            tmp,
            data,
            delimiter=",",
            header=",".join(CSV_HEADER),
            comments="",
            fmt=["%d", "%d", "%.3f", "%.3f", "%d", "%.5f"],
        )

    return atomic_write(path, write)


def load_csv(path) -> dict[str, np.ndarray]:
    """Read :func:`save_csv`'s file -> dict(tracks [N, T, 2], visible [N, T], confidence [N, T])."""
    a = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    if a.size == 0:
        return dict(
            tracks=np.zeros((0, 0, 2), np.float32),
            visible=np.zeros((0, 0), bool),
            confidence=np.zeros((0, 0), np.float32),
        )
    pid, fr = a[:, 0].astype(int), a[:, 1].astype(int)
    n, t = pid.max() + 1, fr.max() + 1
    tracks = np.full((n, t, 2), np.nan, np.float32)
    visible = np.zeros((n, t), bool)
    conf = np.zeros((n, t), np.float32)
    tracks[pid, fr] = a[:, 2:4]
    visible[pid, fr] = a[:, 4] > 0
    conf[pid, fr] = a[:, 5]
    return dict(tracks=tracks, visible=visible, confidence=conf)


def save_tapvid_pickle(path, name: str, frames, tracks, visible, hw: tuple[int, int] | None = None) -> Path:
    """TAP-Vid layout (module docstring). ``frames`` uint8 [T, H, W, 3] (or None with ``hw`` = (H, W):
    the "video" entry is then omitted); ``tracks`` input px are divided by (W, H)."""
    if frames is not None:
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be [T, H, W, 3], got {frames.shape}")
        hw = frames.shape[1:3]
    if hw is None:
        raise ValueError("pass frames or hw=(H, W) to normalise the points")
    tracks, visible, _ = _check(tracks, visible)
    entry = {
        "points": (tracks / np.array([hw[1], hw[0]], np.float32)).astype(np.float32),
        "occluded": ~visible,
    }
    if frames is not None:
        entry["video"] = frames.astype(np.uint8)

    def write(tmp):
        with open(tmp, "wb") as f:
            pickle.dump({name: entry}, f, protocol=pickle.HIGHEST_PROTOCOL)

    return atomic_write(path, write)


def load_tapvid_pickle(path, hw: tuple[int, int] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Read a TAP-Vid-layout pickle -> {name: dict(tracks [N, T, 2] px, visible [N, T], video?)}.

    Points are scaled by (W, H) of the entry's video, or of ``hw`` when there is none."""
    with open(path, "rb") as f:
        obj = pickle.load(f)  # noqa: S301 (a file the user points at, like TAP-Vid's own loaders)
    out = {}
    for name, e in obj.items():
        size = e["video"].shape[1:3] if "video" in e else hw
        if size is None:
            raise ValueError(f"{path}: entry {name!r} has no video; pass hw=(H, W)")
        d = dict(
            tracks=np.asarray(e["points"], np.float32) * np.array([size[1], size[0]], np.float32),
            visible=~np.asarray(e["occluded"], bool),
        )
        if "video" in e:
            d["video"] = e["video"]
        out[name] = d
    return out


def save_exports(
    stem,
    formats,
    tracks,
    visible,
    confidence,
    queries,
    *,
    name: str = "video",
    frames=None,
    hw=None,
    fps: float | None = None,
) -> list[Path]:
    """Write ``formats`` (subset of npz, csv, pkl) next to each other as ``<stem>.<ext>``."""
    stem = Path(stem)
    written = []
    for fmt in formats:
        if fmt == "npz":
            from dinotracker.inference.tracks_schema import write_tracks

            written.append(
                write_tracks(stem.with_suffix(".npz"), tracks, visible, confidence, queries, input_hw=hw, fps=fps,
                             video=name)
            )
        elif fmt == "csv":
            written.append(save_csv(stem.with_suffix(".csv"), tracks, visible, confidence))
        elif fmt == "pkl":
            written.append(save_tapvid_pickle(stem.with_suffix(".pkl"), name, frames, tracks, visible, hw=hw))
        elif fmt != "mp4":
            raise ValueError(f"unknown export format {fmt!r}; choose from npz, csv, pkl, mp4")
    return written
