"""Chained optical-flow trajectories (DINO_TRACKER_SPEC §2.1-2.2), vectorised over pixels.

Rules of the reference: a pixel of frame s+1 continues a trajectory of frame s when the
backward-forward check passes (< ``fb_threshold`` px) and some forward-warped pixel of frame
s lands on it; at frame 0 every pixel starts a trajectory, later frames start one at pixels
that are not valid continuations or that no existing trajectory passes through
("look-behind" re-seeding). Each step keeps a trajectory alive only if its own
forward-backward check passes and it stays inside the frame; validity is cumulative.
Optionally the chained position must agree with the direct flow s -> t (where that flow is
itself reliable) within ``direct_threshold`` px, with the O(T^2) cost bounded by a window.

Positions are raster (x, y) at the flow's resolution; points start at pixel centres.
The filtered (with the direct-flow test) and unfiltered sets come from one pass: they share
start points (seeded from the filtered set's coverage) and differ only in how long rows live.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from dinotracker.geometry import sample_at

DirectFlowFn = Callable[[int, list[int]], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Trajectories:
    """tracks float32 [N,T,2] (direct-flow filtered), tracks_unfiltered [N',T,2]; NaN where absent."""

    tracks: torch.Tensor
    tracks_unfiltered: torch.Tensor


def _sample(flow: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """flow [2,H,W], raster pos [M,2] -> [M,2] (bilinear, border)."""
    return sample_at(flow[None].float(), pos[None])[0]


def _inside(pos: torch.Tensor, hw) -> torch.Tensor:
    h, w = hw
    return (pos[:, 0] >= 0) & (pos[:, 0] < w) & (pos[:, 1] >= 0) & (pos[:, 1] < h)


def _pixel_index(pos: torch.Tensor, hw) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat index of the pixel containing each raster point, and whether it is inside."""
    h, w = hw
    ok = _inside(pos, hw) & ~torch.isnan(pos).any(-1)
    px = torch.nan_to_num(pos, nan=-1.0).floor().long()
    return px[:, 1].clamp(0, h - 1) * w + px[:, 0].clamp(0, w - 1), ok


def continuation_masks(forward: torch.Tensor, backward: torch.Tensor, fb_threshold: float = 1.5) -> torch.Tensor:
    """[T,H,W] bool: pixel of frame s continues a trajectory from s-1 (False for s = 0)."""
    tm1, _, h, w = forward.shape
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    grid = torch.stack([xs, ys], -1).reshape(-1, 2).float() + 0.5
    masks = torch.zeros(tm1 + 1, h, w, dtype=torch.bool)
    for i in range(tm1):
        p1 = grid + _sample(backward[i], grid)  # frame i+1 -> i
        p2 = p1 + _sample(forward[i], p1)
        ok = (p2 - grid).norm(dim=-1) < fb_threshold
        landed = grid + _sample(forward[i], grid)  # frame i -> i+1, every pixel
        idx, inside = _pixel_index(landed, (h, w))
        hit = torch.zeros(h * w, dtype=torch.bool)
        hit[idx[inside]] = True
        masks[i + 1] = (ok & hit).reshape(h, w)
    return masks


def chain_trajectories(forward: torch.Tensor, backward: torch.Tensor, fb_threshold: float = 1.5,
                       min_length: int = 2, direct_flow: DirectFlowFn | None = None,
                       direct_threshold: float = 2.5, direct_window: int | None = None, direct_every: int = 1,
                       progress: bool = True) -> Trajectories:
    """forward/backward [T-1,2,H,W] (forward[i]: i -> i+1, backward[i]: i+1 -> i) -> Trajectories."""
    forward, backward = forward.float(), backward.float()
    tm1, _, h, w = forward.shape
    t_total = tm1 + 1
    hw = (h, w)
    cont = continuation_masks(forward, backward, fb_threshold)
    covered = torch.zeros(t_total, h * w, dtype=torch.bool)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    grid = torch.stack([xs, ys], -1).reshape(-1, 2).float() + 0.5
    rows_f, rows_u = [], []
    for s in tqdm(range(0, t_total - max(min_length, 1) + 1), desc="trajectories", disable=not progress, leave=False):
        start = torch.ones(h * w, dtype=torch.bool) if s == 0 else (~cont[s].reshape(-1) | ~covered[s])
        if not start.any():
            continue
        p0 = grid[start]
        m = p0.shape[0]
        pos = p0.clone()
        alive_u = torch.ones(m, dtype=torch.bool)
        alive_f = torch.ones(m, dtype=torch.bool)
        traj = torch.full((m, t_total, 2), float("nan"))
        traj[:, s] = p0
        last_u = torch.full((m,), s, dtype=torch.long)
        last_f = torch.full((m,), s, dtype=torch.long)
        targets = [t for t in range(s + 1, t_total) if direct_window is None or t - s <= direct_window]
        targets = [t for i, t in enumerate(targets) if i % max(direct_every, 1) == direct_every - 1 or t == s + 1]
        direct = {}
        if direct_flow is not None and targets:
            flows, reliable = direct_flow(s, targets)
            start_idx = start.nonzero()[:, 0]
            for k, t in enumerate(targets):
                d = flows[k].reshape(2, -1)[:, start_idx].t()
                direct[t] = (p0 + d, reliable[k].reshape(-1)[start_idx])
        for t in range(s, t_total - 1):
            live = alive_u
            if not live.any():
                break
            cur = pos[live]
            nxt = cur + _sample(forward[t], cur)
            back = nxt + _sample(backward[t], nxt)
            ok = ((back - cur).norm(dim=-1) < fb_threshold) & _inside(nxt, hw)
            li = live.nonzero()[:, 0]
            pos[li] = nxt
            alive_u[li] &= ok
            ok_f = alive_f[li] & ok
            if (t + 1) in direct:
                target, rel = direct[t + 1]
                drift = (nxt - target[li]).norm(dim=-1)
                ok_f &= ~(rel[li] & (drift >= direct_threshold))
            alive_f[li] = ok_f
            traj[li, t + 1] = nxt
            last_u[li[ok]] = t + 1
            last_f[li[ok_f]] = t + 1
        frames = torch.arange(t_total)
        mask_u = (frames[None] >= s) & (frames[None] <= last_u[:, None])
        mask_f = (frames[None] >= s) & (frames[None] <= last_f[:, None])
        for mask, last, rows in ((mask_u, last_u, rows_u), (mask_f, last_f, rows_f)):
            keep = (last - s + 1) >= min_length
            r = traj[keep].clone()
            r[~mask[keep]] = float("nan")
            rows.append(r)
        # coverage of later frames by the (filtered) trajectories just made
        kept = (last_f - s + 1) >= min_length
        for t in range(s + 1, t_total):
            sel = kept & (last_f >= t)
            if not sel.any():
                continue
            idx, ok = _pixel_index(traj[sel, t], hw)
            covered[t, idx[ok]] = True
    cat = lambda rows: torch.cat(rows) if rows else torch.zeros(0, t_total, 2)  # noqa: E731
    return Trajectories(tracks=cat(rows_f), tracks_unfiltered=cat(rows_u))


def make_direct_flow_fn(estimator, frames: torch.Tensor, fb_threshold: float = 1.5,
                        batch_size: int = 8) -> DirectFlowFn:
    """Direct flows s -> t for the chaining filter, with the reference's reliability mask:
    the direct flow passes its own forward-backward check and lands inside the frame."""
    h, w = frames.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    grid = torch.stack([xs, ys], -1).reshape(-1, 2).float() + 0.5

    def fn(s: int, ts: list[int]):
        flows, reliable = [], []
        for a in range(0, len(ts), batch_size):
            chunk = ts[a:a + batch_size]
            src = frames[s:s + 1].expand(len(chunk), -1, -1, -1)
            dst = frames[chunk]
            both = estimator(torch.cat([src, dst]), torch.cat([dst, src]))
            fst, fts = both[: len(chunk)], both[len(chunk):]
            for k in range(len(chunk)):
                land = grid + fst[k].reshape(2, -1).t()
                back = land + _sample(fts[k], land)
                ok = ((back - grid).norm(dim=-1) < fb_threshold) & _inside(land, (h, w))
                flows.append(fst[k])
                reliable.append(ok.reshape(h, w))
        return torch.stack(flows), torch.stack(reliable)

    return fn


def split_foreground(tracks: torch.Tensor, fg_masks: torch.Tensor) -> torch.Tensor:
    """bool [N]: the mask value at each trajectory's first valid point (the reference's rule)."""
    if tracks.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool)
    valid = ~torch.isnan(tracks[..., 0])
    first = valid.float().argmax(dim=1)
    xy = tracks[torch.arange(tracks.shape[0]), first]
    t, h, w = fg_masks.shape
    idx, ok = _pixel_index(xy, (h, w))
    return fg_masks.reshape(t, -1)[first, idx] & ok
