"""Frozen ViT backbones: DINOv2 and DINOv3 with the official state-dict layouts, and ``none`` (zero features).

``build_backbone(name, weights=None, source="auto", stride=None, device="cpu", **arch_overrides)``;
``backbone.extract(images [B,3,H,W] in [0,1], layers, facet) -> {layer: [B,C,h,w]}``.
"""

from dinotracker.backbones.build import (
    BACKBONE_NAMES,
    SOURCES,
    arch_kwargs,
    backbone_spec,
    build_backbone,
    build_from_spec,
    checkpoint_name,
    checkpoint_url,
    parse_name,
    read_state_dict,
)
from dinotracker.backbones.dinov2 import DinoV2
from dinotracker.backbones.dinov3 import DinoV3
from dinotracker.backbones.none import NoneBackbone
from dinotracker.backbones.vit import FACETS, Backbone

__all__ = [
    "BACKBONE_NAMES",
    "FACETS",
    "SOURCES",
    "Backbone",
    "DinoV2",
    "DinoV3",
    "NoneBackbone",
    "arch_kwargs",
    "backbone_spec",
    "build_backbone",
    "build_from_spec",
    "checkpoint_name",
    "checkpoint_url",
    "parse_name",
    "read_state_dict",
]
