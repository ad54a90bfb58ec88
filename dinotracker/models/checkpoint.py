"""A fitted tracker on disk: this package's ``tracker.pt`` and the reference implementation's checkpoints.

Plain ``torch.load`` / ``nn.Module`` code, no Lightning: :func:`dinotracker.load` rebuilds a tracker with
it without importing the training stack.

``tracker.pt`` (written by :func:`save_tracker`, e.g. from ``DinoTrackerModule.export``) holds
``{"model_kwargs", "state_dict", "ema_state_dict", "backbone"}``: the :class:`DinoTracker` constructor
arguments, its weights (CPU tensors), the teacher's weights (EMA or lagged) or None, and the
``build_backbone`` kwargs of the frozen backbone (a LoRA tracker needs it at inference; the backbone's
weights are not copied). :func:`tracker_from_export` / :func:`load_exported` rebuild the tracker.

Reference checkpoints (AssafSinger94/dino-tracker ``models/dino_tracker/delta_dino_<it>.pt`` and
``tracker_head_<it>.pt``, plain state dicts; the largest ``it`` present in both is used,
:func:`find_reference_checkpoints`). Key mapping (reference -> ours), :func:`reference_to_state_dict`:

* ``DeltaDINO.layers.<i>.<p>`` -> ``delta_dino.layers.<i>.<p>``; same ``nn.ModuleList`` layout:
  ``[conv, bn, relu, blurpool] x 3 + [conv(dilation 2), bn]`` = indices 0..13, BlurPool buffer
  ``filt`` (antialiased_cnns) at 3, 7, 11;
* ``TrackerHead.cnn_refiner.<i>.<p>`` (``NormalizedConv2d`` at 0 and 2) -> ``refiner.net.<i>.<p>``.

The converted model (:func:`tracker_from_reference`) is built with ``align_mode="reference"``,
``coarse_from="raw"``, ``normalized_refiner=True`` (the reference's choices). Known residual difference:
the reference's coordinates are pixel *indices* (align_corners=True) where ours are raster, a 0.5 px
convention offset of the exported tracks.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from dinotracker.models.tracker import DinoTracker
from dinotracker.utils.atomic import atomic_path


# ---------------------------------------------------------------------- tracker.pt
def save_tracker(path, model_kwargs: dict, state_dict: dict, ema_state_dict: dict | None = None,
                 backbone_spec: dict | None = None) -> Path:
    """Write a ``tracker.pt`` (module docstring) atomically (:func:`dinotracker.utils.atomic.atomic_path`),
    so a reader never sees a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = lambda sd: {k: v.detach().cpu() for k, v in sd.items()}  # noqa: E731
    obj = {"model_kwargs": dict(model_kwargs), "state_dict": cpu(state_dict),
           "ema_state_dict": cpu(ema_state_dict) if ema_state_dict is not None else None,
           "backbone": dict(backbone_spec or {})}
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def load_exported(path, map_location="cpu", use_ema: bool = False, backbone: nn.Module | None = None) -> DinoTracker:
    """Rebuild the :class:`DinoTracker` of a ``tracker.pt`` (eval mode).

    A LoRA tracker needs its backbone: ``backbone`` or, when None, one rebuilt from the file's
    ``backbone`` spec (:func:`dinotracker.backbones.build_from_spec`)."""
    d = torch.load(path, map_location=map_location, weights_only=True)
    m = tracker_from_export(d, use_ema=use_ema, backbone=backbone)
    return m.eval()


def tracker_from_export(d: dict, use_ema: bool = False, backbone: nn.Module | None = None) -> DinoTracker:
    """:class:`DinoTracker` from a loaded ``tracker.pt`` dict (attaching the LoRA backbone when it has one)."""
    kw = dict(d["model_kwargs"])
    kw["model_hw"] = tuple(kw["model_hw"])
    if "delta_channels" in kw:
        kw["delta_channels"] = tuple(kw["delta_channels"])
    m = DinoTracker(**kw)
    if m.lora_options is not None:
        from dinotracker.backbones import build_from_spec

        m.attach_backbone(backbone if backbone is not None else build_from_spec(d.get("backbone")))
    sd = d["ema_state_dict"] if use_ema and d.get("ema_state_dict") is not None else d["state_dict"]
    m.load_state_dict(sd)
    return m


# ---------------------------------------------------------------------- reference checkpoints
def reference_to_state_dict(delta_dino_sd: dict | None, tracker_head_sd: dict | None) -> dict:
    """Reference ``delta_dino_<it>.pt`` / ``tracker_head_<it>.pt`` state dicts -> our DinoTracker keys
    (module docstring). A ``module.`` prefix (DataParallel) is stripped."""
    out = {}
    for k, v in (delta_dino_sd or {}).items():
        k = k.removeprefix("module.")
        if not k.startswith("layers."):
            raise ValueError(f"unexpected Delta-DINO key {k!r} (expected layers.<i>.<param>)")
        out["delta_dino." + k] = v
    for k, v in (tracker_head_sd or {}).items():
        k = k.removeprefix("module.")
        if not k.startswith("cnn_refiner."):
            raise ValueError(f"unexpected tracker-head key {k!r} (expected cnn_refiner.<i>.<param>)")
        out["refiner.net." + k.removeprefix("cnn_refiner.")] = v
    return out


def state_dict_to_reference(state_dict: dict) -> tuple[dict, dict]:
    """Inverse of :func:`reference_to_state_dict`: ours -> (delta_dino_sd, tracker_head_sd)."""
    delta, head = {}, {}
    for k, v in state_dict.items():
        if k.startswith("delta_dino."):
            delta[k.removeprefix("delta_dino.")] = v
        elif k.startswith("refiner.net."):
            head["cnn_refiner." + k.removeprefix("refiner.net.")] = v
        else:
            raise ValueError(f"key {k!r} has no reference counterpart")
    return delta, head


def find_reference_checkpoints(folder) -> tuple[Path, Path, int] | None:
    """``(delta_dino_<it>.pt, tracker_head_<it>.pt, it)`` with the largest ``it`` present in both, looked
    up in ``folder`` and ``folder/models/dino_tracker`` (the reference's layout); None if absent."""
    folder = Path(folder)
    for d in (folder, folder / "models" / "dino_tracker"):
        its = sorted(
            int(m.group(1))
            for p in d.glob("delta_dino_*.pt")
            if (m := re.fullmatch(r"delta_dino_(\d+)\.pt", p.name))
        )
        its = [i for i in its if (d / f"tracker_head_{i}.pt").is_file()]
        if its:
            return d / f"delta_dino_{its[-1]}.pt", d / f"tracker_head_{its[-1]}.pt", its[-1]
    return None


def tracker_from_reference(delta_dino_path, tracker_head_path, feature_dim: int, patch: int, stride: int,
                           model_hw: tuple[int, int]) -> DinoTracker:
    """A :class:`DinoTracker` with the reference's architecture choices (module docstring) and the weights
    of its ``delta_dino_<it>.pt`` / ``tracker_head_<it>.pt`` (strict: every key must map)."""
    model = DinoTracker(
        feature_dim=int(feature_dim),
        patch=int(patch),
        stride=int(stride),
        model_hw=tuple(model_hw),
        coarse_from="raw",
        normalized_refiner=True,
        align_mode="reference",
    )
    sd = reference_to_state_dict(
        torch.load(delta_dino_path, map_location="cpu", weights_only=True),
        torch.load(tracker_head_path, map_location="cpu", weights_only=True),
    )
    model.load_state_dict(sd, strict=True)
    return model
