"""Small array helpers shared by exports, plots and the fit job."""

from __future__ import annotations

import numpy as np


def to_numpy(x) -> np.ndarray:
    """A torch tensor (any device, with or without grad) or array-like -> numpy array."""
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
