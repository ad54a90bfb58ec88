"""The training step never synchronises the host with the device, and computes what the list-form step did
(issue 13).

On a GPU every read-back of a device value (``.item()``, ``.tolist()``, ``bool(t)``, ``nonzero``, ``unique``,
boolean-mask indexing, a data-dependent ``repeat_interleave`` / ``bincount``) and every copy of host data to
the device (``torch.tensor(...)`` inside the step) blocks the host until the GPU has finished its queue. On
CPU these are free, so the test cannot time them: it records them. :class:`SyncRecorder` (a
``TorchDispatchMode``) lists the aten ops that synchronise on CUDA, and :func:`record_syncs` also counts the
Python-level read-backs that bypass the dispatcher on CPU (``Tensor.tolist`` / ``numpy`` / ``cpu`` /
``__bool__`` / ``item``). One full Lightning training step (every loss on, refined best buddies and the cycle
loss with EMA-teacher labels, ``self.log``, backward) must record nothing. The main branch before this
change recorded 59 calls per step at 19 call sites: grouped_matmul's ``bincount().tolist()``, soft-argmax's
boolean disc mask, the ``int(map_index.min())`` range checks, the refined-BB ``tolist`` / ``nonzero`` /
subset masks, the cycle loss's ``bool(keep.any())`` and masks, ``torch.isfinite(total)``, host tensors.
With CUDA the same step runs under ``torch.cuda.set_sync_debug_mode("error")``.

The fixed-shape step must equal the old list-form step: :func:`_list_form_losses` is the old
``compute_losses`` (refined pairs listed with ``nonzero`` and subsampled by ``select_region_pairs``, the cycle
loss on the boolean-mask subset of kept points, skipped when none is kept; matmul splits counted on the
device) and is compared, losses and gradients, on batches where the cycle filter keeps some, none or all
points and the refined-BB quota exceeds the buddies; :data:`MAIN_VALUES` are one step's losses and gradient
norms recorded from the main branch's code itself (commit dffbfaf).
"""

from __future__ import annotations

import collections
import contextlib
import copy
import math
import traceback

import lightning as L
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dinotracker.config import module_options
from dinotracker.models.tracker import grouped_matmul, normalized_maps, point_rows, slot_counts
from dinotracker.training import losses as LS
from dinotracker.training.datamodule import CorrespondenceDataModule, toy_preprocessed_video
from dinotracker.training.module import DinoTrackerModule
from dinotracker.training.sampler import (
    Correspondences,
    CorrespondenceSampler,
    RegionPairs,
    select_region_cells,
    select_region_pairs,
)

aten = torch.ops.aten
SMALL = dict(flow_pairs=48, bb_pairs=32, cycle_pairs=32, bb_frame_pairs=2, cycle_frame_pairs=2)
MODEL = {"radius": 12.0, "delta_channels": (8, 16, 32)}

# ops that read a device value back to the host (or, lift_fresh, build a tensor from host data: on a GPU a
# host-to-device copy that waits for the device's queue)
_ALWAYS = (aten._local_scalar_dense, aten.nonzero, aten.argwhere, aten._unique, aten._unique2, aten.unique_dim,
           aten.unique_consecutive, aten.unique_dim_consecutive, aten.masked_select, aten.bincount, aten.lift_fresh,
           aten.equal, aten.is_nonzero, aten.allclose)
_INDEX = (aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_)
_COPY = (aten._to_copy, aten.copy_)
_PY_READBACKS = ("tolist", "item", "__bool__", "numpy", "cpu")


class SyncRecorder(TorchDispatchMode):
    """Records the aten ops that synchronise host and device on CUDA, with the package line that called them."""

    def __init__(self):
        super().__init__()
        self.events: collections.Counter = collections.Counter()

    def hit(self, what: str) -> None:
        ours = [f for f in traceback.extract_stack() if "/dinotracker/" in f.filename]
        at = f"{ours[-1].filename.rsplit('/dinotracker/', 1)[-1]}:{ours[-1].lineno}" if ours else "?"
        self.events[f"{what} at {at}"] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        pkt = func.overloadpacket
        if pkt in _ALWAYS:
            self.hit(str(func))
        elif pkt in _INDEX and any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                                   for i in args[1] if i is not None):
            self.hit(f"{func} with a boolean index")
        elif func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
            self.hit(f"{func} without output_size")
        elif pkt in _COPY:
            devs = {a.device for a in args if isinstance(a, torch.Tensor)}
            out = kwargs.get("device")
            if len(devs | ({torch.device(out)} if out is not None else set())) > 1:
                self.hit(f"{func} across devices")
        return func(*args, **kwargs)


