"""Anti-aliased downsampling (BlurPool, Zhang 2019, ``antialiased_cnns``), filter size 4."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Binomial taps per filter size, as in antialiased_cnns.get_filter.
_TAPS = {1: [1.0], 2: [1.0, 1.0], 3: [1.0, 2.0, 1.0], 4: [1.0, 3.0, 3.0, 1.0], 5: [1.0, 4.0, 6.0, 4.0, 1.0]}


class BlurPool2d(nn.Module):
    """Depthwise binomial blur followed by subsampling (``antialiased_cnns.BlurPool``).

    Filter size 4: kernel ``[1,3,3,1] (x) [1,3,3,1] / 64``, reflect padding
    ``[left, right, top, bottom] = [1, 2, 1, 2]``, stride ``stride``. For stride 2 the
    output has ``ceil(n / 2)`` rows/cols and output cell ``i`` is centred on input raster
    coordinate ``2 i + 1`` (the centre of input pixels ``2i, 2i+1``), i.e. the cell covers
    raster ``[2i, 2i + 2)``: downsampling keeps the raster convention exact.

    Input [B, C, H, W] (H, W >= 3 for the reflect pad); output [B, C, ceil(H/s), ceil(W/s)].
    """

    def __init__(self, channels: int, stride: int = 2, filt_size: int = 4):
        super().__init__()
        if filt_size not in _TAPS:
            raise ValueError(f"filt_size must be one of {sorted(_TAPS)}, got {filt_size}")
        if channels < 1 or stride < 1:
            raise ValueError(f"channels and stride must be >= 1, got {channels}, {stride}")
        self.channels = channels
        self.stride = stride
        self.filt_size = filt_size
        lo = (filt_size - 1) // 2
        hi = filt_size - 1 - lo
        self.pad = (lo, hi, lo, hi)
        a = torch.tensor(_TAPS[filt_size])
        filt = a[:, None] * a[None, :]
        filt = filt / filt.sum()
        # Persistent buffer named ``filt`` like antialiased_cnns (state_dict compatible).
        self.register_buffer("filt", filt[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected [B, {self.channels}, H, W], got {tuple(x.shape)}")
        if min(x.shape[-2:]) <= max(self.pad):
            raise ValueError(f"BlurPool2d needs H, W > {max(self.pad)} for reflect padding, got "
                             f"{tuple(x.shape[-2:])}")
        x = F.pad(x, self.pad, mode="reflect")
        return F.conv2d(x, self.filt.to(x.dtype), stride=self.stride, groups=self.channels)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, stride={self.stride}, filt_size={self.filt_size}"
