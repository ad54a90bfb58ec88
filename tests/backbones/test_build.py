"""build_backbone: official key layouts (meta device), weight sources, strict loading, errors, none."""

from __future__ import annotations

import pytest
import torch

from dinotracker.backbones import (
    BACKBONE_NAMES,
    Backbone,
    NoneBackbone,
    build_backbone,
    checkpoint_name,
    checkpoint_url,
    parse_name,
)
from dinotracker.geometry import patch_grid_size

TINY2 = dict(depth=2, embed_dim=32, num_heads=4, img_size=56)
TINY3 = dict(depth=2, embed_dim=32, num_heads=2)


def _meta_sd(name):
    return {
        k: tuple(v.shape)
        for k, v in build_backbone(name, source="random", device="meta").state_dict().items()
    }


def _count(sd, skip=("bias_mask", "periods")):
    return sum(torch.Size(s).numel() for k, s in sd.items() if not k.endswith(skip))


def test_dinov2_official_keys_and_shapes():
    # keys/shapes of facebookresearch/dinov2 DinoVisionTransformer (block_chunks=0, init_values=1.0)
    sd = _meta_sd("dinov2_vitl14")
    assert (
        sd["pos_embed"] == (1, 1370, 1024)
        and sd["cls_token"] == (1, 1, 1024)
        and sd["mask_token"] == (1, 1024)
    )
    assert sd["patch_embed.proj.weight"] == (1024, 3, 14, 14) and sd["norm.weight"] == (1024,)
    assert sd["blocks.23.attn.qkv.weight"] == (3072, 1024) and sd["blocks.23.attn.qkv.bias"] == (3072,)
    assert sd["blocks.0.mlp.fc1.weight"] == (4096, 1024) and sd["blocks.23.ls2.gamma"] == (1024,)
    assert "register_tokens" not in sd and "blocks.24.norm1.weight" not in sd and len(sd) == 343
    assert abs(_count(sd) / 1e6 - 304.4) < 0.1  # ViT-L/14: 304M parameters
    g = _meta_sd("dinov2_vitg14_reg")
    assert g["register_tokens"] == (1, 4, 1536) and g["pos_embed"] == (1, 1370, 1536)
    assert g["blocks.39.mlp.w12.weight"] == (8192, 1536) and g["blocks.0.mlp.w3.weight"] == (1536, 4096)
    assert "blocks.0.mlp.fc1.weight" not in g and abs(_count(g) / 1e9 - 1.136) < 0.01  # ViT-g/14: 1.1B
    assert _meta_sd("dinov2_vitl14_reg")["register_tokens"] == (1, 4, 1024)


def test_dinov3_official_keys_and_shapes():
    # keys/shapes of facebookresearch/dinov3 DinoVisionTransformer as built by the hub entry points
    sd = _meta_sd("dinov3_vitl16")
    assert sd["storage_tokens"] == (1, 4, 1024) and sd["rope_embed.periods"] == (16,)
    assert sd["cls_token"] == (1, 1, 1024) and sd["mask_token"] == (1, 1024) and "pos_embed" not in sd
    assert sd["patch_embed.proj.weight"] == (1024, 3, 16, 16)
    assert sd["blocks.0.attn.qkv.bias_mask"] == (3072,) and sd["blocks.23.mlp.fc2.weight"] == (1024, 4096)
    assert "local_cls_norm.weight" not in sd and len(sd) == 368
    h = _meta_sd("dinov3_vith16plus")
    assert h["blocks.31.mlp.w1.weight"] == (5120, 1280) and h["blocks.31.mlp.w2.weight"] == (5120, 1280)
    assert h["blocks.31.mlp.w3.weight"] == (1280, 5120) and h["rope_embed.periods"] == (16,)
    s = _meta_sd("dinov3_vitsplus16")  # the brief's spelling is an alias of dinov3_vits16plus
    assert s == _meta_sd("dinov3_vits16plus") and s["blocks.11.mlp.w1.weight"] == (1536, 384)
    b7 = _meta_sd("dinov3_vit7b16")
    assert "local_cls_norm.weight" in b7 and "blocks.0.attn.qkv.bias" not in b7
    assert b7["blocks.0.mlp.w1.weight"] == (8192, 4096) and b7["rope_embed.periods"] == (32,)
    # published parameter counts: S 21M, S+ 29M, B 86M, L 300M, H+ 840M, 7B 6716M
    for name, m in (
        ("dinov3_vits16", 21),
        ("dinov3_vits16plus", 29),
        ("dinov3_vitb16", 86),
        ("dinov3_vitl16", 303),
        ("dinov3_vith16plus", 840),
        ("dinov3_vit7b16", 6716),
    ):
        assert abs(_count(_meta_sd(name)) / 1e6 - m) / m < 0.05, name


