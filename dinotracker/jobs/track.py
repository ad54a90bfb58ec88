"""``python -m dinotracker.track run=<run folder> queries=<file> out=<file.npz>``: track with a fitted model.

Without ``queries`` a grid is tracked (``grid_step``, ``grid_frame``, ``grid_mask``). Writes the
formats in ``export`` (npz, csv, pkl, mp4; see :mod:`dinotracker.inference.export`) next to ``out``.
Config: ``conf/track.yaml`` (self-contained). The mp4/pkl frames are the original frames at input
resolution (the cached model-resolution frames resized back when the source is gone).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

import dinotracker
from dinotracker.utils.device import resolve_device
from dinotracker.utils.errors import one_line_errors

log = logging.getLogger("dinotracker.track")

FORMATS = ("npz", "csv", "pkl", "mp4")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def read_grid_mask(path, hw: tuple[int, int]) -> np.ndarray:
    """A mask image (any object id = inside; :func:`dinotracker.data.video.read_mask` conventions) -> bool
    [H, W]; must be at the input resolution."""
    from dinotracker.data.video import read_mask

    m = read_mask(path)
    if m.shape != tuple(hw):
        raise ValueError(
            f"grid mask {path} is {m.shape[1]}x{m.shape[0]}, the video is {hw[1]}x{hw[0]} (W x H)"
        )
    return m > 0


def input_frames(tracker, video_info: dict | None = None) -> np.ndarray:
    """uint8 [T, H, W, 3] RGB at the input resolution: the original frames when the run's source is
    readable (:func:`dinotracker.viz.frames.original_frames`), else the cached model frames resized back."""
    import cv2

    from dinotracker.viz.frames import original_frames

    orig = original_frames(video_info, tracker.input_hw, tracker.num_frames)
    if orig is not None:
        return orig
    frames = tracker.video.frames.permute(0, 2, 3, 1).cpu().numpy()
    h, w = tracker.input_hw
    if frames.shape[1:3] == (h, w):
        return np.ascontiguousarray(frames)
    return np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR) for f in frames])


def run(cfg: DictConfig) -> dict:
    """Track and export; returns ``{"tracks", "visible", "confidence", "queries", "written": [paths]}``."""
    from dinotracker.inference.api import load
    from dinotracker.inference.export import save_exports
    from dinotracker.inference.queries import read_queries

    formats = list(cfg.export or [])
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"export={formats}: unknown {bad}; choose from {list(FORMATS)}")
    folder = Path(str(cfg.run))
    early_mask = None
    if not cfg.queries and cfg.grid_mask and _run_info(folder).get("input_hw"):
        early_mask = read_grid_mask(cfg.grid_mask, _run_info(folder)["input_hw"])  # a wrong mask fails before loading
    storage = None if str(cfg.storage_dtype) == "auto" else DTYPES[str(cfg.storage_dtype)]
    tracker = load(
        folder,
        device=resolve_device(cfg.device),
        use_ema=bool(cfg.use_ema),
        cache_dir=cfg.cache_dir,
        chunk=int(cfg.chunk),
        anchor_cos=float(cfg.anchor_cos),
        visible_cos=float(cfg.visible_cos),
        storage_dtype=storage,
        max_anchors=cfg.get("max_anchors"),
        fast_conv=bool(cfg.fast_conv),
    )
    if cfg.queries:
        queries = read_queries(cfg.queries)
        out = tracker.track(queries, occlusion=bool(cfg.occlusion))
        default_name = f"tracks_{Path(str(cfg.queries)).stem}"
    else:
        mask = early_mask if early_mask is not None else (
            read_grid_mask(cfg.grid_mask, tracker.input_hw) if cfg.grid_mask else None)
        out = tracker.track_grid(
            float(cfg.grid_step), frame=int(cfg.grid_frame), mask=mask, occlusion=bool(cfg.occlusion)
        )
        default_name = f"tracks_grid{cfg.grid_step:g}_f{int(cfg.grid_frame)}"
    stem = Path(str(cfg.out)).with_suffix("") if cfg.out else folder / default_name
    info = _run_info(folder)
    fps = cfg.viz.fps or (info.get("video") or {}).get("fps") or 10.0
    frames = input_frames(tracker, info.get("video")) if ("pkl" in formats or "mp4" in formats) else None
    written = save_exports(
        stem,
        [f for f in formats if f != "mp4"],
        out["tracks"],
        out["visible"],
        out["confidence"],
        out["queries"],
        name=tracker.video.name,
        frames=frames,
        hw=tracker.input_hw,
        fps=float(fps),
    )
    if "mp4" in formats:
        from dinotracker.viz.tracks import draw_tracks_grid, draw_tracks_video

        qf = out["queries"][:, 0].long().numpy()
        written.append(
            draw_tracks_video(
                stem.with_suffix(".mp4"),
                frames,
                out["tracks"],
                out["visible"],
                fps=float(fps),
                trail=int(cfg.viz.trail),
                query_frames=qf,
            )
        )
        if cfg.viz.grid_png:
            written.append(
                draw_tracks_grid(
                    stem.with_suffix(".png"),
                    frames,
                    out["tracks"],
                    out["visible"],
                    trail=int(cfg.viz.trail),
                    query_frames=qf,
                )
            )
    n, t = out["visible"].shape
    log.info(
        "tracked %d points through %d frames (%.1f%% visible) -> %s",
        n,
        t,
        100.0 * float(out["visible"].float().mean()) if n else 0.0,
        ", ".join(map(str, written)),
    )
    return dict(out, written=written)


def _run_info(folder: Path) -> dict:
    p = folder / "run_info.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def main() -> None:
    import hydra

    from dinotracker.jobs.cli import precheck
    from dinotracker.utils.errors import precheck_argv

    precheck("track", sys.argv[1:])  # a mistyped option: one line with the valid names, before any work
    precheck_argv(sys.argv[1:])  # a missing input file: one line, before torch loads
    hydra.main(config_path=str(dinotracker.config_dir()), config_name="track", version_base="1.3")(
        one_line_errors(run))()


if __name__ == "__main__":
    sys.exit(main())
