"""Delta-DINO: a small residual CNN RGB -> feature-dim, aligned to the ViT patch grid (spec §3.1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dinotracker.geometry import patch_centers
from dinotracker.models.blurpool import BlurPool2d
from dinotracker.models.fft_conv import conv_weight_grad

ALIGN_MODES = ("center", "reference")

_NNPACK: bool | None = None


def nnpack_available() -> bool:
    """NNPACK built into torch (and initialised: ``is_available`` runs ``nnp_initialize``)."""
    global _NNPACK
    if _NNPACK is None:
        _NNPACK = bool(torch.backends.nnpack.is_available())
    return _NNPACK


class _NNPackConv2d(torch.autograd.Function):
    """Stride-1, undilated, unpadded conv2d through NNPACK (FFT / Winograd tiles), fp32 on CPU.

    Forward and the input gradient (the full correlation of the output gradient with the flipped, transposed
    kernel: again a forward convolution) run in NNPACK; the weight gradient, which NNPACK has no kernel for,
    by tiled FFTs (:func:`~dinotracker.models.fft_conv.conv_weight_grad`) where they are estimated cheaper
    than oneDNN's direct kernel. Not the same summation as a direct convolution: ~2e-6 relative difference
    forward, ~2e-5 of the scale for the weight gradient.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        b = bias if bias is not None else x.new_zeros(weight.shape[0])
        return torch._nnpack_spatial_convolution(x, weight, b, [0, 0])

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        gy = gy.contiguous()
        gx = gw = gb = None
        kh, kw = w.shape[-2:]
        if ctx.needs_input_grad[0]:
            wt = w.flip(2, 3).transpose(0, 1).contiguous()
            gx = torch._nnpack_spatial_convolution(F.pad(gy, (kw - 1, kw - 1, kh - 1, kh - 1)), wt,
                                                   x.new_zeros(w.shape[1]), [0, 0])
        if ctx.needs_input_grad[1]:
            gw = conv_weight_grad(x, gy, w)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gy.sum((0, 2, 3))
        return gx, gw, gb if ctx.has_bias else None


def _fast_conv_ok(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and conv.weight.dtype == torch.float32
            and conv.stride == (1, 1) and conv.dilation[0] == conv.dilation[1] and conv.groups == 1
            and x.is_contiguous() and not torch.is_autocast_enabled("cpu") and nnpack_available())


def _nnpack_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dilation: int) -> torch.Tensor:
    """Valid (unpadded) stride-1 conv2d of x [B, C, H, W] through NNPACK. A dilation d is split into its d x d
    polyphase sub-grids, each an undilated convolution with the same kernel (exact rearrangement: output
    cell ``d a + p`` reads only input cells ``d (a + u) + p``), batched into one NNPACK call."""
    if dilation == 1:
        return _NNPackConv2d.apply(x, weight, bias)
    d = dilation
    b, c, h, w = x.shape
    kh, kw = weight.shape[-2:]
    ho, wo = h - d * (kh - 1), w - d * (kw - 1)
    x = F.pad(x, (0, (-w) % d, 0, (-h) % d))  # zero rows/cols at the end only feed cropped outputs
    hs, ws = x.shape[-2] // d, x.shape[-1] // d
    xs = x.reshape(b, c, hs, d, ws, d).permute(3, 5, 0, 1, 2, 4).reshape(d * d * b, c, hs, ws)
    y = _NNPackConv2d.apply(xs.contiguous(), weight, bias)  # [d*d*B, O, hs-kh+1, ws-kw+1]
    o, ha, wa = y.shape[1:]
    y = y.reshape(d, d, b, o, ha, wa).permute(2, 3, 4, 0, 5, 1).reshape(b, o, ha * d, wa * d)
    return y[:, :, :ho, :wo]


