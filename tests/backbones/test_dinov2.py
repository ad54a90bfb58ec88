"""DINOv2 backbone: official key layout, stride change, facet taps equal the model's own forward."""

from __future__ import annotations

import pytest
import torch

from dinotracker.backbones import build_backbone, checkpoint_name
from dinotracker.geometry import patch_grid_size
from dinotracker.preprocessing.features import extract_video_features
from dinotracker.preprocessing.saliency import saliency_masks

TINY = dict(depth=3, embed_dim=32, num_heads=4, img_size=56)


def _tiny(name="dinov2_vits14", **kw):
    return build_backbone(name, source="random", **{**TINY, **kw})


def test_official_keys_and_shapes():
    with torch.device("meta"):
        m = build_backbone("dinov2_vitl14", source="random", device="meta")
        sd = m.state_dict()
        assert sd["pos_embed"].shape == (1, 1370, 1024)
        assert sd["patch_embed.proj.weight"].shape == (1024, 3, 14, 14)
        assert sd["blocks.23.attn.qkv.weight"].shape == (3072, 1024) and "blocks.23.ls2.gamma" in sd
        assert sd["blocks.0.mlp.fc1.weight"].shape == (4096, 1024) and "mask_token" in sd and "norm.weight" in sd
        g = build_backbone("dinov2_vitg14_reg", source="random", device="meta").state_dict()
        assert g["register_tokens"].shape == (1, 4, 1536) and g["blocks.39.mlp.w12.weight"].shape == (8192, 1536)
        assert g["blocks.0.mlp.w3.weight"].shape == (1536, 4096)
    assert checkpoint_name("dinov2_vitl14_reg") == "dinov2_vitl14_reg4_pretrain.pth"
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("resnet50", source="random")


def _hooked_block_outputs(model, images):
    """Independent reference: the plain forward with forward hooks on every block and on attn.qkv."""
    outs, qkvs = {}, {}
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: outs.__setitem__(k, o)) for k, b in enumerate(model.blocks)]
    hooks += [b.attn.qkv.register_forward_hook(lambda m, i, o, k=k: qkvs.__setitem__(k, o))
              for k, b in enumerate(model.blocks)]
    model(images)
    for h in hooks:
        h.remove()
    return outs, qkvs


@pytest.mark.parametrize("name", ["dinov2_vits14", "dinov2_vits14_reg"])
def test_facets_equal_intermediate_outputs(name):
    model = _tiny(name)
    model.set_stride(7)
    img = torch.rand(2, 3, 42, 56)
    gh, gw = patch_grid_size((42, 56), 14, 7)
    outs, qkvs = _hooked_block_outputs(model, img)
    p = model.num_prefix_tokens
    for facet, sl in (("tokens", None), ("queries", 0), ("keys", 1), ("values", 2)):
        got = model.extract(img, [1, -1], facet)
        for layer, idx in ((1, 1), (-1, 2)):
            ref = outs[idx] if sl is None else qkvs[idx].reshape(2, -1, 3, 32)[:, :, sl]
            ref = ref[:, p:].transpose(1, 2).reshape(2, -1, gh, gw)
            assert got[layer].shape == (2, 32, gh, gw)
            assert torch.allclose(got[layer], ref, atol=1e-5), (facet, layer)


def test_only_needed_blocks_run():
    model = _tiny()
    calls = []
    for k, b in enumerate(model.blocks):
        b.register_forward_hook(lambda m, i, o, k=k: calls.append(k))
    model.extract(torch.rand(1, 3, 28, 28), [0])
    assert calls == [0]


def test_stride7_grid_and_pos_interpolation():
    assert patch_grid_size((476, 854), 14, 7) == (67, 121)
    model = _tiny()
    # native stride and size: position embeddings are used unchanged
    assert torch.equal(model.interpolate_pos_encoding(4, 4), model.pos_embed)
    model.set_stride(7)
    for hw in ((42, 56), (56, 98)):
        feats = model.extract(torch.rand(1, 3, *hw), [0])[0]
        assert feats.shape[-2:] == patch_grid_size(hw, 14, 7)
    with pytest.raises(ValueError, match="multiple"):
        _tiny().extract(torch.rand(1, 3, 30, 28), [0])


def test_file_round_trip_and_missing_weights(tmp_path, monkeypatch):
    model = _tiny()
    path = tmp_path / "w.pth"
    torch.save(model.state_dict(), path)
    # a full-size file does not fit the tiny architecture: strict loading is checked on vits14 shapes
    big = build_backbone("dinov2_vits14", source="random")
    torch.save(big.state_dict(), tmp_path / "s.pth")
    loaded = build_backbone("dinov2_vits14", weights=str(tmp_path / "s.pth"), source="file")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), big.state_dict().values()))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(FileNotFoundError, match="dinov2_vitb14_pretrain.pth"):
        build_backbone("dinov2_vitb14", source="auto")
    with pytest.raises(FileNotFoundError, match="not found"):
        build_backbone("dinov2_vitb14", weights=str(tmp_path / "nope.pth"), source="file")


def test_video_features_batched():
    model = _tiny()
    model.set_stride(7)
    frames = torch.randint(0, 255, (5, 3, 28, 42), dtype=torch.uint8)
    f = extract_video_features(model, frames, layer=2, batch_size=2, progress=False)
    ref = model.extract(frames.float() / 255.0, [2])[2]
    assert f.dtype == torch.float16 and f.shape == ref.shape
    assert torch.allclose(f.float(), ref, atol=1e-2)


def test_saliency_sign_anchored():
    t, c, h, w = 3, 8, 9, 12
    g = torch.Generator().manual_seed(0)
    fg_vec, bg_vec = torch.randn(c, generator=g), torch.randn(c, generator=g)
    feats = bg_vec.view(1, c, 1, 1).repeat(t, 1, h, w) + 0.05 * torch.randn(t, c, h, w, generator=g)
    feats[:, :, 3:6, 4:8] = fg_vec.view(1, c, 1, 1) + 0.05 * torch.randn(t, c, 3, 4, generator=g)
    for sign in (1.0, -1.0):  # whichever way PCA orients component 0, the centre blob is foreground
        m = saliency_masks(sign * feats, (h * 4, w * 4), patch=4, stride=4)
        assert m.shape == (t, h * 4, w * 4)
        assert m[:, 14, 22].all() and not m[:, 0, 0].any() and not m[:, -1, -1].any()
