"""DINO-Tracker losses (spec §4.3), each a pure function of tensors.

Coordinates are model-resolution raster (x, y) px (see :mod:`dinotracker.geometry`). Feature
maps are patch-grid maps (cell k at ``stride*k + patch/2``). Everything is computed in fp32, also
under autocast (bf16-mixed training): the cosine matmuls run with autocast disabled, as the
tracker's cost volume does, since ``.float()`` alone does not stop autocast from casting a matmul.

Reference normalisations (spec M10/M11) are reproduced by default and switchable:

* flow: mean over the batch and both coordinates of Huber(delta=1/32) on coordinates
  normalised as ``2 x / (W - 1) - 1`` (the reference's RangeNormalizer); one direction per
  sample (M11) - pass both directions concatenated for the paper's form.
* DINO-BB: ``(sum w l_st / 700 + sum w l_ts / 700) / 2``; ``divisor=None`` gives the paper's
  mean over pairs. Refined-BB: ``sum w (l_st + l_ts) / (2 * 900)``, same switch.
* cycle: ``(mean(w H_fwd) + mean(w H_bwd)) / 2``; ``reduction="sum"`` gives paper Eq. 4.
* prior: mean over all positions of ``|‖F‖/‖Φ‖ - 1|`` and ``|cos(F, Φ) - 1|``.

Typical use in a training step (λ from spec §4.3 / §8)::

    L = flow_loss(...) + 2.5e-4 * dino_bb_loss(...) + prior_loss(F, Φ, 1e-4, 1e-4)
        + [step >= 5000] * (0.5 * cycle_consistency_loss(...) + 5e-5 * refined_bb_loss(...))
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from dinotracker.geometry import patch_center_grid
from dinotracker.models.tracker import grouped_matmul, no_autocast, point_features

COS_EPS = 1e-8


# --------------------------------------------------------------------------- helpers
def _xy_scale(model_hw: tuple[int, int], device, dtype=torch.float32) -> torch.Tensor:
    """Pixel -> reference-normalised units: (2/(W-1), 2/(H-1)) (RangeNormalizer over W-1, H-1)."""
    h, w = model_hw
    if h < 2 or w < 2:
        raise ValueError(f"model_hw must be at least 2x2, got {model_hw}")
    # made on the device from Python scalars: a host tensor (torch.tensor) would be a host-to-device copy
    first = torch.arange(2, device=device) == 0
    return torch.where(first, torch.full((2,), 2.0 / (w - 1), device=device, dtype=dtype), 2.0 / (h - 1))


def _check_xy(name: str, xy: torch.Tensor) -> None:
    if xy.dim() < 1 or xy.shape[-1] != 2:
        raise ValueError(f"{name} must be [..., 2] (x, y), got {tuple(xy.shape)}")


def normalized_huber(pred_xy: torch.Tensor, target_xy: torch.Tensor, model_hw: tuple[int, int],
                     huber_delta: float = 1.0 / 32) -> torch.Tensor:
    """Elementwise Huber [..., 2] between raster points, in the reference's normalised units.

    The constant offset between raster and the reference's pixel-index convention cancels
    in the difference; only the scale 2/(W-1), 2/(H-1) matters. delta=1/32 is ≈13.3 px in x
    and ≈7.4 px in y at 476x854 (anisotropic, as in the reference).
    """
    _check_xy("pred_xy", pred_xy)
    _check_xy("target_xy", target_xy)
    if pred_xy.shape != target_xy.shape:
        raise ValueError(f"pred_xy {tuple(pred_xy.shape)} and target_xy {tuple(target_xy.shape)} differ")
    s = _xy_scale(model_hw, pred_xy.device)
    diff = (pred_xy.float() - target_xy.float()) * s
    return F.huber_loss(diff, torch.zeros_like(diff), reduction="none", delta=huber_delta)


# --------------------------------------------------------------------------- flow
def flow_loss(pred_xy: torch.Tensor, target_xy: torch.Tensor, model_hw: tuple[int, int],
              huber_delta: float = 1.0 / 32, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Trajectory (optical-flow) loss: mean over [..., 2] of Huber_δ in normalised units.

    pred_xy, target_xy: [..., 2] raster model px (prediction P_{t1->t2}(x1) and label x2).
    weights: optional [...] per-point weights (mean of ``w * H``). Returns a scalar.
    """
    h = normalized_huber(pred_xy, target_xy, model_hw, huber_delta)
    if h.numel() == 0:
        return pred_xy.sum() * 0.0
    if weights is not None:
        if weights.shape != h.shape[:-1]:
            raise ValueError(f"weights must be {tuple(h.shape[:-1])}, got {tuple(weights.shape)}")
        h = h * weights.float()[..., None]
    return h.mean()


