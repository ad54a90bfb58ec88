"""Shared ViT pieces and the :class:`Backbone` interface (feature taps on the patch grid).

Every backbone maps images ``[B,3,H,W]`` in ``[0,1]`` to per-block features ``[B,C,h,w]`` with
``h = 1 + (H - patch) // stride`` and ``w = 1 + (W - patch) // stride`` (patch ``k`` covers pixels
``[stride*k, stride*k + patch)``, see :mod:`dinotracker.geometry`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FACETS = ("tokens", "queries", "keys", "values")


class LayerScale(nn.Module):
    """Per-channel residual-branch scale (key ``gamma``)."""

    def __init__(self, dim: int, init: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """fc1 -> GELU (exact erf) -> fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class FusedSwiGLU(nn.Module):
    """DINOv2's SwiGLU with one fused input projection ``w12`` = [gate; up]; ``w3`` = down.

    Hidden width ``(int(hidden * 2/3) + 7) // 8 * 8`` (4096 for ViT-g/14's nominal 6144).
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        self.w12, self.w3 = nn.Linear(dim, 2 * hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * up)


class SwiGLU(nn.Module):
    """DINOv3's SwiGLU with separate ``w1`` (gate), ``w2`` (up), ``w3`` (down).

    Hidden width ``int(hidden * 2/3)`` rounded up to a multiple of ``align``.
    """

    def __init__(self, dim: int, hidden: int, align: int = 8, exact: int | None = None):
        super().__init__()
        d = int(hidden * 2 / 3)
        d = exact if exact else d + (-d % align)
        self.w1, self.w2, self.w3 = nn.Linear(dim, d), nn.Linear(dim, d), nn.Linear(d, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class MaskedBiasLinear(nn.Linear):
    """qkv projection whose bias is multiplied by a stored 0/1 ``bias_mask`` (DINOv3: no key bias).

    ``bias_mask`` is a persistent buffer because the official checkpoints contain it.
    """

    def __init__(self, dim: int, out: int, bias: bool = True):
        super().__init__(dim, out, bias=bias)
        if bias:
            mask = torch.ones(out)
            mask[out // 3 : 2 * out // 3] = 0.0
            self.register_buffer("bias_mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias * self.bias_mask.to(self.bias.dtype) if self.bias is not None else None
        return F.linear(x, self.weight, bias)


def rope_rotate(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotary embedding with the half-split layout: ``x*cos + [-x2, x1]*sin``."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    """Multi-head self-attention (``qkv``, ``proj``) with optional RoPE on the trailing patch tokens."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, mask_k_bias: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = (
            MaskedBiasLinear(dim, 3 * dim, qkv_bias) if mask_k_bias else nn.Linear(dim, 3 * dim, qkv_bias)
        )
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope=None, return_qkv: bool = False):
        b, n, c = x.shape
        qkv = self.qkv(x)
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        if rope is not None:  # rotate patch tokens only; prefix tokens (CLS, registers) carry no position
            sin, cos = rope
            p = n - sin.shape[0]
            q = torch.cat([q[:, :, :p], rope_rotate(q[:, :, p:].float(), sin, cos).to(q.dtype)], 2)
            k = torch.cat([k[:, :, :p], rope_rotate(k[:, :, p:].float(), sin, cos).to(k.dtype)], 2)
        out = self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))
        # facets are the qkv projection (heads concatenated, before RoPE), as a hook on attn.qkv sees them
        return (out, qkv.reshape(b, n, 3, c).unbind(2)) if return_qkv else out


