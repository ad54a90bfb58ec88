"""LoRA-tuned DINO features: the paper's "LoRA tune" ablation (Tab. 2, App. A.5).

Instead of learning a residual Delta-DINO on frozen features, the backbone itself is fine-tuned with
low-rank adapters (Hu et al. 2022; the PEFT implementation, as the paper) on the q/k/v projection
(``blocks.<i>.attn.qkv``) of the feature layer and the one before it: layers {15, 16} of DINOv2
ViT-L (1-based), i.e. 0-based blocks 14 and 15, rank 8, ``lora_alpha`` 0.5 (scale alpha/r = 1/16),
dropout 0.1 on the adapter input. PEFT initialises B = 0, so the features equal the frozen
backbone's at step 0, as Delta-DINO's zero-initialised residual does.

The backbone is frozen and not a registered submodule: its weights stay out of state dicts,
checkpoints and ``tracker.pt`` (only the adapters, ~50k parameters for ViT-L, are saved) and a
``copy.deepcopy`` (the EMA teacher) shares its frozen tensors instead of copying 300M parameters.
The adapter modules are registered here, so ``.to()``, ``.train()``/``.eval()``, optimizers and
state dicts see them. The frozen blocks before the first adapted block (embedding + blocks 0..13 for
ViT-L) do not change during training: :meth:`LoRAFeatures.prefix` computes the tokens entering the
first adapted block once per frame and :meth:`LoRAFeatures.from_prefix` runs only the adapted blocks
(2 of the 16 for the paper's setting); the training module caches them (``model.lora.cache_prefix``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

LORA_FEATURE_KEYS = ("layer", "facet", "blocks", "rank", "alpha", "dropout", "targets")
ADAPTER = "default"


def resolve_lora_blocks(blocks, layer: int, num_blocks: int) -> list[int]:
    """Adapted block indices: ``None`` -> ``[layer - 1, layer]`` (the paper: the feature layer and the one
    before it). Negative indices count from the end. Blocks after ``layer`` cannot change its features."""
    layer = int(layer) + num_blocks if int(layer) < 0 else int(layer)
    if blocks is None:
        blocks = [max(layer - 1, 0), layer]
    out = sorted({int(b) + num_blocks if int(b) < 0 else int(b) for b in blocks})
    if not out:
        raise ValueError("model.lora.blocks is empty")
    bad = [b for b in out if not 0 <= b <= layer]
    if bad:
        raise ValueError(f"model.lora.blocks {bad} are outside 0..{layer} (the feature layer): an adapter after "
                         f"the feature layer has no effect on the features")
    return out


class LoRAFeatures(nn.Module):
    """Features of block ``layer`` (``facet``) of a LoRA-adapted frozen ViT backbone.

    Args:
        backbone: a :class:`~dinotracker.backbones.vit.VisionTransformer` (any DINOv2/DINOv3 of
            :func:`~dinotracker.backbones.build_backbone`, stride already set). It is modified in place
            (PEFT replaces the targeted linears) and frozen.
        layer, facet: the feature tap (0-based block, ``tokens``/``queries``/``keys``/``values``), as the
            preprocessing cache's features.
        blocks: adapted blocks (see :func:`resolve_lora_blocks`).
        rank, alpha, dropout: PEFT ``LoraConfig(r, lora_alpha, lora_dropout)``.
        targets: linear names inside ``blocks.<i>.attn`` (``qkv``; ``proj`` also works).
    """

    def __init__(self, backbone: nn.Module, layer: int, facet: str = "tokens", blocks=None, rank: int = 8,
                 alpha: float = 0.5, dropout: float = 0.1, targets=("qkv",)):
        super().__init__()
        from dinotracker.backbones.vit import VisionTransformer

        if not isinstance(backbone, VisionTransformer):
            raise ValueError(f"LoRA tuning needs a ViT backbone (DINOv2/DINOv3), got {type(backbone).__name__} "
                             "(backbone=none has no weights to tune)")
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError as e:  # pragma: no cover - exercised by monkeypatching in tests
            raise ImportError("model.lora needs the peft package: pip install 'dinotracker[lora]'") from e
        if int(rank) < 1:
            raise ValueError(f"model.lora.rank must be >= 1, got {rank}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"model.lora.dropout must be in [0, 1), got {dropout}")
        nb = int(backbone.num_blocks)
        self.layer = int(layer) + nb if int(layer) < 0 else int(layer)
        if not 0 <= self.layer < nb:
            raise ValueError(f"feature layer {layer} is out of range for a backbone with {nb} blocks")
        self.facet = str(facet)
        self.blocks = resolve_lora_blocks(blocks, self.layer, nb)
        self.rank, self.alpha, self.dropout = int(rank), float(alpha), float(dropout)
        self.targets = [str(t) for t in targets]
        names = [f"blocks.{b}.attn.{t}" for b in self.blocks for t in self.targets]
        present = dict(backbone.named_modules())
        missing = [n for n in names if not isinstance(present.get(n), nn.Linear)]
        if missing:
            raise ValueError(f"model.lora.targets: {missing} are not linear layers of {type(backbone).__name__}")
        backbone.requires_grad_(False)
        cfg = LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=names,
                         bias="none")
        inject_adapter_in_model(cfg, backbone, adapter_name=ADAPTER)
        mods = dict(backbone.named_modules())
        keys = [n.replace(".", "_") for n in names]
        self.lora_A = nn.ModuleDict({k: mods[n].lora_A[ADAPTER] for k, n in zip(keys, names)})
        self.lora_B = nn.ModuleDict({k: mods[n].lora_B[ADAPTER] for k, n in zip(keys, names)})
        self.lora_dropout = nn.ModuleDict({k: mods[n].lora_dropout[ADAPTER] for k, n in zip(keys, names)})
        self.scaling = float(mods[names[0]].scaling[ADAPTER])
        for p in self.parameters():
            p.requires_grad_(True)
        object.__setattr__(self, "backbone", backbone)  # frozen, deliberately not a registered submodule

    def extra_repr(self) -> str:
        return (f"{type(self.backbone).__name__} blocks={self.blocks} targets={self.targets} rank={self.rank} "
                f"alpha={self.alpha} dropout={self.dropout} -> layer {self.layer} {self.facet}")

    @torch.no_grad()
    def prefix(self, frames: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """frames float [B, 3, H, W] in [0, 1] -> (tokens [B, prefix + h*w, C] entering the first adapted
        block, grid (h, w)). Frozen: independent of the adapters, computed without autograd."""
        # the frozen backbone follows the input (it is not moved with this module); a no-op when in place
        self.backbone.to(frames.device)
        return self.backbone.tokens_before(frames, self.blocks[0])

    def from_prefix(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Features [B, C, h, w] from :meth:`prefix` tokens: runs only the adapted blocks (with autograd)."""
        self.backbone.to(tokens.device)
        w = self.backbone.patch_embed.proj.weight
        out = self.backbone.extract_from(tokens.to(w.dtype), grid, self.blocks[0], [self.layer], self.facet)
        return out[self.layer]

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames float [B, 3, H, W] in [0, 1] -> features [B, C, h, w] (differentiable w.r.t. the adapters)."""
        return self.from_prefix(*self.prefix(frames))

    def __deepcopy__(self, memo):
        # share the frozen backbone tensors (the teacher of the EMA cycle labels gets its own adapters only)
        for t in (*self.backbone.parameters(), *self.backbone.buffers()):
            if not t.requires_grad:
                memo.setdefault(id(t), t)
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            new.__dict__[k] = copy.deepcopy(v, memo)
        return new
