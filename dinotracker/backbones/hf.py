"""Hugging Face DINOv2 / DINOv2-with-registers / DINOv3-ViT folders -> our modules (needs ``transformers``).

The HF model is loaded with ``AutoModel.from_pretrained(folder, local_files_only=True)`` and its weights are
converted to the official layout (q/k/v projections fused into ``qkv``, ``lambda1`` -> ``gamma``, ...), so the
same :meth:`extract` API, stride override and facets work. Consequence: DINOv2 position embeddings are
resized the way the official code and the DINO-Tracker reference do (``+0.1`` scale-factor kludge), not with
HF's plain ``size=`` resize, so features at non-native sizes match the torch-hub model, not HF's output.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from dinotracker.backbones.dinov3 import RopeEmbedding

HF_TYPES = {"dinov2": "dinov2", "dinov2_with_registers": "dinov2", "dinov3_vit": "dinov3"}


def is_hf_folder(path) -> bool:
    return path is not None and Path(path).is_dir() and (Path(path) / "config.json").is_file()


def hf_family(folder) -> str:
    """'dinov2' or 'dinov3' from ``config.json``'s ``model_type``."""
    cfg = json.loads((Path(folder) / "config.json").read_text())
    mt = cfg.get("model_type")
    if mt not in HF_TYPES:
        raise ValueError(f"{folder}/config.json has model_type {mt!r}; supported: {sorted(HF_TYPES)}")
    return HF_TYPES[mt]