def test_names_and_checkpoint_files():
    assert checkpoint_name("dinov2_vitl14") == "dinov2_vitl14_pretrain.pth"
    assert checkpoint_name("dinov2_vitg14_reg") == "dinov2_vitg14_reg4_pretrain.pth"
    assert (
        checkpoint_url("dinov2_vitl14")
        == "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth"
    )
    assert checkpoint_name("dinov3_vitl16") == "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth"
    assert checkpoint_url("dinov3_vith16plus").endswith(
        "dinov3_vith16plus/dinov3_vith16plus_pretrain_lvd1689m-7c1da9a5.pth"
    )
    assert parse_name("dinov3_vithplus16") == ("dinov3", "vith16plus", False)
    assert "none" in BACKBONE_NAMES and "dinov3_vits16plus" in BACKBONE_NAMES
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("resnet50", source="random")
    with pytest.raises(ValueError, match="unknown backbone source"):
        build_backbone("dinov2_vits14", source="web")


def test_stride7_grid_at_paper_resolution():
    assert patch_grid_size((476, 854), 14, 7) == (67, 121)
    big = build_backbone("dinov2_vitl14", source="random", device="meta", stride=7)
    assert (
        big.stride == 7 and big.patch_embed.proj.stride == (7, 7) and big.grid_size((476, 854)) == (67, 121)
    )
    small = build_backbone("dinov2_vits14", source="random", stride=7)  # the real ViT-S/14 architecture
    with torch.no_grad():
        f = small.extract(torch.rand(1, 3, 42, 70), [0])[0]
    assert f.shape == (1, 384, 5, 9) == (1, 384, *patch_grid_size((42, 70), 14, 7))
    tiny = build_backbone("dinov2_vits14", source="random", **TINY2)
    for stride, hw in ((14, (28, 84)), (7, (56, 98)), (2, (28, 42)), (7, (14, 14))):
        tiny.set_stride(stride)
        assert tiny.extract(torch.rand(1, 3, *hw), [-1])[-1].shape[-2:] == patch_grid_size(hw, 14, stride)
    v3 = build_backbone("dinov3_vits16", source="random", stride=8, **TINY3)
    assert v3.extract(torch.rand(1, 3, 48, 80), [0])[0].shape[-2:] == (5, 9)


def test_input_errors():
    m = build_backbone("dinov2_vits14", source="random", **TINY2)
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        m.extract(torch.rand(1, 3, 30, 28), [0])
    with pytest.raises(ValueError, match="facet"):
        m.extract(torch.rand(1, 3, 28, 28), [0], facet="attn")
    with pytest.raises(ValueError, match="out of range"):
        m.extract(torch.rand(1, 3, 28, 28), [2])
    with pytest.raises(ValueError, match="float"):
        m.extract(torch.zeros(1, 3, 28, 28, dtype=torch.uint8), [0])
    with pytest.raises(ValueError, match="stride"):
        m.set_stride(15)
    assert set(m.extract(torch.rand(1, 3, 28, 28), [-2, 1])) == {-2, 1}


@pytest.mark.parametrize("name,tiny", [("dinov2_vits14_reg", TINY2), ("dinov3_vits16plus", TINY3)])
def test_file_round_trip_strict(tmp_path, name, tiny):
    model = build_backbone(name, source="random", seed=3, **tiny)
    img = torch.rand(1, 3, 32, 48) if name.startswith("dinov3") else torch.rand(1, 3, 28, 42)
    ref = model.extract(img, [1], "keys")[1]
    path = tmp_path / "w.pth"
    torch.save({"model": model.state_dict()}, path)  # wrapped like training checkpoints
    for src in ("file", "auto"):
        loaded = build_backbone(name, weights=str(path), source=src, **tiny)
        assert loaded.state_dict().keys() == model.state_dict().keys()
        assert all(
            torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values())
        )
        torch.testing.assert_close(loaded.extract(img, [1], "keys")[1], ref, rtol=0, atol=0)
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    loaded = build_backbone(name, weights=str(tmp_path / "w.safetensors"), **tiny)
    torch.testing.assert_close(loaded.extract(img, [1], "keys")[1], ref, rtol=0, atol=0)


