"""Tracker head "CNN-refiner": a 1 -> 16 -> 1 3x3 CNN on the cost volume (spec §3.3, paper App. A.3)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class NormalizedConv2d(nn.Module):
    """Conv2d whose every (out, in) kernel is divided by its own sum before use (reference ``conv_norm``).

    Each ``k x k`` kernel therefore sums to 1 (a weighted average, up to sign) and the bias is
    added afterwards. Sums with ``|sum| < eps`` (1e-8) are replaced by ``sign(sum) * eps``; the
    reference maps an exactly-zero sum to ``0 * eps = 0`` and divides by zero, here it becomes
    ``+eps`` (fix). Init: kaiming-uniform(a=sqrt(5)) and PyTorch's bias init, like ``nn.Conv2d``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = True, eps: float = 1e-8):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.eps = kernel_size, stride, padding, eps
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.in_channels * self.kernel_size ** 2
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def normalized_weight(self) -> torch.Tensor:
        """[out, in, k, k] weight with each (out, in) kernel summing to 1."""
        s = self.weight.sum(dim=(2, 3), keepdim=True)
        sign = torch.where(s < 0, -1.0, 1.0).to(s.dtype)
        s = torch.where(s.abs() < self.eps, sign * self.eps, s)
        return self.weight / s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.normalized_weight(), self.bias, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")


class Refiner(nn.Module):
    """``Conv3x3(1->hidden) -> ReLU -> Conv3x3(hidden->1)``, zero padding 1; [N, 1, h, w] -> [N, 1, h, w].

    ``normalized=True`` uses :class:`NormalizedConv2d` (the reference code, spec M6);
    ``normalized=False`` plain ``nn.Conv2d`` (the paper's description). 305 parameters at hidden=16.
    """

    def __init__(self, hidden: int = 16, normalized: bool = True, kernel_size: int = 3):
        super().__init__()
        if hidden < 1 or kernel_size % 2 == 0:
            raise ValueError(f"hidden must be >= 1 and kernel_size odd, got {hidden}, {kernel_size}")
        conv = NormalizedConv2d if normalized else nn.Conv2d
        pad = kernel_size // 2
        self.normalized = normalized
        self.net = nn.Sequential(conv(1, hidden, kernel_size, 1, padding=pad), nn.ReLU(),
                                 conv(hidden, 1, kernel_size, 1, padding=pad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"Refiner expects [N, 1, h, w], got {tuple(x.shape)}")
        return self.net(x)
