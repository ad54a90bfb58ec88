"""Foreground masks from DINO saliency when the video has none (DINO_TRACKER_SPEC §2.4), sign-anchored."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dinotracker.geometry import patch_centers


def saliency_component(features: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """First PCA component of the jointly L2-normalised tokens of a video, min-max normalised over the video.

    features ``[T,C,h,w]`` -> ``[T,h,w]`` in [0, 1].
    As the reference: ``pca_lowrank(q=3, niter=20)`` (centred),
    projection of the *uncentred* normalised tokens. The randomised SVD uses a generator seeded with ``seed``
    (the reference has no seed), without touching the global RNG state.
    """
    if features.dim() != 4:
        raise ValueError(f"features must be [T,C,h,w], got {tuple(features.shape)}")
    t, c, h, w = features.shape
    x = F.normalize(features.float().permute(0, 2, 3, 1).reshape(-1, c), dim=-1)
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        _, _, v = torch.pca_lowrank(x, q=min(3, c, x.shape[0]), niter=20)
    comp = (x @ v[:, 0]).reshape(t, h, w)
    return (comp - comp.min()) / (comp.max() - comp.min()).clamp(min=1e-12)


def nearest_patch_index(n_pixels: int, n_patches: int, patch: int, stride: int, device=None) -> torch.Tensor:
    """For each pixel centre ``i + 0.5`` along an axis, the index of the nearest patch centre
    ``stride*k + patch/2``
    (ties go to the lower index). ``[n_pixels]`` long."""
    centres = patch_centers(n_patches, patch, stride, device=device)
    pix = torch.arange(n_pixels, device=device, dtype=torch.float32) + 0.5
    return (pix[:, None] - centres[None]).abs().argmin(1)


def saliency_masks(
    features: torch.Tensor,
    model_hw: tuple[int, int],
    patch: int,
    stride: int,
    threshold: float = 0.6,
    seed: int = 0,
) -> torch.Tensor:
    """features ``[T,C,h,w]`` (the last block's tokens in the reference) -> foreground ``bool [T,H,W]``.

    FG = normalised component 0 < ``threshold`` (reference: 0.6). Fix over the reference: the component's
    sign is random (randomised SVD), so FG/BG could swap between runs; here the sign is anchored so that the
    outer ring of patches (all frames) is mostly background: if more than half of it is "foreground", the
    component is negated (``1 - value`` after min-max) before thresholding. Masks are upsampled to
    ``model_hw`` by giving every pixel the value of its nearest patch centre (the patch-centre geometry of
    :mod:`dinotracker.geometry`), not by a plain nearest resize of the grid.
    """
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    comp = saliency_component(features, seed)
    _, h, w = comp.shape
    hh, ww = int(model_hw[0]), int(model_hw[1])
    if (1 + (hh - patch) // stride, 1 + (ww - patch) // stride) != (h, w):
        raise ValueError(
            f"a {h}x{w} patch grid does not belong to a {hh}x{ww} image with patch {patch}, stride {stride}"
        )
    fg = comp < threshold
    border = torch.cat(
        [fg[:, 0].flatten(), fg[:, -1].flatten(), fg[:, :, 0].flatten(), fg[:, :, -1].flatten()]
    )
    if border.float().mean() > 0.5:
        fg = (1.0 - comp) < threshold
    iy = nearest_patch_index(hh, h, patch, stride, fg.device)
    ix = nearest_patch_index(ww, w, patch, stride, fg.device)
    return fg[:, iy][:, :, ix]
