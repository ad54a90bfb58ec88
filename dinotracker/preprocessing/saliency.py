"""Foreground masks from DINO saliency when the video has none (DINO_TRACKER_SPEC §2.4), sign-anchored."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dinotracker.geometry import patch_centers


def saliency_masks(features: torch.Tensor, model_hw: tuple[int, int], patch: int, stride: int,
                   threshold: float = 0.6, seed: int = 0) -> torch.Tensor:
    """features [T,C,h,w] (last block) -> bool [T,H,W] foreground.

    The reference: L2-normalise all tokens of the video jointly, PCA (pca_lowrank q=3, niter=20),
    min-max normalise component 0 over the video, FG = value < threshold. Fixes: a fixed generator
    seed, and the sign anchored so that the frame border is background (the reference's sign is
    random and FG/BG can flip). Upsampled to ``model_hw`` by nearest patch centre.
    """
    t, c, h, w = features.shape
    x = F.normalize(features.float().permute(0, 2, 3, 1).reshape(-1, c), dim=-1)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        _, _, v = torch.pca_lowrank(x, q=min(3, c), niter=20)
    finally:
        torch.random.set_rng_state(state)
    comp = (x @ v[:, 0]).reshape(t, h, w)
    comp = (comp - comp.min()) / (comp.max() - comp.min()).clamp(min=1e-8)
    fg = comp < threshold
    border = torch.cat([fg[:, 0].flatten(), fg[:, -1].flatten(), fg[:, :, 0].flatten(), fg[:, :, -1].flatten()])
    if border.float().mean() > 0.5:  # the border is mostly "foreground": the component's sign is flipped
        fg = (1.0 - comp) < threshold
    # nearest patch centre for every pixel centre
    hh, ww = model_hw
    cy, cx = patch_centers(h, patch, stride), patch_centers(w, patch, stride)
    iy = ((torch.arange(hh) + 0.5)[:, None] - cy[None]).abs().argmin(1)
    ix = ((torch.arange(ww) + 0.5)[:, None] - cx[None]).abs().argmin(1)
    return fg[:, iy][:, :, ix]