# --------------------------------------------------------------------------- contrastive
def _pair_cosines(query: torch.Tensor, maps: torch.Tensor, map_index: torch.Tensor,
                  eps: float = COS_EPS, counts: tuple[int, ...] | None = None) -> torch.Tensor:
    """Cosine of query [M, C] with every cell of maps[map_index[m]] -> [M, h*w], fp32.

    The reference divides dot products by ``max(‖a‖‖b‖, eps)``, without a normalised copy
    of the maps; so does this (per distinct map, no [M, C, h, w] gather). ``counts``: the rows per
    map, known on the host (:func:`~dinotracker.models.tracker.grouped_matmul`).
    """
    f, c, h, w = maps.shape
    with no_autocast(query.device):
        q = query.float()
        t = maps.float().reshape(f, c, h * w)
        dots = grouped_matmul(q, t, map_index, counts)  # one matmul per distinct map, no [M, C, h, w] gather
        return dots / (q.norm(dim=-1)[:, None] * t.norm(dim=1)[map_index]).clamp_min(eps)


def _resolve_maps(target_maps: torch.Tensor, map_index: torch.Tensor | None, m: int) -> tuple:
    if target_maps.dim() == 3:
        target_maps = target_maps[None]
        map_index = torch.zeros(m, dtype=torch.long, device=target_maps.device)
    if target_maps.dim() != 4:
        raise ValueError(f"target_maps must be [C, h, w], [M, C, h, w] or [F, C, h, w], got "
                         f"{tuple(target_maps.shape)}")
    if map_index is None:
        if target_maps.shape[0] != m:
            raise ValueError(f"target_maps has {target_maps.shape[0]} maps for {m} queries; pass map_index")
        map_index = torch.arange(m, device=target_maps.device)
    if map_index.shape != (m,):
        raise ValueError(f"map_index must be [{m}], got {tuple(map_index.shape)}")
    if m:  # checked on the device (no host sync): a RuntimeError on CPU, a device-side assert on a GPU
        torch._assert_async(((map_index >= 0) & (map_index < target_maps.shape[0])).all(),
                            f"map_index out of range [0, {target_maps.shape[0]})")
    return target_maps, map_index.long()


