"""Spatial neighbourhoods for label propagation (DINOv3 notebook, SEGTRACK_SPEC §1.5).

A context patch ``(u, v)`` is a candidate for the query patch ``(i, j)`` when the displacement
``(i - u, j - v)`` (in grid cells) has norm ``<= size`` (inclusive): L2 for ``"circle"``, L-inf for
``"square"``. The same window applies to every context frame, the first one included.
Interior cell counts: circle 12 -> 441, square 12 -> 625 (circle 5 -> 81, square 5 -> 121).
``size=None`` means no restriction (the "inf" rows of the paper's Table 27).

Two equivalent forms: the notebook's dense bool mask ``[h, w, h, w]`` (``(h w)^2`` bytes) and the
translation-invariant offsets ``[K, 2]`` (``(di, dj)``, row-major order) used by the gather path.
"""

from __future__ import annotations

import functools
import math

import torch

SHAPES = ("circle", "square")


def _check(size, shape: str) -> None:
    if shape not in SHAPES:
        raise ValueError(f"neighbourhood shape must be one of {SHAPES}, got {shape!r}")
    if size is not None and (not isinstance(size, (int, float)) or size < 0 or math.isnan(size)):
        raise ValueError(f"neighbourhood size must be a number >= 0 or None (unrestricted), got {size!r}")


@functools.lru_cache(maxsize=8)
def _mask_cpu(h: int, w: int, size, shape: str) -> torch.Tensor:
    ii, jj = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    ij = torch.stack([ii, jj], -1)  # [h, w, 2] (row, col)
    if size is None:
        return torch.ones(h, w, h, w, dtype=torch.bool)
    diff = ij[:, :, None, None, :] - ij[None, None, :, :, :]  # [h, w, h, w, 2]
    dist = torch.linalg.vector_norm(diff, ord=2 if shape == "circle" else math.inf, dim=-1)
    return dist <= size


def make_neighborhood_mask(
    h: int, w: int, size: float | None = 12, shape: str = "circle", device="cpu"
) -> torch.Tensor:
    """Dense mask bool ``[h, w, h, w]``: ``mask[i, j, u, v]`` = context ``(u, v)`` may vote for ``(i, j)``.

    Memory ``(h w)^2`` bytes (41 MB at 60x107), cached per ``(h, w, size, shape)`` as the notebook does.
    """
    _check(size, shape)
    if h < 1 or w < 1:
        raise ValueError(f"grid must be at least 1x1, got {h}x{w}")
    return _mask_cpu(int(h), int(w), size, shape).to(device)


@functools.lru_cache(maxsize=32)
def _offsets_cpu(size, shape: str, h: int | None, w: int | None) -> torch.Tensor:
    if size is None:
        if h is None or w is None:
            raise ValueError("an unrestricted neighbourhood (size=None) needs the grid size h, w")
        ri, rj = h - 1, w - 1
    else:
        ri = rj = int(math.floor(size))
    di, dj = torch.meshgrid(torch.arange(-ri, ri + 1), torch.arange(-rj, rj + 1), indexing="ij")
    off = torch.stack([di.reshape(-1), dj.reshape(-1)], -1)  # [K, 2], row-major
    if size is not None:
        dist = torch.linalg.vector_norm(off.float(), ord=2 if shape == "circle" else math.inf, dim=-1)
        off = off[dist <= size]
    return off


def neighborhood_offsets(
    size: float | None = 12, shape: str = "circle", h: int | None = None, w: int | None = None, device="cpu"
) -> torch.Tensor:
    """Offsets int64 ``[K, 2]`` ``(di, dj)``: context cell ``(i + di, j + dj)`` is a candidate for ``(i, j)``.

    Uses the same float32 norm and inclusive test as :func:`make_neighborhood_mask`, so both forms
    select exactly the same cells. ``h, w`` are needed only for ``size=None``.
    """
    _check(size, shape)
    return _offsets_cpu(size, shape, h, w).to(device)


def neighborhood_size(size: float | None = 12, shape: str = "circle") -> int:
    """Number of cells K of an interior window (441 for circle 12, 625 for square 12)."""
    if size is None:
        raise ValueError("an unrestricted neighbourhood has no fixed size")
    return int(neighborhood_offsets(size, shape).shape[0])


def offsets_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Offsets ``[K, 2]`` of a dense mask ``[h, w, h, w]`` when it is translation invariant (else ValueError).

    Lets the gather path accept a notebook-style mask; a mask that is not a sliding window
    (e.g. hand-edited) cannot be expressed as offsets.
    """
    if mask.dim() != 4 or mask.dtype != torch.bool or tuple(mask.shape[:2]) != tuple(mask.shape[2:]):
        raise ValueError(f"expected a bool mask [h, w, h, w], got {tuple(mask.shape)} {mask.dtype}")
    h, w = mask.shape[:2]
    q = torch.nonzero(mask.reshape(h * w, h * w))  # [n, 2] (query, context)
    off = torch.stack([q[:, 1] // w - q[:, 0] // w, q[:, 1] % w - q[:, 0] % w], -1)
    off = torch.unique(off, dim=0)
    if not torch.equal(_mask_from_offsets(off.cpu(), h, w), mask.cpu()):
        raise ValueError("the neighbourhood mask is not translation invariant; use method='dense'")
    return off.to(mask.device)


def _mask_from_offsets(off: torch.Tensor, h: int, w: int) -> torch.Tensor:
    out = torch.zeros(h, w, h, w, dtype=torch.bool)
    ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    for di, dj in off.tolist():
        u, v = ii + di, jj + dj
        ok = (u >= 0) & (u < h) & (v >= 0) & (v < w)
        out[ii[ok], jj[ok], u[ok], v[ok]] = True
    return out
