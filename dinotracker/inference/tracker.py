"""Fast batched inference (the fix of DINO_TRACKER_SPEC §7.2 "Inference").

* Refined features F = Phi + Delta(I) of every frame are computed once (frame chunks, no grad)
  and kept in a :class:`FeatureBank` together with the inverse norm of every cell, so a cosine
  cost volume is one matmul: ``cos = (q / |q|) . F * inv_norm`` (eps 1e-8 as the reference).
* All queries are correlated with all frames in chunked matmuls ([q, C] x [f, C, h*w]) and the
  refiner / softmax / soft-argmax run on ``chunk`` (query, frame) heatmaps at a time, so memory is
  bounded by ``chunk`` whatever the number of queries and frames.
* Storage is fp32 by default (fp16 opt-in, see :func:`default_storage_dtype`); every product, norm,
  refiner and soft-argmax is fp32.

Each query is tracked into every frame independently, so it is tracked forward *and* backward
from its query frame; the query frame returns the query itself exactly (co-tracker's query-frame
correction; the reference re-predicts it, ``force_query=False`` reproduces that).
Coordinates here are model raster px; :mod:`dinotracker.inference.api` converts input px.
"""

from __future__ import annotations

import torch

from dinotracker.models.tracker import DinoTracker, no_autocast

EPS = 1e-8


def default_storage_dtype(device) -> torch.dtype:
    """fp32 everywhere. fp16 storage (``storage_dtype=torch.float16``) halves the T x C x h x w bank, but
    its rounding can flip the coarse argmax between near-equal peaks of a cost map: measured on an
    H100 (experiments/bench/inference.py --half) one such flip moved a track point by 149 px. Use it
    only when the fp32 bank does not fit."""
    return torch.float32


