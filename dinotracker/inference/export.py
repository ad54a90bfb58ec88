"""Exports of tracks: NPZ, CSV (one row per point per frame) and the TAP-Vid pickle layout. Atomic writes."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np


def _np(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _atomic(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)
    return path


def save_npz(path, tracks, visible, confidence, queries) -> Path:
    """``tracks`` [N,T,2] float32 input px, ``visible`` [N,T] bool, ``confidence`` [N,T], ``queries`` [N,3]."""
    arrays = dict(tracks=_np(tracks).astype(np.float32), visible=_np(visible).astype(bool),
                  confidence=_np(confidence).astype(np.float32), queries=_np(queries).astype(np.float32))

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return _atomic(path, write)


def load_npz(path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def save_csv(path, tracks, visible, confidence) -> Path:
    """Columns point_id, frame, x, y, visible, confidence."""
    tracks, visible, confidence = _np(tracks), _np(visible), _np(confidence)
    n, t = visible.shape

    def write(tmp):
        pid, fr = np.meshgrid(np.arange(n), np.arange(t), indexing="ij")
        data = np.stack([pid.ravel(), fr.ravel(), tracks[..., 0].ravel(), tracks[..., 1].ravel(),
                         visible.ravel().astype(int), confidence.ravel()], 1)
        np.savetxt(tmp, data, delimiter=",", header="point_id,frame,x,y,visible,confidence", comments="",
                   fmt=["%d", "%d", "%.3f", "%.3f", "%d", "%.4f"])

    return _atomic(path, write)


def save_tapvid_pickle(path, name: str, frames, tracks, visible) -> Path:
    """``{name: {"video": uint8 [T,H,W,3], "points": [N,T,2] (x, y)/(W, H), "occluded": [N,T]}}``."""
    frames = np.asarray(frames)
    h, w = frames.shape[1:3]
    obj = {name: {"video": frames, "points": (_np(tracks) / np.array([w, h], np.float32)).astype(np.float32),
                  "occluded": ~_np(visible).astype(bool)}}

    def write(tmp):
        with open(tmp, "wb") as f:
            pickle.dump(obj, f)

    return _atomic(path, write)
