"""What preprocessing hands to training and inference (the cache's in-memory form).

All coordinates are model-resolution raster (x, y) (see :mod:`dinotracker.geometry`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from dinotracker.geometry import Resize, patch_center_grid
from dinotracker.preprocessing.cache import CacheIndex


@dataclass
class BestBuddies:
    """DINO best-buddy pairs over all frame pairs, flattened (M pairs).

    ``src_t``/``dst_t`` int64 [M] frame indices (src_t < dst_t as computed; users
    may use either direction), ``src_xy``/``dst_xy`` float32 [M, 2] patch-centre
    raster coords at model resolution, ``cos`` float32 [M] raw-DINO cosine,
    ``ratio`` float32 [M] the NMS ambiguity ratio r = max(r_st, r_ts) (0 when
    not computed), ``weight`` float32 [M] = sigmoid(27 (1 - r) - 5.7) * max(2 cos^3, 0).
    """

    src_t: torch.Tensor
    dst_t: torch.Tensor
    src_xy: torch.Tensor
    dst_xy: torch.Tensor
    cos: torch.Tensor
    ratio: torch.Tensor
    weight: torch.Tensor

    def __len__(self) -> int:
        return int(self.src_t.shape[0])

    @staticmethod
    def empty() -> BestBuddies:
        z = torch.zeros(0)
        return BestBuddies(z.long(), z.long(), z.reshape(0, 2), z.reshape(0, 2), z, z, z)


@dataclass
class PreprocessedVideo:
    """Everything training needs about one video, at model resolution.

    frames:        uint8 [T, 3, H, W] RGB, resized to ``resize.model_hw``.
    features:      float16 [T, C, h, w] frozen backbone features on the patch grid
                   (zeros of width C for ``backbone=none``).
    patch, stride: patch-centre grid, centre_k = stride * k + patch / 2 (model raster px).
    tracks:        float32 [N, T, 2] chained optical-flow trajectories (direct-flow
                   filtered), NaN where absent; each row one contiguous segment.
    tracks_fg:     bool [N], trajectory starts on the foreground mask.
    fg_masks:      bool [T, H, W] foreground masks (user's or saliency).
    best_buddies:  flow-filtered DINO best-buddies with ambiguity weights.
    frame_indices: int [T] index of each frame in the source video (range/stride).
    index:         the cache entries this was read from (None when built in memory).
    """

    name: str
    frames: torch.Tensor
    features: torch.Tensor
    patch: int
    stride: int
    tracks: torch.Tensor
    tracks_fg: torch.Tensor
    fg_masks: torch.Tensor
    best_buddies: BestBuddies
    resize: Resize
    frame_indices: np.ndarray
    meta: dict = field(default_factory=dict)
    index: CacheIndex | None = None

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def model_hw(self) -> tuple[int, int]:
        return self.resize.model_hw

    @property
    def grid_hw(self) -> tuple[int, int]:
        return tuple(self.features.shape[-2:])

    def patch_centers(self) -> torch.Tensor:
        """[h, w, 2] raster (x, y) of the feature cells."""
        return patch_center_grid(self.grid_hw, self.patch, self.stride)
