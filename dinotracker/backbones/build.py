"""Backbone names, official checkpoint files, weight sources and :func:`build_backbone`.

Sources (``backbone.source``):

* ``random``: random init (tests, benchmarks); ``arch_overrides`` such as ``depth=2, embed_dim=64`` make tiny
  models of the same architecture.
* ``file``: a local ``.pth`` / ``.safetensors`` state dict in the official layout.
* ``hub``: the torch hub checkpoint cache, ``torch.hub.get_dir()/checkpoints/<official file name>``; when the
  file is missing and ``DINOTRACKER_OFFLINE`` is not set, the official URL is tried
  (``torch.hub.load_state_dict_from_url``).
* ``hf``: a Hugging Face model folder (``config.json`` + weights), converted to our modules; needs
  ``transformers`` (optional).
* ``auto``: ``hf`` if ``weights`` is a folder with ``config.json``, ``file`` if it is a file, else ``hub``.

All real weights load with ``strict=True``. ``name="none"`` gives zero features (no weights).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch

from dinotracker.backbones import dinov2, dinov3
from dinotracker.backbones.dinov2 import DinoV2
from dinotracker.backbones.dinov3 import DinoV3, RopeEmbedding
from dinotracker.backbones.none import NoneBackbone
from dinotracker.backbones.vit import Backbone, random_init

log = logging.getLogger(__name__)

DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_{arch}/{file}"
DINOV3_URL = "https://dl.fbaipublicfiles.com/dinov3/dinov3_{arch}/{file}"
DINOV3_DOWNLOADS = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"
# LVD-1689M checkpoint hashes of the official hub entry points (part of the file names)
DINOV3_HASHES = {
    "vits16": "08c60483",
    "vits16plus": "4057cbaa",
    "vitb16": "73cec8be",
    "vitl16": "8aa4cbdd",
    "vitl16plus": "46503df0",
    "vith16plus": "7c1da9a5",
    "vit7b16": "a955f4ea",
}
# the brief's spelling (vit{s,l,h}plus16) -> the hub's (vit{s,l,h}16plus)
_V3_ALIASES = {"vitsplus16": "vits16plus", "vitlplus16": "vitl16plus", "vithplus16": "vith16plus"}

BACKBONE_NAMES = (
    ["none"]
    + [f"dinov2_{a}{r}" for a in dinov2.ARCHS for r in ("", "_reg")]
    + [f"dinov3_{a}" for a in dinov3.ARCHS]
)
SOURCES = ("auto", "random", "file", "hub", "hf")


def parse_name(name: str) -> tuple[str, str, bool]:
    """Name -> (family, arch, registers): ``dinov2_vitl14_reg`` -> ('dinov2', 'vitl14', True),
    ``dinov3_vitl16`` -> ('dinov3', 'vitl16', False)."""
    m = re.fullmatch(r"dinov2_(vit[sblg]14)(_reg4?)?", str(name))
    if m:
        return "dinov2", m.group(1), bool(m.group(2))
    m = re.fullmatch(r"dinov3_(vit\w+)", str(name))
    if m and _V3_ALIASES.get(m.group(1), m.group(1)) in dinov3.ARCHS:
        return "dinov3", _V3_ALIASES.get(m.group(1), m.group(1)), False
    raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(configured_names())}")


def configured_names() -> list[str]:
    """The backbone names a user can pick with ``backbone=<name>`` (those with a config file; e.g.
    ``dinov3_vit7b16`` can be built from Python but has no config, so it is not offered)."""
    try:
        from dinotracker.utils.confdir import config_dir

        have = {p.stem for p in (config_dir() / "backbone").glob("*.yaml")}
    except FileNotFoundError:
        return list(BACKBONE_NAMES)
    return [n for n in BACKBONE_NAMES if n in have] or list(BACKBONE_NAMES)


def checkpoint_name(name: str) -> str:
    """Official checkpoint file name, e.g. ``dinov2_vitl14_pretrain.pth``,
    ``dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth``."""
    family, arch, reg = parse_name(name)
    if family == "dinov2":
        return f"dinov2_{arch}{'_reg4' if reg else ''}_pretrain.pth"
    return f"dinov3_{arch}_pretrain_lvd1689m-{DINOV3_HASHES[arch]}.pth"


def checkpoint_url(name: str) -> str:
    family, arch, _ = parse_name(name)
    url = DINOV2_URL if family == "dinov2" else DINOV3_URL
    return url.format(arch=arch, file=checkpoint_name(name))


def arch_kwargs(name: str) -> dict:
    """Constructor kwargs of the official architecture ``name``."""
    family, arch, reg = parse_name(name)
    if family == "dinov2":
        return dict(dinov2.ARCHS[arch], num_register_tokens=4 if reg else 0)
    return dict(dinov3.ARCHS[arch])


def _construct(family: str, kw: dict) -> Backbone:
    try:
        return (DinoV2 if family == "dinov2" else DinoV3)(**kw)
    except TypeError as err:
        raise ValueError(f"bad architecture override for {family}: {err}") from err


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """A ``.pth``/``.pt``/``.safetensors`` state dict; unwraps ``{"model"|"state_dict"|"teacher": ...}`` and a
    common ``module.``/``backbone.`` key prefix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights not found: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as err:
            raise ImportError(f"reading {path} needs safetensors: pip install safetensors") from err
        sd = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict", "teacher"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    for prefix in ("module.", "backbone."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _complete(model: Backbone, sd: dict) -> dict:
    """Add DINOv3's derivable buffers (``bias_mask``, ``rope_embed.periods``) a converted file may lack."""
    if not isinstance(model, DinoV3):
        return sd
    sd = dict(sd)
    own = model.state_dict()
    for k, v in own.items():
        if k not in sd and (k.endswith("attn.qkv.bias_mask") or k == "rope_embed.periods"):
            if k == "rope_embed.periods":
                blk = model.blocks[0].attn
                v = RopeEmbedding.default_periods(model.embed_dim // blk.num_heads, model.rope_embed.base)
            sd[k] = v
    return sd


def load_strict(model: Backbone, sd: dict, where: str, name: str) -> None:
    """``load_state_dict(strict=True)`` with a readable error (missing/unexpected keys, shape mismatches)."""
    sd = _complete(model, sd)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in sd and sd[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"weights from {where} do not fit backbone {name!r} (is backbone.name right?): "
            f"{len(missing)} missing {missing[:4]}, {len(unexpected)} unexpected {unexpected[:4]}, "
            f"{len(shapes)} shape mismatches {shapes[:3]}"
        )
    model.load_state_dict(sd, strict=True)


def _hub_file(name: str) -> Path | None:
    """The official checkpoint in the torch hub cache (any LVD-1689M hash for DINOv3)."""
    ckpt = Path(torch.hub.get_dir()) / "checkpoints"
    exact = ckpt / checkpoint_name(name)
    if exact.is_file():
        return exact
    family, arch, _ = parse_name(name)
    if family == "dinov3":
        found = sorted(ckpt.glob(f"dinov3_{arch}_pretrain_lvd1689m-*.pth"))
        if found:
            return found[0]
    return None


def missing_weights_message(name: str, reason: str = "", offer_none: bool = True) -> str:
    """What to do when ``name``'s weights are missing. ``offer_none``: mention ``backbone.name=none`` (only
    where the command accepts it: the fit's "w/o DINO" ablation, not segtrack)."""
    family, _, _ = parse_name(name)
    ckpt = Path(torch.hub.get_dir()) / "checkpoints"
    msg = (
        f"{name} weights are not available{' (' + reason + ')' if reason else ''}. Put the official file "
        f"{checkpoint_name(name)} into {ckpt}/ (download: {checkpoint_url(name)}), or pass "
        f"backbone.weights=/path/to/{checkpoint_name(name)} (a .pth/.safetensors state dict) or "
        f"backbone.weights=/path/to/hf_folder backbone.source=hf (a Hugging Face model folder with "
        f"config.json)."
    )
    if offer_none:
        msg += " backbone.name=none needs no weights."
    if family == "dinov3":
        msg += (
            f" DINOv3 weights are gated: request access at {DINOV3_DOWNLOADS}, download with the e-mailed "
            f"URL and keep the original file name."
        )
    return msg


def _hub_state(name: str, offer_none: bool = True) -> tuple[dict, str]:
    path = _hub_file(name)
    if path is not None:
        return read_state_dict(path), str(path)
    if os.environ.get("DINOTRACKER_OFFLINE", "0") not in ("", "0"):
        raise FileNotFoundError(missing_weights_message(name, "DINOTRACKER_OFFLINE is set", offer_none))
    url = checkpoint_url(name)
    try:
        log.info("downloading %s weights from %s", name, url)
        sd = torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - offline or gated: say exactly what to do
        raise FileNotFoundError(missing_weights_message(name, f"download failed: {err}", offer_none)) from err
    return sd, url


def build_backbone(
    name: str,
    weights: str | None = None,
    source: str = "auto",
    stride: int | None = None,
    device="cpu",
    offer_none: bool = True,
    **arch_overrides,
) -> Backbone:
    """A frozen backbone in eval mode with ``stride`` applied, on ``device``.

    ``arch_overrides`` change the architecture (e.g. ``depth=2, embed_dim=64, num_heads=4, img_size=56`` for
    tiny random test models; checkpoints must then match it). ``seed`` (random source) fixes the init.
    ``name="none"``: zeros of width ``embed_dim`` (or ``dim``; default 1024), ``patch_size`` (default 14).
    ``offer_none=False``: the missing-weights message does not suggest ``none`` (a caller that refuses it).
    """
    if str(name) == "none":
        if weights:
            raise ValueError("backbone.name=none takes no weights (set backbone.weights=null)")
        kw = {"embed_dim": arch_overrides.pop("dim", arch_overrides.pop("embed_dim", 1024))}
        kw.update({k: arch_overrides.pop(k) for k in ("patch_size", "num_blocks") if k in arch_overrides})
        if arch_overrides:
            raise ValueError(f"unsupported options for backbone none: {sorted(arch_overrides)}")
        model: Backbone = NoneBackbone(**kw)
        return _finish(model, stride, device)
    family, _, _ = parse_name(name)
    source = str(source or "auto")
    if source not in SOURCES:
        raise ValueError(f"unknown backbone source {source!r}: use one of {SOURCES}")
    if source == "auto":
        from dinotracker.backbones.hf import is_hf_folder

        if weights is None:
            source = "hub"
        elif is_hf_folder(weights):
            source = "hf"
        elif Path(weights).is_dir():
            raise FileNotFoundError(
                f"backbone weights folder {weights} has no config.json (not a Hugging Face "
                f"model folder); pass a .pth/.safetensors file instead"
            )
        else:
            source = "file"
    seed = int(arch_overrides.pop("seed", 0))
    kw = {**arch_kwargs(name), **arch_overrides}

    if source == "random":
        if torch.device(device).type == "meta":
            with torch.device("meta"):  # shapes only: never allocates (ViT-g / 7B state-dict checks)
                return _finish(_construct(family, kw), stride, device)
        with torch.random.fork_rng(devices=[]):  # seeded, and the caller's RNG stream is left alone
            torch.manual_seed(seed)
            model = _construct(family, kw)
            # layerscale 1 (not the 1e-5 training init) so every block visibly changes the tokens
            random_init(model, ls_init=1.0)
        return _finish(model, stride, device)

    if source == "hf":
        from dinotracker.backbones.hf import hf_family, load_hf

        if weights is None:
            raise ValueError("backbone.source=hf needs backbone.weights=<Hugging Face model folder>")
        if hf_family(weights) != family:
            raise ValueError(f"{weights} holds a {hf_family(weights)} model but backbone.name is {name!r}")
        _, hf_kw, sd = load_hf(weights)
        hf_kw.update(arch_overrides)
        model = _construct(family, hf_kw)
        load_strict(model, sd, str(weights), name)
        return _finish(model, stride, device)

    if source == "file":
        if weights is None:
            raise ValueError(f"backbone.source=file needs backbone.weights=<path to {checkpoint_name(name)}>")
        sd, where = read_state_dict(weights), str(weights)
    else:  # hub
        sd, where = (read_state_dict(weights), str(weights)) if weights else _hub_state(name, offer_none)
    if family == "dinov3":  # checkpoints with untied CLS norms (ViT-7B, SAT-493M ViT-L) carry extra keys
        kw["untie_cls_and_patch_norms"] = "cls_norm.weight" in sd
        kw["untie_global_and_local_cls_norm"] = "local_cls_norm.weight" in sd
    model = _construct(family, kw)
    load_strict(model, sd, where, name)
    log.info("loaded %s weights from %s", name, where)
    return _finish(model, stride, device)


def backbone_spec(cfg) -> dict:
    """:func:`build_backbone` kwargs (``name``, ``stride``, and ``weights``/``source`` unless ``none``) of a
    ``backbone`` config: what preprocessing builds the cached features with, and what a LoRA tracker saves
    in ``tracker.pt`` to rebuild the same backbone."""
    spec = dict(name=str(cfg.name), stride=int(cfg.stride))
    if spec["name"] != "none":
        weights = cfg.get("weights")
        spec.update(weights=None if weights is None else str(weights), source=str(cfg.get("source") or "auto"))
    return spec


def build_from_spec(spec: dict | None, device="cpu") -> Backbone:
    """The frozen backbone of a :func:`backbone_spec` dict."""
    if not spec or not spec.get("name"):
        raise ValueError("no backbone spec (a LoRA tracker's file names none): pass backbone=<the backbone it was "
                         "fitted on>")
    spec = dict(spec)
    return build_backbone(spec.pop("name"), device=device, **spec)


def _finish(model: Backbone, stride, device) -> Backbone:
    if stride is not None:
        model.set_stride(int(stride))
    return model.eval().requires_grad_(False).to(device)
