"""Lightning DataModule serving one :class:`~dinotracker.training.sampler.Batch` per training step.

The DataLoader wraps an infinite :class:`IterableDataset` over a
:class:`~dinotracker.training.sampler.CorrespondenceSampler` (``batch_size=None``,
``num_workers=0``: the sampler is cheap, vectorised and works on tensors already in memory).
Batch ``k`` is a pure function of ``(seed, k)``; the checkpointed state is the next step
(``trainer.global_step`` at save time, so Lightning's one-batch prefetch does not matter).
Assumes ``accumulate_grad_batches=1`` (one batch per optimizer step, as the reference).

:func:`toy_preprocessed_video` builds a small self-consistent :class:`PreprocessedVideo`
(tests, benchmarks, smoke runs).
"""

from __future__ import annotations

import difflib
import inspect
import itertools
import logging

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset

from dinotracker.geometry import Resize, patch_grid_size
from dinotracker.preprocessing.types import BestBuddies, PreprocessedVideo
from dinotracker.training.sampler import CorrespondenceSampler

log = logging.getLogger(__name__)



class _StepDataset(IterableDataset):
    """Yields ``sampler.sample(k)`` for k = start, start + 1, ... forever."""

    def __init__(self, dm: CorrespondenceDataModule):
        super().__init__()
        self.dm = dm

    def __iter__(self):
        for step in itertools.count(self.dm.start_step):
            yield self.dm.sampler.sample(step)


