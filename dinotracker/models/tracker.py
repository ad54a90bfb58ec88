"""DINO-Tracker model: refined features, cosine cost volume, heatmap head, radius soft-argmax (spec §3).

All coordinates are model-resolution raster (x, y) pixels (see :mod:`dinotracker.geometry`);
feature maps live on the patch-centre grid (cell ``k`` at ``stride*k + patch/2``). Cosine,
refiner, softmax and soft-argmax run in fp32 with autocast disabled, whatever the caller's
autocast state. Leading dimensions are arbitrary and broadcast, so inference can call
``forward(query [Q, T, C], maps [T, C, h, w])`` in chunks without copying the maps.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from dinotracker.geometry import patch_center_grid, patch_grid_size, sample_at
from dinotracker.models.delta_dino import DeltaDINO, align_to_patch_grid
from dinotracker.models.lora import LoRAFeatures
from dinotracker.models.refiner import Refiner

COARSE_FROM = ("raw", "refined")


def no_autocast(device: torch.device):
    """Context that disables autocast on ``device`` (no-op where autocast does not exist)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def sample_points(maps: torch.Tensor, frame_index: torch.Tensor, xy: torch.Tensor, patch: int,
                  stride: int) -> torch.Tensor:
    """Bilinear patch-grid features of points in different frames.

    maps [F, C, h, w], frame_index int [M] into F, xy [M, 2] raster px -> [M, C]. Loops over the
    distinct frames (<= F), so no [M, C, h, w] gather is ever built. Differentiable w.r.t. maps.
    """
    if maps.dim() != 4 or xy.dim() != 2 or xy.shape[-1] != 2 or frame_index.shape != xy.shape[:1]:
        raise ValueError(f"expected maps [F, C, h, w], frame_index [M], xy [M, 2]; got {tuple(maps.shape)}, "
                         f"{tuple(frame_index.shape)}, {tuple(xy.shape)}")
    if maps.device.type == "cpu" and maps.dtype in (torch.float16, torch.bfloat16):
        maps = maps.float()
    out = maps.new_zeros(xy.shape[0], maps.shape[1])
    for f in torch.unique(frame_index).tolist():
        sel = (frame_index == f).nonzero(as_tuple=True)[0]
        val = sample_at(maps[f:f + 1], xy[sel][None].to(torch.float32), patch=patch, stride=stride)[0]
        out = out.index_put((sel,), val.to(out.dtype))
    return out


def point_rows(maps: torch.Tensor) -> torch.Tensor:
    """maps [F, C, h, w] -> channels-last rows [F*h*w, C] for :func:`gather_points`."""
    return maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1])


def gather_points(rows: torch.Tensor, grid_hw: tuple[int, int], frame_index: torch.Tensor, xy: torch.Tensor,
                  patch: int, stride: int) -> torch.Tensor:
    """Bilinear patch-grid features of points, as ``sample_points`` (align-corners on the patch
    centres, border padding), from rows [F*h*w, C] -> [M, C].

    Same values as :func:`dinotracker.models.tracker.sample_points`, but built from row gathers:
    its backward is an ``index_add`` over C-contiguous rows instead of ``grid_sample``'s backward,
    which parallelises over points only and loops over the 1024 channels with atomics (~1 ms per
    call at the paper shape; the profile's top kernel). One call serves all frames.
    """
    h, w = grid_hw
    c = patch / 2.0
    u = ((xy[:, 0].float() - c) / stride).clamp(0, w - 1)
    v = ((xy[:, 1].float() - c) / stride).clamp(0, h - 1)
    x0 = u.floor().clamp(max=max(w - 2, 0)).long()
    y0 = v.floor().clamp(max=max(h - 2, 0)).long()
    fx, fy = (u - x0).unsqueeze(1), (v - y0).unsqueeze(1)
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    base = frame_index.long() * (h * w)
    # the four corners in one gather: its backward is one zero [F*h*w, C] buffer and one index_put per call
    # instead of four buffers and the three additions that merge them (a step makes ~10 such calls)
    idx = torch.cat([base + y0 * w + x0, base + y0 * w + x1, base + y1 * w + x0, base + y1 * w + x1])
    f00, f01, f10, f11 = rows[idx].view(4, -1, rows.shape[-1]).unbind(0)
    out = (f00 * (1 - fx) + f01 * fx) * (1 - fy) + (f10 * (1 - fx) + f11 * fx) * fy
    return out


