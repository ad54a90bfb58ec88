"""Baselines computed in the same run as the fitted tracker.

* ``still``: every query point stays where it was queried, always visible.
* ``flow_chaining``: the query point is chained through the cached consecutive optical
  flows, forward and backward from its query frame (the classic long-range-from-flow
  baseline). A point is predicted occluded from the first step whose forward-backward
  check fails (> ``fb_threshold`` px) until the end of the chain, or when it leaves the frame;
  its position keeps following the flow so that it can still be scored.

Inputs and outputs are model-resolution raster (x, y) px (flows are indexed by pixel).
"""

from __future__ import annotations

import torch

from dinotracker.geometry import sample_at


def still_baseline(queries: torch.Tensor, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """queries [N,3] (t, x, y) -> tracks [N,T,2], visible [N,T] (all True)."""
    n = queries.shape[0]
    tracks = queries[:, None, 1:].expand(n, num_frames, 2).clone()
    return tracks, torch.ones(n, num_frames, dtype=torch.bool)


def _step(pos: torch.Tensor, flow_a: torch.Tensor, flow_b: torch.Tensor, hw, fb_threshold: float):
    """Move raster points ``pos`` [N,2] by flow_a [2,H,W]; check with flow_b (the reverse flow)."""
    f = sample_at(flow_a[None].float(), pos[None])[0]
    new = pos + f
    back = new + sample_at(flow_b[None].float(), new[None])[0]
    ok = (back - pos).norm(dim=-1) < fb_threshold
    h, w = hw
    inside = (new[:, 0] >= 0) & (new[:, 0] < w) & (new[:, 1] >= 0) & (new[:, 1] < h)
    return new, ok & inside


def flow_chaining_baseline(queries: torch.Tensor, forward: torch.Tensor, backward: torch.Tensor,
                           fb_threshold: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """queries [N,3] (t, x, y); forward/backward [T-1,2,H,W] (forward[i]: i->i+1, backward[i]: i+1->i).

    Returns tracks [N,T,2] and visible [N,T] bool.
    """
    n = queries.shape[0]
    num_frames = forward.shape[0] + 1
    hw = tuple(forward.shape[-2:])
    tracks = torch.zeros(n, num_frames, 2)
    visible = torch.zeros(n, num_frames, dtype=torch.bool)
    tq = queries[:, 0].round().long()
    tracks[torch.arange(n), tq] = queries[:, 1:].float()
    visible[torch.arange(n), tq] = True
    # forward in time: points whose query frame is <= t move from t to t+1
    pos, alive = queries[:, 1:].float().clone(), torch.ones(n, dtype=torch.bool)
    for t in range(num_frames - 1):
        active = tq <= t
        if active.any():
            new, ok = _step(pos[active], forward[t], backward[t], hw, fb_threshold)
            pos[active] = new
            alive[active] &= ok
            idx = active.nonzero()[:, 0]
            tracks[idx, t + 1] = new
            visible[idx, t + 1] = alive[idx]
        pos[tq == t + 1] = queries[tq == t + 1, 1:].float()
    # backward in time
    pos, alive = queries[:, 1:].float().clone(), torch.ones(n, dtype=torch.bool)
    for t in range(num_frames - 1, 0, -1):
        active = tq >= t
        if active.any():
            new, ok = _step(pos[active], backward[t - 1], forward[t - 1], hw, fb_threshold)
            pos[active] = new
            alive[active] &= ok
            idx = active.nonzero()[:, 0]
            tracks[idx, t - 1] = new
            visible[idx, t - 1] = alive[idx]
        pos[tq == t - 1] = queries[tq == t - 1, 1:].float()
    return tracks, visible
