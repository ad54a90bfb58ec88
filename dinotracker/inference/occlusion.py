"""Occlusion by trajectory agreement (DINO_TRACKER_SPEC §5.2), batched over queries and anchors.

For one query with predicted track p_t (t = 0..T-1):

1. c_t = cos(F_{t_q}(p_{t_q}), F_t(p_t)), refined features sampled at the *predicted* points
   (with the query-frame correction p_{t_q} is the query itself).
2. anchors A = {a : c_a >= anchor_cos} (0.7).
3. D[a, t] = |P_{t->a}(p_t) - p_a|: the predicted point of frame t, tracked back into anchor a.
4. m_t = lower median over a in A of D[a, t] (``torch.median`` semantics: sorted[(|A|-1)//2]).
5. theta = max over t in A of m_t.
6. occluded_t = (m_t > theta) or (c_t < visible_cos) (0.6).

Batched: the points p_t of all queries are themselves queries; their features are sampled once
and correlated, per anchor frame a, with F_a only (one [rows, C] x [C, h*w] matmul per chunk).
Queries with no anchor (a zero feature vector) get m = theta = 0, i.e. only the cosine test; the
reference would crash on the empty median.

Continuous visibility confidence (dino-tracker issue #10)::

    s_cos  = sigmoid((c_t - visible_cos) / 0.05)
    s_dist = sigmoid((theta + 1 px - m_t) / (0.25 * theta + 1 px))
    confidence_t = min(s_cos, s_dist)   in [0, 1]

s_cos is 0.5 exactly at the cosine rule's boundary. The distance term has a 1 px slack so that
the anchor that *defines* theta (m = theta, always visible) scores above 0.5 rather than on the
boundary, and its scale grows with theta (a quarter of it) plus 1 px so that a near-zero theta
does not make it a step. Hence: visible => confidence >= 0.5, and confidence >= 0.5 => c_t >=
visible_cos and m_t <= theta + 1 px (thresholding the score at 0.5 is the binary rule with 1 px
of slack).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dinotracker.inference.tracker import FeatureBank, HeadPlan, head, sample_track_features, unit
from dinotracker.models.tracker import DinoTracker

COS_TEMPERATURE = 0.05
DIST_REL_SCALE = 0.25
DIST_SLACK = 1.0  # model px
DIST_ABS_SCALE = 1.0  # model px


@dataclass
class Occlusion:
    """Per (query, frame): ``occluded`` bool [N, T], ``confidence`` [N, T] in [0, 1], ``cos`` c_t,
    ``median`` m_t (model px), ``theta`` [N] (model px), ``anchors`` bool [N, T]."""

    occluded: torch.Tensor
    confidence: torch.Tensor
    cos: torch.Tensor
    median: torch.Tensor
    theta: torch.Tensor
    anchors: torch.Tensor


def cosine_confidence(cos: torch.Tensor, visible_cos: float = 0.6) -> torch.Tensor:
    """s_cos = sigmoid((c - visible_cos) / 0.05)."""
    return torch.sigmoid((cos - visible_cos) / COS_TEMPERATURE)


def confidence_from(
    cos: torch.Tensor, median: torch.Tensor, theta: torch.Tensor, visible_cos: float = 0.6
) -> torch.Tensor:
    """min(s_cos, s_dist) (module docstring); cos/median [N, T], theta [N]."""
    th = theta[:, None]
    s_dist = torch.sigmoid((th + DIST_SLACK - median) / (DIST_REL_SCALE * th + DIST_ABS_SCALE))
    return torch.minimum(cosine_confidence(cos, visible_cos), s_dist)


def track_cosines(
    model: DinoTracker,
    maps: torch.Tensor,
    tracks: torch.Tensor,
    query_frames: torch.Tensor,
    feats: torch.Tensor | None = None,
) -> torch.Tensor:
    """c_t = cos(F_{t_q}(p_{t_q}), F_t(p_t)) -> [N, T] (eps 1e-8)."""
    feats = sample_track_features(model, maps, tracks) if feats is None else feats
    u = unit(feats)
    n = tracks.shape[0]
    uq = u[torch.arange(n, device=u.device), query_frames.to(u.device)]
    return (u * uq[:, None]).sum(-1)


def lower_median(d: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Lower median over dim 1 of d [N, A, T] restricted to mask [N, A] -> [N, T] (0 where mask is empty)."""
    count = mask.sum(1)
    padded = torch.where(mask[:, :, None], d, torch.full_like(d, float("inf")))
    idx = ((count - 1).clamp_min(0) // 2)[:, None, None].expand(d.shape[0], 1, d.shape[2])
    med = padded.sort(dim=1).values.gather(1, idx)[:, 0]
    return torch.where(count[:, None] > 0, med, torch.zeros_like(med))


@torch.no_grad()
def predict_occlusion(
    model: DinoTracker,
    maps: torch.Tensor | FeatureBank,
    queries: torch.Tensor,
    tracks: torch.Tensor,
    anchor_cos: float = 0.7,
    visible_cos: float = 0.6,
    chunk: int = 512,
    query_block: int | None = None,
    progress=None,
    max_anchors: int | None = None,
) -> Occlusion:
    """Occlusion of tracks [N, T, 2] (model px) of queries [N, 3] (t, x, y) -> :class:`Occlusion`.

    ``chunk`` bounds the heatmaps evaluated at once; queries are processed in blocks of
    ``query_block`` (default: as many as keep the [block, T, C] features and [block, T, T]
    distances under ~32 M floats). ``progress``: a :class:`dinotracker.utils.progress.Progress`
    counting (query, anchor frame) pairs (N * T in all).

    ``max_anchors`` (default None: every anchor, the spec's rule) takes the median m_t over at most that
    many anchor frames per query, evenly spaced among its anchors (theta is still the max over all of
    them). The cost is N x T x |anchors| heatmaps, so this bounds it by N x T x max_anchors: an
    approximation for CPUs, off by default.
    """
    bank = maps if isinstance(maps, FeatureBank) else FeatureBank(maps)
    fmaps = bank.maps
    dev = fmaps.device
    n, t = tracks.shape[:2]
    if queries.shape[0] != n:
        raise ValueError(f"{queries.shape[0]} queries but {n} tracks")
    tracks = tracks.to(dev).float()
    tq = queries[:, 0].round().long().to(dev)
    c_dim = fmaps.shape[1]
    if query_block is None:
        query_block = max(1, (32 << 20) // max(1, t * (c_dim + t)))
    occ = torch.zeros(n, t, dtype=torch.bool, device=dev)
    conf = torch.zeros(n, t, device=dev)
    cos = torch.zeros(n, t, device=dev)
    med = torch.zeros(n, t, device=dev)
    theta = torch.zeros(n, device=dev)
    anchors = torch.zeros(n, t, dtype=torch.bool, device=dev)
    for q0 in range(0, n, query_block):
        qs = slice(q0, min(n, q0 + query_block))
        r = _occlusion_block(
            model, bank, tq[qs], tracks[qs], anchor_cos, visible_cos, max(1, int(chunk)), progress, max_anchors
        )
        occ[qs], conf[qs], cos[qs], med[qs], theta[qs], anchors[qs] = r
    return Occlusion(occ, conf, cos, med, theta, anchors)


def _occlusion_block(
    model, bank: FeatureBank, tq, tracks, anchor_cos, visible_cos, chunk, progress=None, max_anchors=None
):
    n, t = tracks.shape[:2]
    feats = sample_track_features(model, bank.maps, tracks)  # [n, T, C] = F_t(p_t)
    c = track_cosines(model, bank.maps, tracks, tq, feats)
    anchors = c >= anchor_cos
    used = thin_anchors(anchors, max_anchors)
    uf = unit(feats)
    dist = torch.zeros(n, t, t, device=tracks.device)  # [query, anchor frame a, source frame t]
    plan = HeadPlan()
    for a in range(t):
        sel = used[:, a].nonzero(as_tuple=True)[0]
        if progress is not None:
            progress.update(n)
        if len(sel) == 0:
            continue
        rows = uf[sel].reshape(-1, uf.shape[-1])  # (query, source frame) rows, query-major
        flat, inv = bank.frames_flat(a), bank.inv_norm[a : a + 1]
        back = torch.empty(rows.shape[0], 2, device=rows.device)
        for r0 in range(0, rows.shape[0], chunk):
            cost = bank.cost(rows[r0 : r0 + chunk], flat, inv)[0]  # [rows, h, w]
            back[r0 : r0 + chunk] = head(model, cost, plan=plan)
        dist[sel, a] = (back.reshape(len(sel), t, 2) - tracks[sel, a][:, None]).norm(dim=-1)
    m = lower_median(dist, used)
    th = torch.where(anchors, m, torch.full_like(m, -float("inf"))).amax(1)
    th = torch.where(anchors.any(1), th, torch.zeros_like(th))
    occluded = (m > th[:, None]) | (c < visible_cos)
    return occluded, confidence_from(c, m, th, visible_cos), c, m, th, anchors


def thin_anchors(anchors: torch.Tensor, max_anchors: int | None) -> torch.Tensor:
    """At most ``max_anchors`` of each row's anchors [N, T] (every k-th in frame order, k = ceil(|A| / max));
    all of them when ``max_anchors`` is None or not smaller than the count."""
    if not max_anchors:
        return anchors
    count = anchors.sum(1, keepdim=True)
    step = torch.clamp((count + int(max_anchors) - 1) // int(max_anchors), min=1)
    rank = anchors.long().cumsum(1) - 1
    return anchors & (rank % step == 0)
