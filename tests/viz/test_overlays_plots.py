"""Readable pictures (issue 15): contrasting overlay colours with outlines, matplotlib loss curves."""

from __future__ import annotations

import numpy as np

from dinotracker.viz.overlays import contrast_colors, overlay_masks
from dinotracker.viz.plots import loss_curves_image


def test_overlay_contrasts_with_a_red_object_and_outlines_it():
    frame = np.full((120, 160, 3), 200, np.uint8)
    labels = np.zeros((120, 160), np.uint8)
    labels[30:90, 40:110] = 1
    frame[labels == 1] = (210, 20, 20)  # a red apple
    col = contrast_colors(frame, labels)[1]
    assert col[0] < 128 and max(col[1], col[2]) > 150  # not red
    img = overlay_masks(frame, labels, alpha=0.5)
    assert (img[30, 60] == 255).all() and (img[60, 75] != frame[60, 75]).any()  # white inner ring, tinted fill
    assert img[29, 60].max() < frame[29, 60].max()  # darkened outer ring
    assert (img[5, 5] == frame[5, 5]).all()  # background untouched


def test_loss_curves_have_axes_and_log_scale():
    st = np.arange(0, 200, 5)
    hist = {"loss": [(int(s), float(np.exp(-s / 40) + 1e-3)) for s in st], "cycle": [(int(s), 0.0) for s in st]}
    img = loss_curves_image(hist, smooth=5)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[1] > img.shape[0]
    assert (img < 100).mean() > 0.005  # axes, ticks and labels drawn in dark ink
