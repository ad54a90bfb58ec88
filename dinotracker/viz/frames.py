"""The frames a visualisation is drawn on: the user's original frames at input resolution.

A fit's ``run_info.json`` records the video source and the source frame indices; drawing on
those frames is sharp at any size, where the cached model-resolution frames scaled back up are
blurry (a 168-px-high model frame shown at 720 px). Falls back to the cached frames when the
source moved or no longer matches.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def original_frames(video_info: dict | None, hw: tuple[int, int], num_frames: int) -> np.ndarray | None:
    """uint8 [T, H, W, 3] RGB source frames of a run (``run_info["video"]``: ``source``,
    ``frame_indices``), or None when the source is synthetic, missing, or not ``hw`` x ``num_frames``."""
    if not video_info:
        return None
    src, idx = video_info.get("source"), video_info.get("frame_indices")
    if not src or idx is None or len(idx) != num_frames:
        return None
    path = Path(str(src)).expanduser()
    if not path.exists():
        log.info("video source %s not found: drawing on the cached model-resolution frames", path)
        return None
    from dinotracker.data.video import load_video

    idx = [int(i) for i in idx]
    stride = idx[1] - idx[0] if len(idx) > 1 else 1
    if stride < 1 or idx != list(range(idx[0], idx[0] + stride * len(idx), stride)):
        return None
    try:
        video = load_video(path, start=idx[0], end=idx[-1] + 1, stride=stride, min_frames=1)
    except ValueError as err:
        log.info("cannot re-read %s (%s): drawing on the cached frames", path, err)
        return None
    if video.num_frames != num_frames or video.hw != tuple(hw):
        return None
    return video.frames
