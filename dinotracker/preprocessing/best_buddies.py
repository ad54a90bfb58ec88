"""DINO best-buddies (DINO_TRACKER_SPEC §2.5): mutual nearest neighbours, flow filter, ambiguity weights.

Pipeline (:func:`compute_best_buddies`):

1. :func:`mutual_nearest_neighbours` - cosine mutual NNs between the patch features of every
   *unordered* frame pair ``s < t``. The reference computes every ordered pair (each affinity twice);
   row- and column-maxima of one affinity give both directions, so each pair is computed once.
2. :func:`filter_by_trajectories` - drop pairs that the optical-flow trajectories already connect
   (spec §2.5 5b/5c).
3. :func:`ambiguity_ratio` and :func:`bb_weight` - NMS ambiguity ratio r (spec §2.5 5d) and the loss
   weight ``sigmoid(a (1 - r) + b) * max(2 cos^3, 0)``.

Conventions: features are ``[T, C, h, w]`` on a ViT patch grid; cell ``(row, col)`` has its centre at
raster ``(x, y) = (stride*col + patch/2, stride*row + patch/2)`` (model resolution,
:func:`dinotracker.geometry.patch_center_grid`). Cosines use unit vectors ``f / max(|f|, 1e-8)``.
Work runs on ``device``; returned :class:`BestBuddies` tensors are on the CPU (small bookkeeping data).

Tie rule (documented, tested): every arg-max / arg-min returns the **first** (lowest) index among equal
values, i.e. the lowest raster index ``row*w + col`` for best buddies and the lowest trajectory index for
the nearest trajectory.

Flow-filter lookup point (``query_shift``, default :data:`REFERENCE_QUERY_SHIFT` = 0.5 px): the reference
keeps trajectories in pixel indices and looks the nearest one up at pixel index ``7 + 7k``, which is raster
``7.5 + 7k``; our raster patch centre ``7 + 7k`` lies exactly between four pixel centres, where trajectories
seeded on the pixel grid are equidistant and the lowest index (up-left) would win 4-way ties. The lookup
therefore adds ``query_shift`` to x and y (0.0 = the geometric patch centre with lowest-index ties).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from dinotracker.geometry import patch_center_grid
from dinotracker.preprocessing.types import BestBuddies

_EPS = 1e-8
REFERENCE_QUERY_SHIFT = 0.5  # px: the reference's nearest-trajectory lookup point, raster patch centre + 0.5


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

def _check_features(features: torch.Tensor, patch: int, stride: int) -> None:
    if not isinstance(features, torch.Tensor) or features.dim() != 4:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"features must be a [T, C, h, w] tensor, got {shape}")
    if features.shape[1] < 1 or features.shape[2] < 1 or features.shape[3] < 1:
        raise ValueError(f"features must have C, h, w >= 1, got {tuple(features.shape)}")
    if int(patch) <= 0 or int(stride) <= 0:
        raise ValueError(f"patch and stride must be positive, got patch={patch}, stride={stride}")


def _unit_tokens(features: torch.Tensor, device, frames: Sequence[int] | None = None) -> torch.Tensor:
    """[T, C, h, w] (any float dtype) -> float32 unit vectors [T', h*w, C] on ``device``.

    Converted one frame at a time so a float16 cache never exists twice in float32.
    """
    T, C, h, w = features.shape
    frames = range(T) if frames is None else frames
    out = torch.empty(len(frames), h * w, C, dtype=torch.float32, device=device)
    for k, t in enumerate(frames):
        f = features[t].to(device=device, dtype=torch.float32).reshape(C, h * w).T
        out[k] = f / f.norm(dim=1, keepdim=True).clamp_min(_EPS)
    return out


def _canonical_pairs(pairs, T: int, device) -> torch.Tensor:
    """All pairs s < t (None) or the given ones, sorted to (min, max), de-duplicated -> int64 [P, 2]."""
    if pairs is None:
        return torch.triu_indices(T, T, offset=1).T.contiguous()
    p = torch.as_tensor(list(pairs), dtype=torch.long).reshape(-1, 2)
    if p.numel() == 0:
        return p
    if (p < 0).any() or (p >= T).any():
        raise ValueError(f"frame pairs must index [0, {T}), got min {int(p.min())}, max {int(p.max())}")
    if (p[:, 0] == p[:, 1]).any():
        raise ValueError("frame pairs must have s != t (a frame is its own trivial best buddy)")
    p = torch.sort(p, dim=1).values
    p = torch.unique(p, dim=0)  # lexicographic order: groups pairs by source frame
    return p


def _progress(it, enabled: bool, desc: str, total: int | None = None):
    if not enabled:
        return it
    from dinotracker.utils.progress import progress_iter  # a bar on a terminal, log lines otherwise

    return progress_iter(it, desc=desc, total=total, leave=False)


def _grid_info(features: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """[h*w, 2] raster patch centres in raster order (row-major, like ``reshape(C, h*w)``)."""
    h, w = features.shape[-2:]
    return patch_center_grid((h, w), patch, stride).reshape(-1, 2)


def _xy_to_cell(xy: torch.Tensor, grid_hw: tuple[int, int], patch: int, stride: int) -> torch.Tensor:
    """Patch-centre raster (x, y) [M, 2] -> flat cell index row*w + col [M] (rounded, validated)."""
    h, w = grid_hw
    cr = torch.round((xy - patch / 2.0) / stride).long()
    col, row = cr[:, 0], cr[:, 1]
    if xy.numel() and ((col < 0).any() or (col >= w).any() or (row < 0).any() or (row >= h).any()):
        raise ValueError(f"best-buddy coordinates fall outside the {h}x{w} patch grid "
                         f"(patch={patch}, stride={stride}); were they computed on these features?")
    return row * w + col


def _not_connected(tr: torch.Tensor, frame, exists: torch.Tensor) -> torch.Tensor:
    """Trajectory ``tr`` (-1: none) does not exist at ``frame`` (spec §2.5 5c condition)."""
    return ~(exists[tr.clamp_min(0), frame] & (tr >= 0))


def _select(bb: BestBuddies, keep: torch.Tensor) -> BestBuddies:
    keep = keep.cpu()
    return BestBuddies(*(getattr(bb, k)[keep] for k in
                         ("src_t", "dst_t", "src_xy", "dst_xy", "cos", "ratio", "weight")))


# ----------------------------------------------------------------------------------------------
# 1. mutual nearest neighbours
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def mutual_nearest_neighbours(features: torch.Tensor, patch: int, stride: int,
                              pairs: list[tuple[int, int]] | None = None, pair_batch: int = 8,
                              device="cpu", progress: bool = True, with_ratio: bool = False,
                              topk: int = 400, box_half: float = 30.0, iou: float = 0.2,
                              chunk: int = 2048, _connected=None) -> BestBuddies:
    """Cosine mutual nearest neighbours (paper Eq. 3) for every unordered frame pair ``s < t``.

    features: [T, C, h, w] patch features (any float dtype; computed in float32 on ``device``).
    pairs:    optional frame pairs; each is treated as unordered (stored with src_t < dst_t).
    pair_batch: pairs per affinity batch; peak extra memory ~ ``pair_batch * (h*w)^2 * 4`` bytes
              (8 pairs: 138 MB on a 34x61 grid, 2.1 GB on 67x121), twice that with ``with_ratio``.

    Cell i of frame s and cell j of frame t are best buddies when ``j = argmax_j' A[i, j']`` and
    ``i = argmax_i' A[i', j]`` for A the cosine affinity; ties take the first (lowest raster) index.
    Returns coords as patch-centre raster (x, y) at model resolution and ``cos`` = A[i, j].
    Without ``with_ratio``: ``ratio`` = 0 and the provisional ``weight`` = :func:`bb_weight` (0, cos).
    With ``with_ratio``: the NMS ratio of :func:`ambiguity_ratio` (``topk``, ``box_half``, ``iou``) is
    computed from the same affinity (row i is the s->t cosine map, column j the t->s map), so it costs no
    extra matmul; ``weight`` = :func:`bb_weight` (r, cos) with the default a, b.
    """
    _check_features(features, patch, stride)
    if int(pair_batch) < 1:
        raise ValueError(f"pair_batch must be >= 1, got {pair_batch}")
    T = features.shape[0]
    P = _canonical_pairs(pairs, T, "cpu")
    if P.shape[0] == 0:
        return BestBuddies.empty()
    F = _unit_tokens(features, device)  # [T, N, C]
    N, C = F.shape[1], F.shape[2]
    centers = _grid_info(features, patch, stride)
    ar = torch.arange(N, device=device)
    if with_ratio:
        _check_nms_args(topk, box_half, iou)
        ok_table = _nms_keep_table(features.shape[-2:], patch, stride, box_half, iou, device)
        k = min(int(topk), N)

    out_s, out_t, out_i, out_j, out_c, out_r = [], [], [], [], [], []
    batches = range(0, P.shape[0], int(pair_batch))
    for b0 in _progress(batches, progress, "best buddies", total=len(batches)):
        pb = P[b0:b0 + int(pair_batch)]
        # one GEMM per source frame in the batch: [N, n_t*N] (rows: source cells, cols: target cells)
        for s in torch.unique(pb[:, 0]).tolist():
            ts = pb[pb[:, 0] == s, 1]
            n_t = ts.shape[0]
            A = F[s] @ F[ts.to(device)].reshape(n_t * N, C).T  # [N, n_t*N]
            A3 = A.view(N, n_t, N)
            row_val, row_idx = A3.max(dim=-1)  # [N, n_t]: best target j per source i (first on ties)
            _, col_idx = A.max(dim=0)  # [n_t*N]: best source i per target j; max(0) beats argmax(0) on CPU
            col_idx = col_idx.view(n_t, N)
            back = torch.gather(col_idx, 1, row_idx.T)  # [n_t, N]: best source of each row's best target
            k_idx, i_idx = (back == ar[None, :]).nonzero(as_tuple=True)
            j_idx = row_idx.T[k_idx, i_idx]
            if _connected is not None:  # flow filter before the ratio: no ratio work on dropped pairs
                near, exists = _connected  # [T, N] nearest trajectory per cell (-1 none), [N_tr, T] bool
                t_idx = ts.to(device)[k_idx]
                keep = _not_connected(near[s, i_idx], t_idx, exists) & _not_connected(near[t_idx, j_idx],
                                                                                     s, exists)
                k_idx, i_idx, j_idx = k_idx[keep], i_idx[keep], j_idx[keep]
            cos = row_val.T[k_idx, i_idx]
            if with_ratio:
                # t -> s maps are columns of A: one blocked transpose beats strided column gathers
                At = A.T.contiguous()  # [n_t*N, N]
                r = torch.empty_like(cos)
                for c0 in range(0, cos.shape[0], int(chunk)):
                    sl = slice(c0, c0 + int(chunk))
                    ki, ii, jj, cc = k_idx[sl], i_idx[sl], j_idx[sl], cos[sl]
                    r_st = _ratio_from_sims(A3[ii, ki], jj, cc, ok_table, k)  # s -> t: row i
                    r_ts = _ratio_from_sims(At[ki * N + jj], ii, cc, ok_table, k)  # t -> s: column j
                    r[sl] = torch.maximum(r_st, r_ts)
                out_r.append(r.float().cpu())
                del At
            out_s.append(torch.full_like(k_idx, s).cpu())
            out_t.append(ts[k_idx.cpu()])
            out_i.append(i_idx.cpu())
            out_j.append(j_idx.cpu())
            out_c.append(cos.float().cpu())
            del A, A3
    src_t = torch.cat(out_s).long()
    if src_t.numel() == 0:
        return BestBuddies.empty()
    cos = torch.cat(out_c)
    ratio = torch.cat(out_r) if with_ratio else torch.zeros_like(cos)
    i, j = torch.cat(out_i), torch.cat(out_j)
    return BestBuddies(src_t=src_t, dst_t=torch.cat(out_t).long(), src_xy=centers[i].float(),
                       dst_xy=centers[j].float(), cos=cos, ratio=ratio, weight=bb_weight(ratio, cos))


# ----------------------------------------------------------------------------------------------
# 2. optical-flow filter
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def nearest_trajectory(tracks: torch.Tensor, t: int, points: torch.Tensor, device="cpu",
                       max_elems: int = 1 << 22, tile: int = 64, probe: int = 4096) -> torch.Tensor:
    """Index of the nearest trajectory at frame ``t`` to each raster point -> int64 [Q] (-1: none exists).

    tracks: [N, T, 2] raster (x, y), NaN where absent (absent = infinitely far). points: [Q, 2].
    Euclidean distance, no cap, ties -> lowest trajectory index (the reference's argmin).
    Exact. On CPU with many trajectories, with pruning: queries are processed in spatial tiles; an upper
    bound on each query's nearest distance (from a strided probe subset of the trajectories) limits the
    candidates of a tile to a box. Otherwise (few trajectories, or a GPU) one brute-force scan. Candidates
    are scanned in ascending index order in chunks of ``max_elems`` distances (bounded memory).
    """
    points = points.to(device=device, dtype=torch.float32)
    Q = points.shape[0]
    out = torch.full((Q,), -1, dtype=torch.long, device=device)
    pos = tracks[:, t].to(device=device, dtype=torch.float32)
    valid = ~torch.isnan(pos).any(dim=1)
    idx = valid.nonzero(as_tuple=True)[0]  # ascending: argmin order == trajectory order
    if idx.numel() == 0 or Q == 0:
        return out
    pos = pos[idx]
    n = pos.shape[0]

    def scan(q: torch.Tensor, cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact first-index arg-min of squared distances from q [B, 2] over pos[cand] (ascending)."""
        best_d = torch.full((q.shape[0],), math.inf, device=device)
        best_i = torch.full((q.shape[0],), -1, dtype=torch.long, device=device)
        step = max(1, max_elems // max(1, q.shape[0]))
        for c0 in range(0, cand.shape[0], step):
            c = cand[c0:c0 + step]
            p = pos[c]
            d = (q[:, None, 0] - p[None, :, 0]).square_() + (q[:, None, 1] - p[None, :, 1]).square_()
            v, a = d.min(dim=1)  # first index on ties within the chunk
            better = v < best_d  # strict: an earlier chunk wins ties
            best_d = torch.where(better, v, best_d)
            best_i = torch.where(better, c[a], best_i)
        return best_d, best_i

    # few trajectories, or an accelerator (many small tile kernels cost more than brute force there):
    # one exact chunked scan
    if n <= 16 * probe or Q * n <= max_elems or torch.device(device).type != "cpu":
        out[:] = idx[scan(points, torch.arange(n, device=device))[1]]
        return out
    # spatial tiles: sort queries by a coarse cell so each tile is compact
    span = (points.max(0).values - points.min(0).values).clamp_min(1.0)
    cell = torch.sqrt(span[0] * span[1] * tile / max(Q, 1)).clamp_min(1.0)
    cy = torch.floor((points[:, 1] - points[:, 1].min()) / cell).long()
    cx = torch.floor((points[:, 0] - points[:, 0].min()) / cell).long()
    key = cy * (int(cx.max()) + 1) + cx
    order = torch.argsort(key)
    probe_idx = torch.arange(0, n, max(1, n // probe), device=device)
    all_idx = torch.arange(n, device=device)
    for q0 in range(0, Q, tile):
        qi = order[q0:q0 + tile]
        q = points[qi]
        ub, _ = scan(q, probe_idx)  # upper bound on each nearest squared distance
        r = torch.sqrt(ub.max()) * (1 + 1e-5) + 1e-3  # slack so float rounding never drops a tie
        lo, hi = q.min(0).values - r, q.max(0).values + r
        inbox = ((pos >= lo) & (pos <= hi)).all(dim=1)
        cand = all_idx[inbox] if bool(torch.isfinite(r)) else all_idx
        _, bi = scan(q, cand)
        out[qi] = idx[bi]
    return out


@torch.no_grad()
def filter_by_trajectories(bb: BestBuddies, tracks_unfiltered: torch.Tensor, device="cpu",
                           max_elems: int = 1 << 22, query_shift: float = REFERENCE_QUERY_SHIFT) -> BestBuddies:
    """Keep the best buddies that the flow trajectories do not already connect (spec §2.5 5b/5c).

    tracks_unfiltered: [N, T, 2] raster (x, y) at model resolution, NaN where absent.
    For a pair (p_s in frame s, p_t in frame t) let tau_s be the trajectory nearest to p_s at frame s and
    tau_t the one nearest to p_t at frame t (Euclidean, absent = infinitely far, ties -> lowest index).
    The pair is kept iff tau_s does not exist at t AND tau_t does not exist at s (symmetric in s, t).
    If no trajectory exists at a frame there is no nearest one and that condition holds (the reference
    would silently take trajectory 0 there). The nearest trajectory is looked up at the pair's points +
    ``query_shift`` px in x and y (module docstring: 0.5 = the reference's pixel ``7 + 7k``).

    Which set: the paper excludes pairs in Omega_flow, the *filtered* (direct-flow checked) trajectories;
    the reference code uses the *unfiltered* set. The set is an argument (config ``filter_with``).
    Nearest trajectories are computed once per (frame, distinct best-buddy point), then looked up.
    """
    if not isinstance(tracks_unfiltered, torch.Tensor) or tracks_unfiltered.dim() != 3 \
            or tracks_unfiltered.shape[-1] != 2:
        raise ValueError("tracks_unfiltered must be a [N, T, 2] tensor of raster (x, y), NaN where absent")
    if len(bb) == 0:
        return BestBuddies.empty()
    T = tracks_unfiltered.shape[1]
    frames = torch.cat([bb.src_t, bb.dst_t])
    if int(frames.max()) >= T or int(frames.min()) < 0:
        raise ValueError(f"best buddies reference frames outside the trajectories' {T} frames")
    if tracks_unfiltered.shape[0] == 0:
        return bb  # nothing connects anything
    exists = ~torch.isnan(tracks_unfiltered).any(dim=-1)  # [N, T] on the tracks' device
    # distinct (frame, x, y) queries over both endpoints
    ft = torch.cat([bb.src_t, bb.dst_t])
    xy = torch.cat([bb.src_xy, bb.dst_xy]).float()
    keys = torch.cat([ft[:, None].float(), xy + float(query_shift)], dim=1)
    uniq, inv = torch.unique(keys, dim=0, return_inverse=True)
    near = torch.full((uniq.shape[0],), -1, dtype=torch.long)
    ut = uniq[:, 0].long()
    for t in torch.unique(ut).tolist():
        sel = (ut == t).nonzero(as_tuple=True)[0]
        near[sel] = nearest_trajectory(tracks_unfiltered, t, uniq[sel, 1:], device=device,
                                       max_elems=max_elems).cpu()
    M = len(bb)
    near_src, near_dst = near[inv[:M]], near[inv[M:]]
    exists = exists.cpu()

    keep = _not_connected(near_src, bb.dst_t, exists) & _not_connected(near_dst, bb.src_t, exists)
    if not bool(keep.any()):
        return BestBuddies.empty()
    return _select(bb, keep)


# ----------------------------------------------------------------------------------------------
# 3. NMS ambiguity ratio and weights
# ----------------------------------------------------------------------------------------------

def _box_iou_same_size(dxy: torch.Tensor, half: float) -> torch.Tensor:
    """IoU of two axis-aligned squares of side 2*half whose centres differ by dxy [..., 2]."""
    side = 2.0 * half
    ov = (side - dxy.abs()).clamp_min(0).prod(dim=-1)
    return ov / (2 * side * side - ov)


def _check_nms_args(topk, box_half, iou) -> None:
    if int(topk) < 1 or float(box_half) <= 0 or not 0.0 <= float(iou) <= 1.0:
        raise ValueError(f"need topk >= 1, box_half > 0, 0 <= iou <= 1; got {topk}, {box_half}, {iou}")


def _nms_keep_table(grid_hw, patch: int, stride: int, box_half: float, iou: float, device) -> torch.Tensor:
    """bool [N, N]: box of cell b survives NMS against the box of cell a (IoU <= iou, b != a).

    IoU depends only on the row/column offset, so an [h, w] offset table is expanded row-chunk-wise
    (N^2 bytes: 4 MB on 34x61, 66 MB on 67x121).
    """
    h, w = int(grid_hw[0]), int(grid_hw[1])
    dr = torch.arange(h, device=device, dtype=torch.float32) * stride
    dc = torch.arange(w, device=device, dtype=torch.float32) * stride
    off = torch.stack(torch.meshgrid(dc, dr, indexing="xy"), dim=-1)  # [h, w, 2] = (dx, dy)
    ok_off = _box_iou_same_size(off, box_half) <= iou  # [h, w] by (|drow|, |dcol|)
    row = torch.arange(h * w, device=device) // w
    col = torch.arange(h * w, device=device) % w
    table = torch.empty(h * w, h * w, dtype=torch.bool, device=device)
    for a0 in range(0, h * w, 512):
        a = slice(a0, a0 + 512)
        table[a] = ok_off[(row[a, None] - row[None]).abs(), (col[a, None] - col[None]).abs()]
    table.fill_diagonal_(False)
    return table


def _ratio_from_sims(sims: torch.Tensor, top: torch.Tensor, s1: torch.Tensor, ok_table: torch.Tensor,
                     k: int) -> torch.Tensor:
    """NMS ratio r = s2 / s1 from full cosine maps sims [B, N], top peak cell ``top`` [B] (value ``s1``).

    Exact shortcut of greedy NMS over the top-k cells: NMS keeps the top peak; the next kept box is by
    construction the highest candidate not suppressed by it (everything ranked in between was suppressed
    by the only box kept so far). So s2 = max{sims[j] : IoU(box_top, box_j) <= iou}, counted only if
    that cell is among the k highest (at most k cells >= s2: cells tied with it rank first); otherwise
    only one peak survives and s2 = 0. s2 is clamped at 0; r = 0 when s1 <= 0.
    """
    s2 = torch.where(ok_table[top], sims, torch.tensor(-math.inf, device=sims.device)).amax(dim=1)
    found = torch.isfinite(s2)
    if k < sims.shape[1]:  # is that cell among the k highest? (int32 sums: twice as fast as int64)
        found &= (sims >= s2[:, None]).sum(dim=1, dtype=torch.int32) <= k
    s2 = torch.where(found, s2.clamp_min(0.0), torch.zeros_like(s2))
    return torch.where(s1 > 0, s2 / s1.clamp_min(_EPS), torch.zeros_like(s1))


def _ratio_torchvision(sims: torch.Tensor, centers: torch.Tensor, k: int, box_half: float,
                       iou: float) -> torch.Tensor:
    """The same r with top-k + ``torchvision.ops.batched_nms`` (one batch index per row), as the reference."""
    from torchvision.ops import batched_nms

    vals, idx = sims.topk(k, dim=1, sorted=True)
    B = vals.shape[0]
    cxy = centers[idx]
    boxes = torch.cat([cxy - box_half, cxy + box_half], dim=-1).reshape(-1, 4)
    rows = torch.arange(B, device=vals.device).repeat_interleave(k)
    keep = batched_nms(boxes, vals.reshape(-1), rows, iou)
    kept = torch.zeros(B * k, dtype=torch.bool, device=vals.device)
    kept[keep] = True
    masked = torch.where(kept.view(B, k), vals, torch.full_like(vals, -math.inf))
    top = masked.topk(min(2, k), dim=1).values
    s1 = top[:, 0]
    s2 = top[:, 1].clamp_min(0.0) if k > 1 else torch.zeros_like(s1)
    s2 = torch.where(torch.isfinite(s2), s2, torch.zeros_like(s2))
    return torch.where(s1 > 0, s2 / s1.clamp_min(_EPS), torch.zeros_like(s1))


@torch.no_grad()
def ambiguity_ratio(bb: BestBuddies, features: torch.Tensor, patch: int, stride: int, topk: int = 400,
                    box_half: float = 30.0, iou: float = 0.2, chunk: int = 2048, device="cpu",
                    nms: str = "fast", progress: bool = False) -> torch.Tensor:
    """NMS ambiguity ratio r [M] (spec §2.5 5d), symmetrised r = max(r_st, r_ts).

    For each pair and direction: cosine of the source feature against the whole target map, the
    ``min(topk, h*w)`` highest target cells, a square of +-``box_half`` px around each patch centre,
    greedy NMS (suppress IoU > ``iou``, one batch per source point), then r = s2 / s1 of the two best
    surviving peaks. s2 = 0 when only one peak survives; s2 is clamped at 0 (the reference's zero-masking
    does the same whenever a candidate was suppressed) and r = 0 when s1 <= 0 (then cos <= 0 and the
    weight is 0 anyway). ``nms="fast"`` uses the exact top-2 shortcut (:func:`_ratio_from_sims`, no sort),
    ``nms="torchvision"`` runs top-k + ``torchvision.ops.batched_nms``; both give the same r.
    ``chunk`` source points per matmul (memory ~ chunk * h*w * 10 bytes).
    """
    _check_features(features, patch, stride)
    _check_nms_args(topk, box_half, iou)
    if nms not in ("fast", "torchvision"):
        raise ValueError(f"nms must be 'fast' or 'torchvision', got {nms!r}")
    M = len(bb)
    if M == 0:
        return torch.zeros(0)
    T, C, h, w = features.shape
    if int(torch.cat([bb.src_t, bb.dst_t]).max()) >= T:
        raise ValueError(f"best buddies reference frames beyond the {T} feature frames")
    N = h * w
    k = min(int(topk), N)
    centers = _grid_info(features, patch, stride).to(device)
    ok_table = _nms_keep_table((h, w), patch, stride, box_half, iou, device) if nms == "fast" else None
    src_cell = _xy_to_cell(bb.src_xy, (h, w), patch, stride)
    dst_cell = _xy_to_cell(bb.dst_xy, (h, w), patch, stride)
    # both directions as 2M queries: (query frame, query cell, target frame)
    q_frame = torch.cat([bb.src_t, bb.dst_t])
    q_cell = torch.cat([src_cell, dst_cell])
    tgt_frame = torch.cat([bb.dst_t, bb.src_t])
    r_all = torch.zeros(2 * M)
    frames = torch.unique(tgt_frame).tolist()
    for tf in _progress(frames, progress, "bb ambiguity"):
        sel = (tgt_frame == tf).nonzero(as_tuple=True)[0]
        target = _unit_tokens(features, device, [tf])[0]  # [N, C]
        for c0 in range(0, sel.shape[0], int(chunk)):
            s = sel[c0:c0 + int(chunk)]
            qf, qc = q_frame[s], q_cell[s]
            q = features[qf, :, qc // w, qc % w].to(device=device, dtype=torch.float32)  # [B, C]
            q = q / q.norm(dim=1, keepdim=True).clamp_min(_EPS)
            sims = q @ target.T  # [B, N]
            if nms == "fast":
                s1, top = sims.max(dim=1)
                r = _ratio_from_sims(sims, top, s1, ok_table, k)
            else:
                r = _ratio_torchvision(sims, centers, k, float(box_half), float(iou))
            r_all[s] = r.float().cpu()
    return torch.maximum(r_all[:M], r_all[M:])


def bb_weight(ratio: torch.Tensor, cos: torch.Tensor, a: float = 27.0, b: float = -5.7) -> torch.Tensor:
    """Best-buddy loss weight ``sigmoid(a (1 - r) + b) * max(2 cos^3, 0)`` (reference code, spec §4.3).

    With a = 27, b = -5.7: w_amb = 0.5 at r ~ 0.789, 0.92 at r = 0.7, 0.003 at r = 1; w_cos = 1 at
    cos ~ 0.794. The paper writes sigmoid(a (1 - r) - b) with the same a, b (spec §6 M3); taken literally
    that is >= 0.997 for every r in [0, 1] and never down-weights ambiguous pairs, so the code's sign is used.
    """
    return torch.sigmoid(a * (1.0 - ratio) + b) * (2.0 * cos.pow(3)).clamp_min(0.0)


def _connection_tables(features, patch, stride, tracks, device, query_shift: float = REFERENCE_QUERY_SHIFT):
    """([T, h*w] nearest trajectory per (frame, patch centre + query_shift), -1 none; [N_tr, T] existence)."""
    if not isinstance(tracks, torch.Tensor) or tracks.dim() != 3 or tracks.shape[-1] != 2:
        raise ValueError("tracks_unfiltered must be a [N, T, 2] tensor of raster (x, y), NaN where absent")
    T = features.shape[0]
    if tracks.shape[1] != T:
        raise ValueError(f"trajectories cover {tracks.shape[1]} frames, features {T}")
    centers = _grid_info(features, patch, stride) + float(query_shift)
    near = torch.stack([nearest_trajectory(tracks, t, centers, device=device) for t in range(T)])
    exists = ~torch.isnan(tracks).any(dim=-1)
    return near.to(device), exists.to(device)


def compute_best_buddies(features: torch.Tensor, patch: int, stride: int,
                         tracks_unfiltered: torch.Tensor | None = None, topk: int = 400,
                         box_half: float = 30.0, iou: float = 0.2, a: float = 27.0, b: float = -5.7,
                         pair_batch: int = 8, device="cpu", progress: bool = True, nms: str = "fast",
                         chunk: int = 2048, query_shift: float = REFERENCE_QUERY_SHIFT) -> BestBuddies:
    """Mutual NNs -> flow filter (when ``tracks_unfiltered`` is given) -> ambiguity ratio and weights.

    With ``nms="fast"`` (default) everything happens in one pass over the frame pairs: the nearest
    trajectory of every (frame, patch centre) is computed first, each pair's best buddies are filtered as
    they are found, and the ratio of the survivors is read from the same affinity (no second matmul).
    With ``nms="torchvision"`` the three steps run one after the other, as in the reference. Same result.

    features [T, C, h, w]; tracks_unfiltered [N, T, 2] raster, NaN where absent (whichever trajectory
    set the caller chose, see :func:`filter_by_trajectories`; ``query_shift`` there). Returns
    :class:`BestBuddies` on the CPU with ``ratio`` = r and ``weight`` = :func:`bb_weight` (r, cos, a, b);
    empty when nothing survives.
    """
    fused = nms == "fast"
    if fused:
        connected = None
        if tracks_unfiltered is not None:
            connected = _connection_tables(features, patch, stride, tracks_unfiltered, device, query_shift)
        bb = mutual_nearest_neighbours(features, patch, stride, pair_batch=pair_batch, device=device,
                                       progress=progress, with_ratio=True, topk=topk, box_half=box_half,
                                       iou=iou, chunk=chunk, _connected=connected)
    else:
        bb = mutual_nearest_neighbours(features, patch, stride, pair_batch=pair_batch, device=device,
                                       progress=progress)
        if tracks_unfiltered is not None and len(bb):
            bb = filter_by_trajectories(bb, tracks_unfiltered, device=device, query_shift=query_shift)
    if len(bb) == 0:
        return BestBuddies.empty()
    if not fused:
        bb.ratio = ambiguity_ratio(bb, features, patch, stride, topk=topk, box_half=box_half, iou=iou,
                                   chunk=chunk, device=device, nms=nms, progress=progress)
    bb.weight = bb_weight(bb.ratio, bb.cos, a, b)
    return bb
