"""CorrespondenceSampler: shapes, sampling constraints, agreement with naive per-point loops."""

from __future__ import annotations

import itertools

import pytest
import torch

from dinotracker.geometry import sample_at
from dinotracker.training.datamodule import CorrespondenceDataModule, toy_preprocessed_video
from dinotracker.training.sampler import CorrespondenceSampler, _distinct, rank_select, select_region_pairs


@pytest.fixture(scope="module")
def video():
    return toy_preprocessed_video(num_frames=10, height=64, width=96, square=20, shift=(4, 2), num_tracks=300,
                                  bb_per_pair=40, seed=1)


@pytest.fixture(scope="module")
def sampler(video):
    return CorrespondenceSampler(video, flow_pairs=64, bb_pairs=64, cycle_pairs=64, seed=5)


def test_flow_pairs_follow_the_known_motion(video, sampler):
    dx, dy = video.meta["shift"]
    seen_order = []
    for step in range(20):
        b = sampler.sample(step)
        fr = b.frames
        assert 2 <= len(fr) <= 8 and torch.equal(fr, torch.unique(fr)) and int(fr.max()) < video.num_frames
        fl = b.flow
        assert len(fl) == 64 and int(fl.fg.sum()) == 32  # 50 % fg
        t1, t2 = fr[fl.src_slot], fr[fl.dst_slot]
        assert bool((t1 != t2).all())
        assert torch.isfinite(fl.src_xy).all() and torch.isfinite(fl.dst_xy).all()  # valid in both frames
        # fg points translate with the square, bg points are static
        motion = torch.stack([(t2 - t1) * dx, (t2 - t1) * dy], -1).float()
        assert torch.allclose(fl.dst_xy[fl.fg] - fl.src_xy[fl.fg], motion[fl.fg], atol=1e-4)
        assert torch.allclose(fl.dst_xy[~fl.fg], fl.src_xy[~fl.fg])
        # each group uses at most flow_frames (4) distinct frames
        for grp in (fl.fg, ~fl.fg):
            assert len(torch.unique(torch.cat([t1[grp], t2[grp]]))) <= 4
        # the points are the tracks' positions at those frames
        tr = video.tracks
        for i in range(0, 64, 7):
            d = (tr[:, t1[i]] - fl.src_xy[i]).norm(dim=-1)
            j = int(torch.nan_to_num(d, nan=1e9).argmin())
            assert float(d[j]) < 1e-4 and torch.allclose(tr[j, t2[i]], fl.dst_xy[i])
            assert bool(video.tracks_fg[j]) == bool(fl.fg[i])
        seen_order.append((t1 < t2).float().mean())
    assert 0.4 < float(torch.stack(seen_order).mean()) < 0.6  # random direction


def _naive_eligible(valid_rows: torch.Tensor, frames: list[int]) -> set[int]:
    out = set()
    for i in range(valid_rows.shape[0]):  # the reference's rule, one trajectory at a time
        if sum(bool(valid_rows[i, f]) for f in frames) >= 2:
            out.add(i)
    return out


def test_flow_selection_matches_naive_loop(video, sampler):
    g = torch.Generator().manual_seed(0)
    for which in (0, 1):
        for _ in range(5):
            fr = torch.randperm(video.num_frames, generator=g)[:4]
            corr, fr2 = sampler._flow_group(which, 10**6, 4, g, first_frames=fr)
            assert torch.equal(fr, fr2)
            elig = _naive_eligible(sampler.valid[which], fr.tolist())
            assert len(corr) == len(elig)  # all eligible taken when the quota is large
            # every chosen pair is a distinct valid frame pair among the drawn frames
            rows = sampler.rows[which]
            for i in range(len(corr)):
                a, b = int(corr.src_slot[i]), int(corr.dst_slot[i])  # frame indices here
                assert a != b and a in fr.tolist() and b in fr.tolist()
                hits = [r for r in elig if torch.allclose(video.tracks[rows[r], a], corr.src_xy[i])
                        and torch.allclose(video.tracks[rows[r], b], corr.dst_xy[i])]
                assert hits
            # with a small quota: min(n, eligible) distinct trajectories
            corr, _ = sampler._flow_group(which, 5, 4, g, first_frames=fr)
            assert len(corr) == min(5, len(elig))