@contextlib.contextmanager
def record_syncs():
    """A :class:`SyncRecorder`, plus counts of the Python read-backs (on CPU ``tolist`` skips the dispatcher)."""
    rec = SyncRecorder()
    saved = {n: getattr(torch.Tensor, n) for n in _PY_READBACKS}

    def counting(name, f):
        def g(self, *a, **k):
            rec.hit(f"Tensor.{name}")
            return f(self, *a, **k)
        return g

    for n, f in saved.items():
        setattr(torch.Tensor, n, counting(n, f))
    try:
        with rec:
            yield rec
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)


@pytest.fixture(scope="module")
def video():
    return toy_preprocessed_video(num_frames=6, height=64, width=96, feature_dim=16, patch=8, stride=4, seed=0)


def _module(video, cls=DinoTrackerModule, model=None, **loss):
    cfg = {"refined_bb": {"start": 0}, "cycle": {"start": 0}}
    for k, v in loss.items():
        cfg.setdefault(k, {}).update(v)
    torch.manual_seed(0)
    return cls(video, **module_options(model={**MODEL, **(model or {})}, loss=cfg, optim={"decay_every": 2}))


class _Recorded(DinoTrackerModule):
    """Records step ``record_step`` from the start of ``training_step`` to the end of backward."""

    record_step = 1

    def __init__(self, *a, sync_debug: bool = False, **k):
        super().__init__(*a, **k)
        self.sync_debug, self.rec, self._ctx = sync_debug, None, None

    def training_step(self, batch, batch_idx):
        if self.global_step == self.record_step:
            self._ctx = record_syncs()
            self.rec = self._ctx.__enter__()
            if self.sync_debug:
                torch.cuda.set_sync_debug_mode("error")
        return super().training_step(batch, batch_idx)

    def on_after_backward(self):
        if self._ctx is not None:
            if self.sync_debug:
                torch.cuda.synchronize()  # raises here if the step queued a sync...
                torch.cuda.set_sync_debug_mode("default")  # ...and this one is the test's own
            self._ctx.__exit__(None, None, None)
            self._ctx = None


def _fit(module, video, tmp_path, steps, accelerator="cpu", **trainer):
    tr = L.Trainer(accelerator=accelerator, devices=1, max_steps=steps, max_epochs=-1, logger=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                   limit_val_batches=0, enable_checkpointing=False, default_root_dir=str(tmp_path), **trainer)
    tr.fit(module, CorrespondenceDataModule(video, seed=0, **SMALL))
    return tr


def test_recorder_sees_host_syncs():
    """The recorder is no blind spot: each kind of read-back the step used to make is recorded."""
    x = torch.arange(6.0)
    calls = [lambda: x.tolist(), lambda: x.sum().item(), lambda: bool(x.any()), lambda: int(x.max()),
             lambda: x.nonzero(), lambda: torch.unique(x), lambda: x[x > 2], lambda: torch.bincount(x.long()),
             lambda: torch.repeat_interleave(x.long()), lambda: torch.tensor([1.0, 2.0]), lambda: x[torch.tensor(1)]]
    for call in calls:
        with record_syncs() as rec:
            call()
        assert rec.events, call
    with record_syncs() as rec:  # while these do not synchronise
        y = torch.where(x > 2, x, 0.0).topk(2).indices
        torch.full((2,), 0.5).gather(0, y.clamp(max=1))
        x.new_full((), 3.0)
        torch.repeat_interleave(x.long(), x.long(), output_size=15)
    assert not rec.events, rec.events


