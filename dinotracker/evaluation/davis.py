"""DAVIS-2017 semi-supervised J&F (davis2017-evaluation @ ac7c43f, ``davis2017/metrics.py`` and
``evaluation.py``; SEGTRACK_SPEC §4.2).

* J (region): ``|P & G| / |P | G|`` per object per frame; 1 when the union is empty.
* F (boundary): 1-px boundary maps (:func:`seg2bmap`), each dilated by a disk of radius
  ``ceil(bound_th * ||(H, W)||)`` (8 px at 480x854); precision = predicted boundary pixels within the
  dilated GT boundary, recall the converse; the official special cases for empty boundaries.
* GT void (255) is set to background and not used as a void mask (semi-supervised protocol).
  Objects are ids 1..K with K = max id of the first GT frame; a prediction with a larger id is an error.
* **The first and last frames are not scored.** Per object: mean (nanmean), recall (fraction > 0.5),
  decay (mean of the first minus the last of 4 bins). Global = mean over all objects of all sequences.

Fix vs the official ``db_statistics``: bin indices are cast to ``uint8`` there, which wraps for
sequences of more than 255 frames; here they are plain integers (same result below 256 frames).
No scikit-image: :func:`disk` reproduces ``skimage.morphology.disk`` (``x^2 + y^2 <= r^2``).
"""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import cv2
import numpy as np

COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


def db_eval_iou(annotation: np.ndarray, segmentation: np.ndarray, void_pixels=None) -> np.ndarray:
    """J over the last two axes of bool masks ``[..., H, W]`` -> ``[...]`` (1 where the union is empty)."""
    annotation, segmentation = np.asarray(annotation, bool), np.asarray(segmentation, bool)
    if annotation.shape != segmentation.shape:
        raise ValueError(f"annotation {annotation.shape} and segmentation {segmentation.shape} differ")
    keep = ~np.asarray(void_pixels, bool) if void_pixels is not None else np.ones_like(segmentation)
    inters = np.sum(segmentation & annotation & keep, axis=(-2, -1))
    union = np.sum((segmentation | annotation) & keep, axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        j = inters / union
    return np.where(union == 0, 1.0, j)


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """1-px boundary map of a binary mask [H, W] (D. Martin's seg2bmap as used by DAVIS): a pixel is on the
    boundary when it differs from its E, S or SE neighbour; the last row compares only E, the last column
    only S, and the bottom-right pixel is never a boundary."""
    seg = np.asarray(seg).astype(bool)
    if seg.ndim != 2:
        raise ValueError(f"seg2bmap needs a 2-D mask, got {seg.shape}")
    e, s, se = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def disk(radius: float) -> np.ndarray:
    """``skimage.morphology.disk(radius)``: uint8 [2r+1, 2r+1], 1 where ``x^2 + y^2 <= radius^2``."""
    r = int(math.floor(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return ((xx**2 + yy**2) <= radius**2).astype(np.uint8)


def boundary_tolerance(hw: tuple[int, int], bound_th: float = 0.008) -> float:
    """Dilation radius in px: ``bound_th`` itself when >= 1, else ``ceil(bound_th * sqrt(H^2 + W^2))``."""
    return bound_th if bound_th >= 1 else float(np.ceil(bound_th * np.linalg.norm(hw)))


def f_measure(
    foreground_mask: np.ndarray, gt_mask: np.ndarray, void_pixels=None, bound_th: float = 0.008
) -> float:
    """Boundary F of one predicted mask against one GT mask [H, W] (official ``f_measure``)."""
    fg, gt = np.asarray(foreground_mask, bool), np.asarray(gt_mask, bool)
    if fg.shape != gt.shape or fg.ndim != 2:
        raise ValueError(f"masks must be equal [H, W], got {fg.shape} and {gt.shape}")
    if void_pixels is not None:
        keep = ~np.asarray(void_pixels, bool)
        fg, gt = fg & keep, gt & keep
    se = disk(boundary_tolerance(fg.shape, bound_th))
    fg_b, gt_b = seg2bmap(fg), seg2bmap(gt)
    fg_dil = cv2.dilate(fg_b.astype(np.uint8), se) > 0
    gt_dil = cv2.dilate(gt_b.astype(np.uint8), se) > 0
    n_fg, n_gt = int(fg_b.sum()), int(gt_b.sum())
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = float((fg_b & gt_dil).sum()) / n_fg
        recall = float((gt_b & fg_dil).sum()) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def db_eval_boundary(
    annotation: np.ndarray, segmentation: np.ndarray, void_pixels=None, bound_th: float = 0.008
) -> np.ndarray:
    """F for stacks ``[..., H, W]`` (objects and/or frames) -> ``[...]``."""
    annotation, segmentation = np.asarray(annotation, bool), np.asarray(segmentation, bool)
    if annotation.shape != segmentation.shape:
        raise ValueError(f"annotation {annotation.shape} and segmentation {segmentation.shape} differ")
    lead = annotation.shape[:-2]
    a = annotation.reshape(-1, *annotation.shape[-2:])
    s = segmentation.reshape(-1, *segmentation.shape[-2:])
    v = None if void_pixels is None else np.broadcast_to(void_pixels, annotation.shape).reshape(a.shape)
    out = [f_measure(s[i], a[i], None if v is None else v[i], bound_th) for i in range(a.shape[0])]
    return np.asarray(out, np.float64).reshape(lead)


def db_statistics(per_frame_values: np.ndarray) -> tuple[float, float, float]:
    """(mean, recall = fraction > 0.5, decay = mean of bin 1 - mean of bin 4) of one object's scores."""
    v = np.asarray(per_frame_values, np.float64)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN bins, as the official code
        mean = float(np.nanmean(v))
        recall = float(np.nanmean(v > 0.5))
        ids = (np.round(np.linspace(1, len(v), 5) + 1e-10) - 1).astype(np.int64)  # official: uint8
        bins = [v[ids[i] : ids[i + 1] + 1] for i in range(4)]
        decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3]))
    return mean, recall, decay


