"""TAP-Vid metrics (pure numpy), numerically identical to tapnet's ``compute_tapvid_metrics``.

Conventions (ANCHORS.md §10, the TAP-Vid paper, ``dinotracker/geometry.py``):

* Points are raster ``(x, y)`` pixels: ``(0, 0)`` is the top-left *corner* of the top-left pixel,
  so a resize is a pure ratio ``x' = x * W'/W`` (no +-0.5 shift, no ``W - 1``).
* tapnet's query points are ``(t, y, x)``; only ``t`` enters the metrics.
* The benchmark protocol scores at 256x256: predictions *and* ground truth are rescaled there first.
* ``first`` mode scores frames strictly after the query frame; ``strided`` scores every frame but
  the query frame (so trackers must also track backwards).
* The benchmark figure is the unweighted mean over videos of the per-video metrics
  (:func:`mean_over_videos`), not a pool over all points.

Two deliberate differences from tapnet, neither of which changes a defined number:

* Out-of-range query frames raise ``ValueError`` (tapnet's ``eye[query_frame]`` silently wraps
  negative frames to the end of the video).
* Counting is chunked over queries, so memory stays bounded for dense grids; 0/0 gives NaN
  as in tapnet, but without numpy's ``RuntimeWarning``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import Enum

import numpy as np

THRESHOLDS: tuple[int, ...] = (1, 2, 4, 8, 16)
METRIC_KEYS: tuple[str, ...] = (
    ("occlusion_accuracy",)
    + tuple(f"pts_within_{d}" for d in THRESHOLDS)
    + tuple(f"jaccard_{d}" for d in THRESHOLDS)
    + ("average_jaccard", "average_pts_within_thresh")
)
# Paper table column order (tapnet's ``latex_table``): AJ, delta_avg, OA, Jaccard_d, <delta_d.
TABLE_KEYS: tuple[str, ...] = (
    ("average_jaccard", "average_pts_within_thresh", "occlusion_accuracy")
    + tuple(f"jaccard_{d}" for d in THRESHOLDS)
    + tuple(f"pts_within_{d}" for d in THRESHOLDS)
)
# Default per-track occlusion-rate bin edges for the Fig. 6 breakdown. The paper's text does not
# state its edges (they only appear in the figure), so these are our choice: low / medium / high.
DEFAULT_OCCLUSION_EDGES: tuple[float, ...] = (0.0, 0.1, 0.3, 1.0)

_CHUNK_ELEMENTS = 1 << 22  # B * n * T booleans per chunk (~4 M): bounds the temporaries' memory


class QueryMode(str, Enum):
    """How queries were sampled, which decides the frames that are scored."""

    FIRST = "first"  # one query per track at its first visible frame; score t > t_q
    STRIDED = "strided"  # queries every k frames; score t != t_q

    @classmethod
    def parse(cls, mode: QueryMode | str) -> QueryMode:
        try:
            return cls(mode.value if isinstance(mode, Enum) else mode)
        except ValueError:
            raise ValueError(f"query_mode must be 'first' or 'strided', got {mode!r}") from None


def compute_tapvid_metrics(
    query_points: np.ndarray,
    gt_occluded: np.ndarray,
    gt_tracks: np.ndarray,
    pred_occluded: np.ndarray,
    pred_tracks: np.ndarray,
    query_mode: str,
    get_trackwise_metrics: bool = False,
) -> dict[str, np.ndarray]:
    """TAP-Vid metrics for a batch of ``B`` videos, ``N`` queries, ``T`` frames (tapnet's signature).

    Args:
        query_points: ``[B, N, 3]`` as ``(t, y, x)``; only ``t`` is used (rounded to a frame index).
        gt_occluded: ``[B, N, T]`` bool, True = occluded.
        gt_tracks: ``[B, N, T, 2]`` ground-truth raster ``(x, y)`` px, normally of the 256x256 frame.
        pred_occluded: ``[B, N, T]`` bool predicted occlusion.
        pred_tracks: ``[B, N, T, 2]`` predicted ``(x, y)`` px in the same frame as ``gt_tracks``.
        query_mode: ``"first"`` (score ``t > t_q``) or ``"strided"`` (score ``t != t_q``).
        get_trackwise_metrics: sum over frames only, giving ``[B, N]`` arrays instead of ``[B]``.

    Returns:
        ``occlusion_accuracy``, ``pts_within_{1,2,4,8,16}``, ``jaccard_{1,2,4,8,16}``,
        ``average_jaccard``, ``average_pts_within_thresh``: float arrays ``[B]`` (or ``[B, N]``)
        in [0, 1]. With E the scored entries, V = not gt_occluded, V^ = not pred_occluded,
        W_d = |pred - gt|^2 < d^2 (strict):
        OA = sum E[pred_occ == gt_occ] / sum E; pts_within_d = sum E V W_d / sum E V;
        jaccard_d = sum E V V^ W_d / (sum E V + sum E V^ (not V or not W_d)).
        A video (or track) with nothing to score gives NaN (0/0), as in tapnet.
    """
    mode = QueryMode.parse(query_mode)
    query_points = np.asarray(query_points)
    gt_occluded = np.asarray(gt_occluded)
    pred_occluded = np.asarray(pred_occluded)
    gt_tracks = np.asarray(gt_tracks)
    pred_tracks = np.asarray(pred_tracks)
    if gt_tracks.ndim != 4 or gt_tracks.shape[-1] != 2:
        raise ValueError(f"gt_tracks must be [B, N, T, 2] (x, y), got shape {gt_tracks.shape}")
    b, n, t = gt_tracks.shape[:3]
    for name, arr, shape in (
        ("pred_tracks", pred_tracks, (b, n, t, 2)),
        ("gt_occluded", gt_occluded, (b, n, t)),
        ("pred_occluded", pred_occluded, (b, n, t)),
        ("query_points", query_points, (b, n, 3)),
    ):
        if arr.shape != shape:
            raise ValueError(
                f"{name} must have shape {shape} to match gt_tracks {gt_tracks.shape}, got {arr.shape}"
            )
    query_frame = np.round(query_points[..., 0]).astype(np.int64)
    if query_frame.size and (query_frame.min() < 0 or query_frame.max() >= t):
        raise ValueError(
            f"query frames must lie in [0, {t}), got range [{query_frame.min()}, {query_frame.max()}]"
        )

    gt_vis = ~gt_occluded.astype(bool)
    pred_vis = ~pred_occluded.astype(bool)
    frames = np.arange(t)
    sum_axis = 2 if get_trackwise_metrics else (1, 2)
    k = len(THRESHOLDS)
    # Integer counts: scored, OA-correct, scored-visible, and per threshold within / TP / FP.
    out_shape = (b, n) if get_trackwise_metrics else (b,)
    n_eval = np.zeros(out_shape, np.int64)
    n_occ_ok = np.zeros(out_shape, np.int64)
    n_vis = np.zeros(out_shape, np.int64)
    n_within = np.zeros((k,) + out_shape, np.int64)
    n_tp = np.zeros((k,) + out_shape, np.int64)
    n_fp = np.zeros((k,) + out_shape, np.int64)
    step = max(1, _CHUNK_ELEMENTS // max(1, b * t))
    for s in range(0, n, step):
        sl = slice(s, s + step)
        idx = (slice(None), sl) if get_trackwise_metrics else (Ellipsis,)
        qf = query_frame[:, sl, None]
        ev = frames > qf if mode is QueryMode.FIRST else frames != qf  # [B, n, T]
        vis, pvis = gt_vis[:, sl], pred_vis[:, sl]
        n_eval[idx] += ev.sum(sum_axis)
        n_occ_ok[idx] += ((vis == pvis) & ev).sum(sum_axis)
        vis_ev = vis & ev
        n_vis[idx] += vis_ev.sum(sum_axis)
        pvis_ev = pvis & ev
        # Same arithmetic as tapnet (difference, square, sum in the inputs' dtype) for bit parity.
        d2 = np.sum(np.square(pred_tracks[:, sl] - gt_tracks[:, sl]), axis=-1)
        for i, thr in enumerate(THRESHOLDS):
            within = d2 < np.square(thr)
            correct = within & vis_ev
            n_within[i][idx] += correct.sum(sum_axis)
            n_tp[i][idx] += (correct & pvis).sum(sum_axis)
            n_fp[i][idx] += (pvis_ev & (~vis | ~within)).sum(sum_axis)

    metrics: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        metrics["occlusion_accuracy"] = n_occ_ok / n_eval
        fracs, jacs = [], []
        for i, thr in enumerate(THRESHOLDS):
            fracs.append(n_within[i] / n_vis)
            jacs.append(n_tp[i] / (n_vis + n_fp[i]))
            metrics[f"pts_within_{thr}"] = fracs[-1]
            metrics[f"jaccard_{thr}"] = jacs[-1]
    metrics["average_jaccard"] = np.mean(np.stack(jacs, axis=1), axis=1)
    metrics["average_pts_within_thresh"] = np.mean(np.stack(fracs, axis=1), axis=1)
    return {key: metrics[key] for key in METRIC_KEYS}


def _check_video_arrays(pred_tracks, pred_visible, gt_tracks, gt_visible, query_frames):
    pred_tracks = np.asarray(pred_tracks, np.float64)
    gt_tracks = np.asarray(gt_tracks, np.float64)
    pred_visible = np.asarray(pred_visible)
    gt_visible = np.asarray(gt_visible)
    query_frames = np.asarray(query_frames)
    if gt_tracks.ndim != 3 or gt_tracks.shape[-1] != 2:
        raise ValueError(f"gt_tracks must be [N, T, 2] (x, y) px, got shape {gt_tracks.shape}")
    n, t = gt_tracks.shape[:2]
    for name, arr, shape in (
        ("pred_tracks", pred_tracks, (n, t, 2)),
        ("pred_visible", pred_visible, (n, t)),
        ("gt_visible", gt_visible, (n, t)),
        ("query_frames", query_frames, (n,)),
    ):
        if arr.shape != shape:
            raise ValueError(
                f"{name} must have shape {shape} to match gt_tracks {gt_tracks.shape}, got {arr.shape}"
            )
    if pred_visible.dtype != bool or gt_visible.dtype != bool:
        raise ValueError(
            f"pred_visible / gt_visible must be bool, got {pred_visible.dtype} / {gt_visible.dtype}"
        )
    if query_frames.dtype.kind not in "iu" and not np.all(query_frames == np.round(query_frames)):
        raise ValueError("query_frames must be integer frame indices")
    return pred_tracks, pred_visible, gt_tracks, gt_visible, query_frames.astype(np.int64)


def _rescale(xy: np.ndarray, from_hw: Sequence[int], to_hw: Sequence[int] | None) -> np.ndarray:
    """Raster (x, y) from an image of ``from_hw`` to one of ``to_hw`` (a pure ratio, see geometry.py)."""
    if to_hw is None:
        return xy
    if len(from_hw) != 2 or min(from_hw) <= 0:
        raise ValueError(f"image size must be (H, W) > 0, got {tuple(from_hw)}")
    return xy * np.array([to_hw[1] / from_hw[1], to_hw[0] / from_hw[0]])


def _tapvid_batch(
    pred_tracks, pred_visible, gt_tracks, gt_visible, query_frames, video_hw, resize_to, pred_hw
):
    """One video in our convention -> tapnet's batched arrays (B = 1) at the metric resolution."""
    pred_tracks, pred_visible, gt_tracks, gt_visible, query_frames = _check_video_arrays(
        pred_tracks, pred_visible, gt_tracks, gt_visible, query_frames
    )
    gt = _rescale(gt_tracks, video_hw, resize_to)
    pred = _rescale(pred_tracks, video_hw if pred_hw is None else pred_hw, resize_to)
    n = gt.shape[0]
    t_idx = np.clip(query_frames, 0, max(gt.shape[1] - 1, 0))
    qxy = gt[np.arange(n), t_idx] if n else np.zeros((0, 2))
    query_points = np.stack([query_frames.astype(np.float64), qxy[:, 1], qxy[:, 0]], -1)  # (t, y, x)
    return query_points[None], ~gt_visible[None], gt[None], ~pred_visible[None], pred[None]


def evaluate_tracks(
    pred_tracks: np.ndarray,
    pred_visible: np.ndarray,
    gt_tracks: np.ndarray,
    gt_visible: np.ndarray,
    query_frames: np.ndarray,
    video_hw: tuple[int, int],
    query_mode: QueryMode | str = "strided",
    resize_to: tuple[int, int] | None = (256, 256),
    pred_hw: tuple[int, int] | None = None,
) -> dict[str, float]:
    """TAP-Vid metrics of one video, in our convention. Returns plain floats in [0, 1].

    Args:
        pred_tracks: ``[N, T, 2]`` predicted raster ``(x, y)`` px at ``pred_hw`` (default ``video_hw``).
        pred_visible: ``[N, T]`` bool predicted visibility.
        gt_tracks: ``[N, T, 2]`` ground-truth raster ``(x, y)`` px at ``video_hw`` (one row per query;
            strided queries repeat their track's row).
        gt_visible: ``[N, T]`` bool.
        query_frames: ``[N]`` int frame of each query.
        video_hw: ``(H, W)`` of the ground truth's pixel frame.
        query_mode: ``"strided"`` or ``"first"`` (see :func:`compute_tapvid_metrics`).
        resize_to: ``(H, W)`` the metrics are computed at; the TAP-Vid protocol uses 256x256.
            ``None`` scores in ``video_hw`` pixels.
        pred_hw: ``(H, W)`` of the predictions' pixel frame when it differs from ``video_hw``
            (the reference predicts at 476x854 and rescales x by 256/854, y by 256/476).

    Returns:
        The keys of :func:`compute_tapvid_metrics` plus ``delta_avg`` (= ``average_pts_within_thresh``).
        A NaN predicted position counts as a miss (and as a false positive if predicted visible).
    """
    batch = _tapvid_batch(
        pred_tracks, pred_visible, gt_tracks, gt_visible, query_frames, video_hw, resize_to, pred_hw
    )
    m = compute_tapvid_metrics(*batch, query_mode=query_mode)
    out = {key: float(v[0]) for key, v in m.items()}
    out["delta_avg"] = out["average_pts_within_thresh"]
    return out


def mean_over_videos(per_video: Sequence[Mapping[str, object]], skip_nan: bool = False) -> dict[str, float]:
    """Benchmark figure: the unweighted mean over videos of each scalar metric.

    Keys present in every video with a scalar value are averaged; nested values (e.g.
    ``occlusion_bins``) are skipped. With ``skip_nan`` a video whose metric is NaN (nothing to score)
    is left out of that metric's mean; otherwise NaN propagates, as in tapnet.
    """
    if len(per_video) == 0:
        raise ValueError("mean_over_videos needs at least one video's metrics")
    keys = [
        k for k in per_video[0] if all(k in m and np.ndim(m[k]) == 0 and _is_number(m[k]) for m in per_video)
    ]
    out = {}
    for k in keys:
        vals = np.array([float(m[k]) for m in per_video], np.float64)
        if skip_nan:
            vals = vals[~np.isnan(vals)]
            out[k] = float(vals.mean()) if vals.size else float("nan")
        else:
            out[k] = float(vals.mean())
    return out


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def track_occlusion_rates(gt_visible: np.ndarray) -> np.ndarray:
    """Per-track occlusion rate ``[N]``: occluded frames / trajectory length (T), as in the paper's Fig. 6."""
    gt_visible = np.asarray(gt_visible)
    if gt_visible.ndim != 2 or gt_visible.shape[1] == 0:
        raise ValueError(f"gt_visible must be [N, T] with T > 0, got shape {gt_visible.shape}")
    # count / T rather than 1 - mean(visible): 1/10 must land exactly on a 0.1 bin edge
    return (~gt_visible.astype(bool)).sum(axis=1) / gt_visible.shape[1]


def video_occlusion_rate(gt_visible: np.ndarray) -> float:
    """A video's occlusion rate: the mean over its tracks of :func:`track_occlusion_rates`."""
    return float(track_occlusion_rates(gt_visible).mean())


def _bin_index(rates: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Bin ``i`` holds ``edges[i] <= r < edges[i+1]``; the last bin is closed. -1 = outside."""
    edges = np.asarray(edges, np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"edges must be a strictly increasing sequence of >= 2 values, got {edges.tolist()}")
    idx = np.searchsorted(edges, rates, side="right") - 1
    idx[rates == edges[-1]] = edges.size - 2
    idx[(rates < edges[0]) | (rates > edges[-1])] = -1
    return idx


def occlusion_rate_bins(
    pred_tracks: np.ndarray,
    pred_visible: np.ndarray,
    gt_tracks: np.ndarray,
    gt_visible: np.ndarray,
    query_frames: np.ndarray,
    video_hw: tuple[int, int],
    query_mode: QueryMode | str = "strided",
    resize_to: tuple[int, int] | None = (256, 256),
    pred_hw: tuple[int, int] | None = None,
    edges: Sequence[float] = DEFAULT_OCCLUSION_EDGES,
) -> dict:
    """Metrics of one video broken down by per-track GT occlusion rate (paper Fig. 6, per track).

    Arguments as :func:`evaluate_tracks`. Each query row is assigned the occlusion rate of its GT
    track (occluded frames / T); bin ``i`` holds rates in ``[edges[i], edges[i+1])`` (last bin closed)
    and its metrics pool all of that bin's scored points, as if the bin were one video.
    The paper groups *videos* by their mean rate instead: see :func:`group_by_occlusion_rate`.

    Returns a JSON-friendly ``{"edges": [...], "bins": [{"lo", "hi", "num_tracks",
    "mean_occlusion_rate", "average_jaccard", "delta_avg", "occlusion_accuracy"}, ...]}``
    (metrics are NaN for an empty bin).
    """
    qp, go, gt, po, pt = _tapvid_batch(
        pred_tracks, pred_visible, gt_tracks, gt_visible, query_frames, video_hw, resize_to, pred_hw
    )
    rates = track_occlusion_rates(~go[0])
    which = _bin_index(rates, edges)
    bins = []
    for i in range(len(edges) - 1):
        sel = np.flatnonzero(which == i)
        entry = {
            "lo": float(edges[i]),
            "hi": float(edges[i + 1]),
            "num_tracks": int(sel.size),
            "mean_occlusion_rate": float(rates[sel].mean()) if sel.size else float("nan"),
        }
        if sel.size:
            m = compute_tapvid_metrics(qp[:, sel], go[:, sel], gt[:, sel], po[:, sel], pt[:, sel], query_mode)
            entry.update(
                average_jaccard=float(m["average_jaccard"][0]),
                delta_avg=float(m["average_pts_within_thresh"][0]),
                occlusion_accuracy=float(m["occlusion_accuracy"][0]),
            )
        else:
            entry.update(
                average_jaccard=float("nan"), delta_avg=float("nan"), occlusion_accuracy=float("nan")
            )
        bins.append(entry)
    return {"edges": [float(e) for e in edges], "bins": bins}


def group_by_occlusion_rate(
    per_video: Sequence[Mapping[str, object]],
    occlusion_rates: Sequence[float],
    edges: Sequence[float] | str = "tertiles",
) -> list[dict]:
    """Paper Fig. 6 protocol: group *videos* by occlusion rate and average their metrics per group.

    Args:
        per_video: per-video metric dicts (e.g. from :func:`evaluate_tracks`).
        occlusion_rates: each video's :func:`video_occlusion_rate`.
        edges: bin edges, or ``"tertiles"`` for three equal-count groups of videos sorted by rate
            (the paper's "three sets with an increasing rate of occlusion"; its edges are unpublished).

    Returns one dict per group: ``lo``, ``hi``, ``num_videos`` and the mean of every scalar metric.
    """
    rates = np.asarray(occlusion_rates, np.float64)
    if rates.shape != (len(per_video),):
        raise ValueError(
            f"need one occlusion rate per video: {len(per_video)} videos, rates shape {rates.shape}"
        )
    if isinstance(edges, str):
        if edges != "tertiles":
            raise ValueError(f"edges must be a sequence or 'tertiles', got {edges!r}")
        order = np.argsort(rates, kind="stable")
        groups = [np.sort(g) for g in np.array_split(order, 3)]
    else:
        which = _bin_index(rates, edges)
        groups = [np.flatnonzero(which == i) for i in range(len(edges) - 1)]
    out = []
    for i, g in enumerate(groups):
        if isinstance(edges, str):
            lo, hi = (
                (float(rates[g].min()), float(rates[g].max())) if g.size else (float("nan"), float("nan"))
            )
        else:
            lo, hi = float(edges[i]), float(edges[i + 1])
        entry = {"lo": lo, "hi": hi, "num_videos": int(g.size)}
        if g.size:
            entry.update(mean_over_videos([per_video[j] for j in g]))
        out.append(entry)
    return out
