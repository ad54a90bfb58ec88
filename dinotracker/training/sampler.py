"""Vectorised per-step correspondence sampling for DINO-Tracker training (spec §4.2, paper App. A.2).

One call of :meth:`CorrespondenceSampler.sample` draws the frames of a training step (<= 8) and,
among them, every minibatch the losses need:

* **flow** pairs from the optical-flow trajectories: fg and bg separately (50 % fg); each group
  draws ``flow_frames`` (4) distinct frames, keeps the trajectories valid in >= 2 of them, takes
  up to its quota of those and, per trajectory, two distinct valid frames in random order
  (one supervised direction per sample, as the reference);
* **DINO best-buddy** pairs for ``bb_frame_pairs`` (4) ordered frame pairs s != t among the drawn
  frames, 70 % fg (by the fg mask at the source point), ``bb_pairs / bb_frame_pairs`` per pair;
* **refined best-buddy** frame pairs: the pairs themselves are found on the *current* refined
  features inside the training step, so the sampler hands over, per frame pair, a random
  priority for every source cell and the cells' fg flags; :func:`select_region_pairs` then picks
  the 70 / 30 fg / bg subset deterministically (all randomness stays in the sampler);
* **cycle-consistency** query pixels: ``cycle_pairs / cycle_frame_pairs`` pixel centres per frame
  pair, 70 % from the source frame's fg mask.

Everything is torch indexing (no per-point Python loop; the reference loops over every point
every step). Coordinates are model-resolution raster (x, y) px (:mod:`dinotracker.geometry`).

The batch also carries what the sampler knows on the host as Python ints (per-slot pair counts of every
:class:`Correspondences`, the refined-BB frame slots), so that the training step, on a GPU, never reads the
device back to learn them (issue 13).

**Determinism / resume.** The draw of step ``k`` uses a ``torch.Generator`` seeded from
``(seed, k)``, so a batch is a pure function of the step. This makes resume exact regardless of
Lightning's one-batch prefetch (a stateful generator would have advanced past the checkpointed
step); the only state to save is the next step (:meth:`state_dict`).

Fixes relative to the reference (noted where they happen): bounded re-draws instead of
unbounded ``while`` loops, and an empty fg (or bg) trajectory group hands its quota to the other.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, fields

import torch

from dinotracker.geometry import patch_center_grid, sample_at
from dinotracker.models.tracker import slot_counts
from dinotracker.preprocessing.types import PreprocessedVideo


# --------------------------------------------------------------------------- batch containers
class _ToMixin:
    def to(self, device=None, non_blocking: bool = False):
        """Copy with every tensor field moved to ``device`` (Lightning calls this on batches)."""
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor) or hasattr(v, "to") and not isinstance(v, (int, float, str)):
                v = v.to(device, non_blocking=non_blocking)
            kw[f.name] = v
        return type(self)(**kw)


@dataclass
class Correspondences(_ToMixin):
    """M point pairs between frames of the step. ``*_slot`` index :attr:`Batch.frames`.

    src_slot, dst_slot: int64 [M]; src_xy, dst_xy: float32 [M, 2] raster model px (dst_xy is NaN
    for cycle queries, whose targets come from the model); weight: float32 [M]; fg: bool [M].
    src_counts, dst_counts: host-side Python ints, how many pairs have each slot as source / target
    (``bincount(src_slot, minlength=F)``), filled by the sampler (:meth:`with_counts`) so that the step's
    per-frame matmuls split the points without reading the device back; ``None`` = count on the device.
    They stay on the host when the batch moves to a device.
    """

    src_slot: torch.Tensor
    dst_slot: torch.Tensor
    src_xy: torch.Tensor
    dst_xy: torch.Tensor
    weight: torch.Tensor
    fg: torch.Tensor
    src_counts: tuple[int, ...] | None = None
    dst_counts: tuple[int, ...] | None = None

    def with_counts(self, num_slots: int) -> Correspondences:
        """A copy with :attr:`src_counts` / :attr:`dst_counts` over ``num_slots`` slots (call on the host)."""
        return dataclasses.replace(self, src_counts=slot_counts(self.src_slot, num_slots),
                                   dst_counts=slot_counts(self.dst_slot, num_slots))

    def __len__(self) -> int:
        return int(self.src_slot.shape[0])

    @staticmethod
    def empty() -> Correspondences:
        z = torch.zeros(0)
        return Correspondences(z.long(), z.long(), z.reshape(0, 2), z.reshape(0, 2), z, z.bool())

    @staticmethod
    def cat(parts: list[Correspondences]) -> Correspondences:
        """The pairs of ``parts`` in order (slot counts dropped: :meth:`with_counts` recounts)."""
        parts = [p for p in parts if len(p)] or [Correspondences.empty()]
        return Correspondences(*[torch.cat([getattr(p, name) for p in parts]) for name in _PAIR_TENSORS])


_PAIR_TENSORS = ("src_slot", "dst_slot", "src_xy", "dst_xy", "weight", "fg")


@dataclass
class RegionPairs(_ToMixin):
    """P frame pairs whose point pairs are found during the step (refined best buddies).

    src_slot, dst_slot: int64 [P]; priority: float32 [P, h*w] random key per source cell (higher
    is picked first); cell_fg: bool [P, h*w] fg flag of each source cell; n_fg / n_bg: how many
    fg / bg pairs to keep per frame pair. src_slots, dst_slots: the same slots as host-side tuples of
    ints (the step picks the pairs' maps by them without reading the device back); filled from
    ``src_slot`` / ``dst_slot`` when not given (construct on the host, or pass them).
    """

    src_slot: torch.Tensor
    dst_slot: torch.Tensor
    priority: torch.Tensor
    cell_fg: torch.Tensor
    n_fg: int
    n_bg: int
    src_slots: tuple[int, ...] | None = None
    dst_slots: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.src_slots is None:
            self.src_slots = tuple(self.src_slot.tolist())
        if self.dst_slots is None:
            self.dst_slots = tuple(self.dst_slot.tolist())

    def __len__(self) -> int:
        return int(self.src_slot.shape[0])


@dataclass
class Batch(_ToMixin):
    """One training step's samples. ``frames`` int64 [F] sorted distinct video frame indices (F <= 8).

    ``real_frames`` (``data.static_frames``): only ``frames[:real_frames]`` are the step's frames (sorted,
    distinct, the ones every slot field indexes); the rest repeat ``frames[0]`` to pad F to ``max_frames``,
    and the step leaves them out of its BatchNorm statistics and losses. None: every frame is real.
    """

    step: int
    frames: torch.Tensor
    flow: Correspondences
    dino_bb: Correspondences
    refined_bb: RegionPairs
    cycle: Correspondences
    real_frames: int | None = None


# --------------------------------------------------------------------------- helpers
def rank_select(group: torch.Tensor, score: torch.Tensor, quota: torch.Tensor) -> torch.Tensor:
    """Indices of the ``quota[g]`` highest-``score`` elements of every group ``g`` (vectorised).

    group int64 [N] in [0, G), score float [N], quota int64 [G]. Returns int64 indices into [N],
    grouped by group; a group with fewer elements than its quota returns all of them.
    """
    if group.numel() == 0:
        return group.new_zeros(0)
    order = torch.argsort(score, descending=True)
    order = order[torch.argsort(group[order], stable=True)]
    gs = group[order]
    counts = torch.bincount(group, minlength=quota.numel())
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.numel(), device=group.device) - starts[gs]
    return order[rank < quota[gs]]


def select_region_pairs(pair_id: torch.Tensor, src_cell: torch.Tensor, region: RegionPairs) -> torch.Tensor:
    """Which of K candidate pairs (e.g. refined best buddies) to keep, per :class:`RegionPairs`.

    pair_id int64 [K] in [0, P), src_cell int64 [K] flat source cell. Keeps, per frame pair, the
    ``n_fg`` fg and ``n_bg`` bg candidates of highest priority. Returns int64 indices into [K].
    The list form (data-dependent sizes); the training step uses :func:`select_region_cells`.
    """
    fg = region.cell_fg[pair_id, src_cell]
    score = region.priority[pair_id, src_cell]
    quota = torch.tensor([region.n_fg, region.n_bg], device=pair_id.device).repeat(len(region))
    return rank_select(pair_id * 2 + (~fg).long(), score, quota)


def select_region_cells(candidate: torch.Tensor, region: RegionPairs) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`select_region_pairs` with fixed shapes (no host sync): candidate bool [P, h*w] (source cell i
    of frame pair k has a candidate pair, e.g. a refined best buddy) -> (cell int64 [P, Q], valid bool [P, Q]),
    Q = min(n_fg, h*w) + min(n_bg, h*w).

    Per frame pair: the ``n_fg`` fg candidate cells of highest priority, then the ``n_bg`` bg ones, each
    group in descending priority (``topk`` of the priority with non-candidates at -inf). Where a group has
    fewer candidates than its quota the remaining slots have ``valid`` False (their cells are arbitrary
    cells of that pair). The valid cells are the candidates :func:`select_region_pairs` keeps, in its order
    (up to exactly equal priorities at a quota's edge).
    """
    p, n = region.priority.shape
    if candidate.shape != (p, n):
        raise ValueError(f"candidate must be [{p}, {n}] like region.priority, got {tuple(candidate.shape)}")
    cells, valid = [], []
    for is_fg, quota in ((True, region.n_fg), (False, region.n_bg)):
        q = min(int(quota), n)
        if q == 0:
            continue
        ok = candidate & (region.cell_fg if is_fg else ~region.cell_fg)
        idx = torch.where(ok, region.priority, float("-inf")).topk(q, dim=1).indices  # sorted, descending
        cells.append(idx)
        valid.append(ok.gather(1, idx))
    if not cells:
        z = torch.zeros(p, 0, dtype=torch.long, device=candidate.device)
        return z, z.bool()
    return torch.cat(cells, dim=1), torch.cat(valid, dim=1)