def test_training_step_makes_no_host_sync(video, tmp_path):
    m = _module(video, cls=_Recorded)
    _fit(m, video, tmp_path, 3)
    assert m.rec is not None
    found = dict(m.rec.events)
    assert not found, f"{sum(found.values())} host syncs in one training step: {found}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_step_makes_no_cuda_sync(video, tmp_path):
    """``set_sync_debug_mode("error")`` raises on any synchronising CUDA call of the step (and backward)."""
    m = _module(video, cls=_Recorded, sync_debug=True)
    _fit(m, video, tmp_path, 3, accelerator="gpu")
    assert m.rec is not None and not m.rec.events, dict(m.rec.events)


# ------------------------------------------------------------------ the old list-form step
def _list_form_refined(m, maps, batch):
    """The old ``DinoTrackerModule._refined_pairs``: buddies listed with nonzero, subsampled with
    select_region_pairs (data-dependent sizes)."""
    rp = batch.refined_bb
    found = []
    with torch.no_grad():
        det = maps.detach()
        for k, (a, b) in enumerate(zip(rp.src_slot.tolist(), rp.dst_slot.tolist())):
            found.append((k, LS.refined_best_buddies(det[a], det[b], m.patch, m.stride)))
    pid = torch.cat([torch.full((len(b.src_cell),), k) for k, b in found])
    cell = torch.cat([b.src_cell for _, b in found])
    sel = select_region_pairs(pid, cell, rp)
    src_xy = torch.cat([b.src_xy for _, b in found])[sel]
    dst_xy = torch.cat([b.dst_xy for _, b in found])[sel]
    aff = torch.cat([b.affinity for _, b in found])[sel]
    pid = pid[sel]
    return Correspondences(rp.src_slot[pid], rp.dst_slot[pid], src_xy, dst_xy, aff, rp.cell_fg[pid, cell[sel]])


def _list_form_cycle(m, maps, rows, slots, cy, unit):
    """The old ``DinoTrackerModule._cycle_loss``: the kept points by boolean mask, skipped when none."""
    c = m.loss_cfg["cycle"]
    with torch.no_grad():
        if m.teacher is None:
            labeller, lmaps, lrows, lunit = m.tracker, maps.detach(), rows.detach(), unit.detach()
        else:
            labeller = m.teacher
            lmaps = m.refine(slots, m.teacher)
            lrows, lunit = point_rows(lmaps), normalized_maps(lmaps)
        fwd = m.track(labeller, lmaps, cy.src_slot, cy.src_xy, cy.dst_slot, lrows, lunit)
        back = m.track(labeller, lmaps, cy.dst_slot, fwd, cy.src_slot, lrows, lunit)
        lab = LS.cycle_pseudo_labels(cy.src_xy, fwd, back, c["threshold"], c["decay"])
    keep = lab.keep
    extra = {"cycle_kept": keep.float().mean()}
    if not bool(keep.any()):
        return maps.sum() * 0.0, extra
    src, dst = cy.src_slot[keep], cy.dst_slot[keep]
    x_s, x_t, w = cy.src_xy[keep], fwd[keep], lab.weights[keep]
    pred_fwd = m.track(m.tracker, maps, src, x_s, dst, rows, unit)
    pred_bwd = m.track(m.tracker, maps, dst, x_t, src, rows, unit)
    v = LS.cycle_consistency_loss(pred_fwd, pred_bwd, x_s, x_t, w, m.model_hw, c["huber_delta"],
                                  reduction=c["reduction"])
    h = LS.normalized_huber(pred_fwd, x_t, m.model_hw, c["huber_delta"])
    extra["cycle_fwd"] = (w[:, None] * h).mean().detach()
    return v, extra


