"""DINO-Tracker networks: Delta-DINO, the heatmap refiner and the tracker module."""

from dinotracker.models.blurpool import BlurPool2d
from dinotracker.models.delta_dino import DeltaDINO, align_to_patch_grid, cnn_index_of_raster
from dinotracker.models.refiner import NormalizedConv2d, Refiner
from dinotracker.models.tracker import DinoTracker, cosine_cost_volume, no_autocast, sample_points

__all__ = [
    "BlurPool2d",
    "DeltaDINO",
    "DinoTracker",
    "NormalizedConv2d",
    "Refiner",
    "align_to_patch_grid",
    "cnn_index_of_raster",
    "cosine_cost_volume",
    "no_autocast",
    "sample_points",
]