def test_flow_frame_pair_distribution_matches_naive_multinomial():
    # trajectories valid in 3 of the 4 drawn frames: each of the 6 ordered pairs has p = 1/6, as
    # with the reference's multinomial (2 of the valid frames, without replacement). Two of them,
    # since the rule re-draws the frames below 2 qualifying trajectories.
    video = toy_preprocessed_video(num_frames=6, num_tracks=40, seed=2)
    s = CorrespondenceSampler(video, flow_pairs=2, seed=0)
    valid = torch.tensor([[True, False, True, True, False, False]] * 2)
    s.valid[0] = valid
    s.rows[0] = s.rows[0][:2]
    fr = torch.tensor([0, 1, 2, 3])
    g = torch.Generator().manual_seed(1)
    ours, naive = {}, {}
    n = 3000
    for _ in range(n):
        c, _ = s._flow_group(0, 1, 4, g, first_frames=fr)
        key = (int(c.src_slot[0]), int(c.dst_slot[0]))
        ours[key] = ours.get(key, 0) + 1
        w = valid[0, fr].float()
        pick = torch.multinomial(w, 2, replacement=False, generator=g)
        key = (int(fr[pick[0]]), int(fr[pick[1]]))
        naive[key] = naive.get(key, 0) + 1
    assert set(ours) == set(naive) == {(a, b) for a, b in itertools.permutations([0, 2, 3], 2)}
    for k in ours:
        assert abs(ours[k] / n - 1 / 6) < 0.03 and abs(naive[k] / n - 1 / 6) < 0.03


def test_dino_bb_pairs_come_from_drawn_frame_pairs(video, sampler):
    bb = video.best_buddies
    for step in range(10):
        b = sampler.sample(step)
        d = b.dino_bb
        assert len(d) > 0 and len(d) <= 64
        fs, ft = b.frames[d.src_slot], b.frames[d.dst_slot]
        assert bool((fs != ft).all())
        assert len({(int(a), int(c)) for a, c in zip(fs, ft)}) <= 4  # <= 4 frame pairs
        for i in range(len(d)):
            fwd = (bb.src_t == fs[i]) & (bb.dst_t == ft[i]) & (bb.src_xy == d.src_xy[i]).all(-1) \
                & (bb.dst_xy == d.dst_xy[i]).all(-1)
            bwd = (bb.src_t == ft[i]) & (bb.dst_t == fs[i]) & (bb.src_xy == d.dst_xy[i]).all(-1) \
                & (bb.dst_xy == d.src_xy[i]).all(-1)
            hit = torch.nonzero(fwd | bwd, as_tuple=True)[0]
            assert len(hit) >= 1 and torch.isclose(bb.weight[hit[0]], d.weight[i])
        # fg flag = the mask sampled at the source point, and the per-pair quota (11 fg, 5 bg)
        for i in range(len(d)):
            m = video.fg_masks[fs[i]][None, None].float()
            assert bool(sample_at(m, d.src_xy[i][None, None])[0, 0, 0] > 0) == bool(d.fg[i])
        for key in {(int(a), int(c)) for a, c in zip(d.src_slot, d.dst_slot)}:
            sel = (d.src_slot == key[0]) & (d.dst_slot == key[1])
            assert int(d.fg[sel].sum()) <= 11 * 4 and int((~d.fg[sel]).sum()) <= 5 * 4


