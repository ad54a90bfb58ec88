"""Segmentation tracking: label propagation of first-frame instance masks by patch-feature similarity
(the DINOv3 notebook), with gather/dense propagation, feature sources and DAVIS I/O.

    from dinotracker.segtrack import track_segmentation, features_from_backbone
    labels = track_segmentation(features_from_backbone("dinov3_vits16", weights=...), frames, first_mask)
"""

import importlib

# names -> defining module, imported on first use: ``python -m dinotracker.segtrack`` then checks its
# command line (a missing video in a second) before torch loads
_EXPORTS = {
    **dict.fromkeys(("BackboneFeatures", "CellGrid", "ImageFeatures", "RunFeatures", "features_from_backbone",
                     "features_from_run", "resize_to_multiple_hw"), "features"),
    **dict.fromkeys(("make_neighborhood_mask", "neighborhood_offsets"), "neighbourhood"),
    **dict.fromkeys(("iter_segmentation", "propagate", "track_segmentation"), "propagation"),
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"dinotracker.segtrack.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'dinotracker.segtrack' has no attribute {name!r}")


__all__ = [
    "BackboneFeatures", "CellGrid", "ImageFeatures", "RunFeatures", "features_from_backbone", "features_from_run",
    "iter_segmentation", "make_neighborhood_mask", "neighborhood_offsets", "propagate", "resize_to_multiple_hw",
    "track_segmentation",
]
