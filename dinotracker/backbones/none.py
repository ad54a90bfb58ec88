"""The "w/o DINO" backbone (paper Tab. 2): zero features of a configured width on the usual patch grid."""

from __future__ import annotations

import torch

from dinotracker.backbones.vit import FACETS, Backbone, resolve_layers


class NoneBackbone(Backbone):
    """Returns zeros ``[B, embed_dim, h, w]`` for any layer and facet; needs no weights.

    ``num_blocks`` is nominal (any layer in ``-num_blocks..num_blocks-1`` is accepted) so configs written
    for a real backbone (layer 15, mask layer -1) keep working.
    """

    def __init__(self, embed_dim: int = 1024, patch_size: int = 14, num_blocks: int = 24):
        super().__init__()
        if embed_dim < 1 or patch_size < 1:
            raise ValueError(f"embed_dim and patch_size must be positive, got {embed_dim}, {patch_size}")
        self.embed_dim, self.patch_size, self.num_blocks = int(embed_dim), int(patch_size), int(num_blocks)
        self.stride = self.patch_size
        self.num_prefix_tokens = 0
        self.register_buffer("_device_anchor", torch.zeros(0), persistent=False)

    def extract(self, images: torch.Tensor, layers, facet: str = "tokens") -> dict[int, torch.Tensor]:
        if facet not in FACETS:
            raise ValueError(f"facet must be one of {FACETS}, got {facet!r}")
        self.check_images(images)
        gh, gw = self.grid_size(images.shape[-2:])
        want = resolve_layers(layers, self.num_blocks)
        zeros = images.new_zeros(images.shape[0], self.embed_dim, gh, gw)
        return {layer: zeros for layers in want.values() for layer in layers}
