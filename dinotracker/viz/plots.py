"""Loss curves with matplotlib: one panel per loss term, axes with ticks, log scale when positive.

:func:`loss_curves_image` returns an RGB uint8 image (for the PNG and for TensorBoard's ``add_image`` /
W&B's ``log_image``); it uses the non-interactive Agg backend and never opens a window.
"""

from __future__ import annotations

import math

import numpy as np


def loss_curves_image(history: dict[str, list[tuple[int, float]]], panel_size=(4.2, 2.6), cols: int = 2,
                      dpi: int = 110, smooth: int = 0) -> np.ndarray:
    """RGB uint8 image of ``history`` (``{term: [(step, value), ...]}``). Each panel has the term's
    name, step on x, value on y (log scale when all finite values are > 0), a grid and, with ``smooth``
    > 1, a running mean over that many points drawn over the raw curve."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [k for k, v in history.items() if v]
    if not names:
        raise ValueError("no loss values recorded")
    cols = max(1, min(cols, len(names)))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(panel_size[0] * cols, panel_size[1] * rows), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        steps = np.array([s for s, _ in history[name]], np.float64)
        vals = np.array([v for _, v in history[name]], np.float64)
        ok = np.isfinite(vals)
        steps, vals = steps[ok], vals[ok]
        use_log = len(vals) > 0 and bool((vals > 0).all()) and vals.max() / max(vals.min(), 1e-30) > 3
        ax.plot(steps, vals, color="#1f77b4", lw=1.0, alpha=0.45 if smooth > 1 else 1.0)
        if smooth > 1 and len(vals) >= smooth:
            k = np.ones(smooth) / smooth
            ax.plot(steps[smooth - 1:], np.convolve(vals, k, mode="valid"), color="#d62728", lw=1.4,
                    label=f"mean of {smooth}")
            ax.legend(fontsize=7, loc="upper right")
        if use_log:
            ax.set_yscale("log")
        ax.set_title(name + (" (log scale)" if use_log else ""), fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="major", alpha=0.35)
        if use_log:
            ax.grid(True, which="minor", alpha=0.12)
        if len(vals) == 0:
            ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