class CorrespondenceDataModule(L.LightningDataModule):
    """Infinite per-step correspondence batches for fitting one video.

    ``video`` is the preprocessed video; ``seed`` the sampler's base seed; other keyword
    arguments go to :class:`CorrespondenceSampler` (the ``data`` section of the config,
    ``conf/data/default.yaml``; an option left out takes the sampler's keyword default, which
    ``tests/config`` checks equals the YAML's).
    """

    def __init__(self, video: PreprocessedVideo, seed: int = 0, **sampler_kwargs):
        super().__init__()
        known = [p for p in inspect.signature(CorrespondenceSampler).parameters if p not in ("video", "seed")]
        bad = sorted(set(sampler_kwargs) - set(known))
        if bad:
            close = difflib.get_close_matches(bad[0], known, n=1)
            hint = f" (did you mean data.{close[0]}?)" if close else ""
            raise ValueError(f"unknown data option data.{bad[0]}{hint}; data has: {', '.join(sorted(known))}")
        self.video = video
        self.seed = int(seed)
        self.sampler_kwargs = dict(sampler_kwargs)
        self.start_step = 0
        self._sampler: CorrespondenceSampler | None = None

    def _rank_seed(self) -> int:
        # under DDP every rank draws different batches (rank 0 keeps the base seed)
        trainer = getattr(self, "trainer", None)
        rank = int(getattr(trainer, "global_rank", 0) or 0) if trainer is not None else 0
        return self.seed + 7919 * rank

    @property
    def sampler(self) -> CorrespondenceSampler:
        if self._sampler is None:
            self._sampler = CorrespondenceSampler(self.video, seed=self._rank_seed(), **self.sampler_kwargs)
        return self._sampler

    def setup(self, stage: str | None = None) -> None:
        trainer = getattr(self, "trainer", None)
        if trainer is not None and getattr(trainer, "accumulate_grad_batches", 1) != 1:
            log.warning("accumulate_grad_batches != 1: resume is exact only with one batch per "
                        "optimizer step")
        _ = self.sampler

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_StepDataset(self), batch_size=None, num_workers=0)

    # Lightning stores these in every checkpoint and restores them before the dataloader is built
    def state_dict(self) -> dict:
        trainer = getattr(self, "trainer", None)
        step = trainer.global_step if trainer is not None else self.start_step
        return {"seed": self.seed, "next_step": int(step)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.seed = int(state_dict["seed"])
        self.start_step = int(state_dict["next_step"])
        if self._sampler is not None:
            self._sampler.load_state_dict({"seed": self._rank_seed(), "next_step": self.start_step})


# --------------------------------------------------------------------------- toy video
def toy_preprocessed_video(num_frames: int = 6, height: int = 64, width: int = 96, feature_dim: int = 16,
                           patch: int = 8, stride: int = 4, square: int = 24, shift: tuple[int, int] = (4, 2),
                           num_tracks: int = 200, bb_per_pair: int = 30, seed: int = 0,
                           feature_dtype: torch.dtype = torch.float16) -> PreprocessedVideo:
    """A small consistent :class:`PreprocessedVideo`: a textured square translating over a static
    textured background by ``shift`` (dx, dy) px per frame.

    Frames uint8 [T, 3, H, W]; features = a random C-channel texture moving with the content,
    average-pooled over each patch window (so the grid is :func:`patch_grid_size`); tracks from
    the known motion (bg tracks get random NaN gaps at their ends, fg tracks are full); fg masks
    = the square; best buddies = mutual nearest neighbours of the raw features for every frame
    pair s < t (at most ``bb_per_pair`` each), with random ambiguity ratios.
    """
    from dinotracker.training.losses import dino_bb_weights, refined_best_buddies

    g = torch.Generator().manual_seed(seed)
    t, h, w, c = num_frames, height, width, feature_dim
    dx, dy = shift
    if square + max(dx, 0) * (t - 1) + 4 > w or square + max(dy, 0) * (t - 1) + 4 > h:
        raise ValueError("square leaves the frame: reduce num_frames, square or shift")
    bg_rgb = torch.rand(3, h, w, generator=g)
    sq_rgb = torch.rand(3, square, square, generator=g)
    bg_feat = torch.randn(c, h, w, generator=g)
    sq_feat = torch.randn(c, square, square, generator=g) + 1.0
    x0, y0 = 2, 2
    frames, feats, masks = [], [], []
    for k in range(t):
        img, fm, m = bg_rgb.clone(), bg_feat.clone(), torch.zeros(h, w, dtype=torch.bool)
        xs, ys = x0 + dx * k, y0 + dy * k
        img[:, ys:ys + square, xs:xs + square] = sq_rgb
        fm[:, ys:ys + square, xs:xs + square] = sq_feat
        m[ys:ys + square, xs:xs + square] = True
        frames.append((img * 255).round().to(torch.uint8))
        feats.append(F.avg_pool2d(fm[None], kernel_size=patch, stride=stride)[0])
        masks.append(m)
    features = torch.stack(feats).to(feature_dtype)
    assert tuple(features.shape[-2:]) == patch_grid_size((h, w), patch, stride)

    # tracks: fg points inside the square at frame 0, bg points elsewhere (static)
    n_fg = num_tracks // 2
    u = torch.rand(n_fg, 2, generator=g) * (square - 2) + 1
    fg_xy0 = torch.stack([u[:, 0] + x0, u[:, 1] + y0], -1)
    motion = torch.tensor([float(dx), float(dy)]) * torch.arange(t, dtype=torch.float32)[:, None]  # [T, 2]
    fg_tracks = fg_xy0[:, None] + motion[None]
    bg_xy = torch.rand(4 * (num_tracks - n_fg), 2, generator=g) * torch.tensor([w - 1.0, h - 1.0]) + 0.5
    occluded_ever = ((bg_xy[:, None, 0] >= x0 + motion[None, :, 0] - 1)
                     & (bg_xy[:, None, 0] <= x0 + motion[None, :, 0] + square + 1)
                     & (bg_xy[:, None, 1] >= y0 + motion[None, :, 1] - 1)
                     & (bg_xy[:, None, 1] <= y0 + motion[None, :, 1] + square + 1)).any(1)
    bg_xy = bg_xy[~occluded_ever][:num_tracks - n_fg]
    bg_tracks = bg_xy[:, None].repeat(1, t, 1)
    start = torch.randint(0, max(t - 2, 1), (len(bg_xy),), generator=g)
    end = torch.minimum(start + 2 + torch.randint(0, t, (len(bg_xy),), generator=g), torch.tensor(t))
    ar = torch.arange(t)[None]
    absent = (ar < start[:, None]) | (ar >= end[:, None])
    bg_tracks[absent] = float("nan")
    tracks = torch.cat([fg_tracks, bg_tracks]).float()
    tracks_fg = torch.cat([torch.ones(len(fg_tracks), dtype=torch.bool),
                           torch.zeros(len(bg_tracks), dtype=torch.bool)])

    # best buddies of the raw features
    parts = {k: [] for k in ("src_t", "dst_t", "src_xy", "dst_xy", "cos")}
    for s in range(t):
        for d in range(s + 1, t):
            bb = refined_best_buddies(features[s].float(), features[d].float(), patch, stride)
            sel = torch.randperm(len(bb.affinity), generator=g)[:bb_per_pair]
            parts["src_t"].append(torch.full((len(sel),), s))
            parts["dst_t"].append(torch.full((len(sel),), d))
            parts["src_xy"].append(bb.src_xy[sel])
            parts["dst_xy"].append(bb.dst_xy[sel])
            parts["cos"].append(bb.affinity[sel])
    cat = {k: torch.cat(v) for k, v in parts.items()}
    ratio = torch.rand(len(cat["cos"]), generator=g) * 0.9
    best = BestBuddies(cat["src_t"].long(), cat["dst_t"].long(), cat["src_xy"].float(), cat["dst_xy"].float(),
                       cat["cos"].float(), ratio, dino_bb_weights(ratio, cat["cos"]).float())
    return PreprocessedVideo(name="toy", frames=torch.stack(frames), features=features, patch=patch,
                             stride=stride, tracks=tracks, tracks_fg=tracks_fg, fg_masks=torch.stack(masks),
                             best_buddies=best, resize=Resize((h, w), (h, w)), frame_indices=np.arange(t),
                             meta={"shift": (dx, dy), "square": square, "origin": (x0, y0)})