@torch.no_grad()
def refined_maps(
    model: DinoTracker,
    frames: torch.Tensor,
    features: torch.Tensor,
    chunk: int = 8,
    device="cpu",
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Refined features of every frame: frames uint8/float [T, 3, H, W] (model res), frozen features
    [T, C, h, w] -> [T, C, h, w] in ``dtype`` on ``device`` (``model`` must be in eval mode so that
    BatchNorm uses running statistics). Runs Delta-DINO on ``chunk`` frames at a time."""
    if frames.shape[0] != features.shape[0]:
        raise ValueError(f"{frames.shape[0]} frames but {features.shape[0]} feature maps")
    device = torch.device(device)
    dtype = dtype or default_storage_dtype(device)
    out = torch.empty(features.shape, dtype=dtype, device=device)
    for a in range(0, frames.shape[0], max(1, int(chunk))):
        f = frames[a : a + chunk].to(device)
        f = f.float() / 255.0 if f.dtype == torch.uint8 else f.float()
        with no_autocast(device):
            out[a : a + chunk] = model.refine(f, features[a : a + chunk].to(device).float()).to(dtype)
    return out


class FeatureBank:
    """Feature maps [T, C, h, w] (any float dtype) plus fp32 inverse cell norms [T, h*w]."""

    def __init__(self, maps: torch.Tensor, norm_chunk: int = 8):
        if maps.dim() != 4:
            raise ValueError(f"feature maps must be [T, C, h, w], got {tuple(maps.shape)}")
        self.maps = maps
        t, c, h, w = maps.shape
        self.inv_norm = torch.empty(t, h * w, device=maps.device, dtype=torch.float32)
        for a in range(0, t, norm_chunk):
            n = maps[a : a + norm_chunk].float().reshape(-1, c, h * w).norm(dim=1)
            self.inv_norm[a : a + norm_chunk] = 1.0 / n.clamp_min(EPS)

    @property
    def num_frames(self) -> int:
        return self.maps.shape[0]

    @property
    def grid_hw(self) -> tuple[int, int]:
        return tuple(self.maps.shape[-2:])

    def frames_flat(self, frames: slice | int) -> torch.Tensor:
        """fp32 [f, C, h*w] maps of a frame slice (a copy only when storage is not fp32)."""
        m = self.maps[frames] if isinstance(frames, slice) else self.maps[frames : frames + 1]
        return m.float().reshape(m.shape[0], m.shape[1], -1)

    def cost(self, unit_q: torch.Tensor, flat: torch.Tensor, inv_norm: torch.Tensor) -> torch.Tensor:
        """ReLU(cosine) of unit queries [q, C] with maps [f, C, h*w] -> [f, q, h, w] fp32."""
        h, w = self.grid_hw
        with no_autocast(unit_q.device):
            s = torch.matmul(unit_q, flat) * inv_norm[:, None, :]
        return torch.relu_(s).reshape(flat.shape[0], unit_q.shape[0], h, w)


def unit(x: torch.Tensor) -> torch.Tensor:
    """x / max(|x|, 1e-8) along the last dim, fp32."""
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(EPS)


def full_head(model: DinoTracker, cost: torch.Tensor) -> torch.Tensor:
    """The model's head on whole maps: ReLU'd cost [..., h, w] -> refiner -> softmax -> radius soft-argmax
    -> xy [..., 2] model px (``model.heatmap`` + ``model.soft_argmax``)."""
    return model.soft_argmax(model.heatmap(cost), cost)


def refine_logits(model: DinoTracker, cost: torch.Tensor) -> torch.Tensor:
    """The refiner's logits on whole maps [n, h, w] -> [n, h, w], as two GEMMs over shifted copies.

    conv1 (1 -> c, k x k) is ``W1 [c, k*k] @ X [k*k, n*h*w]`` with X the k*k zero-padded shifts of the
    map; conv2 (c -> 1) is ``Z = W2^T [k*k, c] @ relu(Y)`` followed by summing the k*k shifted planes
    of Z. Same maths as ``model.refiner`` (NormalizedConv2d effective weights included), about 2x
    faster on CPU than the 1-input-channel convolution; ~45 floats per cell of scratch memory.
    """
    n, h, w = cost.shape
    if model.refiner is None:
        return cost
    c1, _, c2 = model.refiner.net
    w1, w2 = _effective_weight(c1).float(), _effective_weight(c2).float()
    hid, _, k, _ = w1.shape
    p = _pad(c1)
    if _pad(c2) != p or w2.shape[-1] != k or p != k // 2:
        return model.refiner(cost[:, None])[:, 0]
    xp = torch.nn.functional.pad(cost, (p, p, p, p))
    shifts = [(i, j) for i in range(k) for j in range(k)]
    x = torch.stack([xp[:, i : i + h, j : j + w] for i, j in shifts], 0).reshape(k * k, -1)
    b1 = c1.bias.float()[:, None] if c1.bias is not None else torch.zeros(hid, 1, device=cost.device)
    y = torch.addmm(b1, w1.reshape(hid, k * k), x).relu_()
    z = torch.mm(w2.reshape(hid, k * k).t(), y).reshape(k * k, n, h, w)
    del x, y
    zp = torch.nn.functional.pad(z, (p, p, p, p))
    out = torch.zeros(n, h, w, device=cost.device) + (float(c2.bias.detach()) if c2.bias is not None else 0.0)
    for s_idx, (i, j) in enumerate(shifts):
        out += zp[s_idx, :, i : i + h, j : j + w]
    return out


def fast_full_head(model: DinoTracker, cost: torch.Tensor) -> torch.Tensor:
    """:func:`full_head` with the GEMM refiner (:func:`refine_logits`); cost [n, h, w] -> [n, 2].

    The softmax is never materialised: the in-disc weights are ``exp(logit - logsumexp)`` gathered
    from the logits (same maths as ``model.heatmap`` + ``model.soft_argmax``, one pass fewer over
    the map; the uniform fallback at in-disc mass < 1e-8 included).
    """
    h, w = cost.shape[-2:]
    with no_autocast(cost.device):
        cost = cost.float()
        n = cost.shape[0]
        logits = refine_logits(model, cost).reshape(n, h * w)
        if model.coarse_from != "raw":
            probs = torch.softmax(logits, dim=-1).reshape(-1, h, w)
            return model.soft_argmax(probs, cost)
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        idx = cost.reshape(n, h * w).argmax(dim=-1)
        r0, c0 = idx // w, idx % w
        dr, dc = model.disc_offsets.to(cost.device)  # the cells within the soft-argmax radius
        rows, cols = r0[:, None] + dr[None], c0[:, None] + dc[None]  # [n, K']
        inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        flat = rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)
        wts = torch.exp(logits.gather(1, flat) - lse) * inside
        mass = wts.sum(dim=-1, keepdim=True)
        wts = torch.where(mass < 1e-8, inside.float(), wts)
        cx = cols.float() * model.stride + model.patch / 2.0
        cy = rows.float() * model.stride + model.patch / 2.0
        den = wts.sum(dim=-1)
        return torch.stack([(wts * cx).sum(-1) / den, (wts * cy).sum(-1) / den], dim=-1)


class HeadPlan:
    """Remembers, across the chunks of one tracking call, whether :func:`head`'s windowed path pays.

    The window is only exact for rows that pass its bound test; the others are recomputed on the
    whole map. With flat cost maps (few training steps, ``backbone=none``) nearly every row fails
    the test, and trying the window first doubles the work. After ``probe_rows`` rows, if fewer
    than half passed, the rest of the call goes straight to the whole-map head (same result).
    """

    def __init__(self, probe_rows: int = 256):
        self.probe_rows = int(probe_rows)
        self.tried = 0
        self.safe = 0

    @property
    def use_window(self) -> bool:
        return self.tried < self.probe_rows or 2 * self.safe >= self.tried

    def record(self, tried: int, safe: int) -> None:
        self.tried += int(tried)
        self.safe += int(safe)


def _pad(conv) -> int:
    p = conv.padding
    return int(p if isinstance(p, int) else p[0])


def _effective_weight(conv) -> torch.Tensor:
    return conv.normalized_weight() if hasattr(conv, "normalized_weight") else conv.weight


@torch.no_grad()
def logit_upper_bound(model: DinoTracker) -> float:
    """An upper bound of the refined logits for any cost map in [0, 1] (ReLU'd cosine).

    conv1 -> ReLU -> conv2: y_c <= relu(b1_c + sum(max(w1_c, 0))), r <= b2 + sum(max(w2, 0) * y_max).
    Without a refiner the logits are the cost itself (<= 1).
    """
    if model.refiner is None:
        return 1.0
    c1, c2 = model.refiner.net[0], model.refiner.net[-1]
    w1, w2 = _effective_weight(c1).float(), _effective_weight(c2).float()
    b1 = c1.bias.float() if c1.bias is not None else torch.zeros(w1.shape[0])
    b2 = float(c2.bias.detach()) if c2.bias is not None else 0.0
    ymax = torch.relu(b1 + w1.clamp_min(0).sum(dim=(1, 2, 3)))  # [hidden]
    return b2 + float((w2[0].clamp_min(0).sum(dim=(1, 2)) * ymax).sum())


def head(
    model: DinoTracker, cost: torch.Tensor, bound: float | None = None, plan: HeadPlan | None = None
) -> torch.Tensor:
    """The model's head (same result as :func:`full_head`, up to float rounding), evaluated on a window.

    With ``coarse_from="raw"`` the prediction only depends on the refined logits inside the disc
    around the cost's argmax (the softmax denominator cancels in the weighted mean), and those only
    on the cost within the disc's window plus the refiner's receptive-field margin (2 cells for two
    3x3 convs). So the refiner runs on a (2K+5)^2 window per heatmap instead of the whole grid (15^2
    vs 67x121 cells at the paper's resolution). The one thing the denominator decides is the
    reference's uniform fallback (in-disc mass < 1e-8): a row goes to the whole-map head unless
    ``sum_disc exp(r - B) / (h w) >= 1e-7`` for the logit bound B (:func:`logit_upper_bound`), which
    guarantees mass >= 1e-7 > 1e-8 (with un-normalised or well-conditioned kernels this holds for
    nearly every row; NormalizedConv2d kernels whose sums are near zero make B loose, and then most
    rows take the whole-map path). ``coarse_from="refined"`` needs the whole map: whole-map head.
    ``plan`` (:class:`HeadPlan`, shared by the chunks of one call) skips the window once it is seen
    not to pay. cost [R, h, w] (or [..., h, w]) -> xy [..., 2].
    """
    h, w = cost.shape[-2:]
    lead = cost.shape[:-2]
    cost = cost.reshape(-1, h, w)
    refiner = model.refiner
    k = int(model.radius // model.stride)
    margin = 0 if refiner is None else sum(_pad(m) for m in (refiner.net[0], refiner.net[-1]))
    win = 2 * (k + margin) + 1
    if (
        model.coarse_from != "raw"
        or win * win * 2 >= h * w
        or cost.shape[0] == 0
        or (plan is not None and not plan.use_window)
    ):
        return fast_full_head(model, cost).reshape(*lead, 2)
    bound = logit_upper_bound(model) if bound is None else bound
    with no_autocast(cost.device):
        cost = cost.float()
        n = cost.shape[0]
        idx = cost.reshape(n, -1).argmax(dim=-1)
        r0, c0 = idx // w, idx % w
        e = k + margin
        padded = torch.nn.functional.pad(cost, (e, e, e, e))  # zero outside the grid, like conv padding
        off = torch.arange(win, device=cost.device)
        rows = (r0[:, None] + off[None])[:, :, None]  # padded coords of the window
        cols = (c0[:, None] + off[None])[:, None, :]
        x = padded[torch.arange(n, device=cost.device)[:, None, None], rows, cols]  # [n, win, win]
        if refiner is None:
            logits = x
        else:
            ingrid = ((rows - e >= 0) & (rows - e < h)) & ((cols - e >= 0) & (cols - e < w))  # [n, win, win]
            c1, act, c2 = refiner.net  # conv -> ReLU -> conv (Refiner)
            y = act(c1(x[:, None])) * ingrid[:, None]  # conv2 sees zeros outside the grid (its padding)
            logits = c2(y)[:, 0]
        # the disc: offsets within the centre (2K+1)^2 of the window
        dr, dc = torch.meshgrid(
            torch.arange(-k, k + 1, device=cost.device),
            torch.arange(-k, k + 1, device=cost.device),
            indexing="ij",
        )
        disc = (dr * dr + dc * dc) * model.stride**2 <= model.radius**2
        lg = logits[:, margin : margin + 2 * k + 1, margin : margin + 2 * k + 1]  # [n, 2K+1, 2K+1]
        rr, cc = r0[:, None, None] + dr, c0[:, None, None] + dc
        inside = disc & (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        lg = torch.where(inside, lg, torch.full_like(lg, -float("inf")))
        top = lg.amax(dim=(1, 2), keepdim=True)
        wts = torch.exp(lg - top)  # in-disc softmax weights up to a common factor
        safe = (torch.exp(top[:, 0, 0] - bound) * wts.sum(dim=(1, 2)) / (h * w)) >= 1e-7
        cx = cc.float() * model.stride + model.patch / 2.0
        cy = rr.float() * model.stride + model.patch / 2.0
        den = wts.sum(dim=(1, 2))
        xy = torch.stack([(wts * cx).sum(dim=(1, 2)) / den, (wts * cy).sum(dim=(1, 2)) / den], dim=-1)
        if plan is not None:
            plan.record(n, int(safe.sum()))
        if not bool(safe.all()):
            bad = (~safe).nonzero(as_tuple=True)[0]
            xy[bad] = fast_full_head(model, cost[bad])
        return xy.reshape(*lead, 2)


def sample_track_features(model: DinoTracker, maps: torch.Tensor, tracks: torch.Tensor) -> torch.Tensor:
    """Features of every predicted point: tracks [N, T, 2] model px -> fp32 [N, T, C] (F_t at p_t)."""
    n, t = tracks.shape[:2]
    out = torch.empty(n, t, maps.shape[1], device=maps.device, dtype=torch.float32)
    for k in range(t):  # one grid_sample per frame, all points at once
        out[:, k] = model.sample_features(maps[k : k + 1], tracks[None, :, k].float())[0].float()
    return out


@torch.no_grad()
def track_features(
    model: DinoTracker, bank: FeatureBank, query_features: torch.Tensor, chunk: int = 512, progress=None
) -> torch.Tensor:
    """Track feature vectors [N, C] into every frame -> [N, T, 2] model px.

    Processes blocks of ``qb`` queries x ``fb`` frames with ``qb * fb <= chunk`` heatmaps.
    ``progress``: a :class:`dinotracker.utils.progress.Progress` counting heatmaps (N * T in all).
    """
    n, t = query_features.shape[0], bank.num_frames
    out = torch.empty(n, t, 2, device=bank.maps.device, dtype=torch.float32)
    if n == 0:
        return out
    chunk = max(1, int(chunk))
    qb = min(n, chunk)
    fb = max(1, min(t, chunk // qb))
    uq = unit(query_features)
    plan = HeadPlan()
    for f0 in range(0, t, fb):
        fs = slice(f0, min(t, f0 + fb))
        flat, inv = bank.frames_flat(fs), bank.inv_norm[fs]
        for q0 in range(0, n, qb):
            cost = bank.cost(uq[q0 : q0 + qb], flat, inv)  # [f, q, h, w]
            out[q0 : q0 + qb, fs] = head(model, cost, plan=plan).transpose(0, 1)
            if progress is not None:
                progress.update(cost.shape[0] * cost.shape[1])
    return out


@torch.no_grad()
def track_queries(
    model: DinoTracker,
    maps: torch.Tensor | FeatureBank,
    queries: torch.Tensor,
    chunk: int = 512,
    force_query: bool = True,
    progress=None,
) -> torch.Tensor:
    """queries [N, 3] (t, x, y) model px -> tracks [N, T, 2] model px, forward and backward in time.

    The source feature is the refined map of frame t bilinearly sampled at (x, y) (patch-grid,
    align-corners, border; the reference's sampling). With ``force_query`` the query frame returns
    (x, y) exactly. Memory is bounded by ``chunk`` heatmaps at a time.
    """
    bank = maps if isinstance(maps, FeatureBank) else FeatureBank(maps)
    if queries.dim() != 2 or queries.shape[1] != 3:
        raise ValueError(f"queries must be [N, 3] (t, x, y), got {tuple(queries.shape)}")
    dev = bank.maps.device
    tq = queries[:, 0].round().long().to(dev)
    xy = queries[:, 1:].float().to(dev)
    qf = (
        model.sample_points(bank.maps, tq, xy).float()
        if len(queries)
        else xy.new_zeros(0, bank.maps.shape[1])
    )
    out = track_features(model, bank, qf, chunk=chunk, progress=progress)
    if force_query and len(queries):
        out[torch.arange(len(queries), device=dev), tq] = xy
    return out
