"""DINOv3 ViT (Siméoni et al. 2025) with the official state-dict layout, a stride override and facet taps.

Keys match the facebookresearch/dinov3 hub checkpoints (``dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth`` ...):
``cls_token`` [1,1,C], ``storage_tokens`` [1,4,C], ``mask_token`` [1,C], ``patch_embed.proj``,
``rope_embed.periods`` [C/heads/4], ``blocks.<i>.{norm1, attn.qkv (+ bias_mask), attn.proj, ls1.gamma, norm2,
mlp.fc1/fc2 (or mlp.w1/w2/w3 for SwiGLU), ls2.gamma}``, ``norm`` (+ ``cls_norm`` / ``local_cls_norm`` for
checkpoints trained with untied norms: ViT-7B, the SAT-493M ViT-L). No learned position embedding: axial
RoPE on the patch tokens, base 100, coordinates normalised separately per axis to [-1, 1].
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dinotracker.backbones.vit import Block, Mlp, SwiGLU, VisionTransformer

ARCHS = {
    "vits16": dict(embed_dim=384, depth=12, num_heads=6, ffn="mlp", ffn_ratio=4.0),
    "vits16plus": dict(embed_dim=384, depth=12, num_heads=6, ffn="swiglu", ffn_ratio=6.0),
    "vitb16": dict(embed_dim=768, depth=12, num_heads=12, ffn="mlp", ffn_ratio=4.0),
    "vitl16": dict(embed_dim=1024, depth=24, num_heads=16, ffn="mlp", ffn_ratio=4.0),
    "vitl16plus": dict(embed_dim=1024, depth=24, num_heads=16, ffn="swiglu", ffn_ratio=6.0),
    "vith16plus": dict(embed_dim=1280, depth=32, num_heads=20, ffn="swiglu", ffn_ratio=6.0),
    "vit7b16": dict(
        embed_dim=4096,
        depth=40,
        num_heads=32,
        ffn="swiglu",
        ffn_ratio=3.0,
        swiglu_align=64,
        qkv_bias=False,
        untie_global_and_local_cls_norm=True,
    ),
}


class RopeEmbedding(nn.Module):
    """Axial rotary position embedding without learnable weights (buffer ``periods`` [head_dim/4]).

    ``periods[i] = base ** (4 i / head_dim)``. A patch at normalised position (y, x) in [-1, 1]^2 gets
    angles ``2 pi y / periods`` (first quarter) and ``2 pi x / periods`` (second quarter), tiled twice to
    head_dim, used with the half-split rotation.
    """

    def __init__(self, head_dim: int, base: float = 100.0):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"RoPE needs head_dim divisible by 4, got {head_dim}")
        self.base = float(base)
        # persistent: the official checkpoints store it
        self.register_buffer("periods", self.default_periods(head_dim, base))

    @staticmethod
    def default_periods(head_dim: int, base: float) -> torch.Tensor:
        return base ** (2 * torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 2))

    def forward(self, gh: int, gw: int, patch: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
        """sin, cos ``[gh*gw, head_dim]`` (fp32) for a row-major patch grid.

        Coordinates are patch centres ``stride*k + patch/2`` over the covered extent ``patch + stride*(n-1)``,
        mapped to [-1, 1]. At the native stride this is the official ``(k + 0.5) / n``; with a reduced stride
        (overlapping patches) it keeps every token at its true image position instead of spreading the denser
        grid over the same normalised range as the official code would.
        """
        dev = self.periods.device

        def axis(n):
            c = (stride * torch.arange(n, device=dev, dtype=torch.float32) + patch / 2) / (
                patch + stride * (n - 1)
            )
            return 2.0 * c - 1.0

        yy, xx = torch.meshgrid(axis(gh), axis(gw), indexing="ij")
        coords = torch.stack([yy, xx], -1).reshape(-1, 2)
        angles = 2 * math.pi * coords[:, :, None] / self.periods.float()[None, None, :]  # [hw, 2, D/4]
        angles = angles.flatten(1, 2).tile(2)
        return torch.sin(angles), torch.cos(angles)


class DinoV3(VisionTransformer):
    """DINOv3 ViT: patch 16, CLS + ``n_storage_tokens`` register tokens, RoPE, layerscale, LayerNorm eps 1e-5,
    no key bias (``mask_k_bias``). Any stride works with RoPE (no interpolation needed)."""

    def __init__(
        self,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        ffn: str = "mlp",
        ffn_ratio: float = 4.0,
        swiglu_align: int = 8,
        patch_size: int = 16,
        n_storage_tokens: int = 4,
        rope_base: float = 100.0,
        qkv_bias: bool = True,
        mask_k_bias: bool = True,
        ls_init: float = 1e-5,
        untie_cls_and_patch_norms: bool = False,
        untie_global_and_local_cls_norm: bool = False,
        eps: float = 1e-5,
        swiglu_hidden: int | None = None,
        img_size: int | None = None,
    ):
        super().__init__()
        del img_size  # nominal only with RoPE; accepted for symmetry with DINOv2
        self._init_common(embed_dim, depth, patch_size, 1 + n_storage_tokens)
        self.n_storage_tokens = int(n_storage_tokens)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if self.n_storage_tokens:
            self.storage_tokens = nn.Parameter(torch.zeros(1, n_storage_tokens, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.rope_embed = RopeEmbedding(embed_dim // num_heads, rope_base)
        if ffn not in ("mlp", "swiglu"):
            raise ValueError(f"ffn must be mlp or swiglu, got {ffn!r}")
        hidden = int(embed_dim * ffn_ratio)

        def make_ffn():
            if ffn == "mlp":
                return Mlp(embed_dim, hidden)
            # swiglu_hidden: an exact inner width (Hugging Face configs give it as intermediate_size)
            return SwiGLU(embed_dim, hidden, swiglu_align, exact=swiglu_hidden)

        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                make_ffn(),
                eps=eps,
                ls_init=ls_init,
                qkv_bias=qkv_bias,
                mask_k_bias=mask_k_bias,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=eps)
        # extra norms of some checkpoints: for CLS/registers only, so they never touch patch features
        if untie_cls_and_patch_norms:
            self.cls_norm = nn.LayerNorm(embed_dim, eps=eps)
        if untie_global_and_local_cls_norm:
            self.local_cls_norm = nn.LayerNorm(embed_dim, eps=eps)

    def prepare(self, images: torch.Tensor):
        x, (gh, gw) = self.embed_patches(images)
        b = x.shape[0]
        prefix = [self.cls_token.expand(b, -1, -1)]
        if self.n_storage_tokens:
            prefix.append(self.storage_tokens.expand(b, -1, -1))
        x = torch.cat([p.to(x.dtype) for p in prefix] + [x], 1)
        return x, (gh, gw), self.block_context(gh, gw)  # the same for every block: computed once

    def block_context(self, gh: int, gw: int):
        """RoPE (sin, cos) of the patch grid, shared by every block."""
        return self.rope_embed(gh, gw, self.patch_size, self.stride)