def info_nce_terms(query_features: torch.Tensor, target_maps: torch.Tensor, target_xy: torch.Tensor,
                   patch: int, stride: int, temperature: float = 0.1,
                   map_index: torch.Tensor | None = None, rows: torch.Tensor | None = None,
                   map_counts: tuple[int, ...] | None = None) -> torch.Tensor:
    """Per-pair InfoNCE l [M] (paper Sec. 3.3): ``-log exp(cos(q, f_t)/τ) / Σ_n exp(cos(q, T[n])/τ)``.

    query_features [M, C] (the source point's feature); target_maps [M, C, h, w], or [C, h, w]
    shared, or [F, C, h, w] with ``map_index`` [M]; target_xy [M, 2] raster px of the partner.
    ``f_t`` is the target map bilinearly sampled at target_xy (the cell itself for BB pairs,
    which sit on patch centres); the denominator runs over all h*w cells, including the
    positive, as in the paper and the reference. Computed with logsumexp (the reference's
    ``-log(exp/Σexp)`` is the same value, less stable). ``rows`` (:func:`point_rows` of the [F, C, h, w]
    maps) samples f_t with :func:`gather_points` (same values, a row-gather backward). ``map_counts``:
    how many rows use each map, known on the host (see :func:`_pair_cosines`).
    """
    if query_features.dim() != 2:
        raise ValueError(f"query_features must be [M, C], got {tuple(query_features.shape)}")
    _check_xy("target_xy", target_xy)
    m = query_features.shape[0]
    if target_xy.shape != (m, 2):
        raise ValueError(f"target_xy must be [{m}, 2], got {tuple(target_xy.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    maps, idx = _resolve_maps(target_maps, map_index, m)
    if maps.shape[1] != query_features.shape[1]:
        raise ValueError(f"channel mismatch: query C={query_features.shape[1]}, maps C={maps.shape[1]}")
    if m == 0:
        return query_features.new_zeros(0, dtype=torch.float32)
    pos_f = point_features(maps, idx, target_xy, patch, stride, rows).float()
    q = query_features.float()
    pos = (q * pos_f).sum(-1) / (q.norm(dim=-1) * pos_f.norm(dim=-1)).clamp_min(COS_EPS)
    logits = _pair_cosines(query_features, maps, idx, counts=map_counts) / temperature
    return torch.logsumexp(logits, dim=-1) - pos / temperature


def _reduce(values: torch.Tensor, weights: torch.Tensor | None, divisor: float | None,
            valid: torch.Tensor | None = None) -> torch.Tensor:
    """``Σ w v / divisor`` or ``mean(w v)``; ``valid`` (bool, like ``values``) restricts both to the valid
    entries as masks (the mean divides by their count, at least 1): the subset's value without indexing it."""
    if weights is not None:
        if weights.shape != values.shape:
            raise ValueError(f"weights must be {tuple(values.shape)}, got {tuple(weights.shape)}")
        values = values * weights.float()
    if valid is not None:
        if valid.shape != values.shape:
            raise ValueError(f"valid must be {tuple(values.shape)}, got {tuple(valid.shape)}")
        values = values * valid.to(values.dtype)
    if values.numel() == 0:
        return values.sum()
    if divisor is not None:
        if divisor <= 0:
            raise ValueError(f"divisor must be > 0, got {divisor}")
        return values.sum() / divisor
    if valid is not None:
        return values.sum() / valid.sum().clamp(min=1).to(values.dtype)
    return values.mean()


def info_nce_loss(query_features: torch.Tensor, target_maps: torch.Tensor, target_xy: torch.Tensor,
                  patch: int, stride: int, temperature: float = 0.1, weights: torch.Tensor | None = None,
                  divisor: float | None = None, map_index: torch.Tensor | None = None) -> torch.Tensor:
    """One-direction weighted InfoNCE: ``Σ w l / divisor`` (reference) or ``mean(w l)`` (divisor None).

    Shapes as :func:`info_nce_terms`; weights [M]. Empty input gives 0. For the symmetric
    best-buddy losses use :func:`dino_bb_loss` / :func:`refined_bb_loss`.
    """
    terms = info_nce_terms(query_features, target_maps, target_xy, patch, stride, temperature, map_index)
    return _reduce(terms, weights, divisor)


def _symmetric_bb(maps, src_index, src_xy, dst_index, dst_xy, weights, patch, stride, temperature, divisor,
                  rows=None, src_counts=None, dst_counts=None, valid=None):
    for name, t in (("src_xy", src_xy), ("dst_xy", dst_xy)):
        _check_xy(name, t)
    m = src_xy.shape[0]
    if maps.dim() != 4 or src_index.shape != (m,) or dst_index.shape != (m,) or dst_xy.shape != (m, 2):
        raise ValueError(f"expected maps [F, C, h, w], src/dst_index [M], src/dst_xy [M, 2]; got "
                         f"{tuple(maps.shape)}, {tuple(src_index.shape)}, {tuple(dst_index.shape)}, "
                         f"{tuple(src_xy.shape)}, {tuple(dst_xy.shape)}")
    if m == 0:
        return maps.sum() * 0.0
    f_src = point_features(maps, src_index.long(), src_xy, patch, stride, rows)
    f_dst = point_features(maps, dst_index.long(), dst_xy, patch, stride, rows)
    l_st = info_nce_terms(f_src, maps, dst_xy, patch, stride, temperature, dst_index.long(), rows, dst_counts)
    l_ts = info_nce_terms(f_dst, maps, src_xy, patch, stride, temperature, src_index.long(), rows, src_counts)
    return 0.5 * (_reduce(l_st, weights, divisor, valid) + _reduce(l_ts, weights, divisor, valid))


def dino_bb_weights(ratio: torch.Tensor, cos: torch.Tensor, a: float = 27.0, b: float = -5.7) -> torch.Tensor:
    """DINO-BB confidence ``σ(a (1 - r) + b) · max(2 c³, 0)`` (reference sign, spec M3).

    ratio [M] the symmetrised NMS ratio r, cos [M] the raw-DINO BB cosine. The paper writes
    ``σ(a(1 - r) - b)`` with b = -5.7, which is ≥ 0.997 for all r; the code's sign is used.
    """
    return torch.sigmoid(a * (1.0 - ratio.float()) + b) * torch.clamp(2.0 * cos.float() ** 3, min=0.0)


def dino_bb_loss(maps: torch.Tensor, src_index: torch.Tensor, src_xy: torch.Tensor, dst_index: torch.Tensor,
                 dst_xy: torch.Tensor, weights: torch.Tensor | None, patch: int, stride: int,
                 temperature: float = 0.1, divisor: float | None = 700.0, rows: torch.Tensor | None = None,
                 src_counts: tuple[int, ...] | None = None,
                 dst_counts: tuple[int, ...] | None = None) -> torch.Tensor:
    """DINO best-buddies contrastive loss (spec §4.3.2).

    maps [F, C, h, w] refined features of the frame set (with grad); src_index/dst_index int
    [M] into F; src_xy/dst_xy [M, 2] raster px of the BB pair (patch centres); weights [M]
    (:func:`dino_bb_weights`, e.g. ``BestBuddies.weight``). Returns
    ``(Σ w l_st / divisor + Σ w l_ts / divisor) / 2`` (reference, divisor 700) or, with
    ``divisor=None``, ``mean(½ w (l_st + l_ts))`` (paper). l_st is InfoNCE of the source
    feature against every cell of the target frame, l_ts the reverse. ``rows``: see :func:`info_nce_terms`;
    ``src_counts`` / ``dst_counts``: the pairs per frame of ``src_index`` / ``dst_index``, known on the host
    (:func:`~dinotracker.models.tracker.slot_counts`; without them they are counted on the device, a sync).
    """
    return _symmetric_bb(maps, src_index, src_xy, dst_index, dst_xy, weights, patch, stride, temperature,
                         divisor, rows, src_counts, dst_counts)


def refined_bb_loss(maps: torch.Tensor, src_index: torch.Tensor, src_xy: torch.Tensor,
                    dst_index: torch.Tensor, dst_xy: torch.Tensor, affinity: torch.Tensor, patch: int,
                    stride: int, temperature: float = 0.1, divisor: float | None = 900.0,
                    rows: torch.Tensor | None = None, src_counts: tuple[int, ...] | None = None,
                    dst_counts: tuple[int, ...] | None = None, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Refined best-buddies contrastive loss (spec §4.3.3).

    Same inputs as :func:`dino_bb_loss`, with ``affinity`` [M] the refined cosine of each pair
    (from :func:`refined_best_buddies`); weights ``max(2 ĉ³, 0)``, detached. Returns
    ``Σ w (l_st + l_ts) / (2 · divisor)`` (reference, 900) or the paper's mean (divisor None).
    ``valid`` bool [M]: only these pairs count (a fixed-size candidate list with masked-out slots, e.g.
    from :func:`best_buddy_mask`; the mean then runs over the valid pairs); the value is that of the valid
    subset alone. ``rows``, ``src_counts``, ``dst_counts``: see :func:`dino_bb_loss`.
    """
    w = torch.clamp(2.0 * affinity.detach().float() ** 3, min=0.0)
    return _symmetric_bb(maps, src_index, src_xy, dst_index, dst_xy, w, patch, stride, temperature, divisor, rows,
                         src_counts, dst_counts, valid)


class BestBuddyPairs(NamedTuple):
    """Mutual nearest neighbours between two patch-grid maps (K pairs)."""

    src_xy: torch.Tensor  # [K, 2] raster px (patch centres)
    dst_xy: torch.Tensor  # [K, 2]
    affinity: torch.Tensor  # [K] cosine of the pair
    src_cell: torch.Tensor  # [K] flat cell index (row * w + col)
    dst_cell: torch.Tensor  # [K]


@torch.no_grad()
def best_buddy_mask(refined_maps_src: torch.Tensor, refined_maps_dst: torch.Tensor, chunk: int = 4096,
                    eps: float = COS_EPS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best buddies (paper Eq. 3) as fixed-size per-cell arrays: maps [C, h, w] x [C, h', w'] ->
    (mutual bool [h*w], partner int64 [h*w], affinity fp32 [h*w]), no grad, no host sync.

    ``partner[i]`` = argmax_j A[i, j] (the nearest dst cell of src cell i), ``affinity[i]`` its cosine
    A[i, partner[i]], and ``mutual[i]`` says that i is also the nearest src cell of ``partner[i]``: the
    buddies are the cells where ``mutual`` holds (:func:`refined_best_buddies` lists them). A is the cosine
    (dot / max(‖a‖‖b‖, eps), as the reference), built ``chunk`` rows at a time so only [chunk, h'w']
    affinities exist at once (the reference builds the full 8107x8107 matrix). Ties resolve to the first
    index, like ``torch.argmax``. With src == dst every cell is its own buddy (the reference allows s = t).
    """
    if refined_maps_src.dim() != 3 or refined_maps_dst.dim() != 3 or \
            refined_maps_src.shape[0] != refined_maps_dst.shape[0]:
        raise ValueError(f"expected two maps [C, h, w] with equal C, got {tuple(refined_maps_src.shape)} and "
                         f"{tuple(refined_maps_dst.shape)}")
    c = refined_maps_src.shape[0]
    s = refined_maps_src.float().reshape(c, -1).T  # [n, C]
    d = refined_maps_dst.float().reshape(c, -1)  # [C, m]
    sn, dn = s.norm(dim=1), d.norm(dim=0)
    n, m = s.shape[0], d.shape[1]
    row_arg = torch.empty(n, dtype=torch.long, device=s.device)
    row_max = torch.empty(n, dtype=torch.float32, device=s.device)
    col_max = torch.full((m,), -float("inf"), device=s.device)
    col_arg = torch.zeros(m, dtype=torch.long, device=s.device)
    for i in range(0, n, max(1, int(chunk))):
        with no_autocast(s.device):  # fp32 affinities under autocast: bf16 would flip near-tied argmaxes
            a = (s[i:i + chunk] @ d) / (sn[i:i + chunk, None] * dn[None]).clamp_min(eps)
        row_max[i:i + chunk], row_arg[i:i + chunk] = a.max(dim=1)
        cmax, carg = a.max(dim=0)
        better = cmax > col_max  # strict: keep the earliest row on ties
        col_max = torch.where(better, cmax, col_max)
        col_arg = torch.where(better, carg + i, col_arg)
    mutual = col_arg[row_arg] == torch.arange(n, device=s.device)
    return mutual, row_arg, row_max


@torch.no_grad()
def refined_best_buddies(refined_maps_src: torch.Tensor, refined_maps_dst: torch.Tensor, patch: int,
                         stride: int, chunk: int = 4096, eps: float = COS_EPS) -> BestBuddyPairs:
    """Best buddies (paper Eq. 3) on refined maps [C, h, w] x [C, h', w'], no grad: the K cells where
    :func:`best_buddy_mask` holds, with their partners' patch centres (K is data-dependent: listing them
    reads the mask back; the training step keeps the fixed-size mask instead).

    Cell i of src and j of dst are buddies when j = argmax_j A[i, :] and i = argmax_i A[:, j],
    A the cosine (dot / max(‖a‖‖b‖, eps), as the reference). Ties resolve to the first index, like
    ``torch.argmax``. Note: with src == dst every cell is its own buddy (the reference allows s = t).
    """
    mutual, partner, affinity = best_buddy_mask(refined_maps_src, refined_maps_dst, chunk, eps)
    dev = mutual.device
    src_cell = torch.nonzero(mutual, as_tuple=True)[0]
    dst_cell = partner[src_cell]
    g_src = patch_center_grid(tuple(refined_maps_src.shape[-2:]), patch, stride, device=dev).reshape(-1, 2)
    g_dst = patch_center_grid(tuple(refined_maps_dst.shape[-2:]), patch, stride, device=dev).reshape(-1, 2)
    return BestBuddyPairs(g_src[src_cell], g_dst[dst_cell], affinity[src_cell], src_cell, dst_cell)


# --------------------------------------------------------------------------- cycle consistency
class CycleLabels(NamedTuple):
    """Pseudo-labels for the cycle loss (all detached)."""

    keep: torch.Tensor  # [M] bool, cycle error <= threshold
    error: torch.Tensor  # [M] cycle error in model px
    weights: torch.Tensor  # [M] decay ** error


@torch.no_grad()
def cycle_pseudo_labels(src_xy: torch.Tensor, fwd_xy: torch.Tensor, back_xy: torch.Tensor,
                        threshold: float = 4.0, decay: float = 0.8) -> CycleLabels:
    """Cycle-consistency filter (spec §4.3.4): e = ‖x̃_s - x_s‖, keep e <= threshold, w = decay^e.

    src_xy [M, 2] the sampled source points x_s; fwd_xy [M, 2] x̂_t = P_{s->t}(x_s) and
    back_xy [M, 2] x̃_s = P_{t->s}(x̂_t), both from the *labeller* (the current model, no
    grad, as the reference; or a lagged/EMA copy, which makes the forward term non-zero).
    All in raster model px. ``fwd_xy`` is the forward pseudo-label; pass it (and the
    returned weights/keep) to :func:`cycle_consistency_loss`.
    """
    for name, t in (("src_xy", src_xy), ("fwd_xy", fwd_xy), ("back_xy", back_xy)):
        _check_xy(name, t)
    if not (src_xy.shape == fwd_xy.shape == back_xy.shape):
        raise ValueError(f"shapes differ: {tuple(src_xy.shape)}, {tuple(fwd_xy.shape)}, "
                         f"{tuple(back_xy.shape)}")
    err = (back_xy.float() - src_xy.float()).norm(dim=-1)
    return CycleLabels(err <= threshold, err, torch.pow(float(decay), err))  # a Python base: no host tensor


def cycle_consistency_loss(pred_fwd_xy: torch.Tensor, pred_bwd_xy: torch.Tensor, src_xy: torch.Tensor,
                           pseudo_xy: torch.Tensor, weights: torch.Tensor, model_hw: tuple[int, int],
                           huber_delta: float = 1.0 / 32, keep: torch.Tensor | None = None,
                           reduction: str = "mean") -> torch.Tensor:
    """Cycle-consistency loss (paper Eq. 4; reference ``get_cycle_consistency_loss``).

    pred_fwd_xy [M, 2] = P_{s->t}(x_s) and pred_bwd_xy [M, 2] = P_{t->s}(x̂_t), both with grad
    (the backward query is the pseudo-label x̂_t itself); src_xy [M, 2] x_s; pseudo_xy [M, 2]
    x̂_t; weights [M] (0.8^e from :func:`cycle_pseudo_labels`); keep [M] bool drops points
    over the threshold (as a mask: the kept points' value, with no host sync). Raster model px; Huber in
    normalised units.
    ``reduction="mean"`` (reference): ``(mean(w H(fwd - x̂_t)) + mean(w H(bwd - x_s))) / 2`` with
    means over points and both coordinates. ``"sum"`` (paper): ``Σ ½ w (H_fwd + H_bwd)``.
    With pseudo-labels from the current model the forward term is identically zero (spec §4.3).
    Returns 0 (still attached to the graph) when no point is kept.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    m = src_xy.shape[0]
    if weights.shape != (m,) or (keep is not None and keep.shape != (m,)):
        raise ValueError(f"weights/keep must be [{m}], got {tuple(weights.shape)}"
                         f"{'' if keep is None else ', ' + str(tuple(keep.shape))}")
    h_fwd = normalized_huber(pred_fwd_xy, pseudo_xy.detach(), model_hw, huber_delta)
    h_bwd = normalized_huber(pred_bwd_xy, src_xy.detach(), model_hw, huber_delta)
    w = weights.detach().float()[:, None]
    if m == 0:
        return (pred_fwd_xy.sum() + pred_bwd_xy.sum()) * 0.0
    if keep is None:
        if reduction == "sum":
            return 0.5 * (w * (h_fwd + h_bwd)).sum()
        return 0.5 * ((w * h_fwd).mean() + (w * h_bwd).mean())
    # the kept subset's value as masked sums (no boolean indexing, no host sync); no kept point gives 0
    # with zero gradients, as the subset's empty sum did
    w = w * keep[:, None].to(w.dtype)
    if reduction == "sum":
        return 0.5 * (w * (h_fwd + h_bwd)).sum()
    n = (2 * keep.sum()).clamp(min=1).to(w.dtype)  # elements of the subset's means (2 coordinates per point)
    return 0.5 * ((w * h_fwd).sum() / n + (w * h_bwd).sum() / n)


# --------------------------------------------------------------------------- prior
def prior_terms(refined: torch.Tensor, raw: torch.Tensor, dim: int = -3, eps: float = COS_EPS,
                valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_norm, L_angle) of refined F vs raw Φ, channel axis ``dim`` ([..., C, h, w] by default).

    L_norm = mean |‖F‖ / ‖Φ‖ - 1|, L_angle = mean |cos(F, Φ) - 1|, means over all other
    positions (all cells of all frames). Denominators are clamped at ``eps`` (the reference
    divides unguarded; a zero raw feature, e.g. ``backbone=none``, would give NaN there -
    disable the prior for such backbones). ``valid`` bool [F] (maps [F, C, h, w]): the means run over the
    valid frames only (``data.static_frames`` padding is excluded), as masked sums.
    """
    if refined.shape != raw.shape:
        raise ValueError(f"refined {tuple(refined.shape)} and raw {tuple(raw.shape)} differ")
    f, p = refined.float(), raw.detach().float()
    nf, npr = f.norm(dim=dim), p.norm(dim=dim)
    d_norm = (nf / npr.clamp_min(eps) - 1.0).abs()
    cos = (f * p).sum(dim=dim) / (nf * npr).clamp_min(eps)
    d_angle = (cos - 1.0).abs()
    if valid is None:
        return d_norm.mean(), d_angle.mean()
    if valid.shape != d_norm.shape[:1]:
        raise ValueError(f"valid must be [{d_norm.shape[0]}] (one flag per frame), got {tuple(valid.shape)}")
    w = valid.to(d_norm.dtype).reshape(-1, *([1] * (d_norm.dim() - 1)))
    n = w.sum() * (d_norm[0].numel())
    return (w * d_norm).sum() / n, (w * d_angle).sum() / n


def prior_loss(refined: torch.Tensor, raw: torch.Tensor, norm_weight: float = 1.0, angle_weight: float = 1.0,
               dim: int = -3) -> torch.Tensor:
    """Prior preservation ``norm_weight * L_norm + angle_weight * L_angle`` (spec §4.3.5).

    Reference: λ_norm = λ_angle = 1e-4 (pass them here, or weight :func:`prior_terms` yourself).
    """
    l_norm, l_angle = prior_terms(refined, raw, dim)
    return norm_weight * l_norm + angle_weight * l_angle
