"""DINOv2 ViT (Oquab et al. 2023) with the official state-dict layout, a stride override and facet taps.

Keys match facebookresearch/dinov2 hub checkpoints (``dinov2_vitl14_pretrain.pth`` ...):
``cls_token``, ``pos_embed`` [1, 1+37*37, C], ``register_tokens`` (``_reg``), ``mask_token``,
``patch_embed.proj``, ``blocks.<i>.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1/fc2
(or mlp.w12/w3 for SwiGLU), ls2.gamma}``, ``norm``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ARCHS = {
    "vits14": dict(embed_dim=384, depth=12, num_heads=6, ffn="mlp"),
    "vitb14": dict(embed_dim=768, depth=12, num_heads=12, ffn="mlp"),
    "vitl14": dict(embed_dim=1024, depth=24, num_heads=16, ffn="mlp"),
    "vitg14": dict(embed_dim=1536, depth=40, num_heads=24, ffn="swiglu"),
}
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x):
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    """DINOv2's SwiGLUFFNFused: hidden = (int(4d * 2/3) + 7) // 8 * 8."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        self.w12, self.w3 = nn.Linear(dim, 2 * hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x, return_qkv: bool = False):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        out = self.proj(out)
        if return_qkv:  # heads concatenated back to [B, N, C]
            return out, tuple(t.transpose(1, 2).reshape(b, n, c) for t in (q, k, v))
        return out


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, ffn: str):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1, self.ls2 = LayerScale(dim), LayerScale(dim)
        self.mlp = (SwiGLU if ffn == "swiglu" else Mlp)(dim, 4 * dim)

    def forward(self, x, return_qkv: bool = False):
        if return_qkv:
            a, qkv = self.attn(self.norm1(x), return_qkv=True)
        else:
            a, qkv = self.attn(self.norm1(x)), None
        x = x + self.ls1(a)
        x = x + self.ls2(self.mlp(self.norm2(x)))
        return (x, qkv) if return_qkv else x


class DinoV2(nn.Module):
    """A DINOv2 ViT whose :meth:`extract` returns block outputs or q/k/v facets on the patch grid."""

    def __init__(self, embed_dim=384, depth=12, num_heads=6, ffn="mlp", patch_size=14, num_register_tokens=0,
                 img_size=518):
        super().__init__()
        self.embed_dim, self.num_blocks, self.patch_size = embed_dim, depth, patch_size
        self.stride = patch_size
        self.num_register_tokens = num_register_tokens
        self.num_prefix_tokens = 1 + num_register_tokens
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, embed_dim, patch_size, patch_size)
        n = img_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + n * n, embed_dim) * 0.02)
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim)) if num_register_tokens else None
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, ffn) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def set_stride(self, stride: int) -> None:
        """Patch-embedding stride (14 -> 7 in the paper); position embeddings are interpolated to the grid."""
        self.stride = int(stride)
        self.patch_embed.proj.stride = (self.stride, self.stride)

    def grid_size(self, hw) -> tuple[int, int]:
        h, w = hw
        return 1 + (h - self.patch_size) // self.stride, 1 + (w - self.patch_size) // self.stride

    def interpolate_pos_encoding(self, gh: int, gw: int) -> torch.Tensor:
        """Bicubic resize of the pretrained square grid to (gh, gw) (identity at the native size)."""
        pos = self.pos_embed
        n = pos.shape[1] - 1
        side = int(math.sqrt(n))
        if (gh, gw) == (side, side):
            return pos
        patch = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patch = F.interpolate(patch.float(), size=(gh, gw), mode="bicubic", align_corners=False)
        return torch.cat([pos[:, :1], patch.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, gh * gw, -1)], 1)

    def tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """[B,3,H,W] in [0,1] -> input tokens [B, prefix + h*w, C] and the grid (h, w)."""
        h, w = images.shape[-2:]
        if h < self.patch_size or w < self.patch_size:
            raise ValueError(f"images {h}x{w} are smaller than one {self.patch_size}px patch")
        if self.stride == self.patch_size and (h % self.patch_size or w % self.patch_size):
            raise ValueError(f"image size {h}x{w} must be a multiple of the patch size {self.patch_size}")
        x = (images - self.mean) / self.std
        x = self.patch_embed.proj(x)
        gh, gw = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.interpolate_pos_encoding(gh, gw)
        if self.register_tokens is not None:
            x = torch.cat([x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]], 1)
        return x, (gh, gw)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x, _ = self.tokens(images)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def extract(self, images: torch.Tensor, layers, facet: str = "tokens") -> dict[int, torch.Tensor]:
        """Block outputs (no final norm, as the reference) or q/k/v of the given blocks -> {layer: [B,C,h,w]}.

        Only the blocks up to the deepest requested one run. Negative indices count from the end.
        """
        if facet not in ("tokens", "queries", "keys", "values"):
            raise ValueError(f"facet must be tokens, queries, keys or values, got {facet!r}")
        want = {}
        for layer in layers:
            idx = layer + self.num_blocks if layer < 0 else layer
            if not 0 <= idx < self.num_blocks:
                raise ValueError(f"layer {layer} out of range for {self.num_blocks} blocks")
            want[idx] = layer
        x, (gh, gw) = self.tokens(images)
        out = {}
        for i, blk in enumerate(self.blocks[: max(want) + 1]):
            if facet == "tokens":
                x = blk(x)
                feat = x
            else:
                x, qkv = blk(x, return_qkv=True)
                feat = qkv[("queries", "keys", "values").index(facet)]
            if i in want:
                f = feat[:, self.num_prefix_tokens:]
                out[want[i]] = f.transpose(1, 2).reshape(f.shape[0], -1, gh, gw)
        return out
