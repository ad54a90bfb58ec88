"""LoRA-tune ablation (paper Tab. 2, App. A.5): PEFT adapters on the backbone's qkv replace Delta-DINO."""

from __future__ import annotations

import copy
import dataclasses
import sys

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

pytest.importorskip("peft")

from dinotracker.backbones import build_backbone  # noqa: E402
from dinotracker.config import module_options  # noqa: E402
from dinotracker.models.checkpoint import load_exported  # noqa: E402
from dinotracker.models.lora import LoRAFeatures, resolve_lora_blocks  # noqa: E402
from dinotracker.models.tracker import DinoTracker  # noqa: E402
from dinotracker.preprocessing.features import extract_video_features  # noqa: E402
from dinotracker.training.datamodule import CorrespondenceDataModule, toy_preprocessed_video  # noqa: E402
from dinotracker.training.module import DinoTrackerModule  # noqa: E402

TINY = dict(depth=4, embed_dim=32, num_heads=4, img_size=56)
SPEC = dict(name="dinov2_vits14", source="random", stride=7, **TINY)
LAYER = 2
SMALL = dict(flow_pairs=32, bb_pairs=16, cycle_pairs=16, bb_frame_pairs=2, cycle_frame_pairs=2)


def _backbone(seed: int = 0):
    spec = dict(SPEC)
    return build_backbone(spec.pop("name"), seed=seed, **spec)


def _images(n=2, seed=0):
    return torch.rand(n, 3, 56, 70, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def video():
    v = toy_preprocessed_video(num_frames=4, height=56, width=84, feature_dim=32, patch=14, stride=7, square=20,
                               num_tracks=60, bb_per_pair=10, seed=0)
    feats = extract_video_features(_backbone(), v.frames, layer=LAYER, progress=False)
    return dataclasses.replace(v, features=feats)


def test_default_blocks_are_the_feature_layer_and_the_one_before():
    assert resolve_lora_blocks(None, 15, 24) == [14, 15]  # the paper's layers {15, 16} (1-based) of ViT-L
    assert resolve_lora_blocks(None, -1, 12) == [10, 11]
    assert resolve_lora_blocks([3, -12], 5, 12) == [0, 3]
    with pytest.raises(ValueError, match="outside 0..5"):
        resolve_lora_blocks([6], 5, 12)


def test_features_start_equal_to_the_frozen_backbone():
    x = _images()
    ref = _backbone().extract(x, [LAYER])[LAYER]
    lora = LoRAFeatures(_backbone(), layer=LAYER).eval()
    assert lora.blocks == [LAYER - 1, LAYER]
    assert torch.equal(lora(x), ref)  # PEFT's B = 0: an exact zero update


@pytest.mark.parametrize("name", ["dinov2_vits14", "dinov3_vits16"])
@pytest.mark.parametrize("facet", ["tokens", "values"])
def test_features_equal_a_backbone_with_merged_low_rank_weights(name, facet):
    """Independent reference: W' = W + (alpha / r) B A on the adapted qkv, plain forward (eval: no dropout).
    DINOv3 adds RoPE and a masked key bias on the same qkv linear."""
    torch.manual_seed(0)
    tiny = TINY if name.startswith("dinov2") else dict(depth=4, embed_dim=32, num_heads=2)
    make = lambda: build_backbone(name, source="random", stride=8 if name.startswith("dinov3") else 7, **tiny)  # noqa: E731
    lora = LoRAFeatures(make(), layer=LAYER, facet=facet, blocks=[0, 2], rank=4, alpha=2.0).eval()
    for p in lora.parameters():
        p.data.normal_(0, 0.3)
    merged = make()
    with torch.no_grad():
        for b in (0, 2):
            key = f"blocks_{b}_attn_qkv"
            a, bb = lora.lora_A[key].weight, lora.lora_B[key].weight  # [r, C], [3C, r]
            merged.blocks[b].attn.qkv.weight += (2.0 / 4) * bb @ a
    x = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(0)) if name.startswith("dinov3") else _images()
    ours, ref = lora(x), merged.extract(x, [LAYER], facet)[LAYER]
    assert not torch.allclose(ref, make().extract(x, [LAYER], facet)[LAYER], atol=1e-3)  # the update matters
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert lora.scaling == 0.5


