"""Per-frame patch-feature sources for label propagation.

A *source* is called once per frame, ``source(frame, index) -> [h, w, C]`` float32 L2-normalised
features, where ``frame`` is the uint8 ``[H, W, 3]`` input frame (input resolution) and ``index``
its position in the video; ``source.grid(input_hw)`` describes where the feature cells sit
(:class:`CellGrid`). Sources:

* :class:`BackboneFeatures`: any backbone of :func:`dinotracker.backbones.build_backbone`
  (``.patch_size``, ``.extract(images [B,3,H,W] in [0,1], layers, facet) -> {layer: [B,C,h,w]}``);
  frames are resized as the DINOv3 notebook does (short side rounded *up* to a patch multiple, long
  side from the rounded short side, PIL bicubic), last layer, final LayerNorm, L2.
* :class:`ImageFeatures`: a plain function ``fn(images [1,3,H',W'] in [0,1]) -> [1,C,h,w]`` on the
  same resized frames (tests, custom extractors).
* :class:`RunFeatures`: refined features ``Phi + Delta(I)`` of a fitted DINO-Tracker run
  (``dinotracker.load(run_dir).refined_features``); only for the video the run was fitted on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@dataclass(frozen=True)
class CellGrid:
    """Where feature cells sit. Cell ``k`` covers model pixels ``[stride k, stride k + patch)`` and is centred
    at model raster ``stride k + patch / 2`` (:mod:`dinotracker.geometry`); model and input pixels differ by
    the plain scale ``model_hw / input_hw``."""

    input_hw: tuple[int, int]
    model_hw: tuple[int, int]
    patch: int
    stride: int

    @property
    def shape(self) -> tuple[int, int]:
        (hm, wm), p, s = self.model_hw, self.patch, self.stride
        return 1 + (hm - p) // s, 1 + (wm - p) // s

    @property
    def regular(self) -> bool:
        """Non-overlapping patches tiling the model image exactly (the notebook's case)."""
        (hm, wm), p = self.model_hw, self.patch
        return self.stride == p and hm % p == 0 and wm % p == 0

    def centres_input(self, axis: int) -> np.ndarray:
        """Cell centres along ``axis`` (0 = rows/y, 1 = cols/x) in input raster px, float64 [n]."""
        n = self.shape[axis]
        return (self.stride * np.arange(n) + self.patch / 2) * self.input_hw[axis] / self.model_hw[axis]


def resize_to_multiple_hw(hw: tuple[int, int], short_side: int, multiple: int) -> tuple[int, int]:
    """The notebook's ``ResizeToMultiple``: short side -> ceil(short_side/m)*m; the long side follows the
    aspect ratio from the **rounded** short side and is rounded up too (480x854 @960/16 -> 960x1712)."""
    if short_side < 1 or multiple < 1:
        raise ValueError(f"short_side and multiple must be >= 1, got {short_side}, {multiple}")
    h, w = hw

    def up(s: float) -> int:
        return math.ceil(s / multiple) * multiple

    if w > h:
        nh = up(short_side)
        return nh, up(w * nh / h)
    nw = up(short_side)
    return up(h * nw / w), nw


def resize_frame(frame: np.ndarray, hw: tuple[int, int]) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [3, h, w] in [0, 1], PIL bicubic (torchvision's resize on a PIL image)."""
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [H, W, 3], got {frame.dtype} {frame.shape}")
    if tuple(frame.shape[:2]) != tuple(hw):
        frame = np.asarray(Image.fromarray(frame).resize((hw[1], hw[0]), Image.BICUBIC))
    return torch.from_numpy(np.array(frame, copy=True)).permute(2, 0, 1).float().div_(255.0)


def _channels_last_normalised(feats: torch.Tensor) -> torch.Tensor:
    if feats.dim() == 4:
        if feats.shape[0] != 1:
            raise ValueError(f"expected features [1, C, h, w] for one frame, got {tuple(feats.shape)}")
        feats = feats[0]
    if feats.dim() != 3:
        raise ValueError(f"expected features [C, h, w], got {tuple(feats.shape)}")
    return F.normalize(feats.float().permute(1, 2, 0), dim=-1)  # fp32 for the similarity step


class ImageFeatures:
    """``fn(images [1,3,H',W'] float in [0,1]) -> [1,C,h,w]`` on frames resized to a patch multiple."""

    needs_image = True

    def __init__(self, fn, patch: int, short_side: int | None = 960, stride: int | None = None, device="cpu"):
        if patch < 1:
            raise ValueError(f"patch must be >= 1, got {patch}")
        self.fn, self.patch, self.short_side = fn, int(patch), short_side
        self.stride = int(stride or patch)
        self.device = torch.device(device)

    def model_hw(self, input_hw) -> tuple[int, int]:
        if self.short_side is None:  # native size, cropped down to a patch multiple
            return input_hw[0] // self.patch * self.patch, input_hw[1] // self.patch * self.patch
        return resize_to_multiple_hw(tuple(input_hw), int(self.short_side), self.patch)

    def grid(self, input_hw) -> CellGrid:
        return CellGrid(tuple(input_hw), self.model_hw(input_hw), self.patch, self.stride)

    def image(self, frame: np.ndarray) -> torch.Tensor:
        hm, wm = self.model_hw(frame.shape[:2])
        if self.short_side is None:
            frame = frame[:hm, :wm]
        return resize_frame(frame, (hm, wm))[None].to(self.device)

    @torch.no_grad()
    def __call__(self, frame: np.ndarray, index: int) -> torch.Tensor:
        return _channels_last_normalised(self.fn(self.image(frame)))


class BackboneFeatures(ImageFeatures):
    """Last-layer patch tokens of a backbone (``build_backbone`` API), with the final LayerNorm.

    ``final_norm="auto"`` applies ``backbone.norm`` when ``layer`` is the last block, as DINOv3's
    ``get_intermediate_layers(norm=True)`` does, because ``extract`` returns raw block outputs (the
    DINO-Tracker convention). Set it to False for a backbone whose ``extract`` already normalises.
    """

    def __init__(
        self,
        backbone,
        short_side: int | None = 960,
        layer: int = -1,
        facet: str = "tokens",
        final_norm: bool | str = "auto",
        device=None,
        amp: bool = False,
    ):
        if not hasattr(backbone, "extract") or not hasattr(backbone, "patch_size"):
            raise ValueError("backbone must provide .patch_size and .extract(images, layers, facet)")
        device = device if device is not None else next(backbone.parameters()).device
        super().__init__(
            self._extract,
            int(backbone.patch_size),
            short_side,
            stride=int(getattr(backbone, "stride", None) or backbone.patch_size),
            device=device,
        )
        self.backbone, self.layer, self.facet, self.amp = backbone, int(layer), facet, bool(amp)
        depth = getattr(backbone, "num_blocks", None) or len(getattr(backbone, "blocks", []))
        last = depth and (self.layer == -1 or self.layer == depth - 1)
        norm = getattr(backbone, "norm", None)
        if final_norm == "auto":
            final_norm = bool(last and isinstance(norm, torch.nn.Module) and facet == "tokens")
        self.norm = norm if final_norm else None
        if final_norm and norm is None:
            raise ValueError("final_norm=True but the backbone has no .norm module")

    def _extract(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.amp):
            f = self.backbone.extract(images, layers=[self.layer], facet=self.facet)[self.layer]  # [1,C,h,w]
            if self.norm is not None:
                f = self.norm(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return f


def check_backbone(name: str) -> None:
    """Refuse backbones that cannot segment: ``none`` gives all-zero features, every cell is as similar to
    every other and the propagated masks mean nothing (while costing the full per-frame work)."""
    if str(name) == "none":
        raise ValueError(
            "segtrack needs real features: backbone.name=none gives all-zero features, so the masks would "
            "mean nothing; choose a DINO backbone (e.g. backbone.name=dinov3_vits16 with its weights) or "
            "features=run:<fitted run folder>"
        )


def features_from_backbone(
    name: str,
    weights=None,
    source: str = "auto",
    short_side: int | None = 960,
    device="cpu",
    layer: int = -1,
    final_norm: bool | str = "auto",
    amp: bool = False,
    stride: int | None = None,
    **arch_overrides,
) -> BackboneFeatures:
    """:class:`BackboneFeatures` of ``dinotracker.backbones.build_backbone(name, weights, source, ...)``
    (``name="none"`` is refused: :func:`check_backbone`)."""
    from dinotracker.backbones import build_backbone

    check_backbone(name)
    backbone = build_backbone(
        name, weights=weights, source=source, stride=stride, device=device, offer_none=False, **arch_overrides
    )
    return BackboneFeatures(
        backbone, short_side=short_side, layer=layer, final_norm=final_norm, device=device, amp=amp
    )


class RunFeatures:
    """Refined features of a fitted run, ``tracker.refined_features([t]) -> [1, C, h, w]`` at the run's
    model resolution and (patch, stride) grid. Frame ``t`` of the segmented video must be frame ``t`` of
    the run's video: sizes and frame counts are checked, the pixels are not (``needs_image = False``)."""

    needs_image = False

    def __init__(self, tracker):
        for attr in ("refined_features", "patch", "stride", "input_hw", "model_hw", "num_frames"):
            if not hasattr(tracker, attr):
                raise ValueError(f"tracker object lacks .{attr}; expected dinotracker.load(run_dir)")
        self.tracker = tracker

    def grid(self, input_hw) -> CellGrid:
        if tuple(input_hw) != tuple(self.tracker.input_hw):
            raise ValueError(
                f"the video is {tuple(input_hw)} but the run was fitted on "
                f"{tuple(self.tracker.input_hw)} frames: segment the run's own video"
            )
        return CellGrid(
            tuple(input_hw), tuple(self.tracker.model_hw), int(self.tracker.patch), int(self.tracker.stride)
        )

    @torch.no_grad()
    def __call__(self, frame, index: int) -> torch.Tensor:
        if not 0 <= index < self.tracker.num_frames:
            raise ValueError(f"frame {index} is outside the run's {self.tracker.num_frames} frames")
        return _channels_last_normalised(self.tracker.refined_features([index], dtype=torch.float32))


def features_from_run(run_dir, device="cpu", use_ema: bool = False, **load_kwargs) -> RunFeatures:
    """:class:`RunFeatures` of ``dinotracker.load(run_dir)`` (refined DINO-Tracker features)."""
    import dinotracker

    if not hasattr(dinotracker, "load"):
        raise ImportError("dinotracker.load is not available in this version")
    return RunFeatures(dinotracker.load(run_dir, device=device, use_ema=use_ema, **load_kwargs))


def as_source(features_fn, short_side: int | None = 960, patch: int = 16, device="cpu"):
    """Normalise what :func:`~dinotracker.segtrack.propagation.track_segmentation` accepts: a source (has
    ``.grid``), a backbone (has ``.extract``) or a plain ``fn(images [1,3,H',W']) -> [1,C,h,w]``."""
    if hasattr(features_fn, "grid") and callable(features_fn):
        return features_fn
    if hasattr(features_fn, "extract"):
        return BackboneFeatures(features_fn, short_side=short_side, device=device)
    if callable(features_fn):
        return ImageFeatures(features_fn, patch=patch, short_side=short_side, device=device)
    raise ValueError(
        f"features_fn must be a feature source, a backbone or a callable, got {type(features_fn)}"
    )