def _list_form_losses(m, batch, step):
    """The old ``DinoTrackerModule.compute_losses`` (no host-side counts, list-form refined BB and cycle)."""
    lc, p, s = m.loss_cfg, m.patch, m.stride
    slots = batch.frames
    maps = m.refine(slots)
    rows, unit = point_rows(maps), normalized_maps(maps)
    total, terms = maps.new_zeros((), dtype=torch.float32), {}
    fl = batch.flow
    pred = m.track(m.tracker, maps, fl.src_slot, fl.src_xy, fl.dst_slot, rows, unit)
    terms["flow"] = LS.flow_loss(pred, fl.dst_xy, m.model_hw, lc["flow"]["huber_delta"], fl.weight)
    total = total + lc["flow"]["weight"] * terms["flow"]
    bb, c = batch.dino_bb, lc["dino_bb"]
    terms["dino_bb"] = LS.dino_bb_loss(maps, bb.src_slot, bb.src_xy, bb.dst_slot, bb.dst_xy, bb.weight, p, s,
                                       c["temperature"], c["divisor"], rows=rows)
    total = total + c["weight"] * terms["dino_bb"]
    pc = lc["prior"]
    terms["prior_norm"], terms["prior_angle"] = LS.prior_terms(maps, m.features[slots])
    total = total + pc["norm_weight"] * terms["prior_norm"] + pc["angle_weight"] * terms["prior_angle"]
    c = lc["refined_bb"]
    pairs = _list_form_refined(m, maps, batch)
    terms["refined_bb"] = LS.refined_bb_loss(maps, pairs.src_slot, pairs.src_xy, pairs.dst_slot, pairs.dst_xy,
                                             pairs.weight, p, s, c["temperature"], c["divisor"], rows=rows)
    terms["refined_bb_pairs"] = torch.tensor(float(len(pairs)))
    total = total + c["weight"] * terms["refined_bb"]
    v, extra = _list_form_cycle(m, maps, rows, slots, batch.cycle, unit)
    terms["cycle"] = v
    terms.update(extra)
    total = total + lc["cycle"]["weight"] * v
    terms["loss"] = total
    return total, terms