def point_features(maps: torch.Tensor, frame_index: torch.Tensor, xy: torch.Tensor, patch: int, stride: int,
                   rows: torch.Tensor | None = None) -> torch.Tensor:
    """maps [F, C, h, w], frame_index [M], xy [M, 2] -> [M, C]: :func:`gather_points` from ``rows``
    (:func:`point_rows` of ``maps``, built once per step) when given, else :func:`sample_points`."""
    if rows is None:
        return sample_points(maps, frame_index, xy, patch, stride)
    return gather_points(rows, tuple(maps.shape[-2:]), frame_index, xy, patch, stride)


def slot_counts(index: torch.Tensor, num: int) -> tuple[int, ...]:
    """Host-side ``bincount(index, minlength=num)`` as a tuple of ints, the ``counts`` of
    :func:`grouped_matmul`. Reads ``index`` back, so call it where the index lives on the host (the
    sampler does, for every index of a :class:`~dinotracker.training.sampler.Batch`)."""
    return tuple(torch.bincount(index.long().cpu(), minlength=num).tolist())


def grouped_matmul(rows: torch.Tensor, mats: torch.Tensor, index: torch.Tensor,
                   counts: tuple[int, ...] | None = None) -> torch.Tensor:
    """``out[m] = rows[m] @ mats[index[m]]``: rows [M, K], mats [F, K, N], index int [M] -> [M, N].

    The rows are sorted by ``index`` (stable) and each frame's contiguous block is one matmul, so a step
    costs one sort, one gather, <= F matmuls and one scatter (``index_copy``, whose backward is a gather),
    never an [M, K, N] gather. The result equals a per-frame loop's (the same rows meet the same matrix).

    ``counts`` (F ints, ``counts[f]`` = how many rows have ``index == f``; :func:`slot_counts`): the block
    sizes, known on the host (the training step's indices come from the CPU sampler), so the split reads
    nothing back from the device. Without it they are counted here (``bincount(...).tolist()``: a host
    sync on an accelerator). Wrong counts give wrong results; they are checked only against F and M.
    """
    m, n = rows.shape[0], mats.shape[-1]
    if m == 0:
        return rows.new_zeros(0, n)
    index = index.long()
    order = torch.argsort(index, stable=True)
    if counts is None:
        counts = slot_counts(index, mats.shape[0])
    elif len(counts) != mats.shape[0] or sum(counts) != m:
        raise ValueError(f"counts must be {mats.shape[0]} ints summing to {m} rows, got {tuple(counts)}")
    srt = rows[order]
    parts, a = [], 0
    for k, cnt in enumerate(counts):
        if cnt:
            parts.append(srt[a:a + cnt] @ mats[k])
            a += cnt
    out = parts[0] if len(parts) == 1 else torch.cat(parts)
    return out.new_zeros(m, n).index_copy(0, order, out)


