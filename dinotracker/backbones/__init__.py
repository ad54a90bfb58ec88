"""Frozen ViT backbones: DINOv2 (official state-dict layout), and ``none`` (zero features).

``build_backbone(name, weights=None, source="auto", stride=None)``; sources: ``random`` (tests),
``file`` (a local state dict), ``hub`` (the torch hub checkpoint cache, downloaded only when
online), ``auto`` (file when ``weights`` is given, else hub).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from dinotracker.backbones.dinov2 import ARCHS, DinoV2

log = logging.getLogger(__name__)
URL = "https://dl.fbaipublicfiles.com/dinov2/{base}/{file}"


def _parse(name: str):
    m = re.fullmatch(r"dinov2_(vit[sblg]14)(_reg)?", name)
    if not m:
        raise ValueError(f"unknown backbone {name!r}: use dinov2_vit{{s,b,l,g}}14[_reg] or none")
    return m.group(1), bool(m.group(2))


def checkpoint_name(name: str) -> str:
    arch, reg = _parse(name)
    return f"dinov2_{arch}{'_reg4' if reg else ''}_pretrain.pth"


def build_backbone(name: str, weights: str | None = None, source: str = "auto", stride: int | None = None,
                   device="cpu", **arch_overrides) -> DinoV2:
    """A DINOv2 ViT in eval mode with ``stride`` applied; ``arch_overrides`` (depth, embed_dim, num_heads,
    img_size) only with ``source="random"`` (tiny test models of the same architecture)."""
    arch, reg = _parse(name)
    kw = dict(ARCHS[arch], num_register_tokens=4 if reg else 0)
    if arch_overrides:
        if source != "random":
            raise ValueError("architecture overrides are only allowed with source='random'")
        kw.update(arch_overrides)
    model = DinoV2(**kw)
    if source == "random":
        torch.manual_seed(0)
        for p in model.parameters():
            if p.dim() > 1:
                torch.nn.init.trunc_normal_(p, std=0.02)
    elif source in ("file", "hub", "auto"):
        model.load_state_dict(_load_state(name, weights, source), strict=True)
    else:
        raise ValueError(f"unknown backbone source {source!r}: use auto, file, hub or random")
    if stride is not None:
        model.set_stride(int(stride))
    return model.eval().requires_grad_(False).to(device)


def _load_state(name: str, weights, source: str) -> dict:
    fname = checkpoint_name(name)
    candidates = []
    if weights:
        candidates.append(Path(weights))
    if source in ("hub", "auto"):
        candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / fname)
    for p in candidates:
        if p.is_file():
            log.info("loading %s weights from %s", name, p)
            sd = torch.load(p, map_location="cpu", weights_only=True)
            return sd.get("model", sd) if isinstance(sd, dict) else sd
    if weights:
        raise FileNotFoundError(f"backbone weights not found: {weights}")
    arch, _ = _parse(name)
    try:
        return torch.hub.load_state_dict_from_url(URL.format(base=f"dinov2_{arch}", file=fname), map_location="cpu")
    except Exception as err:  # noqa: BLE001 - offline: say what to do
        raise FileNotFoundError(
            f"{name} weights are not available offline: download {URL.format(base=f'dinov2_{arch}', file=fname)} "
            f"and put it in {Path(torch.hub.get_dir()) / 'checkpoints'}, or pass backbone.weights=<path>; "
            f"backbone=none needs no weights ({err})") from err
