"""The weight gradient of a stride-1 valid convolution by tiled FFTs (CPU fast path, ``model.fast_conv``).

NNPACK runs Delta-DINO's forward and input-gradient convolutions with FFT tiles, but it has no weight-gradient
kernel, and oneDNN's direct one already runs at ~80 % of this machine's sgemm rate (54 of 69 GFLOP/s on the
2-core AVX2 CPU), so the step's weight gradients (a third of its convolution work) can only get faster with
fewer multiplications. Here::

    dW[o, i, u, v] = sum_{b, y, x} gy[b, o, y, x] * x[b, i, y + u, x + v]          (u, v < k)

is split into output tiles of ``m x m`` gradient cells with their ``T x T`` input windows (``T = m + k - 1``);
per tile the correlation is exact in a size-``T`` DFT (no wrap-around: ``y + u <= T - 1``), so with
``X_n = rfft2(x tile n)`` and ``G_n = rfft2(gy tile n, zero-padded to T)``::

    dW_f[o, i] = sum_n conj(G_n[o, f]) X_n[i, f]      one [Co x N] @ [N x Ci] complex matmul per frequency f

and ``dW = irfft2(dW_f)[:k, :k]``, evaluated only at those ``k x k`` lags (one real GEMM with the inverse-DFT
matrix). A complex multiply-add is 4 real ones on ``T (T/2 + 1)`` frequencies for ``m^2`` outputs: at
``T = 20, k = 5`` 3.4 real multiply-adds per output lag and cell instead of 25. What is left is memory traffic
(tiling, FFTs, transposes), so :func:`plan_tile` picks ``T`` (or the direct kernel) from a cost model fitted to
this machine; the choice depends on the shapes only, never on timing, so a run is reproducible and a resume
bit-identical. Rounding: a different summation than the direct kernel, ~2e-5 of the gradient's scale (tested).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

TILES = (12, 16, 20, 24, 32)  # FFT sizes with small prime factors
# seconds per unit, fitted on the 2-core CPU (2026-12-01, experiments/bench/fft_wgrad.py): a complex
# multiply-add in the per-frequency matmuls, a tile element per channel through padding, tiling, FFT and
# transposes, an entry of the per-frequency gradient spectra [T (T/2+1), Co, Ci] (written, transposed, read: what
# dominates when there are few tiles), and a multiply-add of the direct kernel
_COST_CMAC = 1.33e-10
_COST_TILE_ELEM = 1.4e-8
_COST_SPECTRUM_ELEM = 8e-9
_COST_DIRECT_MAC = 3.7e-11

policy = "auto"  # "fft" / "direct" force one kernel (tests, benchmarks); "auto" follows plan_tile


def _cost(n_tiles: int, t: int, ci: int, co: int, k: int) -> float:
    fr = t * (t // 2 + 1)
    return (_COST_CMAC * n_tiles * fr * ci * co + _COST_TILE_ELEM * n_tiles * t * t * (ci + co)
            + _COST_SPECTRUM_ELEM * fr * ci * co + _COST_DIRECT_MAC * 2 * k * k * fr * ci * co)


def plan_tile(batch: int, ci: int, co: int, hw: tuple[int, int], k: int) -> int | None:
    """The FFT size T for the weight gradient of a ``k x k`` kernel whose gradient map is ``hw`` (batch, in and
    out channels as given), or None when the direct kernel is estimated cheaper. Shapes only."""
    h, w = hw
    best, best_t = _COST_DIRECT_MAC * batch * h * w * ci * co * k * k, None
    for t in TILES:
        m = t - k + 1
        if m < 2:
            continue
        n = batch * math.ceil(h / m) * math.ceil(w / m)
        c = _cost(n, t, ci, co, k)
        if c < best:
            best, best_t = c, t
    return best_t


@lru_cache(maxsize=16)
def _inverse_dft(t: int, k: int, device: str) -> torch.Tensor:
    """Real [k*k, 2 * T * (T/2+1)] matrix E with ``E @ [Re F; Im F] = irfft2(F, s=(T, T))[:k, :k]`` (flattened)
    for a half spectrum F [T, T/2+1]: the Hermitian-symmetric columns 1..T/2-1 count twice."""
    tp = t // 2 + 1
    fy = torch.arange(t, dtype=torch.float64)[:, None]
    fx = torch.arange(tp, dtype=torch.float64)[None]
    twice = torch.full((tp,), 2.0, dtype=torch.float64)
    twice[0] = 1.0
    if t % 2 == 0:
        twice[-1] = 1.0
    a = twice / (t * t)
    rows = []
    for u in range(k):
        for v in range(k):
            phase = 2 * math.pi * (u * fy + v * fx) / t
            rows.append(torch.stack([a * torch.cos(phase), -a * torch.sin(phase)]).reshape(-1))
    return torch.stack(rows).to(device=device, dtype=torch.float32)


def fft_weight_grad(x: torch.Tensor, gy: torch.Tensor, k: int, tile: int) -> torch.Tensor:
    """dW [Co, Ci, k, k] of the valid, stride-1, undilated conv ``y = conv2d(x, W)``.

    x [B, Ci, H + k - 1, W + k - 1] (the already padded input), gy [B, Co, H, W] fp32; ``tile`` = T > k - 1
    (:func:`plan_tile`). Memory: the two tiled spectra, ~(T / m)^2 x (x + gy) complex.
    """
    b, ci, hp, wp = x.shape
    co, h, w = gy.shape[1:]
    if hp != h + k - 1 or wp != w + k - 1 or gy.shape[0] != b:
        raise ValueError(f"fft_weight_grad: x {tuple(x.shape)} and gy {tuple(gy.shape)} are not a valid "
                         f"{k}x{k} convolution's input and output gradient")
    t = tile
    m = t - k + 1
    nh, nw = -(-h // m), -(-w // m)
    # zero rows/cols past the map: their gradient cells are 0, so they add nothing
    g = F.pad(gy, (0, nw * m - w, 0, nh * m - h))
    xx = F.pad(x, (0, nw * m + k - 1 - wp, 0, nh * m + k - 1 - hp))
    xf = torch.fft.rfft2(xx.unfold(2, t, m).unfold(3, t, m))  # [B, Ci, nh, nw, T, T/2+1]
    gf = torch.fft.rfft2(g.unfold(2, m, m).unfold(3, m, m), s=(t, t))  # [B, Co, nh, nw, T, T/2+1]
    fr, n = t * (t // 2 + 1), b * nh * nw
    xf = xf.permute(4, 5, 0, 2, 3, 1).reshape(fr, n, ci)
    gf = gf.permute(4, 5, 1, 0, 2, 3).reshape(fr, co, n)
    wf = torch.matmul(gf.conj(), xf)  # [fr, Co, Ci]
    parts = torch.view_as_real(wf).reshape(fr, co * ci, 2).permute(2, 0, 1).reshape(2 * fr, co * ci)
    dw = _inverse_dft(t, k, str(x.device)) @ parts  # [k*k, Co*Ci]
    return dw.reshape(k, k, co, ci).permute(2, 3, 0, 1).contiguous()


def conv_weight_grad(x: torch.Tensor, gy: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The weight gradient of the valid, stride-1, undilated ``conv2d(x, weight)`` for the output gradient
    ``gy``: tiled FFTs where :func:`plan_tile` (or :data:`policy`) says so, else oneDNN's direct kernel."""
    k = weight.shape[-1]
    tile = None
    if policy != "direct" and weight.shape[-2] == k and x.dtype == torch.float32:
        tile = plan_tile(gy.shape[0], x.shape[1], gy.shape[1], tuple(gy.shape[-2:]), k)
        if tile is None and policy == "fft":
            tile = 16
    if tile is not None:
        return fft_weight_grad(x, gy, k, tile)
    return direct_weight_grad(x, gy, weight)


def direct_weight_grad(x: torch.Tensor, gy: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The same weight gradient by oneDNN's direct kernel (``aten.convolution_backward``, weight only)."""
    return torch.ops.aten.convolution_backward(gy, x, weight, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                                               [False, True, False])[1]