def load_hf(folder) -> tuple[str, dict, dict]:
    """Folder -> (family, constructor kwargs for DinoV2/DinoV3, state dict in the official layout)."""
    try:
        import transformers
    except ImportError as err:
        raise ImportError(
            "backbone.source=hf needs the optional dependency transformers: "
            "pip install 'dinotracker[hf]' (or pip install 'transformers>=4.56')"
        ) from err
    folder = Path(folder)
    family = hf_family(folder)
    model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True)
    cfg, sd = model.config, {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    del model
    if family == "dinov2":
        return family, _dinov2_kwargs(cfg, sd), _convert(sd, family, cfg)
    return family, _dinov3_kwargs(cfg), _convert(sd, family, cfg)


def _check_act(cfg, expected: str) -> None:
    act = getattr(cfg, "hidden_act", expected)
    if act != expected:
        raise ValueError(
            f"Hugging Face config has hidden_act={act!r}; the official architecture (and ours) "
            f"uses {expected!r} here"
        )


def _dinov2_kwargs(cfg, sd) -> dict:
    if not getattr(cfg, "use_swiglu_ffn", False):  # HF's DINOv2 SwiGLU hard-codes SiLU
        _check_act(cfg, "gelu")
    n = sd["embeddings.position_embeddings"].shape[1] - 1
    side = int(round(n**0.5))
    return dict(
        embed_dim=cfg.hidden_size,
        depth=cfg.num_hidden_layers,
        num_heads=cfg.num_attention_heads,
        ffn="swiglufused" if getattr(cfg, "use_swiglu_ffn", False) else "mlp",
        mlp_ratio=float(getattr(cfg, "mlp_ratio", 4)),
        patch_size=int(cfg.patch_size),
        num_register_tokens=int(getattr(cfg, "num_register_tokens", 0) or 0),
        img_size=side * int(cfg.patch_size),
        eps=float(cfg.layer_norm_eps),
    )


def _dinov3_kwargs(cfg) -> dict:
    gated = bool(getattr(cfg, "use_gated_mlp", getattr(cfg, "use_swiglu_ffn", False)))
    _check_act(cfg, "silu" if gated else "gelu")
    qb, kb, vb = (bool(getattr(cfg, f"{n}_bias", True)) for n in ("query", "key", "value"))
    return dict(
        embed_dim=cfg.hidden_size,
        depth=cfg.num_hidden_layers,
        num_heads=cfg.num_attention_heads,
        ffn="swiglu" if gated else "mlp",
        ffn_ratio=cfg.intermediate_size / cfg.hidden_size,
        swiglu_hidden=int(cfg.intermediate_size) if gated else None,
        patch_size=int(cfg.patch_size),
        n_storage_tokens=int(getattr(cfg, "num_register_tokens", 0) or 0),
        rope_base=float(cfg.rope_theta),
        qkv_bias=qb or kb or vb,
        mask_k_bias=not kb,
        eps=float(cfg.layer_norm_eps),
    )


_BLOCK = re.compile(r"^(?:encoder\.|model\.)?layer\.(\d+)\.(.+)$")
# HF block-relative module names (current and older transformers) -> official names
_MODULES = {
    "attention.o_proj": "attn.proj",
    "attention.output.dense": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "norm1": "norm1",
    "norm2": "norm2",
}
_PARAMS = {"layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma"}


def _convert(sd: dict, family: str, cfg) -> dict:
    out: dict[str, torch.Tensor] = {}
    blocks: dict[int, dict[str, torch.Tensor]] = {}
    gated = family == "dinov3" and bool(getattr(cfg, "use_gated_mlp", getattr(cfg, "use_swiglu_ffn", False)))
    for key, val in sd.items():
        m = _BLOCK.match(key)
        if m:
            blocks.setdefault(int(m.group(1)), {})[m.group(2)] = val
            continue
        name = {
            "embeddings.cls_token": "cls_token",
            "embeddings.position_embeddings": "pos_embed",
            "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
            "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
            "embeddings.patch_embeddings.weight": "patch_embed.proj.weight",
            "embeddings.patch_embeddings.bias": "patch_embed.proj.bias",
            "layernorm.weight": "norm.weight",
            "layernorm.bias": "norm.bias",
            "norm.weight": "norm.weight",
            "norm.bias": "norm.bias",
        }.get(key)
        if key == "embeddings.mask_token":
            out["mask_token"] = val.reshape(1, -1)
        elif key == "embeddings.register_tokens":
            if val.shape[1]:
                out["register_tokens" if family == "dinov2" else "storage_tokens"] = val
        elif name is not None:
            out[name] = val
        else:
            raise ValueError(f"unexpected Hugging Face weight {key!r}: cannot convert this checkpoint")
    for i, b in sorted(blocks.items()):
        p = f"blocks.{i}."
        q, k, v = (
            _pick(b, f"attention.{a}_proj", f"attention.attention.{n}")
            for a, n in (("q", "query"), ("k", "key"), ("v", "value"))
        )
        out[p + "attn.qkv.weight"] = torch.cat([q["weight"], k["weight"], v["weight"]])
        biases = [t.get("bias") for t in (q, k, v)]
        if any(x is not None for x in biases):
            c = q["weight"].shape[0]
            out[p + "attn.qkv.bias"] = torch.cat([x if x is not None else torch.zeros(c) for x in biases])
            if family == "dinov3" and biases[1] is None:
                out[p + "attn.qkv.bias_mask"] = torch.cat([torch.ones(c), torch.zeros(c), torch.ones(c)])
        for src, dst in _MODULES.items():
            for s in ("weight", "bias"):
                if f"{src}.{s}" in b:
                    out[p + f"{dst}.{s}"] = b[f"{src}.{s}"]
        for src, dst in _PARAMS.items():
            if src in b:
                out[p + dst] = b[src]
        if "mlp.up_proj.weight" in b and not gated and "mlp.gate_proj.weight" not in b:  # DINOv3 plain MLP
            for s in ("weight", "bias"):
                out[p + f"mlp.fc1.{s}"], out[p + f"mlp.fc2.{s}"] = (
                    b[f"mlp.up_proj.{s}"],
                    b[f"mlp.down_proj.{s}"],
                )
        elif "mlp.gate_proj.weight" in b:
            for s in ("weight", "bias"):
                if f"mlp.gate_proj.{s}" not in b:
                    continue
                gate, up, down = b[f"mlp.gate_proj.{s}"], b[f"mlp.up_proj.{s}"], b[f"mlp.down_proj.{s}"]
                if family == "dinov2":  # fused [gate; up]
                    out[p + f"mlp.w12.{s}"] = torch.cat([gate, up])
                else:
                    out[p + f"mlp.w1.{s}"], out[p + f"mlp.w2.{s}"] = gate, up
                out[p + f"mlp.w3.{s}"] = down
        elif "mlp.weights_in.weight" in b:  # older transformers' DINOv2 SwiGLU
            for s in ("weight", "bias"):
                out[p + f"mlp.w12.{s}"], out[p + f"mlp.w3.{s}"] = (
                    b[f"mlp.weights_in.{s}"],
                    b[f"mlp.weights_out.{s}"],
                )
    if family == "dinov3":
        out["rope_embed.periods"] = RopeEmbedding.default_periods(
            cfg.hidden_size // cfg.num_attention_heads, float(cfg.rope_theta)
        )
    return out


def _pick(block: dict, *prefixes: str) -> dict:
    for pre in prefixes:
        if f"{pre}.weight" in block:
            return {s: block[f"{pre}.{s}"] for s in ("weight", "bias") if f"{pre}.{s}" in block}
    raise ValueError(f"Hugging Face block has none of {prefixes}: cannot convert this checkpoint")
