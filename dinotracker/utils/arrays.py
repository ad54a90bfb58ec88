"""Small array helpers shared by exports, plots, readers and the fit job."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def to_numpy(x) -> np.ndarray:
    """A torch tensor (any device, with or without grad) or array-like -> numpy array."""
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def read_npz(path, required, what: str = "file", error: type[Exception] = ValueError) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, loaded. FileNotFoundError (naming ``what``) when it is missing;
    ``error`` when it is unreadable or lacks one of the ``required`` arrays."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        z = np.load(path)
    except (OSError, ValueError) as err:
        raise error(f"{path} is not a readable .npz ({err})") from err
    with z:
        missing = [k for k in required if k not in z.files]
        if missing:
            raise error(f"{path} lacks {missing} (has {z.files})")
        return {k: z[k] for k in z.files}