def masked_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Train-mode ``bn(x)`` whose batch statistics (and running-statistics update) count only the frames
    ``valid`` (bool [B]); the other frames are normalised with them too and are meant to be ignored.

    The valid frames get what ``bn`` applied to them alone gives, up to float rounding (the statistics are
    combined from per-frame ``var_mean``: the mean of the valid frames' means and the mean of their variances
    plus squared mean offsets, the exact pooled biased variance; the fused kernel sums in another order).
    Fixed shapes and no host sync whatever ``valid`` holds; at least one frame must be valid. Costs a few
    more full-size temporaries than the fused kernel.
    """
    w = valid.to(x.dtype)[:, None]  # [B, 1]
    n = w.sum()
    var_f, mean_f = torch.var_mean(x, dim=(2, 3), correction=0)  # [B, C] per frame
    mean = (w * mean_f).sum(0) / n
    var = (w * (var_f + (mean_f - mean).square())).sum(0) / n  # pooled biased variance
    if bn.track_running_stats and bn.momentum != 0.0:  # the teacher's momentum 0 leaves them exactly as they are
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            # momentum None: the cumulative average (1 / batches seen), computed on the device
            m = bn.momentum if bn.momentum is not None else 1.0 / bn.num_batches_tracked.to(x.dtype)
            cnt = n * (x.shape[2] * x.shape[3])
            unbiased = var * (cnt / (cnt - 1).clamp(min=1))
            # through .data, like the fused kernel's own update: an earlier chunk's BatchNorm saved these buffers
            # for its backward, and a tracked in-place change would fail that backward's version check
            bn.running_mean.data.mul_(1 - m).add_(mean.detach() * m)
            bn.running_var.data.mul_(1 - m).add_(unbiased.detach() * m)
    scale = torch.rsqrt(var + bn.eps)
    if bn.affine:
        scale = scale * bn.weight
    y = (x - mean[None, :, None, None]) * scale[None, :, None, None]
    return y + bn.bias[None, :, None, None] if bn.affine else y


class DeltaDINO(nn.Module):
    """Residual feature CNN of DINO-Tracker (paper Eq. 1 and App. A.3; reference ``DeltaDINO``).

    Layers (``channels=(64, 128, 256)``, ``out_dim=1024``):
    ``Conv5x5(reflect) -> BN -> ReLU -> BlurPool(/2)`` three times, then
    ``Conv5x5(dilation 2, reflect pad 4) -> BN`` (no ReLU, no downsampling). The last conv's
    weight and bias are zero and the last BN has ``gamma = last_bn_gamma`` (0.05), ``beta = 0``,
    so the output is identically zero at initialisation (refined features = raw DINO features).
    7,586,816 trainable parameters at ``out_dim=1024``.

    ``forward(images [B, 3, H, W] float in [0, 1])`` -> ``[B, out_dim, ceil(H/8), ceil(W/8)]``
    (for three blur-pools). Images are fed un-normalised, as the reference does. The module
    layout (``layers.<i>``) matches the reference's so its ``state_dict`` keys line up.
    """

    def __init__(self, out_dim: int = 1024, channels: Sequence[int] = (64, 128, 256), kernel_size: int = 5,
                 last_bn_gamma: float = 0.05, in_channels: int = 3, last_dilation: int = 2,
                 zero_init: bool = True):
        super().__init__()
        if out_dim < 1 or any(c < 1 for c in channels) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"bad DeltaDINO config: out_dim={out_dim}, channels={channels}, "
                             f"kernel_size={kernel_size} (must be odd)")
        chans = [in_channels, *channels, out_dim]
        layers: list[nn.Module] = []
        self.pads: list[int] = []
        for i in range(len(chans) - 1):
            last = i == len(chans) - 2
            dil = last_dilation if last else 1
            pad = (kernel_size + (kernel_size - 1) * (dil - 1)) // 2  # "same"
            self.pads.append(pad)
            conv = nn.Conv2d(chans[i], chans[i + 1], kernel_size, stride=1, dilation=dil, padding=pad,
                             padding_mode="reflect")
            bn = nn.BatchNorm2d(chans[i + 1])
            if last:
                if zero_init:  # with no DINO prior (Phi = 0) a zero residual would get no gradient
                    nn.init.zeros_(conv.weight)
                    nn.init.zeros_(conv.bias)
                nn.init.constant_(bn.weight, last_bn_gamma if zero_init else 1.0)
                nn.init.zeros_(bn.bias)
                layers += [conv, bn]
            else:
                # in place: BatchNorm's backward needs its input, not its output, so the ReLU may overwrite it
                # (one full-resolution map less to allocate and write per layer)
                layers += [conv, bn, nn.ReLU(inplace=True), BlurPool2d(chans[i + 1], stride=2)]
        self.layers = nn.ModuleList(layers)
        # CPU fast path (``model.fast_conv``): the convs through NNPACK (:class:`_NNPackConv2d`, :func:`_nnpack_conv`)
        self.fast_conv = False
        self.out_dim = out_dim
        self.num_down = len(channels)
        self.cnn_stride = 2 ** self.num_down

    def output_size(self, hw: tuple[int, int]) -> tuple[int, int]:
        """Spatial size of the output for an input of ``hw``: ceil-halving per blur-pool."""
        h, w = hw
        for _ in range(self.num_down):
            h, w = (h + 1) // 2, (w + 1) // 2
        return h, w

    def forward(self, images: torch.Tensor, frame_valid: torch.Tensor | None = None) -> torch.Tensor:
        """``frame_valid`` bool [B] (padding frames False, e.g. ``data.static_frames``): the train-mode
        BatchNorm statistics count the valid frames only (:func:`masked_batch_norm`), so their outputs are
        those of a batch of the valid frames alone; None = every frame (the fused BatchNorm)."""
        if images.dim() != 4 or images.shape[1] != self.layers[0].in_channels:
            raise ValueError(f"expected images [B, {self.layers[0].in_channels}, H, W], got "
                             f"{tuple(images.shape)}")
        oh, ow = self.output_size(tuple(images.shape[-2:]))
        if min(oh, ow) <= self.pads[-1]:
            raise ValueError(f"image {tuple(images.shape[-2:])} too small: the last layer's reflect "
                             f"padding ({self.pads[-1]}) needs a feature map larger than that, got {oh}x{ow}")
        x = images
        for layer in self.layers:
            if self.fast_conv and isinstance(layer, nn.Conv2d) and _fast_conv_ok(layer, x):
                if layer.padding_mode != "zeros":
                    x = F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
                elif any(layer.padding):
                    ph, pw = layer.padding
                    x = F.pad(x, (pw, pw, ph, ph))
                x = _nnpack_conv(x, layer.weight, layer.bias, layer.dilation[0])
            elif frame_valid is not None and isinstance(layer, nn.BatchNorm2d) and layer.training:
                x = masked_batch_norm(layer, x, frame_valid)
            else:
                x = layer(x)
        return x


def cnn_index_of_raster(x: torch.Tensor, cnn_stride: int, mode: str = "center") -> torch.Tensor:
    """Raster coordinate -> fractional index into a CNN map of total stride ``cnn_stride``.

    ``"center"`` (default): the blur-pool chain keeps the raster convention exact (see
    :class:`~dinotracker.models.blurpool.BlurPool2d`), so CNN cell ``j`` covers raster
    ``[s j, s j + s)`` with centre ``s j + s/2`` and the index is ``(x - s/2) / s``
    (``(x - 4) / 8`` for s = 8). A patch centre therefore samples the CNN cell whose receptive
    field is centred on it.

    ``"reference"``: the reference implementation's ``align_cnn_vit_features`` maps its
    patch-centre value ``v = 7 + 7k`` to ``(v - 0.5) / 8``. Its ``v`` is numerically our raster
    patch centre (both are ``stride*k + patch/2``), so this is ``(x - 0.5) / s`` in our
    convention: 3.5 px (0.44 cell) to the right/bottom of the geometric centre. Use it only
    for parity with weights trained by the reference.
    """
    if mode == "center":
        return (x - cnn_stride / 2.0) / cnn_stride
    if mode == "reference":
        return (x - 0.5) / cnn_stride
    raise ValueError(f"align mode must be one of {ALIGN_MODES}, got {mode!r}")


def align_to_patch_grid(cnn_features: torch.Tensor, grid_hw: tuple[int, int], patch: int, stride: int,
                        cnn_stride: int = 8, mode: str = "center") -> torch.Tensor:
    """Bilinearly resample a stride-``cnn_stride`` CNN map onto the ViT patch-centre grid.

    cnn_features [B, C, h8, w8] -> [B, C, h, w] with ``(h, w) = grid_hw``; patch centre ``k`` is
    at raster ``stride*k + patch/2`` and is mapped to a CNN index by :func:`cnn_index_of_raster`
    (``mode`` "center" or "reference"). Border padding outside the CNN map, as the reference.
    The sampling grid carries no gradient; gradients flow to ``cnn_features``.
    """
    if cnn_features.dim() != 4:
        raise ValueError(f"cnn_features must be [B, C, h, w], got {tuple(cnn_features.shape)}")
    h8, w8 = cnn_features.shape[-2:]
    h, w = grid_hw
    dev = cnn_features.device
    jx = cnn_index_of_raster(patch_centers(w, patch, stride, device=dev), cnn_stride, mode)
    jy = cnn_index_of_raster(patch_centers(h, patch, stride, device=dev), cnn_stride, mode)
    # align_corners=True: index j -> 2 j / (n - 1) - 1 (a size-1 axis samples its only cell).
    ux = jx * (2.0 / max(w8 - 1, 1)) - 1.0
    uy = jy * (2.0 / max(h8 - 1, 1)) - 1.0
    gy, gx = torch.meshgrid(uy, ux, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1)[None].expand(cnn_features.shape[0], h, w, 2)
    if cnn_features.dtype in (torch.float16, torch.bfloat16) and dev.type == "cpu":
        cnn_features = cnn_features.float()  # CPU grid_sample has no half kernels
    return F.grid_sample(cnn_features, grid.to(cnn_features.dtype), mode="bilinear", padding_mode="border",
                         align_corners=True)
