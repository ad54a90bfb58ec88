"""DinoTrackerModule: initial state, one step, loss schedule, LR schedule, export, exact resume."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from dinotracker.config import module_options
from dinotracker.models.checkpoint import load_exported
from dinotracker.training.callbacks import LossCurvePlot, TrackVisualization
from dinotracker.training.datamodule import CorrespondenceDataModule, toy_preprocessed_video
from dinotracker.training.module import DinoTrackerModule
from dinotracker.training.sampler import CorrespondenceSampler

SMALL = dict(flow_pairs=48, bb_pairs=32, cycle_pairs=32, bb_frame_pairs=2, cycle_frame_pairs=2)


@pytest.fixture(scope="module")
def video():
    return toy_preprocessed_video(num_frames=6, height=64, width=96, feature_dim=16, patch=8, stride=4,
                                  seed=0)


def _module(video, **loss):
    cfg = {"refined_bb": {"start": 2}, "cycle": {"start": 2}}
    for k, v in loss.items():
        cfg.setdefault(k, {}).update(v)
    # a slim Delta-DINO keeps the CPU steps fast; the layer structure is the reference's
    return DinoTrackerModule(video, **module_options(model={"radius": 12.0, "delta_channels": (8, 16, 32)},
                                                     loss=cfg, optim={"decay_every": 2}))


def _trainer(tmp_path, steps, callbacks=(), logger=False):
    return L.Trainer(accelerator="cpu", devices=1, max_steps=steps, max_epochs=-1, logger=logger,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     limit_val_batches=0, default_root_dir=str(tmp_path), callbacks=list(callbacks),
                     enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks))


def test_refined_features_equal_frozen_at_init(video):
    m = _module(video)
    slots = torch.tensor([0, 2, 5])
    f = m.refine(slots)
    assert f.dtype == torch.float32
    assert torch.equal(f, video.features[slots].float())


def test_one_step_updates_parameters_and_is_finite(video):
    torch.manual_seed(0)
    m = _module(video)
    opt = m.configure_optimizers()["optimizer"]
    batch = CorrespondenceSampler(video, seed=0, **SMALL).sample(0)
    before = {k: v.detach().clone() for k, v in m.tracker.named_parameters()}
    total, terms = m.compute_losses(batch, step=0)
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in terms.values())
    total.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in m.tracker.parameters())
    opt.step()
    changed = {k for k, v in m.tracker.named_parameters() if not torch.equal(v, before[k])}
    assert any(k.startswith("delta_dino.") for k in changed)
    assert any(k.startswith("refiner.") for k in changed)
    assert all(torch.isfinite(v).all() for v in m.tracker.parameters())
    # Delta-DINO is no longer zero: refined != raw
    assert not torch.equal(m.refine(torch.tensor([0])), video.features[:1].float())


def test_losses_start_at_their_start_steps(video):
    m = _module(video, refined_bb={"start": 3}, cycle={"start": 5}, dino_bb={"start": 1})
    batch = CorrespondenceSampler(video, seed=1, **SMALL).sample(0)
    keys = {s: set(m.compute_losses(batch, step=s)[1]) for s in (0, 1, 3, 5)}
    assert {"flow", "prior_norm", "prior_angle"} <= keys[0] and "dino_bb" not in keys[0]
    assert "dino_bb" in keys[1] and "refined_bb" not in keys[1] and "cycle" not in keys[1]
    assert "refined_bb" in keys[3] and "cycle" not in keys[3]
    assert "refined_bb" in keys[5] and "cycle" in keys[5]
    # a zero weight switches a term off entirely
    m0 = _module(video, flow={"weight": 0.0})
    assert "flow" not in m0.compute_losses(batch, step=0)[1]


def test_default_weights_match_spec(video):
    m = DinoTrackerModule(video, **module_options())
    lc, oc = m.loss_cfg, m.optim_cfg
    weights = tuple(lc[k]["weight"] for k in ("flow", "dino_bb", "refined_bb", "cycle"))
    assert weights == (1.0, 2.5e-4, 5e-5, 0.5)
    assert (lc["refined_bb"]["start"], lc["cycle"]["start"]) == (5000, 5000)
    assert (lc["prior"]["norm_weight"], lc["prior"]["angle_weight"]) == (1e-4, 1e-4)
    assert (oc["lr_delta"], oc["lr_refiner"], oc["gamma"], oc["decay_every"]) == (0.01, 0.01, 0.999, 40)
    with pytest.raises(ValueError, match="unknown option loss.cycle.foo"):
        module_options(loss={"cycle": {"foo": 1}})
    with pytest.raises(ValueError, match="pseudo_labels"):
        module_options(loss={"cycle": {"pseudo_labels": "bad"}})
    bad = module_options()
    bad["loss"]["cycle"]["pseudo_labels"] = "bad"  # the module checks the sections it is handed, too
    with pytest.raises(ValueError, match=r"loss\.cycle\.pseudo_labels='bad': must be one of ema, lagged, same"):
        DinoTrackerModule(video, **bad)
    bad["loss"]["cycle"]["pseudo_labels"] = "ema"
    del bad["loss"]["cycle"]["reduction"]
    with pytest.raises(ValueError, match="missing option loss.cycle.reduction"):
        DinoTrackerModule(video, **bad)


def test_lr_schedule(video):
    for decay_refiner in (False, True):
        m = DinoTrackerModule(video, **module_options(optim={"decay_every": 3, "gamma": 0.5,
                                                             "decay_refiner": decay_refiner}))
        cfg = m.configure_optimizers()
        opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
        lrs = []
        for _ in range(7):
            lrs.append([g["lr"] for g in opt.param_groups])
            opt.step()
            sched.step()
        assert [lr[0] for lr in lrs] == pytest.approx([0.01 * 0.5 ** (i // 3) for i in range(7)])
        want = [0.01 * 0.5 ** (i // 3) if decay_refiner else 0.01 for i in range(7)]
        assert [lr[1] for lr in lrs] == pytest.approx(want)


def test_cycle_forward_term_zero_with_same_labels_nonzero_with_ema(video):
    torch.manual_seed(0)
    batch = CorrespondenceSampler(video, seed=3, **SMALL).sample(0)
    for mode in ("same", "ema"):
        m = _module(video, cycle={"pseudo_labels": mode, "threshold": 1e6, "start": 0})
        opt = m.configure_optimizers()["optimizer"]
        for step in range(3):  # the teacher lags the student after a few updates
            m.update_teacher(step)
            total, terms = m.compute_losses(batch, step=step)
            opt.zero_grad()
            total.backward()
            opt.step()
        if mode == "same":
            assert m.teacher is None and float(terms["cycle_fwd"]) == 0.0
        else:
            assert m.teacher is not None and float(terms["cycle_fwd"]) > 0.0


def test_export_roundtrip(video, tmp_path):
    m = _module(video)
    path = m.export(tmp_path / "sub" / "tracker.pt")
    d = torch.load(path, weights_only=True)
    assert set(d) == {"model_kwargs", "state_dict", "ema_state_dict", "backbone"} and d["ema_state_dict"] is not None
    assert d["model_kwargs"]["feature_dim"] == 16 and tuple(d["model_kwargs"]["model_hw"]) == (64, 96)
    t = load_exported(path)
    assert all(torch.equal(a, b) for a, b in zip(t.state_dict().values(), m.tracker.state_dict().values()))
    assert not list(tmp_path.glob("sub/*.tmp*"))


def _state(m: DinoTrackerModule, trainer) -> dict:
    out = {f"model.{k}": v.detach().clone() for k, v in m.state_dict().items()}
    opt = trainer.optimizers[0].state_dict()
    for pid, st in opt["state"].items():
        for k, v in st.items():
            out[f"opt.{pid}.{k}"] = torch.as_tensor(v).clone()
    out["lr"] = torch.tensor([g["lr"] for g in trainer.optimizers[0].param_groups])
    return out


def test_resume_equals_uninterrupted_run(video, tmp_path):
    """6 steps straight vs interrupted at step 3 (mid-run ModelCheckpoint) and resumed."""
    loss = {"refined_bb": {"start": 2}, "cycle": {"start": 4}}

    def build():
        torch.manual_seed(123)  # same init for both runs
        m = _module(video, **loss)
        dm = CorrespondenceDataModule(video, seed=9, **SMALL)
        return m, dm

    ckpt = ModelCheckpoint(dirpath=tmp_path / "a", every_n_train_steps=3, save_top_k=-1, filename="s{step}")
    m_a, dm_a = build()
    tr_a = _trainer(tmp_path / "a", 6, [ckpt])
    tr_a.fit(m_a, dm_a)
    assert tr_a.global_step == 6
    mid = sorted((tmp_path / "a").glob("s*step=3*.ckpt")) or sorted((tmp_path / "a").glob("*3*.ckpt"))
    assert mid, list((tmp_path / "a").iterdir())

    m_b, dm_b = build()
    torch.manual_seed(999)  # a different global RNG state must not matter
    tr_b = _trainer(tmp_path / "b", 6)
    tr_b.fit(m_b, dm_b, ckpt_path=str(mid[0]))
    assert tr_b.global_step == 6

    sa, sb = _state(m_a, tr_a), _state(m_b, tr_b)
    assert sa.keys() == sb.keys()
    diff = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not diff, diff[:10]
    assert any(k.startswith("model.teacher.") for k in sa)  # the EMA teacher is part of the state
    # and the run did train
    m0, _ = build()
    assert not torch.equal(m0.tracker.delta_dino.layers[-2].weight, m_a.tracker.delta_dino.layers[-2].weight)


def test_callbacks_write_pngs(video, tmp_path):
    viz = TrackVisualization(every_n_steps=2, num_points=9, num_frames=4)
    curves = LossCurvePlot(every_n_steps=1)
    m = _module(video)
    tr = _trainer(tmp_path, 2, [viz, curves])
    tr.fit(m, CorrespondenceDataModule(video, seed=0, **SMALL))
    assert viz.written and viz.written[0].is_file() and viz.written[0].stat().st_size > 0
    assert curves.path is not None and curves.path.is_file()
    assert [s for s, _ in curves.history["loss"]] == [0, 1]


def test_gather_points_matches_grid_sample_sampling():
    from dinotracker.models.tracker import gather_points, point_rows, sample_points

    g = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 5, 7, 9, generator=g, dtype=torch.float64, requires_grad=True)
    patch, stride = 8, 4
    # inside, on patch centres, on the last centre, and outside the centre hull (border padding)
    xy = torch.rand(40, 2, generator=g, dtype=torch.float64) * torch.tensor([44.0, 36.0]) - 2.0
    special = torch.tensor([[4.0, 4.0], [36.0, 28.0], [0.0, 0.0], [50.0, 50.0]], dtype=torch.float64)
    xy = torch.cat([xy, special])
    fi = torch.randint(0, 3, (len(xy),), generator=g)
    ref = sample_points(maps, fi, xy, patch, stride)
    got = gather_points(point_rows(maps), (7, 9), fi, xy, patch, stride)
    assert torch.allclose(got, ref, atol=1e-5)
    w = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), maps)
    (g_got,) = torch.autograd.grad((got * w).sum(), maps)
    assert torch.allclose(g_got, g_ref, atol=1e-5)