def normalized_maps(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Unit-norm copies of maps [..., C, h, w] along C (``v / max(||v||, eps)``, fp32, autocast off): what
    :func:`cosine_cost_volume` computes from the maps on every call, for ``target_normalized=True``."""
    with no_autocast(maps.device):
        t = maps.float()
        return t / t.norm(dim=-3, keepdim=True).clamp_min(eps)


def cosine_cost_volume(query: torch.Tensor, target_maps: torch.Tensor, eps: float = 1e-8,
                       target_normalized: bool = False, target_index: torch.Tensor | None = None,
                       target_counts: tuple[int, ...] | None = None) -> torch.Tensor:
    """Cosine similarity of ``query`` [..., C] with every cell of ``target_maps`` [..., C, h, w].

    Leading dims broadcast; returns fp32 [..., h, w]. Dims along which only the query varies
    are folded into the matmul rows, so a shared target map is never expanded/copied.
    Each vector is divided by ``max(||v||, eps)``. ``target_normalized=True`` skips normalising
    the maps (pass unit-norm maps to save a copy at inference).

    With ``target_index`` int [M]: query [M, C], target_maps [F, C, h, w], row m is compared
    with map ``target_index[m]`` -> [M, h, w] (training: each point has its own target frame).
    """
    if query.dim() < 1 or target_maps.dim() < 3 or query.shape[-1] != target_maps.shape[-3]:
        raise ValueError(f"query [..., C] and target_maps [..., C, h, w] must agree on C, got "
                         f"{tuple(query.shape)} and {tuple(target_maps.shape)}")
    if target_index is not None:
        if query.dim() != 2 or target_maps.dim() != 4 or target_index.shape != query.shape[:1]:
            raise ValueError(f"with target_index expected query [M, C], maps [F, C, h, w], index [M]; got "
                             f"{tuple(query.shape)}, {tuple(target_maps.shape)}, {tuple(target_index.shape)}")
        f, c, h, w = target_maps.shape
        with no_autocast(query.device):
            q = query.float()
            q = q / q.norm(dim=-1, keepdim=True).clamp_min(eps)
            t = target_maps.float().reshape(f, c, h * w)
            if not target_normalized:
                t = t / t.norm(dim=1, keepdim=True).clamp_min(eps)
            return grouped_matmul(q, t, target_index, target_counts).reshape(-1, h, w)
    with no_autocast(query.device):
        c, h, w = target_maps.shape[-3:]
        q = query.float()
        q = q / q.norm(dim=-1, keepdim=True).clamp_min(eps)
        t = target_maps.float()
        if not target_normalized:
            t = t / t.norm(dim=-3, keepdim=True).clamp_min(eps)
        lq, lt = tuple(q.shape[:-1]), tuple(t.shape[:-3])
        try:
            lead = torch.broadcast_shapes(lq, lt)
        except RuntimeError as e:
            raise ValueError(f"leading dims of query {lq} and target_maps {lt} do not broadcast") from e
        n = len(lead)
        lt = (1,) * (n - len(lt)) + lt
        t = t.reshape(*lt, c, h * w)
        q = q.expand(*lead, c)
        shared = [i for i in range(n) if lt[i] != 1 or lead[i] == 1]
        qonly = [i for i in range(n) if i not in shared]
        q = q.permute(*shared, *qonly, n).reshape(math.prod(lt), -1, c)
        t = t.reshape(math.prod(lt), c, h * w)
        out = torch.bmm(q, t)  # [S, R, hw]
        out = out.reshape(*[lead[i] for i in shared], *[lead[i] for i in qonly], h, w)
        inv = [0] * n
        for pos, i in enumerate(shared + qonly):
            inv[i] = pos
        return out.permute(*inv, n, n + 1)


class DinoTracker(nn.Module):
    """Delta-DINO + tracker head (reference ``Tracker`` minus the data it held).

    Args:
        feature_dim: backbone feature width C (1024 for DINOv2-L).
        patch, stride: ViT patch size and stride (14, 7): feature cell k at ``stride*k + patch/2``.
        model_hw: model resolution (H, W) in pixels; fixes the feature grid (h, w).
        radius: soft-argmax radius R in model px (35).
        coarse_from: ``"raw"`` = argmax of the ReLU'd cosine map (reference code) or
            ``"refined"`` = argmax of the refined softmax heatmap (paper, spec M5).
        normalized_refiner: NormalizedConv2d (code) vs plain Conv2d (paper, spec M6).
        use_delta / use_refiner: ablations (raw DINO features / H = softmax(S)); the
            corresponding attribute is then ``None``.
        align_mode: Delta-DINO -> patch-grid alignment, ``"center"`` or ``"reference"``
            (see :func:`~dinotracker.models.delta_dino.cnn_index_of_raster`).
        delta_channels: hidden widths of Delta-DINO.
        delta_zero_init: zero-initialise Delta-DINO's last layer (the paper); False for ``backbone=none``.
        lora: the "LoRA tune" ablation (paper Tab. 2): :class:`~dinotracker.models.lora.LoRAFeatures`
            options ``layer, facet, blocks, rank, alpha, dropout, targets``. The base features are then
            the LoRA-adapted backbone's features of the frames instead of the frozen ``raw_features``;
            call :meth:`attach_backbone` (before ``load_state_dict``) to build the adapters.
    """

    def __init__(self, feature_dim: int, patch: int, stride: int, model_hw: tuple[int, int],
                 radius: float = 35.0, coarse_from: str = "raw", normalized_refiner: bool = True,
                 use_delta: bool = True, use_refiner: bool = True, align_mode: str = "center",
                 delta_channels: tuple[int, ...] = (64, 128, 256), refiner_hidden: int = 16,
                 delta_zero_init: bool = True, lora: dict | None = None):
        super().__init__()
        if coarse_from not in COARSE_FROM:
            raise ValueError(f"coarse_from must be one of {COARSE_FROM}, got {coarse_from!r}")
        if radius <= 0:
            raise ValueError(f"radius must be > 0 px, got {radius}")
        if align_mode not in ("center", "reference"):
            raise ValueError(f"align_mode must be 'center' or 'reference', got {align_mode!r}")
        self.feature_dim, self.patch, self.stride = int(feature_dim), int(patch), int(stride)
        self.model_hw = (int(model_hw[0]), int(model_hw[1]))
        self.grid_hw = patch_grid_size(self.model_hw, self.patch, self.stride)
        self.radius = float(radius)
        self.coarse_from = coarse_from
        self.align_mode = align_mode
        # zero_init: refined == raw DINO at step 0 (the paper); off for backbone=none, where a zero
        # residual on zero features would receive no gradient through the ReLU'd cost volume
        self.delta_dino = (DeltaDINO(out_dim=feature_dim, channels=delta_channels, zero_init=delta_zero_init)
                           if use_delta else None)
        self.refiner = Refiner(hidden=refiner_hidden, normalized=normalized_refiner) if use_refiner else None
        self.lora_options = None if not lora else {k: v for k, v in dict(lora).items() if k != "enabled"}
        self.lora: LoRAFeatures | None = None
        centers = patch_center_grid(self.grid_hw, self.patch, self.stride).reshape(-1, 2)
        self.register_buffer("centers", centers, persistent=False)  # [h*w, 2] raster (x, y)
        # (row, col) offsets of the cells within ``radius`` of a centre cell, [2, K'] (soft_argmax's disc):
        # built here on the host, so that a step never selects them with a mask on the device
        k = int(self.radius // self.stride)
        off = torch.arange(-k, k + 1)
        dr, dc = torch.meshgrid(off, off, indexing="ij")
        disc = ((dr * dr + dc * dc) * self.stride ** 2 <= self.radius ** 2).reshape(-1)
        self.register_buffer("disc_offsets", torch.stack([dr.reshape(-1)[disc], dc.reshape(-1)[disc]]),
                             persistent=False)

    # ----------------------------------------------------------------- parameters
    def delta_parameters(self) -> list[nn.Parameter]:
        """Delta-DINO parameters (the group the reference decays); empty when ``use_delta=False``."""
        return [] if self.delta_dino is None else list(self.delta_dino.parameters())

    def lora_parameters(self) -> list[nn.Parameter]:
        """LoRA adapter parameters (empty without LoRA)."""
        return [] if self.lora is None else list(self.lora.parameters())

    def attach_backbone(self, backbone: nn.Module) -> None:
        """Inject the LoRA adapters into ``backbone`` (frozen, modified in place, not saved with this model)."""
        if self.lora_options is None:
            raise ValueError("this tracker was built without lora options")
        if self.lora is not None:
            raise ValueError("a backbone is already attached")
        self.lora = LoRAFeatures(backbone, **self.lora_options)
        if self.lora.backbone.embed_dim != self.feature_dim:
            raise ValueError(f"backbone width {self.lora.backbone.embed_dim} != feature_dim {self.feature_dim}")
        if (self.lora.backbone.patch_size, self.lora.backbone.stride) != (self.patch, self.stride):
            raise ValueError(f"backbone patch/stride {self.lora.backbone.patch_size}/{self.lora.backbone.stride} "
                             f"!= the tracker's {self.patch}/{self.stride}")

    def head_parameters(self) -> list[nn.Parameter]:
        """Refiner parameters (constant LR in the reference); empty when ``use_refiner=False``."""
        return [] if self.refiner is None else list(self.refiner.parameters())

    def load_reference_state_dicts(self, delta_dino_sd: dict | None = None,
                                   tracker_head_sd: dict | None = None, strict: bool = True) -> None:
        """Load the reference's ``delta_dino_<it>.pt`` / ``tracker_head_<it>.pt`` state dicts.

        Delta-DINO keys match as they are; the head's ``cnn_refiner.<i>.*`` become
        ``refiner.net.<i>.*``. For numerical parity also build with ``align_mode="reference"``,
        ``coarse_from="raw"``, ``normalized_refiner=True``.
        """
        if delta_dino_sd is not None:
            if self.delta_dino is None:
                raise ValueError("this tracker has no Delta-DINO (use_delta=False)")
            self.delta_dino.load_state_dict(delta_dino_sd, strict=strict)
        if tracker_head_sd is not None:
            if self.refiner is None:
                raise ValueError("this tracker has no refiner (use_refiner=False)")
            sd = {k.replace("cnn_refiner.", "net.", 1): v for k, v in tracker_head_sd.items()}
            self.refiner.load_state_dict(sd, strict=strict)

    # ----------------------------------------------------------------- features
    def refine(self, frames: torch.Tensor, raw_features: torch.Tensor, chunk_size: int | None = None,
               lora_prefix: torch.Tensor | None = None, num_real: int | None = None) -> torch.Tensor:
        """Refined features F = raw + Delta(frames) aligned to the patch grid (paper Eq. 1).

        frames [B, 3, H, W] float in [0, 1] (uint8 is divided by 255), at ``model_hw``;
        raw_features [B, C, h, w] (any float dtype). Returns [B, C, h, w] in the promoted
        dtype of raw and Delta (fp32 for fp16 raw); ``raw_features`` itself when
        ``use_delta=False``. ``chunk_size`` runs Delta-DINO in frame chunks (the reference
        uses 8); BatchNorm in train mode then sees per-chunk statistics. With ``lora`` the base
        features are the LoRA-adapted backbone's features of ``frames`` (``raw_features`` then only
        fixes the expected shape); ``lora_prefix`` (the frames' cached
        :meth:`~dinotracker.models.lora.LoRAFeatures.prefix` tokens) skips the frozen blocks.
        ``num_real``: only the first ``num_real`` frames are real, the rest pad the batch to a fixed size
        (``data.static_frames``): Delta-DINO's train-mode BatchNorm statistics then count the real frames only
        (:func:`~dinotracker.models.delta_dino.masked_batch_norm`), so they get the features a batch of the
        real frames alone gives (up to float rounding); a chunk of padding only gets Delta = 0, the padding's
        features are not meant to be used. None = all frames are real.
        """
        if raw_features.dim() != 4 or raw_features.shape[1] != self.feature_dim:
            raise ValueError(f"raw_features must be [B, {self.feature_dim}, h, w], got "
                             f"{tuple(raw_features.shape)}")
        if tuple(raw_features.shape[-2:]) != self.grid_hw:
            raise ValueError(f"raw_features grid {tuple(raw_features.shape[-2:])} != model grid "
                             f"{self.grid_hw}")
        if self.lora_options is not None:
            if self.lora is None:
                raise RuntimeError("this tracker fine-tunes the backbone with LoRA: call attach_backbone(backbone) "
                                   "first (dinotracker.load does it from tracker.pt)")
            if lora_prefix is not None:
                raw_features = self.lora.from_prefix(lora_prefix, self.grid_hw)
            else:
                raw_features = self.lora(frames.float() / 255.0 if frames.dtype == torch.uint8 else frames)
            if tuple(raw_features.shape[-2:]) != self.grid_hw:
                raise ValueError(f"LoRA features grid {tuple(raw_features.shape[-2:])} != model grid {self.grid_hw}")
        if self.delta_dino is None:
            return raw_features
        if frames.dim() != 4 or frames.shape[0] != raw_features.shape[0] or frames.shape[1] != 3:
            raise ValueError(f"frames must be [B, 3, H, W] with B={raw_features.shape[0]}, got "
                             f"{tuple(frames.shape)}")
        if tuple(frames.shape[-2:]) != self.model_hw:
            raise ValueError(f"frames are {tuple(frames.shape[-2:])}, model resolution is {self.model_hw}")
        if frames.dtype == torch.uint8:
            frames = frames.float() / 255.0
        n = frames.shape[0]
        step = n if chunk_size is None else max(1, int(chunk_size))
        real = n if num_real is None else int(num_real)
        if not 1 <= real <= n:
            raise ValueError(f"num_real must be in [1, {n}], got {num_real}")
        outs = []
        for i in range(0, n, step):
            chunk = frames[i:i + step]
            k = min(max(real - i, 0), chunk.shape[0])  # real frames in this chunk (they come first)
            if k == 0:  # padding only: no statistics to take, Delta = 0
                outs.append(chunk.new_zeros((chunk.shape[0], self.delta_dino.out_dim, *self.grid_hw)))
                continue
            valid = None if k == chunk.shape[0] else torch.arange(chunk.shape[0], device=chunk.device) < k
            d = self.delta_dino(chunk, frame_valid=valid)
            outs.append(align_to_patch_grid(d, self.grid_hw, self.patch, self.stride,
                                            cnn_stride=self.delta_dino.cnn_stride, mode=self.align_mode))
        delta = torch.cat(outs) if len(outs) > 1 else outs[0]
        dtype = torch.promote_types(raw_features.dtype, delta.dtype)
        return raw_features.to(dtype) + delta.to(dtype)

    def sample_features(self, feature_maps: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
        """Bilinear features at raster points: maps [B, C, h, w], xy [B, N, 2] -> [B, N, C].

        Align-corners sampling on the patch-centre grid with border padding (reference
        ``normalize_points_for_sampling``), via :func:`dinotracker.geometry.sample_at`.
        """
        if (feature_maps.dim() != 4 or xy.dim() != 3 or xy.shape[-1] != 2
                or xy.shape[0] != feature_maps.shape[0]):
            raise ValueError(f"expected maps [B, C, h, w] and xy [B, N, 2], got {tuple(feature_maps.shape)} "
                             f"and {tuple(xy.shape)}")
        if feature_maps.device.type == "cpu" and feature_maps.dtype in (torch.float16, torch.bfloat16):
            feature_maps = feature_maps.float()
        return sample_at(feature_maps, xy.to(torch.float32), patch=self.patch, stride=self.stride)

    def sample_points(self, maps: torch.Tensor, frame_index: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
        """maps [F, C, h, w], frame_index [M], xy [M, 2] -> [M, C] (see :func:`sample_points`)."""
        return sample_points(maps, frame_index, xy, self.patch, self.stride)

    # ----------------------------------------------------------------- head
    def cost_volume(self, query_features: torch.Tensor, target_maps: torch.Tensor,
                    target_normalized: bool = False, target_index: torch.Tensor | None = None,
                    target_counts: tuple[int, ...] | None = None) -> torch.Tensor:
        """ReLU(cosine) of query [..., C] against maps [..., C, h, w] -> fp32 [..., h, w] (eps 1e-8).

        See :func:`cosine_cost_volume` for broadcasting, ``target_index`` and ``target_counts``.
        """
        return torch.relu(cosine_cost_volume(query_features, target_maps, target_normalized=target_normalized,
                                             target_index=target_index, target_counts=target_counts))

    def heatmap(self, cost: torch.Tensor) -> torch.Tensor:
        """Refiner (identity if disabled) then softmax over all h*w cells: [..., h, w] -> fp32 [..., h, w]."""
        h, w = cost.shape[-2:]
        lead = cost.shape[:-2]
        with no_autocast(cost.device):
            x = cost.float().reshape(-1, 1, h, w)
            if self.refiner is not None:
                x = self.refiner(x)
            return torch.softmax(x.reshape(-1, h * w), dim=-1).reshape(*lead, h, w)

    def soft_argmax(self, probs: torch.Tensor, cost: torch.Tensor) -> torch.Tensor:
        """Radius-limited soft-argmax (paper Eq. 2): probs, cost [..., h, w] -> raster xy [..., 2] (fp32).

        Coarse centre: argmax of ``cost`` (``coarse_from="raw"``) or of ``probs`` ("refined").
        The prediction is the ``probs``-weighted mean of the patch centres within ``radius`` px
        of the coarse centre, divided by the in-disc mass; if that mass is < 1e-8 the disc's
        cells are averaged uniformly (the reference adds the uniform weight to the near-zero
        probabilities; the difference is < 1e-8 relative). Predictions are confined to the
        patch-centre hull [patch/2, last centre]. No gradient flows through the argmax.
        """
        h, w = probs.shape[-2:]
        if (h, w) != self.grid_hw or cost.shape[-2:] != probs.shape[-2:]:
            raise ValueError(f"probs {tuple(probs.shape)} / cost {tuple(cost.shape)} do not match grid "
                             f"{self.grid_hw}")
        lead = probs.shape[:-2]
        with no_autocast(probs.device):
            p = probs.float().reshape(-1, h * w)
            src = cost if self.coarse_from == "raw" else probs
            idx = src.detach().reshape(-1, h * w).argmax(dim=-1)
            r0, c0 = idx // w, idx % w
            # Only a (2K+1)^2 window of cells can lie in the disc: gather its cells (``disc_offsets``)
            # instead of computing distances to all h*w cells (memory N x 121 instead of N x 8107).
            dr, dc = self.disc_offsets.to(p.device)
            rows, cols = r0[:, None] + dr[None], c0[:, None] + dc[None]  # [N, K']
            inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
            flat = rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)
            wts = p.gather(1, flat) * inside
            mass = wts.sum(dim=-1, keepdim=True)
            wts = torch.where(mass < 1e-8, inside.to(p.dtype), wts)
            cx = cols.to(p.dtype) * self.stride + self.patch / 2.0
            cy = rows.to(p.dtype) * self.stride + self.patch / 2.0
            den = wts.sum(dim=-1)
            xy = torch.stack([(wts * cx).sum(-1) / den, (wts * cy).sum(-1) / den], dim=-1)
            return xy.reshape(*lead, 2)

    def forward(self, query_features: torch.Tensor, target_maps: torch.Tensor,
                target_normalized: bool = False, target_index: torch.Tensor | None = None,
                target_counts: tuple[int, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Track query features into target maps.

        query_features [..., C], target_maps [..., C, h, w] (leading dims broadcast) ->
        (xy [..., 2] raster model px, probs [..., h, w], cost [..., h, w]), all fp32.
        With ``target_index`` [M]: query [M, C] against maps [F, C, h, w] picked per row (``target_counts``:
        the rows per map, known on the host; see :func:`grouped_matmul`).
        """
        cost = self.cost_volume(query_features, target_maps, target_normalized=target_normalized,
                                target_index=target_index, target_counts=target_counts)
        probs = self.heatmap(cost)
        return self.soft_argmax(probs, cost), probs, cost