def test_cycle_queries_and_refined_pairs(video, sampler):
    for step in range(5):
        b = sampler.sample(step)
        c = b.cycle
        assert len(c) <= 64 and len(c) > 0
        h, w = video.model_hw
        assert bool(((c.src_xy - 0.5) % 1 == 0).all())  # pixel centres
        assert bool((c.src_xy[:, 0] < w).all() and (c.src_xy[:, 1] < h).all())
        frames = b.frames[c.src_slot]
        col, row = (c.src_xy[:, 0] - 0.5).long(), (c.src_xy[:, 1] - 0.5).long()
        assert torch.equal(video.fg_masks[frames, row, col], c.fg)
        assert int(c.fg.sum()) == 4 * 11 and int((~c.fg).sum()) == 4 * 5  # 70 % fg of 16 per pair
        assert torch.isnan(c.dst_xy).all()
        for k in range(4):  # drawn without replacement within a frame pair
            pts = c.src_xy[torch.arange(len(c)) // 16 == k]
            assert len(torch.unique(pts, dim=0)) == len(pts)
        r = b.refined_bb
        assert len(r) == 4 and r.priority.shape == (4, video.grid_hw[0] * video.grid_hw[1])
        assert torch.equal(r.cell_fg, sampler.cell_fg[b.frames[r.src_slot]])
        assert r.n_fg == 11 and r.n_bg == 5


def test_distinct_draws_are_uniform():
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(1000)
    for _ in range(400):
        r = _distinct(1000, 50, g)  # the sparse path (c > 4 n)
        assert len(torch.unique(r)) == 50 and int(r.min()) >= 0 and int(r.max()) < 1000
        counts[r] += 1
    assert abs(float(counts.mean()) - 20.0) < 1e-6 and float(counts.std()) < 6.0  # binomial sd ~4.4
    assert sorted(_distinct(7, 50, g).tolist()) == list(range(7))


def test_rank_select_matches_naive_loop():
    g = torch.Generator().manual_seed(0)
    group = torch.randint(0, 5, (200,), generator=g)
    score = torch.rand(200, generator=g)
    quota = torch.tensor([3, 0, 100, 7, 1])
    got = set(rank_select(group, score, quota).tolist())
    want = set()
    for k in range(5):
        idx = [i for i in range(200) if int(group[i]) == k]
        idx.sort(key=lambda i: -float(score[i]))
        want.update(idx[:int(quota[k])])
    assert got == want


def test_select_region_pairs_quota(video, sampler):
    b = sampler.sample(3)
    r = b.refined_bb
    hw = r.priority.shape[1]
    pid = torch.arange(4).repeat_interleave(hw)
    cell = torch.arange(hw).repeat(4)
    sel = select_region_pairs(pid, cell, r)
    for k in range(4):
        s = sel[pid[sel] == k]
        fg = r.cell_fg[k, cell[s]]
        assert int(fg.sum()) == min(r.n_fg, int(r.cell_fg[k].sum()))
        assert int((~fg).sum()) == min(r.n_bg, int((~r.cell_fg[k]).sum()))
        # the kept fg cells are the highest-priority fg cells
        top = r.priority[k][r.cell_fg[k]].topk(int(fg.sum())).values
        assert torch.equal(r.priority[k, cell[s]][fg].sort(descending=True).values, top)


def test_state_and_determinism(video):
    a = CorrespondenceSampler(video, flow_pairs=32, bb_pairs=32, cycle_pairs=32, seed=3)
    seq = [a.sample() for _ in range(5)]
    b = CorrespondenceSampler(video, flow_pairs=32, bb_pairs=32, cycle_pairs=32, seed=0)
    b.set_state(a.get_state() | {"next_step": 3})
    x = b.sample()
    assert x.step == 3 and torch.equal(x.flow.src_xy, seq[3].flow.src_xy)
    assert torch.equal(x.cycle.src_xy, seq[3].cycle.src_xy) and torch.equal(x.frames, seq[3].frames)
    c = CorrespondenceSampler(video, flow_pairs=32, bb_pairs=32, cycle_pairs=32, seed=4)
    assert not torch.equal(c.sample(0).flow.src_xy, seq[0].flow.src_xy)


def test_max_frames_cap_and_validation(video):
    s = CorrespondenceSampler(video, flow_pairs=32, flow_frames=4, max_frames=5, seed=0)
    for step in range(20):
        assert len(s.sample(step).frames) <= 5
    with pytest.raises(ValueError, match="max_frames"):
        CorrespondenceSampler(video, flow_frames=4, max_frames=3)
    with pytest.raises(ValueError, match="fg_ratio"):
        CorrespondenceSampler(video, fg_ratio=1.5)


def test_datamodule_serves_batches_and_state(video):
    dm = CorrespondenceDataModule(video, seed=2, flow_pairs=16, bb_pairs=16, cycle_pairs=16)
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    b0, b1 = next(it), next(it)
    assert (b0.step, b1.step) == (0, 1)
    dm.load_state_dict({"seed": 2, "next_step": 7})
    b7 = next(iter(dm.train_dataloader()))
    assert b7.step == 7 and torch.equal(b7.flow.src_xy, dm.sampler.sample(7).flow.src_xy)
    with pytest.raises(ValueError, match=r"unknown data option data.flow_pair \(did you mean data.flow_pairs\?\)"):
        CorrespondenceDataModule(video, flow_pair=3)


def test_step_frames_are_the_frames_the_flow_pairs_use(video):
    """The reference's frames_set_t: the sorted frames the drawn flow pairs touch, not every drawn frame
    (BatchNorm statistics, the prior loss and the BB / cycle frame draws run over this set)."""
    import copy

    v = copy.copy(video)
    v.tracks = video.tracks.clone()
    v.tracks[video.tracks_fg.bool(), 7:] = float("nan")  # frames 7-9 have no fg trajectories
    s = CorrespondenceSampler(v, flow_pairs=6, bb_pairs=16, cycle_pairs=16, seed=3)
    sizes = []
    for step in range(40):
        b = s.sample(step)
        used = torch.unique(torch.cat([b.frames[b.flow.src_slot], b.frames[b.flow.dst_slot]]))
        assert torch.equal(b.frames, used), f"step {step}: frames {b.frames.tolist()}, flow uses {used.tolist()}"
        for c in (b.dino_bb, b.cycle):
            if len(c):
                assert int(torch.cat([c.src_slot, c.dst_slot]).max()) < len(b.frames)
        sizes.append(len(b.frames))
    assert min(sizes) >= 2