def test_only_adapters_train_and_the_frozen_backbone_is_not_saved():
    lora = LoRAFeatures(_backbone(), layer=LAYER, rank=8).train()
    names = sorted(n for n, _ in lora.named_parameters())
    assert names == sorted(f"lora_{ab}.blocks_{b}_attn_qkv.weight" for ab in "AB" for b in (1, 2))
    assert sum(p.numel() for p in lora.parameters()) == 2 * (32 * 8 + 8 * 96)
    assert set(lora.state_dict()) == set(names)
    for p in lora.lora_B.parameters():
        p.data.normal_(0, 0.1)
    lora(_images()).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora.parameters())
    assert all(p.grad is None and not p.requires_grad for p in lora.backbone.parameters()
               if not any(p is q for q in lora.parameters()))


def test_dropout_is_active_in_train_mode_only():
    lora = LoRAFeatures(_backbone(), layer=LAYER, dropout=0.5)
    for p in lora.lora_B.parameters():
        p.data.normal_(0, 0.5)
    x = _images(1)
    lora.eval()
    assert torch.equal(lora(x), lora(x))
    lora.train()
    torch.manual_seed(0)
    a = lora(x)
    assert not torch.equal(a, lora(x))


def test_deepcopy_shares_the_frozen_backbone_but_not_the_adapters():
    t = DinoTracker(feature_dim=32, patch=14, stride=7, model_hw=(56, 70), use_delta=False,
                    lora=dict(layer=LAYER, facet="tokens"))
    t.attach_backbone(_backbone())
    teacher = copy.deepcopy(t)
    w_s = t.lora.backbone.blocks[0].attn.qkv.weight
    w_t = teacher.lora.backbone.blocks[0].attn.qkv.weight
    assert w_s is w_t
    assert teacher.lora.lora_B["blocks_2_attn_qkv"].weight is not t.lora.lora_B["blocks_2_attn_qkv"].weight
    with torch.no_grad():
        teacher.lora.lora_B["blocks_2_attn_qkv"].weight.normal_()
    x = _images(1)
    t.eval(), teacher.eval()
    assert not torch.allclose(t.lora(x), teacher.lora(x))  # the teacher's backbone uses the teacher's adapters
    assert torch.equal(t.lora(x), _backbone().extract(x, [LAYER])[LAYER])


def test_clear_errors():
    none = build_backbone("none", dim=32)
    with pytest.raises(ValueError, match="ViT backbone"):
        LoRAFeatures(none, layer=0)
    with pytest.raises(ValueError, match="outside"):
        LoRAFeatures(_backbone(), layer=1, blocks=[3])
    with pytest.raises(ValueError, match="not linear layers"):
        LoRAFeatures(_backbone(), layer=1, targets=["nope"])
    t = DinoTracker(feature_dim=32, patch=14, stride=7, model_hw=(56, 70), use_delta=False, lora=dict(layer=1))
    with pytest.raises(RuntimeError, match="attach_backbone"):
        t.refine(_images(1), torch.zeros(1, 32, 7, 9))
    with pytest.raises(ValueError, match="width"):
        DinoTracker(feature_dim=64, patch=14, stride=7, model_hw=(56, 70), lora=dict(layer=1)).attach_backbone(
            _backbone())


def test_missing_peft_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match=r"dinotracker\[lora\]"):
        LoRAFeatures(_backbone(), layer=1)


def _module(video, backbone=None, seed=0):
    model = {"radius": 12.0, "use_delta": False, "lora": {"enabled": True, "layer": LAYER, "facet": "tokens"}}
    opts = module_options(model=model, loss={"refined_bb": {"start": 2}, "cycle": {"start": 2}},
                          optim={"decay_every": 2, "lr_lora": 0.05})
    return DinoTrackerModule(video, **opts,
                             backbone=_backbone() if backbone is None else backbone, backbone_spec=SPEC, seed=seed)


