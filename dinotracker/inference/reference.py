"""The reference implementation's per-query inference (DINO_TRACKER_SPEC §5.1-5.2,
``models/model_inference.py``), kept as the correctness and speed baseline of the fast path.

* Trajectories: a Python loop over queries; per query ``frames_set = [t_q, 0, 1, ..., T-1]``, the
  (T+1) maps are gathered (a copy, as the reference does), the source feature is sampled from set
  index 0 at the query point, and one forward predicts all T targets. With ``redundant=True`` (the
  reference) every row is correlated with *all* T+1 maps of the set and the target is selected
  afterwards (a T x (T+1) x h x w tensor, spec §3.2); ``redundant=False`` correlates only the target.
* Occlusion: a loop over queries and, per query, over its anchors (``_get_model_preds_at_anchors_old``):
  ``frames_set = [a, 0..T-1]``, sources = the predicted points, target = a; then the reference's
  ``compute_occ_pred_for_qp`` with ``torch.median`` (lower median).

Differences from the reference, all shared with the fast path: ``force_query`` (default True) sets
the query frame's prediction to the query (the reference re-predicts it; False reproduces that);
a query without anchors (zero features) falls back to the cosine test instead of crashing on an
empty median.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dinotracker.inference.tracker import full_head
from dinotracker.models.tracker import DinoTracker


def _predict(
    model: DinoTracker, src: torch.Tensor, maps_set: torch.Tensor, target: torch.Tensor, redundant: bool
) -> torch.Tensor:
    """Rows src [B, C] into maps_set[target[b]] -> [B, 2]."""
    if redundant:  # the reference: correlate with every map of the set, then select the target
        cost = model.cost_volume(src[:, None, :], maps_set[None])  # [B, N, h, w]
        cost = cost[torch.arange(src.shape[0]), target]
    else:
        cost = model.cost_volume(src, maps_set[target])
    return full_head(model, cost)  # the model's head on whole maps, as the reference


@torch.no_grad()
def track_one(
    model: DinoTracker,
    maps: torch.Tensor,
    t: int,
    xy: torch.Tensor,
    redundant: bool = True,
    force_query: bool = True,
) -> torch.Tensor:
    """One query (frame ``t``, xy [2] model px) -> [T, 2] model px."""
    n = maps.shape[0]
    frames_set = torch.cat([torch.tensor([t]), torch.arange(n)]).to(maps.device)
    maps_set = maps[frames_set].float()  # (T+1) x C x h x w copy, as the reference's gather
    src = model.sample_features(maps_set[0:1], xy.view(1, 1, 2).float().to(maps.device))[0]  # [1, C]
    out = _predict(model, src.expand(n, -1), maps_set, torch.arange(1, n + 1, device=maps.device), redundant)
    if force_query:
        out[t] = xy.to(out)
    return out


@torch.no_grad()
def track_queries_loop(
    model: DinoTracker,
    maps: torch.Tensor,
    queries: torch.Tensor,
    redundant: bool = True,
    force_query: bool = True,
) -> torch.Tensor:
    """queries [N, 3] (t, x, y) model px -> [N, T, 2] model px, one query at a time."""
    out = [track_one(model, maps, int(round(float(q[0]))), q[1:], redundant, force_query) for q in queries]
    return torch.stack(out) if out else torch.zeros(0, maps.shape[0], 2, device=maps.device)


@torch.no_grad()
def occlusion_one(
    model: DinoTracker,
    maps: torch.Tensor,
    tq: int,
    track: torch.Tensor,
    anchor_cos: float = 0.7,
    visible_cos: float = 0.6,
    redundant: bool = True,
):
    """One query's occlusion (the reference's algorithm) -> (occluded [T], cos [T], median [T], theta)."""
    n = maps.shape[0]
    dev = maps.device
    track = track.float().to(dev)
    # c_t: features at the predicted points, one frame at a time (the reference samples them jointly)
    feats = torch.cat(
        [model.sample_features(maps[k : k + 1].float(), track[k].view(1, 1, 2))[0] for k in range(n)]
    )
    cos = F.cosine_similarity(feats[tq][None], feats, dim=-1, eps=1e-8)  # [T]
    anchor_frames = torch.arange(n, device=dev)[cos >= anchor_cos]
    if len(anchor_frames) == 0:
        zeros = torch.zeros(n, device=dev)
        return cos < visible_cos, cos, zeros, zeros.new_zeros(())
    back = []
    for a in anchor_frames.tolist():  # _get_model_preds_at_anchors_old: one forward per anchor
        frames_set = torch.cat([torch.tensor([a], device=dev), torch.arange(n, device=dev)])
        maps_set = maps[frames_set].float()
        src = torch.cat(
            [model.sample_features(maps_set[k + 1 : k + 2], track[k].view(1, 1, 2))[0] for k in range(n)]
        )
        back.append(_predict(model, src, maps_set, torch.zeros(n, dtype=torch.long, device=dev), redundant))
    back = torch.stack(back)  # [A, T, 2]
    # compute_occ_pred_for_qp
    vis = cos >= anchor_cos
    dists = torch.norm(back - track[vis].unsqueeze(1), dim=-1)  # [A, T]: dists[anchor, source frame]
    theta = torch.median(dists[:, vis], dim=0).values.max()
    median = torch.median(dists, dim=0).values
    return (median > theta) | (cos < visible_cos), cos, median, theta


@torch.no_grad()
def occlusion_loop(
    model: DinoTracker,
    maps: torch.Tensor,
    queries: torch.Tensor,
    tracks: torch.Tensor,
    anchor_cos: float = 0.7,
    visible_cos: float = 0.6,
    redundant: bool = True,
) -> torch.Tensor:
    """Per-query, per-anchor loop of §5.2 -> occluded bool [N, T]."""
    out = [
        occlusion_one(model, maps, int(round(float(q[0]))), tr, anchor_cos, visible_cos, redundant)[0]
        for q, tr in zip(queries, tracks, strict=True)
    ]
    return torch.stack(out) if out else torch.zeros(0, maps.shape[0], dtype=torch.bool)
