"""LightningModule for test-time training of DINO-Tracker on one video (spec §4, paper App. A.2).

The module holds the video's frames and frozen backbone features as non-persistent buffers
(they follow the module's device and stay out of checkpoints; the backbone never runs in
training) and the trainable :class:`~dinotracker.models.tracker.DinoTracker`. One training step
refines the features of the step's <= 8 frames once and computes the five losses from the
:class:`~dinotracker.training.sampler.Batch`:

    L = λ_flow L_flow + λ_dbb L_dino-bb + λ_n L_norm + λ_a L_angle
        + [step >= 5000] λ_rbb L_rfn-bb + [step >= 5000] λ_cyc L_cyc

with (λ_flow, λ_dbb, λ_rbb, λ_cyc, λ_n, λ_a) = (1, 2.5e-4, 5e-5, 0.5, 1e-4, 1e-4) (spec §4.3,
paper λ1..λ4). Adam with two groups (Delta-DINO and the heatmap refiner, lr 0.01 each); a
``LambdaLR`` stepped every iteration decays Delta-DINO by 0.999 every 40 steps and keeps the
refiner constant (the code; ``optim.decay_refiner=true`` also decays the refiner, the paper's
reading, spec M4).

**Cycle pseudo-labels** (``loss.cycle.pseudo_labels``). The reference labels x̂_t = P_{s→t}(x_s)
with the same parameters and features as the prediction it supervises, so the forward half of
L_cyc is identically zero (spec §4.3, issue #26); ``"same"`` reproduces that. ``"ema"`` (default)
labels with an exponential moving average of Delta-DINO + refiner (decay ``ema_decay`` = 0.99,
updated at the start of every step from the current weights, i.e. a mean teacher): the labels
are then a temporal ensemble of the last ~100 iterates - smoother and on average more accurate
than a single iterate - and the forward term pulls the student towards the teacher's
cycle-consistent prediction. ``"lagged"`` copies the weights every ``lag_every`` steps instead
(stale labels that jump, hence not the default). The teacher's BatchNorm uses batch
statistics like the student (its running statistics are copied, never updated). The teacher
lives in ``self.teacher`` and is saved in checkpoints and by :meth:`export`.

Resume: the checkpoint holds the tracker, teacher, optimizer, scheduler, global step and (via
the DataModule) the sampler state; the step itself uses no other randomness, so a resumed run
ends bit-identical to an uninterrupted one on the same device.

**No host sync** (issue 13). ``training_step`` (forward, logging, and its backward) never reads a device
value back nor copies host data to the device, so on a GPU the host queues the whole step without waiting
(``tests/training/test_sync_free.py`` records every such call; 0, from 59 before). What the sampler knows
on the host travels in the :class:`~dinotracker.training.sampler.Batch` as Python ints (per-frame pair
counts that split the per-frame matmuls, the refined-BB frame slots); data-dependent subsets are fixed-size
masks: the refined best buddies are ``n_fg + n_bg`` candidate slots per frame pair (the highest-priority
mutual neighbours, the rest masked out), the cycle loss runs on every query point with the ones over the
threshold weighted 0 (no point kept gives 0, the value the old skip gave). The values equal the list form's
up to float summation order (tested against it and against values recorded from the old code). The price is
compute on the masked slots (the cycle loss tracks all points, not only the kept ones). The non-finite-loss
check reads the loss back, so it runs outside the step (:meth:`check_finite`). ``data.static_frames`` also
fixes the frame count (padding excluded from BatchNorm and losses).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dinotracker.config import validate_loss, validate_model, validate_optim
from dinotracker.geometry import patch_center_grid
from dinotracker.models.checkpoint import save_tracker
from dinotracker.models.lora import LORA_FEATURE_KEYS
from dinotracker.models.tracker import DinoTracker, normalized_maps, point_features, point_rows
from dinotracker.preprocessing.types import PreprocessedVideo
from dinotracker.training import losses as LS
from dinotracker.training.sampler import Batch, Correspondences, select_region_cells

log = logging.getLogger(__name__)

TRACKER_KEYS = ("radius", "coarse_from", "normalized_refiner", "use_delta", "use_refiner", "align_mode",
                "delta_channels", "refiner_hidden", "delta_zero_init")


def _plain(cfg) -> dict:
    """A plain (resolved) copy of a config section: DictConfig or mapping."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return {k: (_plain(v) if isinstance(v, Mapping) else v) for k, v in dict(cfg).items()}


