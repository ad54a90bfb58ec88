"""Fast batched inference: refined features once, all queries against all frames in chunks.

Tracks (DINO_TRACKER_SPEC §5.1) and occlusion by trajectory agreement (§5.2), vectorised over
queries, frames and anchors. Coordinates here are model raster px; :mod:`.api` converts
to and from input pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dinotracker.models.tracker import DinoTracker


@torch.no_grad()
def refined_maps(model: DinoTracker, frames: torch.Tensor, features: torch.Tensor, chunk: int = 8,
                 device="cpu", dtype=torch.float32) -> torch.Tensor:
    """frames uint8 [T,3,H,W], frozen features [T,C,h,w] -> refined [T,C,h,w] (``dtype``, on ``device``)."""
    out = []
    for a in range(0, frames.shape[0], chunk):
        f = frames[a:a + chunk].to(device).float() / 255.0
        out.append(model.refine(f, features[a:a + chunk].to(device).float()).to(dtype))
    return torch.cat(out)


@torch.no_grad()
def track_queries(model: DinoTracker, maps: torch.Tensor, queries: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """queries [N,3] (t, x, y) model px -> tracks [N,T,2]; the query frame returns the query exactly.

    Memory is bounded by ``chunk`` (query, frame) rows per call.
    """
    n, t = queries.shape[0], maps.shape[0]
    tq = queries[:, 0].round().long().to(maps.device)
    xy = queries[:, 1:].float().to(maps.device)
    qf = model.sample_points(maps, tq, xy)  # [N,C]
    out = torch.empty(n, t, 2, device=maps.device)
    per = max(1, chunk // t)
    for a in range(0, n, per):
        out[a:a + per] = model(qf[a:a + per, None, :], maps[None])[0]  # [n,T,2]
    out[torch.arange(n, device=maps.device), tq] = xy
    return out


@torch.no_grad()
def track_points_to_frames(model: DinoTracker, maps: torch.Tensor, src_t: torch.Tensor, src_xy: torch.Tensor,
                           dst_t: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Track each point (src_t [M], src_xy [M,2]) into its own target frame dst_t [M] -> [M,2]."""
    out = torch.empty(src_xy.shape[0], 2, device=maps.device)
    for a in range(0, src_xy.shape[0], chunk):
        sl = slice(a, a + chunk)
        q = model.sample_points(maps, src_t[sl], src_xy[sl])
        out[sl] = model(q, maps, target_index=dst_t[sl])[0]
    return out


@torch.no_grad()
def predict_occlusion(model: DinoTracker, maps: torch.Tensor, queries: torch.Tensor, tracks: torch.Tensor,
                      anchor_cos: float = 0.7, visible_cos: float = 0.6, chunk: int = 4096):
    """Occlusion by trajectory agreement (§5.2), batched over queries and anchors.

    c_t = cos(feature at the query point, feature at p_t); anchors A = {a : c_a >= anchor_cos};
    D[a, t] = |P_{t->a}(p_t) - p_a|; m_t = lower median over a in A of D[a, t];
    theta = max over t in A of m_t; occluded_t = (m_t > theta) or (c_t < visible_cos).
    (The reference takes the query-frame feature at the *predicted* query-frame position; here
    the query frame returns the query itself, so both coincide.)

    Returns occluded bool [N,T], confidence float [N,T] in [0,1], and the diagnostics (c, m, theta).
    Confidence = sigmoid((c - visible_cos)/0.05) * sigmoid((theta + 1 - m) / (0.25 theta + 1)):
    ~1 when both tests pass with margin, 0.5 at a test's boundary, ~0 when one fails clearly.
    """
    n, t = tracks.shape[:2]
    dev = maps.device
    tq = queries[:, 0].round().long().to(dev)
    frame_ids = torch.arange(t, device=dev)
    qf = model.sample_points(maps, tq, queries[:, 1:].float().to(dev))  # [N,C]
    pts_t = frame_ids[None].expand(n, t).reshape(-1)
    pf = model.sample_points(maps, pts_t, tracks.reshape(-1, 2))  # [N*T,C]
    c = F.cosine_similarity(qf[:, None].float(), pf.reshape(n, t, -1).float(), dim=-1, eps=1e-8)  # [N,T]
    anchors = c >= anchor_cos
    anchors[torch.arange(n, device=dev), tq] = True
    a_idx = anchors.nonzero()  # [K,2] (query, anchor frame)
    k = a_idx.shape[0]
    # every (query, anchor) pair back-tracks the query's T predicted points into the anchor frame
    rows_q = a_idx[:, 0].repeat_interleave(t)
    rows_a = a_idx[:, 1].repeat_interleave(t)
    rows_t = frame_ids.repeat(k)
    src_xy = tracks[rows_q, rows_t]
    back = track_points_to_frames(model, maps, rows_t, src_xy, rows_a, chunk=chunk)
    dist = (back - tracks[rows_q, rows_a]).norm(dim=-1).reshape(k, t)  # D[a, t] per pair
    # lower median over each query's anchors: pad to [N, A_max, T] with +inf, sort, take index (|A|-1)//2
    count = anchors.sum(1)
    a_max = int(count.max())
    slot = torch.cumsum(anchors.long(), 1)[a_idx[:, 0], a_idx[:, 1]] - 1
    padded = torch.full((n, a_max, t), float("inf"), device=dev)
    padded[a_idx[:, 0], slot] = dist
    med = padded.sort(dim=1).values.gather(1, ((count - 1) // 2)[:, None, None].expand(n, 1, t))[:, 0]  # [N,T]
    theta = torch.where(anchors, med, torch.full_like(med, -float("inf"))).max(1).values  # [N]
    occluded = (med > theta[:, None]) | (c < visible_cos)
    conf = torch.sigmoid((c - visible_cos) / 0.05) * torch.sigmoid(
        (theta[:, None] + 1.0 - med) / (0.25 * theta[:, None] + 1.0))
    return occluded, conf, dict(cos=c, median=med, theta=theta)