def _trainer(tmp_path, steps, callbacks=()):
    return L.Trainer(accelerator="cpu", devices=1, max_steps=steps, max_epochs=-1, logger=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     limit_val_batches=0, default_root_dir=str(tmp_path), callbacks=list(callbacks),
                     enable_checkpointing=bool(callbacks))


def test_module_trains_adapters_and_exports_them(video, tmp_path):
    m = _module(video)
    assert m.check_lora_features() < 2e-2
    assert torch.allclose(m.refine(torch.tensor([1])), video.features[1:2].float(), atol=2e-2)
    groups = m.configure_optimizers()["optimizer"].param_groups
    assert [g["name"] for g in groups] == ["lora", "refiner"] and groups[0]["lr"] == 0.05
    before = {k: v.clone() for k, v in m.tracker.state_dict().items()}
    _trainer(tmp_path, 3).fit(m, CorrespondenceDataModule(video, seed=0, **SMALL))
    assert m.lora_prefix is not None and m.lora_prefix.shape[0] == 4  # filled at fit start
    after = m.tracker.state_dict()
    assert any(k.startswith("lora.lora_B.") and not torch.equal(before[k], after[k]) for k in after)
    path = m.export(tmp_path / "tracker.pt")
    d = torch.load(path, weights_only=True)
    assert d["backbone"] == SPEC and all(k.startswith(("lora.", "refiner.")) for k in d["state_dict"])
    t = load_exported(path)  # rebuilds the backbone from the spec
    m.tracker.eval()
    x = video.frames[:2]
    torch.testing.assert_close(t.refine(x, video.features[:2]), m.tracker.refine(x, video.features[:2]))


def test_cached_prefix_gives_the_same_features_and_losses(video):
    m = _module(video)
    for p in m.tracker.lora.lora_B.parameters():
        p.data.normal_(0, 3.0)
    m.tracker.eval()  # no dropout: the two paths must agree exactly up to float rounding
    slots = torch.tensor([3, 0, 2])
    plain = m.refine(slots)
    m.cache_lora_prefix(chunk=3)
    assert m.lora_prefix.shape == (4, 1 + 7 * 11, 32) and "lora_prefix" not in m.state_dict()
    cached = m.refine(slots)
    torch.testing.assert_close(cached, plain, atol=1e-5, rtol=1e-5)
    assert (plain - video.features[slots].float()).abs().max() > 1e-2  # the adapters do act (fp16 rounding ~5e-4)
    cached.sum().backward()  # gradients reach the adapters through the cached path
    assert all(p.grad is not None for p in m.tracker.lora.lora_B.parameters())


def test_a_different_backbone_than_the_cache_is_refused(video):
    m = _module(video, backbone=_backbone(seed=1))
    with pytest.raises(ValueError, match="not the one that made the preprocessing cache"):
        m.check_lora_features()


def test_resume_equals_uninterrupted_run_with_dropout(video, tmp_path):
    def build():
        torch.manual_seed(5)
        return _module(video, seed=3), CorrespondenceDataModule(video, seed=9, **SMALL)

    ckpt = ModelCheckpoint(dirpath=tmp_path / "a", every_n_train_steps=2, save_top_k=-1, filename="s{step}")
    m_a, dm_a = build()
    _trainer(tmp_path / "a", 4, [ckpt]).fit(m_a, dm_a)
    mid = sorted((tmp_path / "a").glob("*step=2*.ckpt"))
    assert mid
    m_b, dm_b = build()
    torch.manual_seed(999)  # the global RNG state at resume must not matter
    _trainer(tmp_path / "b", 4).fit(m_b, dm_b, ckpt_path=str(mid[0]))
    sa, sb = m_a.state_dict(), m_b.state_dict()
    assert sa.keys() == sb.keys() and any(k.startswith("teacher.lora.") for k in sa)
    assert [k for k in sa if not torch.equal(sa[k], sb[k])] == []