def _step_seed(seed: int, step: int) -> int:
    d = hashlib.blake2b(f"{int(seed)}:{int(step)}".encode(), digest_size=8).digest()
    return int.from_bytes(d, "little") & (2**63 - 1)


def _split(total: int, ratio: float) -> tuple[int, int]:
    n_fg = int(total * ratio)  # floor, as the reference (256 * 0.7 -> 179)
    return n_fg, total - n_fg


def mask_at(masks: torch.Tensor, frame: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """fg flag of raster points: bilinear sample of bool masks [T, H, W] at xy [M, 2] in frame [M], > 0.

    The reference samples the mask bilinearly (align_corners=False) and tests > 0, so a point
    touching any fg pixel counts as fg. Loops over distinct frames.
    """
    out = torch.zeros(xy.shape[0], dtype=torch.bool)
    for f in torch.unique(frame).tolist():
        sel = (frame == f).nonzero(as_tuple=True)[0]
        m = masks[f][None, None].float()
        out[sel] = sample_at(m, xy[sel][None].float())[0, :, 0] > 0
    return out


# --------------------------------------------------------------------------- sampler
class CorrespondenceSampler:
    """Draws :class:`Batch` es for DINO-Tracker training from a :class:`PreprocessedVideo` (CPU).

    Args (defaults = paper App. A.2 / reference ``train.yaml``):
        flow_pairs: flow pairs per step (512), ``fg_ratio`` of them fg (0.5).
        flow_frames: distinct frames drawn per fg / bg group (4; <= 8 frames per step).
        bb_pairs, bb_frame_pairs: DINO/refined best-buddy pairs per step (1024) over frame pairs (4).
        cycle_pairs, cycle_frame_pairs: cycle query points per step (1024) over frame pairs (4).
        region_fg_ratio: fg share of best-buddy and cycle points (0.7).
        max_frames: cap on distinct frames per step (8). With ``max_frames < 2 * flow_frames`` the
            bg group draws from the fg frames plus ``max_frames - flow_frames`` others.
        seed: base seed; step ``k`` draws with a generator seeded from (seed, k).
        region_same_frame: allow s == t for refined-BB and cycle frame pairs (the reference does;
            False draws distinct frames, spec §7.1).
        max_redraws: bound on the flow frame re-draws when < 2 trajectories qualify (the
            reference loops forever).
        static_frames: pad every step's frames to exactly ``max_frames`` (repeats of its first frame,
            :attr:`Batch.real_frames` says how many are real) so that Delta-DINO always sees the same batch
            size; the draws and the losses stay those of the real frames (see ``conf/data/default.yaml``).
    """

    def __init__(self, video: PreprocessedVideo, flow_pairs: int = 512, fg_ratio: float = 0.5,
                 flow_frames: int = 4, bb_pairs: int = 1024, bb_frame_pairs: int = 4, cycle_pairs: int = 1024,
                 cycle_frame_pairs: int = 4, region_fg_ratio: float = 0.7, max_frames: int = 8, seed: int = 0,
                 region_same_frame: bool = True, max_redraws: int = 100, static_frames: bool = False):
        for name, v in (("flow_pairs", flow_pairs), ("bb_pairs", bb_pairs), ("cycle_pairs", cycle_pairs),
                        ("bb_frame_pairs", bb_frame_pairs), ("cycle_frame_pairs", cycle_frame_pairs)):
            if int(v) < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        if flow_frames < 2:
            raise ValueError(f"flow_frames must be >= 2 (a flow pair spans two frames), got {flow_frames}")
        if max_frames < flow_frames:
            raise ValueError(f"max_frames ({max_frames}) must be >= flow_frames ({flow_frames})")
        for name, v in (("fg_ratio", fg_ratio), ("region_fg_ratio", region_fg_ratio)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        t = video.num_frames
        if t < 2:
            raise ValueError(f"training needs a video of >= 2 frames, got {t}")
        self.video = video
        self.num_frames = t
        self.flow_pairs, self.fg_ratio, self.flow_frames = int(flow_pairs), float(fg_ratio), int(flow_frames)
        self.bb_pairs, self.bb_frame_pairs = int(bb_pairs), int(bb_frame_pairs)
        self.cycle_pairs, self.cycle_frame_pairs = int(cycle_pairs), int(cycle_frame_pairs)
        self.region_fg_ratio, self.max_frames = float(region_fg_ratio), int(max_frames)
        self.seed, self.max_redraws = int(seed), int(max_redraws)
        self.region_same_frame = bool(region_same_frame)
        self.static_frames = bool(static_frames)
        self.next_step = 0

        # trajectories: rows valid in >= 2 frames (the reference drops shorter ones), fg / bg
        tracks = video.tracks
        if tracks.dim() != 3 or tracks.shape[1] != t or tracks.shape[2] != 2:
            raise ValueError(f"tracks must be [N, {t}, 2], got {tuple(tracks.shape)}")
        self.tracks = tracks
        valid = ~torch.isnan(tracks).any(-1)  # [N, T]
        keep = valid.sum(1) >= 2
        fg = video.tracks_fg.bool().reshape(-1)
        if fg.shape[0] != tracks.shape[0]:
            raise ValueError(f"tracks_fg has {fg.shape[0]} rows for {tracks.shape[0]} tracks")
        self.rows = [torch.nonzero(keep & fg, as_tuple=True)[0], torch.nonzero(keep & ~fg, as_tuple=True)[0]]
        self.valid = [valid[r] for r in self.rows]  # bool [N_g, T]

        masks = video.fg_masks.bool()
        if masks.shape != (t, *video.model_hw):
            raise ValueError(f"fg_masks must be [{t}, {video.model_hw[0]}, {video.model_hw[1]}], got "
                             f"{tuple(masks.shape)}")
        self.masks = masks
        self.hw = masks.shape[-2] * masks.shape[-1]
        # per frame, pixel indices ordered bg first then fg (int32), for O(quota) cycle draws
        self.mask_nbg = (~masks).reshape(t, -1).sum(1)
        self.mask_order = torch.stack([torch.argsort(masks[f].reshape(-1).to(torch.uint8), stable=True)
                                       .to(torch.int32) for f in range(t)])
        self.grid_hw = video.grid_hw
        # fg flag of every patch cell (refined-BB split), sampled like the reference's BB split
        centers = patch_center_grid(self.grid_hw, video.patch, video.stride).reshape(-1, 2)
        self.cell_fg = torch.stack([sample_at(masks[f][None, None].float(), centers[None])[0, :, 0] > 0
                                    for f in range(t)])  # [T, h*w]

        # best buddies sorted by unordered frame pair, fg flags of both endpoints precomputed
        bb = video.best_buddies
        self.bb = bb
        if len(bb):
            lo, hi = torch.minimum(bb.src_t, bb.dst_t), torch.maximum(bb.src_t, bb.dst_t)
            key = lo * t + hi
            self.bb_order = torch.argsort(key, stable=True)
            self.bb_keys = key[self.bb_order]
            self.bb_src_fg = mask_at(masks, bb.src_t, bb.src_xy)
            self.bb_dst_fg = mask_at(masks, bb.dst_t, bb.dst_xy)
        else:
            self.bb_order = self.bb_keys = torch.zeros(0, dtype=torch.long)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"seed": self.seed, "next_step": self.next_step}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.next_step = int(state["seed"]), int(state["next_step"])

    def get_state(self) -> dict:
        return self.state_dict()

    def set_state(self, state: dict) -> None:
        self.load_state_dict(state)

    def generator(self, step: int) -> torch.Generator:
        return torch.Generator().manual_seed(_step_seed(self.seed, step))

    def __iter__(self):
        while True:
            yield self.sample()

    # ------------------------------------------------------------------ drawing
    def sample(self, step: int | None = None) -> Batch:
        """The :class:`Batch` of training step ``step`` (default: the next one; advances the counter)."""
        if step is None:
            step = self.next_step
        self.next_step = int(step) + 1
        g = self.generator(step)
        t = self.num_frames
        k = min(self.flow_frames, t)

        n_fg, n_bg = _split(self.flow_pairs, self.fg_ratio)
        if len(self.rows[0]) == 0:  # no fg trajectories: bg takes the whole quota (and vice versa)
            n_fg, n_bg = 0, self.flow_pairs
        elif len(self.rows[1]) == 0:
            n_fg, n_bg = self.flow_pairs, 0
        fr_fg = torch.randperm(t, generator=g)[:k]
        if self.max_frames >= 2 * k:
            pool = None
        else:  # bg draws from the fg frames plus a few others so that <= max_frames in total
            rest = torch.ones(t, dtype=torch.bool)
            rest[fr_fg] = False
            others = torch.nonzero(rest, as_tuple=True)[0]
            others = others[torch.randperm(len(others), generator=g)[:self.max_frames - k]]
            pool = torch.cat([fr_fg, others])
        flow_fg, fr_fg = self._flow_group(0, n_fg, k, g, first_frames=fr_fg)
        flow_bg, fr_bg = self._flow_group(1, n_bg, k, g, pool=pool)
        flow = Correspondences.cat([flow_fg, flow_bg])
        # the step's frames are those the drawn flow pairs use (the reference's frames_set_t), sorted: a drawn
        # frame no pair uses would still enter BatchNorm, the prior loss and the BB / cycle frame draws
        used = torch.cat([flow.src_slot, flow.dst_slot])
        frames = torch.unique(used) if len(used) else torch.unique(torch.cat([fr_fg, fr_bg]))
        flow.src_slot = torch.searchsorted(frames, flow.src_slot)  # frame index -> slot
        flow.dst_slot = torch.searchsorted(frames, flow.dst_slot)
        dino_bb = self._dino_bb(frames, g)  # draws in this order (the generator's stream)
        refined_bb = self._refined_pairs(frames, g)
        cycle = self._cycle(frames, g)
        real = None
        if self.static_frames:  # padding after every draw: the same samples as without it
            real = len(frames)
            frames = torch.cat([frames, frames[:1].expand(max(self.max_frames - real, 0))])
        nf = len(frames)  # per-slot pair counts, on the host: the step splits its matmuls by them
        return Batch(step=int(step), frames=frames, flow=flow.with_counts(nf), dino_bb=dino_bb.with_counts(nf),
                     refined_bb=refined_bb, cycle=cycle.with_counts(nf), real_frames=real)

    def _flow_group(self, which: int, n: int, k: int, g: torch.Generator, first_frames=None, pool=None):
        """Flow pairs of one group (0 fg, 1 bg). Returns (Correspondences with *frame indices* in the
        slot fields, the group's drawn frames)."""
        rows, valid = self.rows[which], self.valid[which]
        t = self.num_frames
        fr = first_frames
        elig = torch.zeros(0, dtype=torch.long)
        for attempt in range(self.max_redraws):
            if fr is None or attempt > 0:
                fr = (torch.randperm(t, generator=g)[:k] if pool is None
                      else pool[torch.randperm(len(pool), generator=g)[:k]])
            if n == 0 or len(rows) == 0:
                break
            v = valid[:, fr]  # [N_g, k]
            elig = torch.nonzero(v.sum(1) >= 2, as_tuple=True)[0]
            if len(elig) >= 2:  # the reference re-draws the frames below 2 qualifying trajectories
                break
        if n == 0 or len(elig) == 0:
            return Correspondences.empty(), fr
        pick = elig[torch.randperm(len(elig), generator=g)[:n]]
        # two distinct valid frames per trajectory, in random order: the top-2 of i.i.d. uniform
        # keys over its valid slots is a uniformly random ordered pair (the reference's multinomial)
        keys = torch.rand(len(pick), k, generator=g)
        keys = torch.where(valid[pick][:, fr], keys, torch.full_like(keys, -1.0))
        top = keys.topk(2, dim=1).indices
        t1, t2 = fr[top[:, 0]], fr[top[:, 1]]
        r = rows[pick]
        m = len(pick)
        return Correspondences(t1, t2, self.tracks[r, t1].float(), self.tracks[r, t2].float(), torch.ones(m),
                               torch.full((m,), which == 0)), fr

    def _frame_pairs(self, nf: int, p: int, g: torch.Generator, distinct: bool):
        s = torch.randint(nf, (p,), generator=g)
        if distinct:
            if nf < 2:
                raise ValueError("need >= 2 frames in the step for distinct frame pairs")
            # uniform over ordered pairs s != t: the reference's whole-vector re-draw has the same law
            t = (s + torch.randint(1, nf, (p,), generator=g)) % nf
        else:
            t = torch.randint(nf, (p,), generator=g)
        return s, t

    def _dino_bb(self, frames: torch.Tensor, g: torch.Generator) -> Correspondences:
        p = self.bb_frame_pairs
        if p == 0 or self.bb_pairs == 0 or len(self.bb) == 0 or len(frames) < 2:
            return Correspondences.empty()
        s, t = self._frame_pairs(len(frames), p, g, distinct=True)
        fs, ft = frames[s], frames[t]
        key = torch.minimum(fs, ft) * self.num_frames + torch.maximum(fs, ft)
        lo = torch.searchsorted(self.bb_keys, key)
        counts = torch.searchsorted(self.bb_keys, key, right=True) - lo
        total = int(counts.sum())
        if total == 0:
            return Correspondences.empty()
        pair_id = torch.repeat_interleave(torch.arange(p), counts)
        offs = torch.arange(total) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        cand = self.bb_order[lo[pair_id] + offs]
        bb = self.bb
        swap = bb.src_t[cand] != fs[pair_id]  # stored in the other direction
        sw = swap[:, None]
        src_xy = torch.where(sw, bb.dst_xy[cand], bb.src_xy[cand])
        dst_xy = torch.where(sw, bb.src_xy[cand], bb.dst_xy[cand])
        fg = torch.where(swap, self.bb_dst_fg[cand], self.bb_src_fg[cand])
        n_fg, n_bg = _split(self.bb_pairs // p, self.region_fg_ratio)
        quota = torch.tensor([n_fg, n_bg]).repeat(p)
        sel = rank_select(pair_id * 2 + (~fg).long(), torch.rand(total, generator=g), quota)
        pid = pair_id[sel]
        return Correspondences(s[pid], t[pid], src_xy[sel].float(), dst_xy[sel].float(),
                               bb.weight[cand[sel]].float(), fg[sel])

    def _refined_pairs(self, frames: torch.Tensor, g: torch.Generator) -> RegionPairs:
        p = self.bb_frame_pairs if self.bb_pairs > 0 else 0
        s, t = self._frame_pairs(len(frames), p, g, distinct=not self.region_same_frame)
        n_fg, n_bg = _split(self.bb_pairs // max(p, 1), self.region_fg_ratio)
        hw = self.grid_hw[0] * self.grid_hw[1]
        return RegionPairs(s, t, torch.rand(p, hw, generator=g), self.cell_fg[frames[s]], n_fg, n_bg)

    def _cycle(self, frames: torch.Tensor, g: torch.Generator) -> Correspondences:
        p = self.cycle_frame_pairs
        if p == 0 or self.cycle_pairs == 0:
            return Correspondences.empty()
        s, t = self._frame_pairs(len(frames), p, g, distinct=not self.region_same_frame)
        n_fg, n_bg = _split(self.cycle_pairs // p, self.region_fg_ratio)
        w = self.masks.shape[-1]
        src_f = frames[s].tolist()
        pix, pid, fg = [], [], []
        for k, f in enumerate(src_f):  # per frame pair (<= 4), each draw O(quota)
            nbg = int(self.mask_nbg[f])
            for n, is_fg, lo, c in ((n_fg, True, nbg, self.hw - nbg), (n_bg, False, 0, nbg)):
                r = _distinct(c, n, g)
                pix.append(self.mask_order[f, lo + r].long())
                pid.append(torch.full((len(r),), k))
                fg.append(torch.full((len(r),), is_fg))
        pix, pid, fg = torch.cat(pix), torch.cat(pid), torch.cat(fg)
        xy = torch.stack([(pix % w).float() + 0.5, (pix // w).float() + 0.5], dim=-1)  # pixel centres
        nan = torch.full_like(xy, float("nan"))
        return Correspondences(s[pid], t[pid], xy, nan, torch.ones(len(pix)), fg)


def _distinct(c: int, n: int, g: torch.Generator) -> torch.Tensor:
    """min(n, c) distinct uniform integers in [0, c), in O(n log n) when n << c.

    The distinct values of 2n draws with replacement, then a random n of them: by symmetry over
    the labels every n-subset is equally likely. Falls back to a permutation for small c.
    """
    if c <= 0 or n <= 0:
        return torch.zeros(0, dtype=torch.long)
    if c <= 4 * n:
        return torch.randperm(c, generator=g)[:n]
    u = torch.unique(torch.randint(c, (2 * n,), generator=g))
    if len(u) < n:  # practically impossible for c > 4n; keeps the result exact anyway
        return torch.randperm(c, generator=g)[:n]
    return u[torch.randperm(len(u), generator=g)[:n]]
