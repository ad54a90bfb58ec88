"""Query points: validation, grids (optionally inside a mask) and input <-> model pixel conversion.

A query is ``(t, x, y)``: frame index ``t`` and raster (x, y) in *input* pixels (the user's
video resolution; see :mod:`dinotracker.geometry`). This is co-tracker's order; TAP-Vid
pickles use (t, y, x) and the reference DINO-Tracker (x, y, t).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dinotracker.geometry import Resize


def as_queries(queries, num_frames: int, hw: tuple[int, int]) -> torch.Tensor:
    """Validate queries -> float32 tensor [N, 3] (t, x, y) in input px.

    ``queries`` is an array/tensor/list [N, 3]. ``t`` must be an integer frame index in
    ``[0, num_frames)``; ``(x, y)`` must lie in the ``hw`` = (H, W) image ``[0, W] x [0, H]``.
    """
    q = torch.as_tensor(
        np.asarray(queries.detach().cpu() if isinstance(queries, torch.Tensor) else queries, dtype=np.float64)
    )
    if q.dim() == 1 and q.numel() == 3:
        q = q[None]
    if q.dim() != 2 or q.shape[1] != 3:
        raise ValueError(
            f"queries must be [N, 3] rows of (t, x, y) in input pixels, got shape {tuple(q.shape)}"
        )
    if not torch.isfinite(q).all():
        raise ValueError("queries contain NaN/inf")
    t = q[:, 0]
    if (t != t.round()).any():
        raise ValueError(
            "query frame indices (column 0) must be integers; did you pass (x, y, t)? the order is (t, x, y)"
        )
    if q.shape[0] and (t.min() < 0 or t.max() >= num_frames):
        raise ValueError(
            f"query frame indices must be in [0, {num_frames}), got [{int(t.min())}, {int(t.max())}]"
        )
    h, w = hw
    if q.shape[0] and (
        (q[:, 1] < 0).any() or (q[:, 1] > w).any() or (q[:, 2] < 0).any() or (q[:, 2] > h).any()
    ):
        raise ValueError(
            f"query (x, y) must lie inside the {w}x{h} (W x H) input frame; got x in "
            f"[{float(q[:, 1].min()):.1f}, {float(q[:, 1].max()):.1f}], y in "
            f"[{float(q[:, 2].min()):.1f}, {float(q[:, 2].max()):.1f}] (is the order (t, x, y)?)"
        )
    return q.to(torch.float32)


def grid_queries(hw: tuple[int, int], step: float, frame: int = 0, mask=None) -> torch.Tensor:
    """A query every ``step`` input px on ``frame`` -> float32 [N, 3] (t, x, y) input px.

    Points sit at ``step/2 + k*step`` along each axis (centred in the image's step-cells, never on
    the border). ``mask`` (bool/0-1 [H, W] at input resolution) keeps only points whose pixel is
    set. The reference's grid (``inference_grid.py``) is ``k*step`` from 0; ours avoids the edge.
    """
    h, w = int(hw[0]), int(hw[1])
    if step <= 0:
        raise ValueError(f"grid step must be > 0 px, got {step}")
    xs = torch.arange(step / 2.0, w, step, dtype=torch.float64)
    ys = torch.arange(step / 2.0, h, step, dtype=torch.float64)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    xy = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)
    if mask is not None:
        m = torch.as_tensor(np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask))
        if m.dim() == 3 and m.shape[-1] in (1, 3, 4):  # an image read as H x W x C
            m = m[..., 0]
        if tuple(m.shape) != (h, w):
            raise ValueError(f"grid mask must be [H, W] = {(h, w)} at input resolution, got {tuple(m.shape)}")
        m = m > 0
        cols = xy[:, 0].floor().long().clamp(0, w - 1)
        rows = xy[:, 1].floor().long().clamp(0, h - 1)
        xy = xy[m[rows, cols]]
    t = torch.full((xy.shape[0], 1), float(frame), dtype=torch.float64)
    return torch.cat([t, xy], dim=1).to(torch.float32)


def queries_to_model(queries: torch.Tensor, resize: Resize) -> torch.Tensor:
    """(t, x, y) input px -> (t, x, y) model px (t unchanged)."""
    out = queries.clone()
    out[:, 1:] = resize.to_model(queries[:, 1:])
    return out


def queries_to_input(queries: torch.Tensor, resize: Resize) -> torch.Tensor:
    """(t, x, y) model px -> (t, x, y) input px (t unchanged)."""
    out = queries.clone()
    out[:, 1:] = resize.to_input(queries[:, 1:])
    return out


def read_queries(path) -> torch.Tensor:
    """Queries from a file -> float32 [N, 3] (t, x, y) input px.

    ``.npz``: the ``queries`` array [N, 3]. ``.npy``: an [N, 3] array. ``.csv``/``.txt``: rows
    ``t,x,y`` (comma or whitespace separated); a header row is optional and, when present, may name
    the columns ``t``/``frame``, ``x``, ``y`` in any order.
    """
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"queries file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path) as z:
            if "queries" not in z.files:
                raise ValueError(f"{path} has no 'queries' array (has {z.files})")
            arr = z["queries"]
    elif suffix == ".npy":
        arr = np.load(path)
    else:
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        rows = [[c for c in ln.replace(",", " ").replace(";", " ").split()] for ln in lines]
        order = [0, 1, 2]
        if rows and not _is_number(rows[0][0]):
            names = [c.lower() for c in rows[0]]
            alias = {"t": "t", "frame": "t", "time": "t", "x": "x", "y": "y"}
            try:
                idx = {alias[c]: i for i, c in enumerate(names) if c in alias}
                order = [idx["t"], idx["x"], idx["y"]]
            except KeyError as e:
                raise ValueError(f"{path}: header {rows[0]} must name columns t (or frame), x, y") from e
            rows = rows[1:]
        try:
            arr = np.array([[float(r[i]) for i in order] for r in rows], dtype=np.float64).reshape(-1, 3)
        except (ValueError, IndexError) as e:
            raise ValueError(f"{path}: every row must hold t, x, y numbers") from e
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{path}: queries must be [N, 3] (t, x, y), got {arr.shape}")
    return torch.from_numpy(arr).to(torch.float32)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def capped_grid_step(hw: tuple[int, int], step: float, max_points: int | None) -> float:
    """The smallest grid step >= ``step`` whose :func:`grid_queries` grid on an ``hw`` image has at most
    ``max_points`` points (``None``/0: no cap). Sizes the post-fit grid to the video."""
    step = float(step)
    if step <= 0:
        raise ValueError(f"grid step must be > 0 px, got {step}")
    if not max_points:
        return step
    h, w = hw

    def count(s: float) -> int:
        return len(np.arange(s / 2, w, s)) * len(np.arange(s / 2, h, s))

    if count(step) <= max_points:
        return step
    s = max(step, math.sqrt(h * w / float(max_points)))
    while count(s) > max_points:
        s *= 1.02
    return float(math.ceil(s))
