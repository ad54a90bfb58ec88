"""The reference implementation's per-query inference (DINO_TRACKER_SPEC §5.1-5.2), kept as the
correctness and speed baseline of the fast path: a Python loop over queries, and for occlusion a
loop over each query's anchors, one forward at a time."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dinotracker.models.tracker import DinoTracker


@torch.no_grad()
def track_one(model: DinoTracker, maps: torch.Tensor, t: int, xy: torch.Tensor) -> torch.Tensor:
    """One query (frame t, xy [2]) -> [T,2]: its feature against every frame's map."""
    q = model.sample_features(maps[t:t + 1], xy.view(1, 1, 2).float())[0, 0]  # [C]
    out = torch.stack([model(q[None], maps[k:k + 1])[0][0] for k in range(maps.shape[0])])
    out[t] = xy
    return out


@torch.no_grad()
def track_queries_loop(model: DinoTracker, maps: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    return torch.stack([track_one(model, maps, int(round(float(q[0]))), q[1:]) for q in queries])


@torch.no_grad()
def occlusion_loop(model: DinoTracker, maps: torch.Tensor, queries: torch.Tensor, tracks: torch.Tensor,
                   anchor_cos: float = 0.7, visible_cos: float = 0.6) -> torch.Tensor:
    """Per-query, per-anchor loop of §5.2 -> occluded bool [N,T]."""
    n, t = tracks.shape[:2]
    occluded = torch.zeros(n, t, dtype=torch.bool)
    for i in range(n):
        tq = int(round(float(queries[i, 0])))
        fq = model.sample_features(maps[tq:tq + 1], queries[i, 1:].view(1, 1, 2).float())[0, 0]
        c = torch.stack([F.cosine_similarity(fq, model.sample_features(maps[k:k + 1], tracks[i, k].view(1, 1, 2))[0, 0],
                                             dim=0, eps=1e-8) for k in range(t)])
        anchors = [a for a in range(t) if c[a] >= anchor_cos or a == tq]
        dist = torch.zeros(len(anchors), t)
        for j, a in enumerate(anchors):
            for k in range(t):
                f = model.sample_features(maps[k:k + 1], tracks[i, k].view(1, 1, 2))[0, 0]
                back = model(f[None], maps[a:a + 1])[0][0]
                dist[j, k] = (back - tracks[i, a]).norm()
        med = dist.sort(dim=0).values[(len(anchors) - 1) // 2]
        theta = max(float(med[a]) for a in anchors)
        occluded[i] = (med > theta) | (c < visible_cos)
    return occluded