class StepDecay:
    """LR factor ``gamma ** (step // every)`` (a picklable LambdaLR lambda)."""

    def __init__(self, gamma: float, every: int):
        if every < 1:
            raise ValueError(f"decay_every must be >= 1, got {every}")
        self.gamma, self.every = float(gamma), int(every)

    def __call__(self, step: int) -> float:
        return self.gamma ** (step // self.every)


class Constant:
    def __call__(self, step: int) -> float:
        return 1.0


class DinoTrackerModule(L.LightningModule):
    """Fits a :class:`DinoTracker` to one :class:`PreprocessedVideo`.

    Args:
        video: the preprocessed video (frames uint8 [T, 3, H, W], features [T, C, h, w]).
        model: the ``model`` section of the config (``conf/model/dino_tracker.yaml``, every key): radius,
            coarse_from, normalized_refiner, use_delta, use_refiner, align_mode (DinoTracker kwargs),
            compile (torch.compile Delta-DINO in ``setup``), channels_last (Delta-DINO in channels-last
            memory format), fast_conv (CPU: NNPACK convolutions and FFT weight gradients for Delta-DINO, the
            fast path), refine_chunk (frames per Delta-DINO call; None = all <= 8 at once), lora.
        loss: the ``loss`` section (``conf/loss/default.yaml``); a term that is not ``enabled`` or has
            weight 0 is not computed.
        optim: the ``optim`` section (``conf/optim/default.yaml``).
        From Python, :func:`dinotracker.config.training_options` gives the three sections from ``conf/``
        with partial overrides merged in; the values are checked (:mod:`dinotracker.config`).
        backbone: the frozen backbone that made ``video.features``; needed (and only used) when
            ``model.lora.enabled`` (the "LoRA tune" ablation: adapters replace Delta-DINO's residual).
        backbone_spec: how to rebuild that backbone (``build_backbone`` kwargs), saved by :meth:`export`.
        seed: keys the per-step RNG of LoRA dropout (the only randomness inside a step).
    """

    def __init__(self, video: PreprocessedVideo, model: Mapping, loss: Mapping, optim: Mapping,
                 backbone: nn.Module | None = None, backbone_spec: dict | None = None, seed: int = 0):
        super().__init__()
        self.model_cfg, self.loss_cfg, self.optim_cfg = _plain(model), _plain(loss), _plain(optim)
        validate_model(self.model_cfg)
        validate_loss(self.loss_cfg)
        validate_optim(self.optim_cfg)
        mode = self.loss_cfg["cycle"]["pseudo_labels"]
        # scalar config only (load_from_checkpoint(path, video=...) rebuilds the module)
        self.save_hyperparameters({"model": self.model_cfg, "loss": self.loss_cfg, "optim": self.optim_cfg})
        feats = video.features
        if feats.dim() != 4 or feats.shape[0] != video.num_frames:
            raise ValueError(f"features must be [T, C, h, w] with T={video.num_frames}, got "
                             f"{tuple(feats.shape)}")
        if video.frames.dtype != torch.uint8 or video.frames.shape[1] != 3:
            raise ValueError(f"frames must be uint8 [T, 3, H, W], got {video.frames.dtype} "
                             f"{tuple(video.frames.shape)}")
        self.model_hw = tuple(int(v) for v in video.frames.shape[-2:])
        self.patch, self.stride = int(video.patch), int(video.stride)
        self.model_kwargs = dict(feature_dim=int(feats.shape[1]), patch=self.patch, stride=self.stride,
                                 model_hw=self.model_hw, **{k: self.model_cfg[k] for k in TRACKER_KEYS})
        self.model_kwargs["delta_channels"] = tuple(int(c) for c in self.model_kwargs["delta_channels"])
        self.backbone_spec = dict(backbone_spec or {})
        self.seed = int(seed)
        lora = self.model_cfg["lora"]
        if lora["enabled"]:
            if backbone is None:
                raise ValueError("model.lora.enabled needs the backbone (DinoTrackerModule(..., backbone=...))")
            if lora["layer"] is None:
                raise ValueError("model.lora.layer (the cached features' backbone block) is not set")
            self.model_kwargs["lora"] = {k: (list(lora[k]) if isinstance(lora[k], (list, tuple)) else lora[k])
                                         for k in LORA_FEATURE_KEYS}
        self.tracker = DinoTracker(**self.model_kwargs)
        if lora["enabled"]:
            self.tracker.attach_backbone(backbone)
            log.info("LoRA tuning: %s", self.tracker.lora.extra_repr())
        if self.model_cfg["channels_last"] and self.tracker.delta_dino is not None:
            self.tracker.delta_dino.to(memory_format=torch.channels_last)
        if self.tracker.delta_dino is not None:
            self.tracker.delta_dino.fast_conv = bool(self.model_cfg["fast_conv"])
        self.register_buffer("frames", video.frames, persistent=False)  # uint8 [T, 3, H, W]
        self.register_buffer("features", feats, persistent=False)  # [T, C, h, w], frozen
        # LoRA: tokens entering the first adapted block, [T, N, C], filled on the training device at fit start
        self.register_buffer("lora_prefix", None, persistent=False)
        self.teacher: DinoTracker | None = None
        # first training step with a non-finite loss, on the device (-1: none); see check_finite
        self._first_nonfinite: torch.Tensor | None = None
        trainable = self.tracker.delta_dino is not None or self.tracker.refiner is not None or lora["enabled"]
        if mode != "same" and trainable:
            self.teacher = copy.deepcopy(self.tracker).requires_grad_(False)
            for m in self.teacher.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.momentum = 0.0  # batch statistics in train mode, running stats never updated

    # ------------------------------------------------------------------ setup / optim
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.model_cfg["compile"] and self.tracker.delta_dino is not None:
            # in place (nn.Module.compile): state_dict keys stay unchanged
            self.tracker.delta_dino.compile()
            if self.teacher is not None and self.teacher.delta_dino is not None:
                self.teacher.delta_dino.compile()

    def configure_optimizers(self):
        o = self.optim_cfg
        groups, lambdas = [], []
        delta, head = self.tracker.delta_parameters(), self.tracker.head_parameters()
        lora = self.tracker.lora_parameters()
        if lora:  # replaces Delta-DINO: the same schedule, lr_lora (default lr_delta)
            lr = o["lr_delta"] if o["lr_lora"] is None else o["lr_lora"]
            groups.append({"params": lora, "lr": float(lr), "name": "lora"})
            lambdas.append(StepDecay(o["gamma"], o["decay_every"]))
        if delta:
            groups.append({"params": delta, "lr": float(o["lr_delta"]), "name": "delta_dino"})
            lambdas.append(StepDecay(o["gamma"], o["decay_every"]))
        if head:
            groups.append({"params": head, "lr": float(o["lr_refiner"]), "name": "refiner"})
            lambdas.append(StepDecay(o["gamma"], o["decay_every"]) if o["decay_refiner"] else Constant())
        if not groups:  # validate_model rules this out for a config; kept for a hand-edited module
            raise ValueError("nothing to train: model.use_delta, model.use_refiner and model.lora.enabled are "
                             "all false")
        opt = torch.optim.Adam(groups, betas=tuple(o["betas"]), eps=float(o["eps"]))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambdas)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    # ------------------------------------------------------------------ features / tracking
    def refine(self, slots: torch.Tensor, tracker: DinoTracker | None = None,
               num_real: int | None = None) -> torch.Tensor:
        """Refined features [F, C, h, w] of video frames ``slots`` int [F] (with grad for the student).
        ``num_real``: only the first ``num_real`` slots are real frames, the rest padding
        (``data.static_frames``; see :meth:`DinoTracker.refine`)."""
        tracker = self.tracker if tracker is None else tracker
        frames = self.frames[slots].float() / 255.0
        if self.model_cfg["channels_last"]:
            frames = frames.contiguous(memory_format=torch.channels_last)
        prefix = None if self.lora_prefix is None else self.lora_prefix[slots]
        return tracker.refine(frames, self.features[slots], chunk_size=self.model_cfg["refine_chunk"],
                              lora_prefix=prefix, num_real=num_real)

    def track(self, tracker: DinoTracker, maps: torch.Tensor, src: torch.Tensor, xy: torch.Tensor,
              dst: torch.Tensor, rows: torch.Tensor | None = None, unit_maps: torch.Tensor | None = None,
              dst_counts: tuple[int, ...] | None = None) -> torch.Tensor:
        """Predict raster xy [M, 2] in ``maps[dst]`` of points ``xy`` [M, 2] of ``maps[src]`` (int [M]).

        ``rows`` (:func:`point_rows` of ``maps``): see :func:`point_features`. ``unit_maps``
        (:func:`normalized_maps` of ``maps``, built once per step and shared by every track of the step)
        are the cost volume's targets; the same values as normalising ``maps`` in each call.
        ``dst_counts``: points per target map, known on the host (no device read-back; see
        :func:`~dinotracker.models.tracker.grouped_matmul`).
        """
        q = point_features(maps, src, xy, self.patch, self.stride, rows)
        if unit_maps is None:
            return tracker(q, maps, target_index=dst, target_counts=dst_counts)[0]
        return tracker(q, unit_maps, target_normalized=True, target_index=dst, target_counts=dst_counts)[0]

    @torch.no_grad()
    def track_points(self, query_frame: int, query_xy: torch.Tensor, frames: torch.Tensor | None = None,
                     chunk: int = 8, use_teacher: bool = False) -> torch.Tensor:
        """Track ``query_xy`` [N, 2] (model raster px) of ``query_frame`` into ``frames`` int [K]
        (default all) with the current weights in eval mode -> [N, K, 2]. For visualisation."""
        tracker = self.teacher if use_teacher and self.teacher is not None else self.tracker
        was = tracker.training
        tracker.eval()
        try:
            dev = self.frames.device
            frames = torch.arange(self.frames.shape[0], device=dev) if frames is None else frames.to(dev)
            qmap = self.refine(torch.tensor([query_frame], device=dev), tracker)
            qf = tracker.sample_features(qmap, query_xy.to(dev, torch.float32)[None])[0]  # [N, C]
            out = []
            for i in range(0, len(frames), chunk):
                maps = self.refine(frames[i:i + chunk], tracker)  # [k, C, h, w]
                out.append(tracker(qf[:, None], maps[None])[0])  # [N, k, 2]
            return torch.cat(out, dim=1)
        finally:
            tracker.train(was)

    # ------------------------------------------------------------------ teacher
    @torch.no_grad()
    def update_teacher(self, step: int) -> None:
        """EMA / lagged copy of the student's weights (buffers are copied)."""
        if self.teacher is None:
            return
        c = self.loss_cfg["cycle"]
        s_params = dict(self.tracker.named_parameters())
        if c["pseudo_labels"] == "ema":
            decay = float(c["ema_decay"]) if step > 0 else 0.0
            for n, p in self.teacher.named_parameters():
                p.lerp_(s_params[n].detach().to(p.dtype), 1.0 - decay)
        elif step % int(c["lag_every"]) == 0:
            for n, p in self.teacher.named_parameters():
                p.copy_(s_params[n].detach())
        else:
            return
        s_bufs = dict(self.tracker.named_buffers())
        for n, b in self.teacher.named_buffers():
            if n in s_bufs:
                b.copy_(s_bufs[n])

    # ------------------------------------------------------------------ losses
    def _active(self, name: str, step: int, key: str = "weight") -> bool:
        c = self.loss_cfg[name]
        return bool(c["enabled"]) and float(c[key]) != 0.0 and step >= int(c["start"])

    def compute_losses(self, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and the unweighted terms (detached) of one step. ``step`` gates the late losses."""
        lc = self.loss_cfg
        slots = batch.frames
        # data.static_frames: slots past real_frames pad the step to data.max_frames; no pair uses them, the
        # BatchNorm statistics and the prior exclude them
        real = batch.real_frames if batch.real_frames is not None and batch.real_frames < len(slots) else None
        frame_valid = None if real is None else torch.arange(len(slots), device=slots.device) < real
        raw = self.features[slots]
        maps = self.refine(slots, num_real=real)  # [F, C, h, w], the only Delta-DINO forward with grad
        rows = point_rows(maps)  # shared by every loss's point sampling
        unit = normalized_maps(maps)  # shared by every cost volume of the step (flow, cycle)
        total = maps.new_zeros((), dtype=torch.float32)
        terms: dict[str, torch.Tensor] = {}
        p, s = self.patch, self.stride

        fl = batch.flow
        if self._active("flow", step) and len(fl):
            pred = self.track(self.tracker, maps, fl.src_slot, fl.src_xy, fl.dst_slot, rows, unit, fl.dst_counts)
            v = LS.flow_loss(pred, fl.dst_xy, self.model_hw, lc["flow"]["huber_delta"], fl.weight)
            total = total + lc["flow"]["weight"] * v
            terms["flow"] = v.detach()
            terms["flow_epe_px"] = (pred - fl.dst_xy).norm(dim=-1).mean().detach()

        bb = batch.dino_bb
        if self._active("dino_bb", step) and len(bb):
            c = lc["dino_bb"]
            v = LS.dino_bb_loss(maps, bb.src_slot, bb.src_xy, bb.dst_slot, bb.dst_xy, bb.weight, p, s,
                                c["temperature"], c["divisor"], rows=rows, src_counts=bb.src_counts,
                                dst_counts=bb.dst_counts)
            total = total + c["weight"] * v
            terms["dino_bb"] = v.detach()

        pc = lc["prior"]
        if pc["enabled"] and (float(pc["norm_weight"]) or float(pc["angle_weight"])) and step >= int(pc["start"]):
            l_norm, l_angle = LS.prior_terms(maps, raw, valid=frame_valid)
            total = total + pc["norm_weight"] * l_norm + pc["angle_weight"] * l_angle
            terms["prior_norm"], terms["prior_angle"] = l_norm.detach(), l_angle.detach()

        if self._active("refined_bb", step) and len(batch.refined_bb):
            c = lc["refined_bb"]
            pairs, valid = self._refined_pairs(maps, batch)
            v = LS.refined_bb_loss(maps, pairs.src_slot, pairs.src_xy, pairs.dst_slot, pairs.dst_xy,
                                   pairs.weight, p, s, c["temperature"], c["divisor"], rows=rows,
                                   src_counts=pairs.src_counts, dst_counts=pairs.dst_counts, valid=valid)
            total = total + c["weight"] * v
            terms["refined_bb"] = v.detach()
            terms["refined_bb_pairs"] = valid.sum().float()

        cy = batch.cycle
        if self._active("cycle", step) and len(cy):
            v, extra = self._cycle_loss(maps, rows, slots, cy, unit, real)
            total = total + lc["cycle"]["weight"] * v
            terms["cycle"] = v.detach()
            terms.update(extra)
        terms["loss"] = total.detach()
        return total, terms

    def _refined_pairs(self, maps: torch.Tensor, batch: Batch) -> tuple[Correspondences, torch.Tensor]:
        """Mutual nearest neighbours on the current refined maps (no grad) for each frame pair of
        ``batch.refined_bb``, subsampled fg / bg by the sampler's priorities.

        Fixed shapes, no host sync: per frame pair every source cell is a candidate slot
        (:func:`~dinotracker.training.losses.best_buddy_mask`), :func:`select_region_cells` keeps
        ``Q = n_fg + n_bg`` slots (the highest-priority buddies of each group), and the returned ``valid``
        bool [P*Q] marks the slots that hold a buddy; the loss masks the rest out. The valid pairs are the
        ones the list form (:func:`~dinotracker.training.losses.refined_best_buddies` +
        :func:`~dinotracker.training.sampler.select_region_pairs`) picks. The maps of each pair are
        picked by the host-side slots (``src_slots`` / ``dst_slots``), the per-slot counts follow from them.
        """
        rp = batch.refined_bb
        with torch.no_grad():
            det = maps.detach()
            found = [LS.best_buddy_mask(det[a], det[b]) for a, b in zip(rp.src_slots, rp.dst_slots)]
            mutual = torch.stack([f[0] for f in found])  # [P, n]
            partner = torch.stack([f[1] for f in found])
            aff = torch.stack([f[2] for f in found])
            cell, valid = select_region_cells(mutual, rp)  # [P, Q]
            centers = patch_center_grid(tuple(maps.shape[-2:]), self.patch, self.stride,
                                        device=maps.device).reshape(-1, 2)
            p, q = cell.shape
            src_xy = centers[cell.reshape(-1)]
            dst_xy = centers[partner.gather(1, cell).reshape(-1)]
            aff = aff.gather(1, cell).reshape(-1)
            fg = rp.cell_fg.gather(1, cell).reshape(-1)
            src_slot = rp.src_slot[:, None].expand(p, q).reshape(-1)
            dst_slot = rp.dst_slot[:, None].expand(p, q).reshape(-1)
        nf = maps.shape[0]
        src_counts = tuple(q * rp.src_slots.count(f) for f in range(nf))
        dst_counts = tuple(q * rp.dst_slots.count(f) for f in range(nf))
        return Correspondences(src_slot, dst_slot, src_xy, dst_xy, aff, fg, src_counts, dst_counts), \
            valid.reshape(-1)

    def _cycle_loss(self, maps: torch.Tensor, rows: torch.Tensor, slots: torch.Tensor, cy: Correspondences,
                    unit: torch.Tensor | None = None, num_real: int | None = None):
        """L_cyc on all of ``cy``'s points with the points over the cycle threshold masked out (fixed
        shapes, no host sync): the kept subset's value and gradients. No point kept gives 0 (the
        reference re-draws forever; the term used to be skipped, the same zero)."""
        c = self.loss_cfg["cycle"]
        with torch.no_grad():
            if self.teacher is None:  # "same": the reference, forward term identically zero
                labeller, lmaps, lrows = self.tracker, maps.detach(), rows.detach()
                lunit = None if unit is None else unit.detach()
            else:
                labeller = self.teacher
                lmaps = self.refine(slots, self.teacher, num_real)
                lrows = point_rows(lmaps)
                lunit = normalized_maps(lmaps)
            fwd = self.track(labeller, lmaps, cy.src_slot, cy.src_xy, cy.dst_slot, lrows, lunit, cy.dst_counts)
            back = self.track(labeller, lmaps, cy.dst_slot, fwd, cy.src_slot, lrows, lunit, cy.src_counts)
            lab = LS.cycle_pseudo_labels(cy.src_xy, fwd, back, c["threshold"], c["decay"])
        keep = lab.keep
        extra = {"cycle_kept": keep.float().mean().detach()}
        pred_fwd = self.track(self.tracker, maps, cy.src_slot, cy.src_xy, cy.dst_slot, rows, unit, cy.dst_counts)
        pred_bwd = self.track(self.tracker, maps, cy.dst_slot, fwd, cy.src_slot, rows, unit, cy.src_counts)
        v = LS.cycle_consistency_loss(pred_fwd, pred_bwd, cy.src_xy, fwd, lab.weights, self.model_hw,
                                      c["huber_delta"], keep=keep, reduction=c["reduction"])
        with torch.no_grad():
            h = LS.normalized_huber(pred_fwd, fwd, self.model_hw, c["huber_delta"])
            w = (lab.weights * keep.to(lab.weights.dtype))[:, None]
            extra["cycle_fwd"] = (w * h).sum() / (2 * keep.sum()).clamp(min=1).to(h.dtype)  # kept points' mean
        return v, extra

    # ------------------------------------------------------------------ lightning hooks
    def on_fit_start(self) -> None:
        if self.tracker.lora is None:
            return
        if self.global_step == 0:
            self.check_lora_features()
        if self.model_cfg["lora"]["cache_prefix"] and self.lora_prefix is None:
            self.cache_lora_prefix()

    @torch.no_grad()
    def cache_lora_prefix(self, chunk: int = 4) -> None:
        """Run the frozen blocks before the first adapted one once per frame and keep their output tokens
        (``model.lora.prefix_dtype``; fp32 = exactly what a recompute gives): each step then runs only the
        adapted blocks. Memory T x (1 + h*w) x C values (ViT-L at 476x854: 33 MB per frame in fp32)."""
        dtype = getattr(torch, str(self.model_cfg["lora"]["prefix_dtype"]))
        out = None
        with torch.autocast(device_type=self.frames.device.type, enabled=False):
            for a in range(0, self.frames.shape[0], chunk):
                tokens, _ = self.tracker.lora.prefix(self.frames[a:a + chunk].float() / 255.0)
                if out is None:
                    out = torch.empty((self.frames.shape[0], *tokens.shape[1:]), dtype=dtype, device=tokens.device)
                out[a:a + tokens.shape[0]] = tokens.to(dtype)
        self.lora_prefix = out
        log.info("LoRA: cached the frozen prefix (blocks 0..%d) of %d frames, %.0f MB", self.tracker.lora.blocks[0] - 1,
                 out.shape[0], out.numel() * out.element_size() / 2**20)

    @torch.no_grad()
    def check_lora_features(self, frame: int = 0, tol: float = 2e-2) -> float:
        """With B = 0 the LoRA features must equal the cached features: a different backbone (weights,
        stride, layer, facet) than the one that filled the cache is an error, not a silent mismatch.
        Returns the relative L2 difference on ``frame`` (fp16 cache rounding is ~1e-3)."""
        was = self.tracker.training
        self.tracker.eval()
        try:
            f = self.frames[frame:frame + 1].float() / 255.0
            with torch.autocast(device_type=f.device.type, enabled=False):
                ours = self.tracker.lora(f).float()
        finally:
            self.tracker.train(was)
        cached = self.features[frame:frame + 1].float()
        rel = float((ours - cached).norm() / cached.norm().clamp_min(1e-12))
        if rel > tol:
            raise ValueError(f"the LoRA backbone's features differ from the cached features by {rel:.3g} (relative) "
                             "before any training: the backbone is not the one that made the preprocessing cache")
        log.info("LoRA backbone reproduces the cached features (relative difference %.2g)", rel)
        return rel

    def training_step(self, batch: Batch, batch_idx: int):
        step = int(self.global_step)
        # before this step's labels, from the current weights: independent of Lightning's hook
        # order (ModelCheckpoint saves before LightningModule.on_train_batch_end), so resume-exact
        self.update_teacher(step)
        if self.tracker.lora is not None and self.tracker.lora.dropout > 0:
            # LoRA dropout draws from the global RNG: key it by (seed, step) so a resumed run draws the
            # same masks as an uninterrupted one; the caller's RNG stream is restored afterwards
            dev = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=dev):
                torch.manual_seed(self.seed * 1_000_003 + step)
                total, terms = self.compute_losses(batch, step)
        else:
            total, terms = self.compute_losses(batch, step)
        self._note_nonfinite(total, step)
        self.log("train/loss", total, prog_bar=True, batch_size=1)
        self.log_dict({f"train/{k}": v for k, v in terms.items() if k != "loss"}, batch_size=1)
        # a device scalar made on the device (a Python float would be copied from the host: a sync)
        nf = len(batch.frames) if batch.real_frames is None else batch.real_frames
        self.log("train/frames", total.detach().new_full((), float(nf)), batch_size=1)
        return {"loss": total, "terms": terms}

    # ------------------------------------------------------------------ non-finite loss check
    def _note_nonfinite(self, total: torch.Tensor, step: int) -> None:
        """Remember, on the device, the first step whose loss was not finite (no host sync)."""
        bad = ~torch.isfinite(total.detach())
        first = self._first_nonfinite
        if first is None or first.device != total.device:
            first = total.detach().new_full((), -1, dtype=torch.long)
        self._first_nonfinite = torch.where(bad & (first < 0), step, first)

    def check_finite(self) -> None:
        """Raise :class:`FloatingPointError` if a training step's loss was NaN or inf. Reads one scalar back
        from the device (a host sync), so the step does not call it: it runs after every
        ``trainer.log_every_n_steps``-th step (where Lightning reads the logged metrics back anyway), before
        every checkpoint (a non-finite state never reaches disk) and at the end of training. A non-finite
        step is therefore reported up to ``log_every_n_steps - 1`` steps late, with the weights already
        updated by it."""
        first = self._first_nonfinite
        if first is None:
            return
        k = int(first)
        if k >= 0:
            raise FloatingPointError(f"non-finite training loss at step {k} (detected after step "
                                     f"{int(self.global_step)}; see the logged train/* terms)")

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        trainer = self._trainer
        every = int(getattr(trainer, "log_every_n_steps", 1) or 1) if trainer is not None else 1
        if int(self.global_step) % every == 0:
            self.check_finite()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.check_finite()

    def on_train_end(self) -> None:
        self.check_finite()

    # ------------------------------------------------------------------ export
    def export(self, path) -> Path:
        """Write ``tracker.pt`` (:func:`dinotracker.models.checkpoint.save_tracker`: model kwargs, weights,
        the teacher's (EMA or lagged) weights or None, and the frozen backbone's build spec). Rebuild with
        :func:`dinotracker.models.checkpoint.load_exported`."""
        return save_tracker(path, self.model_kwargs, self.tracker.state_dict(),
                            self.teacher.state_dict() if self.teacher is not None else None, self.backbone_spec)