def test_strict_loading_rejects_mismatches(tmp_path):
    v2 = build_backbone("dinov2_vits14", source="random", **TINY2)
    sd = v2.state_dict()
    torch.save(sd, tmp_path / "v2.pth")
    with pytest.raises(ValueError, match="missing.*storage_tokens|unexpected.*pos_embed"):
        build_backbone("dinov3_vits16", weights=str(tmp_path / "v2.pth"), **TINY3)
    with pytest.raises(ValueError, match="shape mismatches"):
        build_backbone("dinov2_vits14", weights=str(tmp_path / "v2.pth"), **{**TINY2, "img_size": 70})
    del sd["blocks.1.ls1.gamma"]
    torch.save(sd, tmp_path / "cut.pth")
    with pytest.raises(ValueError, match=r"1 missing \['blocks.1.ls1.gamma'\]"):
        build_backbone("dinov2_vits14", weights=str(tmp_path / "cut.pth"), **TINY2)


def test_hub_cache_and_missing_weights(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    calls = []

    def offline(url, *a, **k):
        calls.append(url)
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(FileNotFoundError) as err:
        build_backbone("dinov2_vitb14", source="auto")
    msg = str(err.value)
    assert (
        "dinov2_vitb14_pretrain.pth" in msg and str(hub / "checkpoints") in msg and "backbone.weights=" in msg
    )
    assert "download failed" in msg and calls == [checkpoint_url("dinov2_vitb14")]
    with pytest.raises(FileNotFoundError, match="gated.*original file name"):
        build_backbone("dinov3_vitl16", source="hub")
    monkeypatch.setenv("DINOTRACKER_OFFLINE", "1")
    calls.clear()
    with pytest.raises(FileNotFoundError, match="dinov3_vits16_pretrain_lvd1689m-08c60483.pth"):
        build_backbone("dinov3_vits16", source="hub")
    assert calls == []  # offline: no download attempt
    with pytest.raises(FileNotFoundError, match="not found"):
        build_backbone("dinov2_vitb14", weights=str(tmp_path / "nope.pth"), source="file")
    # a checkpoint in the hub cache under its official name is found (DINOv3: any LVD-1689M hash)
    (hub / "checkpoints").mkdir(parents=True)
    m2 = build_backbone("dinov2_vits14", source="random", **TINY2)
    torch.save(m2.state_dict(), hub / "checkpoints" / "dinov2_vits14_pretrain.pth")
    got = build_backbone("dinov2_vits14", source="hub", **TINY2)
    assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), m2.state_dict().values()))
    m3 = build_backbone("dinov3_vits16", source="random", **TINY3)
    torch.save(m3.state_dict(), hub / "checkpoints" / "dinov3_vits16_pretrain_lvd1689m-12345678.pth")
    got = build_backbone("dinov3_vits16", **TINY3)
    assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), m3.state_dict().values()))


def test_dinov3_untied_norm_checkpoints_and_missing_buffers(tmp_path):
    """SAT-493M / 7B checkpoints carry local_cls_norm; converted files may lack the derivable buffers."""
    m = build_backbone("dinov3_vits16", source="random", untie_global_and_local_cls_norm=True, **TINY3)
    sd = {
        k: v for k, v in m.state_dict().items() if not k.endswith("bias_mask") and k != "rope_embed.periods"
    }
    torch.save(sd, tmp_path / "sat.pth")
    got = build_backbone("dinov3_vits16", weights=str(tmp_path / "sat.pth"), **TINY3)
    assert "local_cls_norm.weight" in got.state_dict()
    img = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(got.extract(img, [1])[1], m.extract(img, [1])[1], rtol=0, atol=0)


def test_none_backbone():
    nb = build_backbone("none", stride=7, dim=48)
    assert isinstance(nb, NoneBackbone) and isinstance(nb, Backbone)
    assert (nb.patch_size, nb.stride, nb.embed_dim, nb.num_prefix_tokens) == (14, 7, 48, 0)
    out = nb.extract(torch.rand(2, 3, 56, 98), [15, -1], facet="values")
    assert set(out) == {15, -1} and out[15].shape == (2, 48, 7, 13) and not out[-1].any()
    assert nb.grid_size((476, 854)) == (67, 121)
    assert build_backbone("none", source="none", patch_size=16, embed_dim=8).extract(
        torch.rand(1, 3, 32, 48), [0]
    )[0].shape == (1, 8, 2, 3)
    with pytest.raises(ValueError, match="no weights"):
        build_backbone("none", weights="x.pth")
    with pytest.raises(ValueError, match="multiple"):
        nb.extract(torch.rand(1, 3, 30, 28), [0])


def test_random_init_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a = build_backbone("dinov3_vits16", source="random", **TINY3)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = build_backbone("dinov3_vits16", source="random", **TINY3)
    c = build_backbone("dinov3_vits16", source="random", seed=1, **TINY3)
    assert torch.equal(a.cls_token, b.cls_token) and not torch.equal(a.cls_token, c.cls_token)
    assert not a.training and not any(p.requires_grad for p in a.parameters())
