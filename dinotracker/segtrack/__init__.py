"""Segmentation tracking: label propagation of first-frame instance masks by patch-feature similarity
(the DINOv3 notebook), with gather/dense propagation, feature sources and DAVIS I/O.

    from dinotracker.segtrack import track_segmentation, features_from_backbone
    labels = track_segmentation(features_from_backbone("dinov3_vits16", weights=...), frames, first_mask)
"""

from dinotracker.segtrack.features import (
    BackboneFeatures,
    CellGrid,
    ImageFeatures,
    RunFeatures,
    features_from_backbone,
    features_from_run,
    resize_to_multiple_hw,
)
from dinotracker.segtrack.neighbourhood import make_neighborhood_mask, neighborhood_offsets
from dinotracker.segtrack.propagation import iter_segmentation, propagate, track_segmentation

__all__ = [
    "BackboneFeatures", "CellGrid", "ImageFeatures", "RunFeatures", "features_from_backbone", "features_from_run",
    "iter_segmentation", "make_neighborhood_mask", "neighborhood_offsets", "propagate", "resize_to_multiple_hw",
    "track_segmentation",
]
