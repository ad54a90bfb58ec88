"""DINOv2 ViT (Oquab et al. 2023) with the official state-dict layout, a stride override and facet taps.

Keys match the facebookresearch/dinov2 hub checkpoints (``dinov2_vitl14_pretrain.pth`` ...):
``cls_token`` [1,1,C], ``pos_embed`` [1, 1+37*37, C], ``register_tokens`` [1,4,C] (``_reg``), ``mask_token``
[1,C], ``patch_embed.proj``, ``blocks.<i>.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1/fc2 (or
mlp.w12/w3 for ViT-g's fused SwiGLU), ls2.gamma}``, ``norm``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dinotracker.backbones.vit import Block, FusedSwiGLU, Mlp, VisionTransformer

ARCHS = {
    "vits14": dict(embed_dim=384, depth=12, num_heads=6, ffn="mlp"),
    "vitb14": dict(embed_dim=768, depth=12, num_heads=12, ffn="mlp"),
    "vitl14": dict(embed_dim=1024, depth=24, num_heads=16, ffn="mlp"),
    "vitg14": dict(embed_dim=1536, depth=40, num_heads=24, ffn="swiglufused"),
}


class DinoV2(VisionTransformer):
    """DINOv2 ViT; learned absolute position embeddings on an ``img_size/patch`` square grid, resized
    bicubically to the actual patch grid (stride-aware, as the DINO-Tracker reference).

    ``interpolate_offset``/``interpolate_antialias`` follow the hub builders: 0.1 / False without registers
    (``scale_factor = (n + 0.1) / M``, the DINO v1 kludge, which the reference also uses), 0 / True with them.
    """

    def __init__(
        self,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        ffn: str = "mlp",
        mlp_ratio: float = 4.0,
        patch_size: int = 14,
        num_register_tokens: int = 0,
        img_size: int = 518,
        interpolate_offset: float | None = None,
        interpolate_antialias: bool | None = None,
        ls_init: float = 1.0,
        eps: float = 1e-6,
    ):
        super().__init__()
        self._init_common(embed_dim, depth, patch_size, 1 + num_register_tokens)
        self.num_register_tokens = int(num_register_tokens)
        reg = self.num_register_tokens > 0
        self.interpolate_offset = (
            (0.0 if reg else 0.1) if interpolate_offset is None else float(interpolate_offset)
        )
        self.interpolate_antialias = reg if interpolate_antialias is None else bool(interpolate_antialias)
        n = img_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + n * n, embed_dim))
        if reg:
            self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        if ffn not in ("mlp", "swiglufused"):
            raise ValueError(f"ffn must be mlp or swiglufused, got {ffn!r}")
        hidden = int(embed_dim * mlp_ratio)
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                (Mlp if ffn == "mlp" else FusedSwiGLU)(embed_dim, hidden),
                eps=eps,
                ls_init=ls_init,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=eps)

    def interpolate_pos_encoding(self, gh: int, gw: int) -> torch.Tensor:
        """Position embeddings ``[1, 1 + gh*gw, C]`` on a ``gh x gw`` grid; identity on the native grid."""
        pos = self.pos_embed
        m = int(round((pos.shape[1] - 1) ** 0.5))
        if m * m != pos.shape[1] - 1:
            raise ValueError(f"pos_embed has {pos.shape[1] - 1} patch entries, not a square grid")
        if (gh, gw) == (m, m):
            return pos
        grid = pos[:, 1:].float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
        if self.interpolate_offset:
            kw = dict(scale_factor=((gh + self.interpolate_offset) / m, (gw + self.interpolate_offset) / m))
        else:
            kw = dict(size=(gh, gw))
        grid = F.interpolate(
            grid, mode="bicubic", antialias=self.interpolate_antialias, align_corners=False, **kw
        )
        if tuple(grid.shape[-2:]) != (gh, gw):
            raise RuntimeError(f"position grid resized to {tuple(grid.shape[-2:])}, expected {(gh, gw)}")
        grid = grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1).to(pos.dtype)
        return torch.cat([pos[:, :1], grid], 1)

    def prepare(self, images: torch.Tensor):
        x, (gh, gw) = self.embed_patches(images)
        b = x.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1).to(x.dtype), x], 1)
        x = x + self.interpolate_pos_encoding(gh, gw).to(x.dtype)
        if self.num_register_tokens:  # registers go after CLS, without position embedding
            x = torch.cat([x[:, :1], self.register_tokens.expand(b, -1, -1).to(x.dtype), x[:, 1:]], 1)
        return x, (gh, gw), None