class Block(nn.Module):
    """Pre-norm transformer block with layerscale: ``x + ls1(attn(norm1 x))``, ``+ ls2(mlp(norm2 x))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn: nn.Module,
        eps: float,
        ls_init: float = 1e-5,
        qkv_bias: bool = True,
        mask_k_bias: bool = False,
    ):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias, mask_k_bias)
        self.ls1, self.ls2 = LayerScale(dim, ls_init), LayerScale(dim, ls_init)
        self.mlp = ffn

    def forward(self, x: torch.Tensor, rope=None, return_qkv: bool = False):
        if return_qkv:
            a, qkv = self.attn(self.norm1(x), rope, return_qkv=True)
        else:
            a, qkv = self.attn(self.norm1(x), rope), None
        x = x + self.ls1(a)
        x = x + self.ls2(self.mlp(self.norm2(x)))
        return (x, qkv) if return_qkv else x


def resolve_layers(layers, num_blocks: int) -> dict[int, list[int]]:
    """Requested layer indices (negative = from the end) -> {block index: [requested indices]}."""
    if isinstance(layers, int):
        raise ValueError("layers must be a list of block indices, e.g. [15]")
    want: dict[int, list[int]] = {}
    for layer in layers:
        idx = int(layer) + num_blocks if int(layer) < 0 else int(layer)
        if not 0 <= idx < num_blocks:
            raise ValueError(
                f"layer {layer} is out of range for a backbone with {num_blocks} blocks "
                f"(use 0..{num_blocks - 1} or -1..-{num_blocks})"
            )
        want.setdefault(idx, []).append(int(layer))
    if not want:
        raise ValueError("no layers requested")
    return want


class Backbone(nn.Module):
    """A frozen feature extractor with ViT patch geometry.

    Attributes: ``patch_size``, ``stride``, ``embed_dim``, ``num_blocks``, ``num_prefix_tokens``.
    :meth:`extract` returns ``{layer: [B, C, h, w]}``.
    """

    patch_size: int
    stride: int
    embed_dim: int
    num_blocks: int
    num_prefix_tokens: int

    def set_stride(self, stride: int) -> None:
        """Patch stride (``stride < patch_size`` gives overlapping patches, e.g. 14 -> 7 in the paper)."""
        stride = int(stride)
        if not 1 <= stride <= self.patch_size:
            raise ValueError(f"stride must be in 1..{self.patch_size} (the patch size), got {stride}")
        self.stride = stride

    def grid_size(self, hw: tuple[int, int]) -> tuple[int, int]:
        """Patch grid ``(1 + (H - p)//s, 1 + (W - p)//s)`` for an image of ``hw``."""
        h, w = int(hw[0]), int(hw[1])
        return 1 + (h - self.patch_size) // self.stride, 1 + (w - self.patch_size) // self.stride

    def check_images(self, images: torch.Tensor) -> None:
        """Shape checks: float ``[B,3,H,W]`` with H, W multiples of the patch size."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be a [B,3,H,W] tensor, got {tuple(getattr(images, 'shape', ()))}")
        if not images.is_floating_point():
            raise ValueError(
                f"images must be float in [0,1], got {images.dtype} (divide uint8 frames by 255)"
            )
        h, w = images.shape[-2:]
        p, s = self.patch_size, self.stride
        if h % p or w % p:
            raise ValueError(
                f"image size {h}x{w} must be a multiple of the patch size {p}: resize to "
                f"{max(p, round(h / p) * p)}x{max(p, round(w / p) * p)}"
            )
        if (h - p) % s or (w - p) % s:
            raise ValueError(f"image size {h}x{w}: (size - patch {p}) must be a multiple of the stride {s}")

    def extract(self, images: torch.Tensor, layers, facet: str = "tokens") -> dict[int, torch.Tensor]:
        raise NotImplementedError


class VisionTransformer(Backbone):
    """Common forward of the DINOv2/DINOv3 ViTs; subclasses build the input tokens (:meth:`prepare`)."""

    def _init_common(self, embed_dim: int, depth: int, patch_size: int, prefix: int):
        self.embed_dim, self.num_blocks, self.patch_size = int(embed_dim), int(depth), int(patch_size)
        self.stride = self.patch_size
        self.num_prefix_tokens = int(prefix)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, embed_dim, patch_size, patch_size)
        self.register_buffer("img_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("img_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def set_stride(self, stride: int) -> None:
        super().set_stride(stride)
        self.patch_embed.proj.stride = (self.stride, self.stride)

    def prepare(self, images: torch.Tensor):
        """[B,3,H,W] in [0,1] -> tokens [B, prefix + h*w, C], grid (h, w), per-block context (RoPE)."""
        raise NotImplementedError

    def embed_patches(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """ImageNet-normalise, patch-embed: -> [B, h*w, C] (row-major) and (h, w)."""
        self.check_images(images)
        w = self.patch_embed.proj.weight
        x = (images.to(w.dtype) - self.img_mean.to(w.dtype)) / self.img_std.to(w.dtype)
        x = self.patch_embed.proj(x)
        return x.flatten(2).transpose(1, 2), (x.shape[-2], x.shape[-1])

    def forward_blocks(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Every block's full token sequence (a plain forward, without the final norm)."""
        x, _, ctx = self.prepare(images)
        outs = []
        for blk in self.blocks:
            x = blk(x, ctx)
            outs.append(x)
        return outs

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Final-normed token sequence ``[B, prefix + h*w, C]``."""
        return self.norm(self.forward_blocks(images)[-1])

    def extract(self, images: torch.Tensor, layers, facet: str = "tokens") -> dict[int, torch.Tensor]:
        """Block outputs (``tokens``, before the final norm as in the reference) or the ``queries``/``keys``/
        ``values`` projections (heads concatenated, C = embed_dim) of the requested blocks.

        Returns ``{layer: [B, C, h, w]}`` keyed by the indices as given (negative = from the end), prefix
        tokens dropped. Only blocks ``0..max(layers)`` run, and nothing else is kept.
        """
        x, grid, _ = self.prepare(images)
        return self.extract_from(x, grid, 0, layers, facet)

    def block_context(self, gh: int, gw: int):
        """Per-block context of a (gh, gw) patch grid (DINOv3: RoPE sin/cos; DINOv2: None)."""
        return None

    def tokens_before(self, images: torch.Tensor, block: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """The token sequence ``[B, prefix + h*w, C]`` entering block ``block`` (blocks ``0..block-1`` run),
        and the grid (h, w). With :meth:`extract_from` this splits :meth:`extract` at ``block``."""
        x, grid, ctx = self.prepare(images)
        for blk in self.blocks[:block]:
            x = blk(x, ctx)
        return x, grid

    def extract_from(self, x: torch.Tensor, grid: tuple[int, int], start: int, layers,
                     facet: str = "tokens") -> dict[int, torch.Tensor]:
        """:meth:`extract` continued from the tokens ``x`` entering block ``start`` (:meth:`tokens_before`);
        every requested layer must be >= ``start``."""
        if facet not in FACETS:
            raise ValueError(f"facet must be one of {FACETS}, got {facet!r}")
        want = resolve_layers(layers, self.num_blocks)
        if min(want) < start:
            raise ValueError(f"layers {sorted(want)} start before block {start}")
        gh, gw = grid
        ctx = self.block_context(gh, gw)
        out = {}
        for i in range(start, max(want) + 1):
            blk = self.blocks[i]
            if i in want and facet != "tokens":
                x, qkv = blk(x, ctx, return_qkv=True)
                feat = qkv[FACETS.index(facet) - 1]
            else:
                x = blk(x, ctx)
                feat = x
            if i in want:
                f = feat[:, self.num_prefix_tokens :]
                f = f.transpose(1, 2).reshape(f.shape[0], f.shape[2], gh, gw)
                out.update({layer: f for layer in want[i]})
        return out


def random_init(model: nn.Module, ls_init: float, token_std: float = 0.02) -> None:
    """Random init for tests: trunc-normal(0.02) linear/conv weights, zero biases, unit LayerNorms,
    layerscale ``ls_init``, N(0, ``token_std``) prefix tokens and position embeddings, zero mask token."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            m.reset_parameters()
        elif isinstance(m, LayerScale):
            nn.init.constant_(m.gamma, ls_init)
    for name, p in model.named_parameters(recurse=False):
        nn.init.zeros_(p) if name == "mask_token" else nn.init.normal_(p, std=token_std)


def num_params(module: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in module.parameters())
