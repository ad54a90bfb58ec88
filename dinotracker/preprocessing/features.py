"""Frozen backbone features of a whole video, batched over frames, stored in a compact dtype (fp16)."""

from __future__ import annotations

import torch

from dinotracker.utils.progress import progress_iter as tqdm  # a bar on a terminal, log lines otherwise


@torch.no_grad()
def extract_video_features(
    backbone,
    frames: torch.Tensor,
    layer: int,
    facet: str = "tokens",
    batch_size: int = 4,
    device="cpu",
    dtype=torch.float16,
    progress: bool = True,
) -> torch.Tensor:
    """frames uint8 ``[T,3,H,W]`` -> block ``layer``'s ``facet`` features ``[T,C,h,w]`` (``dtype``, on CPU).

    ``batch_size`` frames at a time; the backbone runs in fp32 with autocast disabled (an enclosing autocast
    context does not change the results) and each batch is cast to ``dtype`` before it is stored, so peak
    memory is one batch's activations plus the fp16 output.
    """
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(
            f"frames must be a uint8 [T,3,H,W] tensor, got {tuple(getattr(frames, 'shape', ()))}"
        )
    if frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 (0..255), got {frames.dtype}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    backbone = backbone.to(device=device, dtype=torch.float32).eval()
    t = frames.shape[0]
    out = None
    with torch.autocast(device_type=device.type, enabled=False):
        for a in tqdm(
            range(0, t, batch_size),
            desc=f"features (layer {layer}, {facet})",
            disable=not progress,
            leave=False,
        ):
            x = frames[a : a + batch_size].to(device, non_blocking=True).float().div_(255.0)
            f = backbone.extract(x, [layer], facet)[layer]
            if out is None:  # allocated once the feature shape is known
                out = torch.empty((t, *f.shape[1:]), dtype=dtype)
            out[a : a + f.shape[0]] = f.to(dtype).cpu()
    if out is None:
        raise ValueError("frames is empty (T = 0)")
    return out