def _grads(m, total):
    names = [n for n, p in m.tracker.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(total, [p for p in m.tracker.parameters() if p.requires_grad], allow_unused=True)
    return dict(zip(names, grads))


def _compare(m, batch, step=0):
    """The fixed-shape step against the list form at the same weights: every term within 2e-6 relative (the
    masked sums add the same terms in another order; most come out bit-identical), every parameter's gradient
    within 5e-5 (L2) of its layer's gradient scale. A conv bias in front of a train-mode BatchNorm and the
    refiner's last bias (in front of a softmax) have gradients that cancel to ~0, hence the layer's scale."""
    got_total, got = m.compute_losses(batch, step)
    want_total, want = _list_form_losses(m, batch, step)
    assert set(want) <= set(got), (set(want), set(got))
    for k, v in want.items():
        torch.testing.assert_close(got[k].float(), v.detach().float(), rtol=2e-6, atol=1e-9, msg=k)
    g_got, g_want = _grads(m, got_total), _grads(m, want_total)
    for n, b in g_want.items():
        a = g_got[n]
        if b is None:
            assert a is None or not a.any(), n
            continue
        w = g_want.get(n.rsplit(".", 1)[0] + ".weight")
        scale = max(float(b.norm()), float(w.norm()) if w is not None else 0.0, 1e-30)
        assert float((a - b).norm()) <= 5e-5 * scale, (n, float((a - b).norm()) / scale)
    return want


def _perturbed(video, **kw):
    """A module whose Delta-DINO output is not zero and whose EMA teacher differs from the student, with
    seeded weights (no training steps, so both code paths and the recorded values see the same weights)."""
    m = _module(video, **kw)
    m.train()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.tracker.delta_dino.layers[-2].parameters():  # the zero-initialised last conv
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        if m.teacher is not None:
            for p, q in zip(m.teacher.parameters(), m.tracker.parameters()):
                p.copy_(q + torch.randn(q.shape, generator=g) * 0.01)
    return m


@pytest.mark.parametrize("threshold, kept", [(4.0, "some"), (1e-9, "none"), (1e9, "all")])
def test_step_equals_list_form_step(video, threshold, kept):
    """Losses and gradients of the fixed-shape step equal the old list-form step's, whether the cycle filter
    keeps some, none or all points."""
    m = _perturbed(video, cycle={"threshold": threshold})
    sampler = CorrespondenceSampler(video, seed=5, **SMALL)
    fractions = [float(_compare(m, sampler.sample(k))["cycle_kept"]) for k in (0, 1)]
    if kept == "none":
        assert fractions == [0.0, 0.0]
    elif kept == "all":
        assert fractions == [1.0, 1.0]
    else:
        assert any(0.0 < f < 1.0 for f in fractions), fractions


def test_step_equals_list_form_step_when_buddies_run_short(video):
    """Refined-BB quotas above the buddies found (most fixed-size slots masked out), frame pairs s == t, the
    paper's mean (divisor null) and pseudo-labels from the student ("same", no teacher)."""
    m = _perturbed(video, refined_bb={"divisor": None}, dino_bb={"divisor": None},
                   cycle={"pseudo_labels": "same", "reduction": "sum"})
    assert m.teacher is None
    sampler = CorrespondenceSampler(video, seed=7, **{**SMALL, "bb_pairs": 2048})
    batch = sampler.sample(2)
    hw = batch.refined_bb.priority.shape[1]
    assert batch.refined_bb.n_fg > hw  # more fg slots than cells
    want = _compare(m, batch)
    assert 0 < float(want["refined_bb_pairs"]) < len(batch.refined_bb) * hw


def test_select_region_cells_equals_select_region_pairs():
    g = torch.Generator().manual_seed(0)
    p, n = 5, 60
    for quota in ((7, 3), (40, 50), (0, 4), (100, 100)):
        cand = torch.rand(p, n, generator=g) < 0.4
        region = RegionPairs(torch.arange(p), torch.arange(p), torch.rand(p, n, generator=g),
                             torch.rand(p, n, generator=g) < 0.5, *quota)
        pid, cell = cand.nonzero(as_tuple=True)
        sel = select_region_pairs(pid, cell, region)
        want = list(zip(pid[sel].tolist(), cell[sel].tolist()))  # in the list form's order
        cells, valid = select_region_cells(cand, region)
        assert cells.shape == valid.shape == (p, min(quota[0], n) + min(quota[1], n))
        rows = torch.arange(p)[:, None].expand_as(cells)
        assert list(zip(rows[valid].tolist(), cells[valid].tolist())) == want
        assert cand.gather(1, cells)[valid].all()


def test_grouped_matmul_with_host_counts():
    g = torch.Generator().manual_seed(0)
    rows, mats = torch.randn(30, 6, generator=g), torch.randn(4, 6, 5, generator=g)
    idx = torch.randint(0, 4, (30,), generator=g)
    idx[idx == 2] = 0  # a map no row uses
    counts = slot_counts(idx, 4)
    assert counts[2] == 0 and sum(counts) == 30
    assert torch.equal(grouped_matmul(rows, mats, idx, counts), grouped_matmul(rows, mats, idx))
    for bad in (counts[:3], (*counts[:3], counts[3] + 1)):
        with pytest.raises(ValueError, match="counts must be"):
            grouped_matmul(rows, mats, idx, bad)


def test_batch_carries_host_side_slot_counts(video):
    batch = CorrespondenceSampler(video, seed=1, **SMALL).sample(4)
    nf = len(batch.frames)
    for c in (batch.flow, batch.dino_bb, batch.cycle):
        assert c.src_counts == tuple(torch.bincount(c.src_slot, minlength=nf).tolist())
        assert c.dst_counts == tuple(torch.bincount(c.dst_slot, minlength=nf).tolist())
    rp = batch.refined_bb
    assert rp.src_slots == tuple(rp.src_slot.tolist()) and rp.dst_slots == tuple(rp.dst_slot.tolist())
    moved = batch.to("cpu")  # the host-side fields survive a device move untouched
    assert moved.flow.dst_counts == batch.flow.dst_counts and moved.refined_bb.src_slots == rp.src_slots


def test_nonfinite_loss_still_stops_training(video, tmp_path):
    """The check left the step (it read the loss back every step); it runs after every log_every_n_steps-th
    step, before checkpoints and at the end."""
    bad = toy_preprocessed_video(num_frames=6, height=64, width=96, feature_dim=16, patch=8, stride=4, seed=0)
    bad.features[2] = float("nan")
    m = _module(bad)
    with pytest.raises(FloatingPointError, match="non-finite training loss at step"):
        _fit(m, bad, tmp_path, 4, log_every_n_steps=2)


# ------------------------------------------------------------------ values recorded from the main branch
# One step of the module below on the batch below, computed with main's code (commit dffbfaf, before the
# fixed-shape step): every loss term, and the L2 norms of the gradients of Delta-DINO and the refiner.
MAIN_VALUES = {"flow": 0.0023601006250828505, "flow_epe_px": 5.425477504730225, "dino_bb": 0.04710523784160614,
               "prior_norm": 0.07997214794158936, "prior_angle": 0.048300158232450485,
               "refined_bb": 0.18090495467185974, "refined_bb_pairs": 32.0, "cycle": 0.001298939692787826,
               "cycle_kept": 0.0625, "cycle_fwd": 0.001118866028264165, "loss": 0.0030432194471359253,
               "grad_delta": 0.005851614507682273, "grad_refiner": 0.24145462949006669}


def test_step_matches_values_recorded_from_main(video):
    m = _perturbed(video)
    batch = CorrespondenceSampler(video, seed=11, **SMALL).sample(2)
    total, terms = m.compute_losses(batch, 2)
    total.backward()
    got = {k: float(v) for k, v in terms.items()}
    got["grad_delta"] = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in m.tracker.delta_parameters()))
    got["grad_refiner"] = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in m.tracker.head_parameters()))
    for k, v in MAIN_VALUES.items():
        assert got[k] == pytest.approx(v, rel=2e-5, abs=1e-9), k


