"""Chained optical-flow trajectories and their FG/BG split (DINO_TRACKER_SPEC §2.1-2.2), vectorised.

Positions are raster (x, y) at the flow's resolution (:mod:`dinotracker.geometry`); a trajectory starts at a
pixel centre (j + 0.5, i + 0.5). The reference works in integer pixel coordinates c = x - 0.5, so its rules
translate as follows:

* "in bounds" is the hull of the pixel centres, x in [0.5, W - 0.5] and y in [0.5, H - 0.5] (the reference's
  [0, W-1] x [0, H-1]); beyond it a bilinear flow sample would be border-clamped extrapolation.
* "rounded to a pixel" is the pixel the raster point falls in, floor(x) (the reference's round(c); the two
  differ only at exact half-pixel ties, which ``torch.round`` breaks to even).
* consecutive flows are sampled bilinearly with zero padding, as the reference's ``bilinear_sampler``: a
  sample up to one pixel beyond the hull of pixel centres mixes in zeros. This matters only for the
  continuation mask of pixels whose backward flow leaves the frame (with border padding 95 of 6144 mask
  pixels differ on the parity fixture's noisy flow, 217 of 527k on a DAVIS video, changing which
  trajectories start where); a live trajectory never samples outside, it is killed by the bounds test. The
  direct-flow reliability check samples with border padding, as the reference's ``bilinear_interpolate_video``.

Rules (reference ``extract_trajectories.py``):

A. Continuation mask of frame s+1: backward-forward check err(p) = |p - (p' + F_fwd(p'))|, p' = p + F_bwd(p),
   below ``fb_threshold``, AND some pixel of frame s forward-warps (rounded) onto p. Frame 0: none.
B. Optional direct flows s -> t with a reliability mask (their own forward-backward check, landing in bounds);
   see :func:`make_direct_flow_fn`.
C. For each start frame s in [0, T - min_length]: start at every pixel of frame 0; at s > 0 at pixels that are
   not valid continuations OR that no earlier trajectory passes through (look-behind re-seeding). Each step
   s+k -> s+k+1 keeps a point alive if its own forward-backward error is < ``fb_threshold`` and it stays in
   bounds; with direct flows it must also stay within ``direct_threshold`` px of p_s + D_{s->t}(p_s) wherever
   that direct flow is reliable. Validity is cumulative; rows shorter than ``min_length`` frames are dropped.

One pass produces both sets: the filtered one (with the direct-flow test, the reference's
``trajectories.pt``) and the unfiltered one (``trajectories_wo_direct_filter.pt``). **Deviation:** the
reference runs the extraction twice, and its unfiltered run re-seeds from its own (longer-lived) trajectories;
here both sets share the start points seeded from the filtered set, so every filtered row is a prefix of an
unfiltered row with the same start. Without a direct-flow filter the two sets are the same tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from dinotracker.geometry import sample_at
from dinotracker.utils.progress import progress_iter as tqdm  # a bar on a terminal, log lines otherwise

DirectFlowFn = Callable[[int, list[int]], tuple[torch.Tensor, torch.Tensor]]
"""``fn(s, ts)`` -> (flows float [len(ts),2,H,W] s -> t, reliable bool [len(ts),H,W])."""

DIRECT_BATCH = 8  # direct-flow targets requested per call (bounds memory to 8 flow fields)
SPLIT_CHUNK = 1_000_000  # trajectories per chunk in split_foreground (the reference's value)


@dataclass
class Trajectories:
    """tracks float32 [N,T,2] (direct-flow filtered), tracks_unfiltered float32 [N',T,2].

    Raster (x, y) at the flow's resolution, NaN where absent, each row one contiguous segment.
    """

    tracks: torch.Tensor
    tracks_unfiltered: torch.Tensor


def pixel_centres(hw: tuple[int, int], device=None) -> torch.Tensor:
    """Raster (x, y) of every pixel centre in raster order, float32 [H*W, 2]."""
    h, w = hw
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([xs, ys], -1).reshape(-1, 2).float() + 0.5


def _sample(flow: torch.Tensor, pos: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """flow [2,H,W] (any float dtype), raster pos [M,2] -> float32 [M,2] (bilinear; zero padding like the
    reference's consecutive-flow sampling, ``"border"`` for its direct-flow check)."""
    return sample_at(flow[None].float(), pos[None], padding_mode=padding_mode)[0]


def in_bounds(pos: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """bool [M]: raster points inside the hull of pixel centres, [0.5, W-0.5] x [0.5, H-0.5]; NaN -> False."""
    h, w = hw
    x, y = pos[:, 0], pos[:, 1]
    return (x >= 0.5) & (x <= w - 0.5) & (y >= 0.5) & (y <= h - 0.5)


def pixel_index(pos: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat index (i * W + j) of the pixel each raster point [M,2] falls in, and whether it is in frame."""
    h, w = hw
    x, y = pos[:, 0], pos[:, 1]
    ok = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    px = torch.nan_to_num(pos, nan=-1.0).floor().long()
    return px[:, 1].clamp(0, h - 1) * w + px[:, 0].clamp(0, w - 1), ok


def _check_flows(forward: torch.Tensor, backward: torch.Tensor) -> None:
    if forward.ndim != 4 or forward.shape[1] != 2 or forward.shape != backward.shape:
        raise ValueError(f"forward/backward flows must both be [T-1,2,H,W], got {tuple(forward.shape)} and "
                         f"{tuple(backward.shape)}")
    if forward.shape[0] < 1:
        raise ValueError("need at least 2 frames (one flow pair)")
    if not (forward.is_floating_point() and backward.is_floating_point()):
        raise ValueError(f"flows must be floating point, got {forward.dtype} and {backward.dtype}")


def continuation_masks(forward: torch.Tensor, backward: torch.Tensor,
                       fb_threshold: float = 1.5) -> torch.Tensor:
    """Step A. bool [T,H,W]: pixel of frame s continues a trajectory from s-1 (all False at s = 0).

    forward[i] is the flow i -> i+1, backward[i] the flow i+1 -> i, both [T-1,2,H,W].
    """
    _check_flows(forward, backward)
    tm1, _, h, w = forward.shape
    grid = pixel_centres((h, w), forward.device)
    masks = torch.zeros(tm1 + 1, h * w, dtype=torch.bool, device=forward.device)
    for i in range(tm1):
        p1 = grid + backward[i].float().reshape(2, -1).t()  # frame i+1 -> i, flow at its own pixels
        p2 = p1 + _sample(forward[i], p1)
        consistent = (p2 - grid).norm(dim=-1) < fb_threshold
        landed = grid + forward[i].float().reshape(2, -1).t()  # frame i -> i+1, every pixel of frame i
        idx, inside = pixel_index(landed, (h, w))
        hit = torch.zeros(h * w, dtype=torch.bool, device=forward.device)
        hit[idx[inside]] = True
        masks[i + 1] = consistent & hit
    return masks.reshape(tm1 + 1, h, w)


def direct_targets(s: int, num_frames: int, direct_window: int | None = None,
                   direct_every: int = 1) -> list[int]:
    """Frames t > s checked against the direct flow s -> t: t - s a multiple of ``direct_every`` and, with a
    window, t - s <= ``direct_window``. All of them (O(T^2) flows per video) is the reference."""
    return [t for t in range(s + 1, num_frames)
            if (t - s) % direct_every == 0 and (direct_window is None or t - s <= direct_window)]


class _DirectCache:
    """Direct flows of one start frame at its start pixels, fetched lazily DIRECT_BATCH targets at a time."""

    def __init__(self, fn: DirectFlowFn, s: int, targets: list[int], start_idx: torch.Tensor, hw):
        self.fn, self.s, self.targets, self.start_idx, self.hw = fn, s, targets, start_idx, hw
        self.pending = list(targets)
        self.data: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, t: int):
        """(displacement [m,2] s -> t at the start pixels, reliable bool [m]) or None if t is no target."""
        if t not in self.data:
            if t not in self.pending:
                return None
            self.data.clear()  # targets are visited in increasing order: drop the earlier block
            block = self.pending[self.pending.index(t):][:DIRECT_BATCH]
            del self.pending[: self.pending.index(t) + len(block)]
            flows, reliable = self.fn(self.s, block)
            h, w = self.hw
            if flows.shape != (len(block), 2, h, w) or reliable.shape != (len(block), h, w):
                raise ValueError(f"direct_flow(s, ts) must return flows [{len(block)},2,{h},{w}] and "
                                 f"reliable [{len(block)},{h},{w}], got {tuple(flows.shape)} and "
                                 f"{tuple(reliable.shape)}")
            dev = self.start_idx.device
            flows = flows.to(dev).float().reshape(len(block), 2, -1)[:, :, self.start_idx]
            reliable = reliable.to(dev).bool().reshape(len(block), -1)[:, self.start_idx]
            for k, tt in enumerate(block):
                self.data[tt] = (flows[k].t(), reliable[k])
        return self.data[t]


def chain_trajectories(forward: torch.Tensor, backward: torch.Tensor, fb_threshold: float = 1.5,
                       min_length: int = 2, direct_flow: DirectFlowFn | None = None,
                       direct_threshold: float = 2.5, direct_window: int | None = None, direct_every: int = 1,
                       progress: bool = True) -> Trajectories:
    """Chain consecutive flows into trajectories (Steps A and C, B through ``direct_flow``).

    forward/backward: [T-1,2,H,W] (forward[i]: i -> i+1, backward[i]: i+1 -> i), px, any float dtype; the
    work runs on their device. ``direct_flow(s, ts)`` -> (flows [len(ts),2,H,W] s -> t, reliable bool
    [len(ts),H,W]), e.g. :func:`make_direct_flow_fn`; it is called only for the targets
    :func:`direct_targets` selects and only while some filtered trajectory of s is alive. Returns
    :class:`Trajectories` (filtered and unfiltered). Memory: O(m T) for the m trajectories started at one
    frame, plus the output.
    """
    _check_flows(forward, backward)
    if fb_threshold <= 0:
        raise ValueError(f"fb_threshold must be > 0 px, got {fb_threshold}")
    if min_length < 1:
        raise ValueError(f"min_length must be >= 1 frame, got {min_length}")
    if direct_window is not None and direct_window < 1:
        raise ValueError(f"direct_window must be >= 1 frame or None, got {direct_window}")
    if direct_every < 1:
        raise ValueError(f"direct_every must be >= 1, got {direct_every}")
    if direct_threshold <= 0:
        raise ValueError(f"direct_threshold must be > 0 px, got {direct_threshold}")
    dev = forward.device
    tm1, _, h, w = forward.shape
    n_frames, hw, nan = tm1 + 1, (h, w), float("nan")
    cont = continuation_masks(forward, backward, fb_threshold).reshape(n_frames, -1)
    covered = torch.zeros(n_frames, h * w, dtype=torch.bool, device=dev)  # by earlier (filtered) trajectories
    grid = pixel_centres(hw, dev)
    rows_f: list[torch.Tensor] = []
    rows_u: list[torch.Tensor] = []
    for s in tqdm(range(n_frames - min_length + 1), desc="trajectories", disable=not progress, leave=False):
        start = torch.ones(h * w, dtype=torch.bool, device=dev) if s == 0 else ~cont[s] | ~covered[s]
        start_idx = start.nonzero()[:, 0]
        m = start_idx.numel()
        if m == 0:
            continue
        p0 = grid[start_idx]
        traj = torch.full((m, n_frames, 2), nan, device=dev)
        traj[:, s] = p0
        last_u = torch.full((m,), s, dtype=torch.long, device=dev)  # last valid frame
        last_f = last_u.clone()
        alive_f = torch.ones(m, dtype=torch.bool, device=dev)
        live = torch.arange(m, device=dev)  # rows alive in the unfiltered set
        pos = p0
        direct = None
        if direct_flow is not None:
            direct = _DirectCache(direct_flow, s, direct_targets(s, n_frames, direct_window, direct_every),
                                  start_idx, hw)
        for t in range(s, n_frames - 1):  # step t -> t+1
            nxt = pos + _sample(forward[t], pos)
            back = nxt + _sample(backward[t], nxt)
            ok = ((back - pos).norm(dim=-1) < fb_threshold) & in_bounds(nxt, hw)
            alive_f[live[~ok]] = False
            live, pos = live[ok], nxt[ok]
            if live.numel() == 0:
                break
            traj[live, t + 1] = pos
            last_u[live] = t + 1
            if direct is not None and bool(alive_f.any()):
                got = direct.get(t + 1)
                if got is not None:
                    disp, reliable = got
                    drift = (pos - (p0[live] + disp[live])).norm(dim=-1)
                    alive_f[live[reliable[live] & ~(drift < direct_threshold)]] = False
            last_f[live[alive_f[live]]] = t + 1
        frames = torch.arange(n_frames, device=dev)
        keep_u = last_u - s + 1 >= min_length
        if direct_flow is None:
            keep_f = keep_u
            rows_u.append(traj if bool(keep_u.all()) else traj[keep_u])
        else:
            keep_f = last_f - s + 1 >= min_length
            alive_at = frames[None, :, None] <= last_f[keep_f, None, None]
            rows_f.append(torch.where(alive_at, traj[keep_f], nan))
            rows_u.append(traj if bool(keep_u.all()) else traj[keep_u])
        # look-behind coverage of later frames by the kept (filtered) rows
        for t in range(s + 1, n_frames):
            sel = keep_f & (last_f >= t)
            if not bool(sel.any()):
                break
            idx, inside = pixel_index(traj[sel, t], hw)
            covered[t, idx[inside]] = True
        del traj
    empty = torch.zeros(0, n_frames, 2, device=dev)
    unfiltered = torch.cat(rows_u) if rows_u else empty
    rows_u.clear()
    if direct_flow is None:
        return Trajectories(tracks=unfiltered, tracks_unfiltered=unfiltered)
    return Trajectories(tracks=torch.cat(rows_f) if rows_f else empty, tracks_unfiltered=unfiltered)


def make_direct_flow_fn(estimator, frames: torch.Tensor, fb_threshold: float = 1.5,
                        batch_size: int = 8) -> DirectFlowFn:
    """Step B: direct flows s -> t for the chaining filter, from any :class:`FlowEstimator`.

    ``frames`` uint8 [T,3,H,W]. The returned ``fn(s, ts)`` gives (flows float32 [len(ts),2,H,W] s -> t,
    reliable bool [len(ts),H,W]); a pixel is reliable when the direct flow passes its own forward-backward
    check (|p - (p1 + F_{t->s}(p1))| < ``fb_threshold``, p1 = p + F_{s->t}(p), bilinear *border* sampling; the
    reference reuses the consecutive threshold here) and p1 lies in bounds (:func:`in_bounds`). Each call
    sends ``batch_size`` targets (both directions, 2 * batch_size ordered pairs) to the estimator at once.
    """
    if frames.ndim != 4 or frames.shape[1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 [T,3,H,W], got {frames.dtype} {tuple(frames.shape)}")
    n_frames, _, h, w = frames.shape
    grid = pixel_centres((h, w))

    def fn(s: int, ts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if not ts or not all(0 <= t < n_frames for t in [s, *ts]):
            raise ValueError(f"direct flow frames must lie in [0, {n_frames}), got s={s}, ts={ts}")
        flows, reliable = [], []
        for a in range(0, len(ts), batch_size):
            chunk = ts[a:a + batch_size]
            src = frames[s:s + 1].expand(len(chunk), -1, -1, -1)
            dst = frames[chunk]
            both = estimator(torch.cat([src, dst]), torch.cat([dst, src])).float().cpu()
            for k in range(len(chunk)):
                fst, fts = both[k], both[len(chunk) + k]
                land = grid + fst.reshape(2, -1).t()
                back = land + _sample(fts, land, "border")
                ok = ((back - grid).norm(dim=-1) < fb_threshold) & in_bounds(land, (h, w))
                flows.append(fst)
                reliable.append(ok.reshape(h, w))
        return torch.stack(flows), torch.stack(reliable)

    return fn


def split_foreground(tracks: torch.Tensor, fg_masks: torch.Tensor) -> torch.Tensor:
    """bool [N]: foreground flag of each trajectory [N,T,2] from ``fg_masks`` bool [T,H,W].

    The reference's rule: look up the mask at the trajectory's first valid point, in the frame of that point
    (the pixel it falls in). Rows with no valid point, or a start outside the frame, are background.
    """
    if tracks.ndim != 3 or tracks.shape[-1] != 2:
        raise ValueError(f"tracks must be [N,T,2], got {tuple(tracks.shape)}")
    if fg_masks.ndim != 3 or fg_masks.shape[0] != tracks.shape[1]:
        raise ValueError(f"fg_masks must be [T,H,W] with T = {tracks.shape[1]}, got {tuple(fg_masks.shape)}")
    t_len, h, w = fg_masks.shape
    flat = fg_masks.to(tracks.device).bool().reshape(t_len, -1)
    out = torch.zeros(tracks.shape[0], dtype=torch.bool, device=tracks.device)
    for a in range(0, tracks.shape[0], SPLIT_CHUNK):
        chunk = tracks[a:a + SPLIT_CHUNK]
        valid = ~torch.isnan(chunk).any(-1)
        first = valid.to(torch.uint8).argmax(dim=1)  # first True (0 when none, masked below)
        xy = chunk[torch.arange(chunk.shape[0], device=tracks.device), first]
        idx, inside = pixel_index(xy, (h, w))
        out[a:a + SPLIT_CHUNK] = flat[first, idx] & inside & valid.any(1)
    return out