def split_objects(labels: np.ndarray, num_objects: int) -> np.ndarray:
    """ids [..., H, W] -> bool [K, ..., H, W] (object k = ids == k, k = 1..K)."""
    labels = np.asarray(labels)
    return labels[None] == np.arange(1, num_objects + 1).reshape(-1, *([1] * labels.ndim))


class SequenceEvaluator:
    """Streaming J/F of one sequence: :meth:`add` one frame at a time (frame 0 first), no masks kept.

    ``num_objects`` defaults to the max id of the first GT frame added (255 = void -> background).
    """

    def __init__(self, name: str = "sequence", num_objects: int | None = None, bound_th: float = 0.008):
        self.name, self.num_objects, self.bound_th = name, num_objects, bound_th
        self.j: list[np.ndarray] = []
        self.f: list[np.ndarray] = []

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        gt = np.asarray(gt).astype(np.int64)
        pred = np.asarray(pred).astype(np.int64)
        if gt.shape != pred.shape or gt.ndim != 2:
            raise ValueError(f"GT {gt.shape} and prediction {pred.shape} must be the same [H, W]")
        gt = np.where(gt == 255, 0, gt)
        if self.num_objects is None:
            self.num_objects = int(gt.max())
        if pred.max(initial=0) > self.num_objects:
            raise ValueError(
                f"{self.name}: prediction has id {pred.max()} but the GT has {self.num_objects} objects"
            )
        g, p = split_objects(gt, self.num_objects), split_objects(pred, self.num_objects)
        self.j.append(db_eval_iou(g, p))
        self.f.append(db_eval_boundary(g, p, bound_th=self.bound_th))

    def scores(self) -> tuple[np.ndarray, np.ndarray]:
        """J, F [K, T - 2] (first and last frames dropped)."""
        if len(self.j) < 3:
            raise ValueError(
                f"{self.name}: J&F scores frames 1..T-2, so it needs >= 3 frames, got {len(self.j)}"
            )
        j, f = np.stack(self.j[1:-1], 1), np.stack(self.f[1:-1], 1)
        return j, f


def evaluate_sequence(gt: np.ndarray, pred: np.ndarray, bound_th: float = 0.008, name: str = "sequence"):
    """J, F [K, T - 2] of id maps gt, pred [T, H, W] (fewer predicted objects count as empty masks)."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape or gt.ndim != 3:
        raise ValueError(f"GT {gt.shape} and predictions {pred.shape} must be the same [T, H, W]")
    ev = SequenceEvaluator(name, bound_th=bound_th)
    for g, p in zip(gt, pred):
        ev.add(g, p)
    return ev.scores()


def summarize(per_sequence: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """Official tables from ``{name: (J [K, T'], F [K, T'])}``.

    Returns ``{"global": {col: v}, "objects": {"<seq>_<k>": {"J-Mean", "F-Mean", ...}}}``; global values
    are means over all objects of all sequences (not over sequences)."""
    objects = {}
    for name, (j, f) in per_sequence.items():
        for k in range(j.shape[0]):
            jm, jr, jd = db_statistics(j[k])
            fm, fr, fd = db_statistics(f[k])
            objects[f"{name}_{k + 1}"] = {
                "J-Mean": jm,
                "J-Recall": jr,
                "J-Decay": jd,
                "F-Mean": fm,
                "F-Recall": fr,
                "F-Decay": fd,
            }
    glob = {}
    for col in COLUMNS[1:]:
        glob[col] = float(np.mean([o[col] for o in objects.values()])) if objects else math.nan
    glob["J&F-Mean"] = (glob["J-Mean"] + glob["F-Mean"]) / 2
    return {"global": {c: glob[c] for c in COLUMNS}, "objects": objects}


def format_table(summary: dict) -> str:
    """Plain-text global row plus per-object J-Mean / F-Mean."""
    g = summary["global"]
    lines = [
        "  ".join(f"{c:>9}" for c in COLUMNS),
        "  ".join(f"{g[c]:9.3f}" for c in COLUMNS),
        "",
        f"{'object':<24}{'J-Mean':>9}{'F-Mean':>9}",
    ]
    for name, o in summary["objects"].items():
        lines.append(f"{name:<24}{o['J-Mean']:9.3f}{o['F-Mean']:9.3f}")
    return "\n".join(lines)


def write_csv(summary: dict, folder) -> tuple[Path, Path]:
    """``global_results-val.csv`` and ``per-sequence_results-val.csv`` in the official layout."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    gpath, spath = folder / "global_results-val.csv", folder / "per-sequence_results-val.csv"
    with gpath.open("w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(COLUMNS)
        wr.writerow([f"{summary['global'][c]:.6f}" for c in COLUMNS])
    with spath.open("w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["Sequence", "J-Mean", "F-Mean"])
        for name, o in summary["objects"].items():
            wr.writerow([name, f"{o['J-Mean']:.6f}", f"{o['F-Mean']:.6f}"])
    return gpath, spath