# ------------------------------------------------------------------ data.static_frames
@pytest.mark.parametrize("chunk", [None, 2])
def test_static_frames_give_the_same_step(video, chunk):
    """``data.static_frames`` pads the step's frames to ``max_frames`` with repeats of the first frame. The
    draws are the same, and so are the losses, gradients and BatchNorm running statistics up to float
    rounding: Delta-DINO's train-mode BatchNorm counts the real frames only (``masked_batch_norm``; with
    ``model.refine_chunk`` a chunk of padding only gets Delta = 0), the prior's means too, and no pair uses a
    padding slot. (Padding with plain BatchNorm would change every refined feature: the statistics would
    include the repeated frame.)"""
    base = _perturbed(video, model={"refine_chunk": chunk})
    plain = CorrespondenceSampler(video, seed=5, **SMALL)
    static = CorrespondenceSampler(video, seed=5, static_frames=True, **SMALL)
    sizes = set()
    for k in (0, 2):  # 6 and 5 real frames: with chunks of 2 a full, a mixed and a padding-only chunk
        a, b = plain.sample(k), static.sample(k)
        nf = len(a.frames)
        sizes.add(nf)
        assert len(b.frames) == 8 and b.real_frames == nf < 8 and torch.equal(b.frames[:nf], a.frames)
        assert (b.frames[nf:] == a.frames[0]).all()
        for name in ("flow", "dino_bb", "cycle"):
            assert torch.equal(getattr(a, name).src_slot, getattr(b, name).src_slot), name
        assert torch.equal(a.refined_bb.priority, b.refined_bb.priority)
        ma, mb = copy.deepcopy(base), copy.deepcopy(base)
        ta, la = ma.compute_losses(a, 0)
        tb, lb = mb.compute_losses(b, 0)
        assert set(la) == set(lb)
        for name, v in la.items():
            assert float(lb[name]) == pytest.approx(float(v), rel=1e-5, abs=1e-9), name
        ga, gb = _grads(ma, ta), _grads(mb, tb)
        for n, g in ga.items():
            w = ga.get(n.rsplit(".", 1)[0] + ".weight")
            scale = max(float(g.norm()), float(w.norm()) if w is not None else 0.0, 1e-30)
            assert float((gb[n] - g).norm()) <= 1e-4 * scale, (n, float((gb[n] - g).norm()) / scale)
        for (n, x), (_, y) in zip(ma.tracker.named_buffers(), mb.tracker.named_buffers()):
            torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-7, msg=n)
        assert not any(torch.equal(x, y) for (n, x), (_, y) in zip(base.tracker.named_buffers(),
                                                                   ma.tracker.named_buffers()) if "running" in n)
    assert sizes == {5, 6}


def test_static_frames_step_makes_no_host_sync(video, tmp_path):
    m = _module(video, cls=_Recorded)
    tr = L.Trainer(accelerator="cpu", devices=1, max_steps=3, max_epochs=-1, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                   enable_checkpointing=False, default_root_dir=str(tmp_path))
    tr.fit(m, CorrespondenceDataModule(video, seed=0, static_frames=True, **SMALL))
    assert m.rec is not None and not m.rec.events, dict(m.rec.events)
