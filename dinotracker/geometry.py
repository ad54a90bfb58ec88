"""Coordinate conventions, in one place.

Every point that crosses a module boundary is ``(x, y)`` in **raster pixel
coordinates** (the TAP-Vid convention): ``(0, 0)`` is the top-left *corner* of
the top-left pixel, so the pixel in row ``i``, column ``j`` has its centre at
``(j + 0.5, i + 0.5)``. Under this convention a resize from ``(H, W)`` to
``(H', W')`` is a plain scaling ``x' = x * W'/W``, ``y' = y * H'/H``.

Consequences used across the package:

* Sampling an image/feature map of width ``W`` at raster ``x`` is
  ``grid_sample(..., align_corners=False)`` with ``u = 2 x / W - 1``.
* A ViT patch ``k`` of size ``p`` and stride ``s`` covers pixels
  ``[s k, s k + p)``; its centre is ``s k + p / 2`` (7 + 7k for p=14, s=7,
  exactly the reference implementation's patch-centre grid).
* Optical-flow arrays are indexed by pixel; the pixel ``[i, j]`` moves the point
  ``(j + 0.5, i + 0.5)``.
* Time is a frame index ``t`` in ``[0, T)``.

Public APIs take and return *input* pixels (the user's video resolution); the
model works at a *model* resolution. :class:`Resize` holds the explicit scale
factors between the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Resize:
    """Scale between input pixels (``input_hw``) and model pixels (``model_hw``)."""

    input_hw: tuple[int, int]
    model_hw: tuple[int, int]

    @property
    def scale_xy(self) -> tuple[float, float]:
        """Multiply input (x, y) by this to get model (x, y)."""
        return (self.model_hw[1] / self.input_hw[1], self.model_hw[0] / self.input_hw[0])

    def to_model(self, xy):
        """Input raster (x, y) [..., 2] -> model raster (x, y). numpy or torch."""
        return _scale(xy, self.scale_xy)

    def to_input(self, xy):
        """Model raster (x, y) [..., 2] -> input raster (x, y). numpy or torch."""
        sx, sy = self.scale_xy
        return _scale(xy, (1.0 / sx, 1.0 / sy))


def _scale(xy, s):
    if isinstance(xy, torch.Tensor):
        return xy * torch.tensor(s, dtype=xy.dtype, device=xy.device)
    xy = np.asarray(xy)
    return xy * np.asarray(s, dtype=xy.dtype if xy.dtype.kind == "f" else np.float64)


def model_size(input_hw: tuple[int, int], short_side: int | None = None,
               size_hw: tuple[int, int] | None = None, multiple: int = 1) -> tuple[int, int]:
    """Model resolution for a video of ``input_hw``.

    ``size_hw`` fixes both sides (the paper: 476x854); otherwise ``short_side``
    scales the short side keeping the aspect ratio. Both sides are rounded to a
    multiple of ``multiple`` (at least one multiple).
    """
    h, w = input_hw
    if size_hw is not None:
        th, tw = size_hw
    elif short_side is not None:
        s = short_side / min(h, w)
        th, tw = h * s, w * s
    else:
        th, tw = h, w
    th = max(multiple, int(round(th / multiple)) * multiple)
    tw = max(multiple, int(round(tw / multiple)) * multiple)
    return int(th), int(tw)


def patch_grid_size(hw: tuple[int, int], patch: int, stride: int) -> tuple[int, int]:
    """Number of patch rows/cols of a ViT with ``patch`` size and ``stride`` on ``hw``.

    476x854 with patch 14, stride 7 gives 67x121.
    """
    h, w = hw
    if h < patch or w < patch:
        raise ValueError(f"image {hw} is smaller than one patch ({patch} px)")
    return 1 + (h - patch) // stride, 1 + (w - patch) // stride


def patch_centers(n: int, patch: int, stride: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Raster coordinates of the ``n`` patch centres along one axis: ``stride*k + patch/2``."""
    return torch.arange(n, device=device, dtype=dtype) * stride + patch / 2.0


def patch_center_grid(grid_hw: tuple[int, int], patch: int, stride: int, device=None,
                      dtype=torch.float32) -> torch.Tensor:
    """(x, y) raster coordinates of every patch centre, shape [h, w, 2]."""
    ys = patch_centers(grid_hw[0], patch, stride, device, dtype)
    xs = patch_centers(grid_hw[1], patch, stride, device, dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def raster_to_grid(xy: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Raster (x, y) on an image of size ``hw`` -> grid_sample coords (align_corners=False)."""
    h, w = hw
    scale = torch.tensor([2.0 / w, 2.0 / h], dtype=xy.dtype, device=xy.device)
    return xy * scale - 1.0


def grid_to_raster(uv: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`raster_to_grid`."""
    h, w = hw
    scale = torch.tensor([w / 2.0, h / 2.0], dtype=uv.dtype, device=uv.device)
    return (uv + 1.0) * scale


def patch_grid_to_sample_coords(xy: torch.Tensor, grid_hw: tuple[int, int], patch: int,
                                stride: int) -> torch.Tensor:
    """Raster (x, y) -> grid_sample coords on a *patch-feature* map (align_corners=True).

    Feature cell ``k`` sits at raster ``stride*k + patch/2``, so the first centre
    maps to -1 and the last to +1 (the reference's ``normalize_points_for_sampling``).
    """
    h, w = grid_hw
    c = patch / 2.0
    last = torch.tensor([max(w - 1, 1) * stride, max(h - 1, 1) * stride], dtype=xy.dtype,
                        device=xy.device)
    return (xy - c) * 2.0 / last - 1.0


def sample_at(feature_map: torch.Tensor, xy: torch.Tensor, grid_hw_patch: tuple[int, int] | None = None,
              patch: int | None = None, stride: int | None = None, padding_mode: str = "border") -> torch.Tensor:
    """Bilinearly sample ``feature_map`` [B, C, h, w] at raster points ``xy`` [B, N, 2] -> [B, N, C].

    With ``patch``/``stride`` the map is a patch-feature grid (cells at patch centres);
    without, it is a pixel-aligned image (cells at pixel centres). ``padding_mode``: grid_sample's
    ``"border"`` (default) or ``"zeros"`` (cells beyond the map count as 0).
    """
    if patch is not None:
        uv = patch_grid_to_sample_coords(xy, feature_map.shape[-2:], patch, stride)
        align = True
    else:
        uv = raster_to_grid(xy, feature_map.shape[-2:])
        align = False
    out = torch.nn.functional.grid_sample(feature_map, uv[:, :, None, :].to(feature_map.dtype),
                                          mode="bilinear", padding_mode=padding_mode, align_corners=align)
    return out[..., 0].transpose(1, 2)
