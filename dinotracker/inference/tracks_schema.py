"""The ``tracks.npz`` schema: one writer and one checking reader, used by the fit job and by ``track``.

Arrays (N points, T frames; pixels are *input* pixels, the video's own resolution, raster convention:
(0, 0) is the top-left corner of the top-left pixel, pixel centres at +0.5):

==================  ============  ========  =====================================================
key                 shape         dtype     meaning
==================  ============  ========  =====================================================
``tracks``          [N, T, 2]     float32   (x, y) position of every point in every frame, input px
``visible``         [N, T]        bool      predicted visible (not occluded)
``confidence``      [N, T]        float32   visibility confidence in [0, 1]
``queries``         [N, 3]        float32   (t, x, y): query frame index and position, input px
``input_hw``        [2]           int64     (H, W) of the input frames, px
``fps``             []            float64   the video's frame rate (the exports' playback rate)
``video``           []            str       the video's name
``coord_convention``[]            str       the sentence above
==================  ============  ========  =====================================================

:func:`write_tracks` refuses to write a file missing any of them; :func:`read_tracks` checks a file
against this table and names what is wrong.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dinotracker.inference.export import COORD_CONVENTION, save_npz

KEYS = ("tracks", "visible", "confidence", "queries", "input_hw", "fps", "video", "coord_convention")


def write_tracks(path, tracks, visible, confidence, queries, *, input_hw, fps: float, video: str) -> Path:
    """Write ``path`` in the schema (module docstring); shapes are checked by the writer."""
    hw = [] if input_hw is None else [int(v) for v in input_hw]
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"input_hw must be (H, W) > 0, got {input_hw}")
    if fps is None or not float(fps) > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return save_npz(path, tracks, visible, confidence, queries, input_hw=np.asarray(hw, np.int64),
                    fps=np.float64(fps), video=str(video))


def read_tracks(path) -> dict[str, np.ndarray]:
    """Read and check a ``tracks.npz`` (module docstring); ValueError naming the file and the first problem.
    Scalars come back as numpy 0-d arrays (``float(d["fps"])``, ``str(d["video"])``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tracks file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    except Exception as err:  # noqa: BLE001 - a truncated/foreign file: say which
        raise ValueError(f"{path} is not a readable .npz ({type(err).__name__}: {err})") from None

    def bad(msg: str) -> ValueError:
        return ValueError(f"{path} does not follow the tracks.npz schema (dinotracker.inference.tracks_schema): "
                          f"{msg}")

    missing = [k for k in KEYS if k not in d]
    if missing:
        raise bad(f"missing {missing}")
    tr, vis, conf, q = d["tracks"], d["visible"], d["confidence"], d["queries"]
    if tr.ndim != 3 or tr.shape[-1] != 2 or not np.issubdtype(tr.dtype, np.floating):
        raise bad(f"tracks must be float [N, T, 2], got {tr.dtype} {tr.shape}")
    n, t = tr.shape[:2]
    if vis.shape != (n, t) or vis.dtype != bool:
        raise bad(f"visible must be bool [N, T] = [{n}, {t}], got {vis.dtype} {vis.shape}")
    if conf.shape != (n, t) or not np.issubdtype(conf.dtype, np.floating):
        raise bad(f"confidence must be float [N, T] = [{n}, {t}], got {conf.dtype} {conf.shape}")
    if q.shape != (n, 3) or not np.issubdtype(q.dtype, np.floating):
        raise bad(f"queries must be float [N, 3] (t, x, y) = [{n}, 3], got {q.dtype} {q.shape}")
    if n and ((q[:, 0] < 0).any() or (q[:, 0] > t - 1).any()):
        raise bad(f"query frames must lie in [0, {t - 1}]")
    hw = d["input_hw"]
    if hw.shape != (2,) or not np.issubdtype(hw.dtype, np.integer) or (hw < 1).any():
        raise bad(f"input_hw must be 2 positive ints (H, W), got {hw.dtype} {hw.tolist()}")
    if d["fps"].shape != () or not float(d["fps"]) > 0:
        raise bad(f"fps must be a scalar > 0, got {d['fps'].tolist()}")
    if str(d["coord_convention"]) != COORD_CONVENTION:
        raise bad(f"coord_convention is {str(d['coord_convention'])!r}, expected {COORD_CONVENTION!r}")
    return d
