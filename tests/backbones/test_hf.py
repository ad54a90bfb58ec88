"""Hugging Face folders (tiny random configs): converted weights reproduce HF's per-layer hidden states."""

from __future__ import annotations

import pytest
import torch

from dinotracker.backbones import build_backbone

transformers = pytest.importorskip("transformers")

MEAN = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
STD = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)


def _cases():
    small = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4)
    return [
        ("dinov2_vits14", "Dinov2Model", "Dinov2Config", dict(small, image_size=56, patch_size=14)),
        (
            "dinov2_vitg14",
            "Dinov2Model",
            "Dinov2Config",
            dict(small, image_size=56, patch_size=14, use_swiglu_ffn=True),
        ),
        (
            "dinov2_vits14_reg",
            "Dinov2WithRegistersModel",
            "Dinov2WithRegistersConfig",
            dict(small, image_size=56, patch_size=14, num_register_tokens=4),
        ),
        (
            "dinov3_vits16",
            "DINOv3ViTModel",
            "DINOv3ViTConfig",
            dict(
                small,
                num_attention_heads=2,
                intermediate_size=128,
                image_size=64,
                patch_size=16,
                num_register_tokens=4,
                layerscale_value=0.5,
            ),
        ),
        (
            "dinov3_vits16plus",
            "DINOv3ViTModel",
            "DINOv3ViTConfig",
            dict(
                small,
                num_attention_heads=2,
                intermediate_size=96,
                image_size=64,
                patch_size=16,
                num_register_tokens=4,
                use_gated_mlp=True,
                hidden_act="silu",
            ),
        ),
    ]


def _save_tiny(tmp_path, model_cls, cfg_cls, cfg_kw):
    if not hasattr(transformers, model_cls):
        pytest.skip(f"transformers {transformers.__version__} has no {model_cls}")
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**cfg_kw)).eval()
    with torch.no_grad():  # perturb every weight so zero-initialised tensors (mask token, biases) matter too
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(str(tmp_path))
    return model


@pytest.mark.parametrize("name,model_cls,cfg_cls,cfg_kw", _cases())
def test_hf_folder_matches_hf_hidden_states(tmp_path, name, model_cls, cfg_cls, cfg_kw):
    hf = _save_tiny(tmp_path, model_cls, cfg_cls, cfg_kw)
    ours = build_backbone(name, weights=str(tmp_path), source="auto")  # a folder with config.json -> hf
    s = cfg_kw["image_size"]
    img = torch.rand(2, 3, s, s, generator=torch.Generator().manual_seed(2))  # native size: no pos. resizing
    with torch.no_grad():
        hidden = hf(pixel_values=(img - MEAN) / STD, output_hidden_states=True).hidden_states  # pre-norm
        got = ours.extract(img, [0, 2, -1])
    p = ours.num_prefix_tokens
    assert p == 1 + cfg_kw.get("num_register_tokens", 0)
    for layer, idx in ((0, 0), (2, 2), (-1, 2)):
        ref = hidden[idx + 1][:, p:].transpose(1, 2).reshape(got[layer].shape)
        torch.testing.assert_close(got[layer], ref, atol=1e-5, rtol=1e-4)
    # the converted model takes the stride override and facets like any other
    ours.set_stride(ours.patch_size // 2)
    q = ours.extract(img, [1], "queries")[1]
    assert q.shape == (2, 32, 2 * (s // ours.patch_size) - 1, 2 * (s // ours.patch_size) - 1)


def test_hf_errors(tmp_path):
    _save_tiny(tmp_path, "Dinov2Model", "Dinov2Config", _cases()[0][3])
    with pytest.raises(ValueError, match="holds a dinov2 model"):
        build_backbone("dinov3_vits16", weights=str(tmp_path), source="hf")
    with pytest.raises(ValueError, match="needs backbone.weights"):
        build_backbone("dinov2_vits14", source="hf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        build_backbone("dinov2_vits14", weights=str(tmp_path / "empty"))
