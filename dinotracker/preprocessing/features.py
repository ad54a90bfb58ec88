"""Frozen backbone features of a whole video, batched over frames, stored in fp16."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm


@torch.no_grad()
def extract_video_features(backbone, frames: torch.Tensor, layer: int, facet: str = "tokens", batch_size: int = 4,
                           device="cpu", dtype=torch.float16, progress: bool = True) -> torch.Tensor:
    """frames uint8 [T,3,H,W] -> features [T,C,h,w] (``dtype``, CPU) of block ``layer``'s ``facet``.

    Computed in fp32 (no autocast) and cast, a batch of ``batch_size`` frames at a time.
    """
    backbone = backbone.to(device).eval()
    out = []
    for a in tqdm(range(0, frames.shape[0], batch_size), desc="features", disable=not progress, leave=False):
        x = frames[a:a + batch_size].to(device).float() / 255.0
        out.append(backbone.extract(x, [layer], facet)[layer].to(dtype).cpu())
    return torch.cat(out)
