"""The project's code on the inputs of ``tests/fixtures/reference/*.pt`` equals the official DINO-Tracker's
outputs on them (fixtures written by ``experiments/parity/make_reference_fixtures.py``, which runs the
reference code; see its docstring). Everything is fp32 on the CPU; the tolerance of each item is stated
where it is checked. Where the project deliberately differs from the reference (docs/DESIGN.md, "Where we
differ"), the test uses its reference-compatible setting: ``align_mode="reference"``, ``coarse_from="raw"``,
``normalized_refiner=True``, cycle pseudo-labels from the same model (``loss.cycle.pseudo_labels=same``),
the reference divisors (700 / 900) and reductions, ``best_buddies.tie_break="reference"``.

Coordinates: the reference's model inputs/outputs and patch centres (7 + 7k) are numerically the project's
raster coordinates; its optical-flow trajectories are pixel indices, i.e. raster - 0.5 (the "+0.5 shift").
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dinotracker.config import module_options
from dinotracker.models.delta_dino import DeltaDINO, align_to_patch_grid
from dinotracker.models.tracker import DinoTracker, sample_points
from dinotracker.preprocessing import best_buddies as BB
from dinotracker.preprocessing.trajectories import (
    chain_trajectories,
    continuation_masks,
    make_direct_flow_fn,
    split_foreground,
)
from dinotracker.training import losses as LS
from dinotracker.training.module import Constant, StepDecay

FIX = Path(__file__).parent / "fixtures" / "reference"


def load(name: str) -> dict:
    path = FIX / f"{name}.pt"
    if not path.exists():
        pytest.fail(f"missing fixture {path}: run experiments/parity/make_reference_fixtures.py")
    return torch.load(path, weights_only=True)


def close_grads(module, ref: dict, rel: float, what: str) -> None:
    """Gradients within ``rel`` x the largest reference gradient of the module (conv biases before a
    train-mode BatchNorm have an exactly-zero true gradient: both sides are float noise there)."""
    scale = max(g.abs().max().item() for g in ref.values())
    for k, p in module.named_parameters():
        close(p.grad, ref[k], atol=rel * scale, rtol=10 * rel, what=f"{what} grad {k}")


def close(a, b, atol, rtol=0.0, what=""):
    a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    err = (a - b).abs().max().item() if a.numel() else 0.0
    assert torch.allclose(a, b, atol=atol, rtol=rtol), f"{what}: max abs error {err:.3g} (atol {atol}, rtol {rtol})"


# ------------------------------------------------------------------------------------------ model
def build_tracker(fx: dict) -> DinoTracker:
    ch = fx["channels"].tolist()
    t = DinoTracker(feature_dim=ch[-1], patch=14, stride=7, model_hw=tuple(fx["video"].shape[-2:]),
                    align_mode="reference", coarse_from="raw", normalized_refiner=True,
                    delta_channels=tuple(ch[1:-1]))
    t.load_reference_state_dicts(without_filters(t.delta_dino, fx["delta_sd"]), fx["head_sd"])
    return t


def without_filters(delta: DeltaDINO, sd: dict) -> dict:
    """The reference's Delta-DINO state dict minus its BlurPool filters (buffers ``*.filt``), which must
    equal the ones the project builds itself: the project's filter formula is what gets tested."""
    own = delta.state_dict()
    for k, v in sd.items():
        if k.endswith(".filt"):
            close(own[k], v, atol=0, what=f"BlurPool filter {k}")
    return {k: v for k, v in sd.items() if not k.endswith(".filt")} | {k: own[k] for k in own if k.endswith(".filt")}


def to_norm(xy: torch.Tensor, hw) -> torch.Tensor:
    """Raster px -> the reference's RangeNormalizer units 2 x / (W - 1) - 1."""
    h, w = hw
    return xy / torch.tensor([w - 1.0, h - 1.0]) * 2 - 1


def from_norm(u: torch.Tensor, hw) -> torch.Tensor:
    h, w = hw
    return (u + 1) / 2 * torch.tensor([w - 1.0, h - 1.0])


@pytest.fixture(scope="module")
def model_fx():
    return load("model")


def reference_delta_dino(fx) -> DeltaDINO:
    """Our DeltaDINO with the fixture's (the reference's) widths and weights."""
    ch = fx["channels"].tolist()
    d = DeltaDINO(out_dim=ch[-1], channels=tuple(ch[1:-1]))
    d.load_state_dict(without_filters(d, fx["delta_sd"]))
    return d


def test_delta_dino_eval(model_fx):
    fx = model_fx
    d = reference_delta_dino(fx)
    d.eval()
    with torch.no_grad():
        out = align_to_patch_grid(d(fx["video"]), tuple(fx["raw"].shape[-2:]), 14, 7, mode="reference")
    close(out, fx["delta_eval"], atol=1e-5, rtol=1e-5, what="Delta-DINO eval")  # fp32 conv sums


def test_delta_dino_train_mode(model_fx):
    fx = model_fx
    d = reference_delta_dino(fx)
    d.train()
    out = align_to_patch_grid(d(fx["video"]), tuple(fx["raw"].shape[-2:]), 14, 7, mode="reference")
    (out * fx["delta_proj"]).sum().backward()
    close(out.detach(), fx["delta_train"], atol=1e-5, rtol=1e-5, what="Delta-DINO train output")
    sd = d.state_dict()
    for k, v in fx["delta_train_sd"].items():  # BN running stats after one batch
        close(sd[k], v, atol=1e-6, rtol=1e-5, what=f"state {k}")
    close_grads(d, fx["delta_train_grads"], 1e-5, "Delta-DINO")


def test_tracker_forward_and_gradients(model_fx):
    fx = model_fx
    hw = tuple(fx["video"].shape[-2:])
    t = build_tracker(fx)
    t.train()
    maps = t.refine(fx["video"], fx["raw"], chunk_size=8)
    close(maps.detach(), fx["refined"], atol=1e-5, rtol=1e-5, what="refined features")
    q = sample_points(maps, fx["src"], fx["points"], 14, 7)
    xy, _, _ = t(q, maps, target_index=fx["dst"])
    # soft-argmax positions: 1e-4 px (fp32 sums of ~80 weighted patch centres)
    close(xy.detach(), from_norm(fx["coords"], hw), atol=1e-4, what="tracker positions (px)")
    (to_norm(xy, hw) * fx["coords_weights"]).sum().backward()
    for name, mod, ref in (("delta", t.delta_dino, fx["tracker_grads_delta"]),
                           ("head", t.refiner, {k.replace("cnn_refiner.", "net.", 1): v
                                                for k, v in fx["tracker_grads_head"].items()})):
        close_grads(mod, ref, 1e-4, name)


def test_tracker_head_alone(model_fx):
    fx = model_fx
    hw = tuple(fx["video"].shape[-2:])
    t = build_tracker(fx)
    cost = fx["head_cost"][:, 0]
    with torch.no_grad():
        xy = t.soft_argmax(t.heatmap(cost), cost)
    close(to_norm(xy, hw), fx["head_out"], atol=2e-6, what="head on a given cost volume (normalised)")


# ------------------------------------------------------------------------------------------ losses
@pytest.fixture(scope="module")
def loss_fx():
    return load("losses")


def project_losses(fx: dict):
    """The project's five losses on the fixture's inputs, in the reference-compatible settings."""
    hw = tuple(fx["video"].shape[-2:])
    w = fx["weights"]
    t = build_tracker(fx)
    t.train()
    maps = t.refine(fx["video"], fx["raw"], chunk_size=8)

    def track(src_idx, dst_idx, xy):
        return t(sample_points(maps, src_idx, xy, 14, 7), maps, target_index=dst_idx)[0]

    out = {}
    out["flow"] = LS.flow_loss(track(fx["src"], fx["dst"], fx["points"]), from_norm(fx["labels"], hw), hw)
    # cycle, pseudo-labels from the same model (loss.cycle.pseudo_labels=same)
    cy = fx["cycle_labels"]
    s_idx, t_idx = cy["source_frame_indices"].long(), cy["target_frame_indices"].long()
    xs = cy["source_points"][:, :2]
    with torch.no_grad():
        fwd = track(s_idx, t_idx, xs)
        back = track(t_idx, s_idx, fwd)
    lab = LS.cycle_pseudo_labels(xs, fwd, back, threshold=4.0, decay=w["cyc_gamma"])
    out["_cycle_fwd"], out["_cycle_back"], out["_cycle_keep"] = fwd, back, lab.keep
    out["cycle"] = LS.cycle_consistency_loss(track(s_idx, t_idx, xs), track(t_idx, s_idx, fwd), xs, fwd,
                                             lab.weights, hw, keep=lab.keep)
    # refined best buddies on the current maps, every pair used (the fixture's draws use all of them)
    parts = []
    for s, d in fx["selectors"]["refined"].T.tolist():
        p = LS.refined_best_buddies(maps[s].detach(), maps[d].detach(), 14, 7)
        k = p.src_xy.shape[0]
        parts.append((torch.full((k,), s), p.src_xy, torch.full((k,), d), p.dst_xy, p.affinity))
    cat = [torch.cat(z) for z in zip(*parts)]
    out["refined_bb"] = LS.refined_bb_loss(maps, cat[0], cat[1], cat[2], cat[3], cat[4], 14, 7,
                                           temperature=w["cl_temp"], divisor=w["cl_div_ref_bb"])
    # DINO best buddies with the NMS-ratio x cosine weights
    parts = []
    for s, d in fx["selectors"]["dino"].T.tolist():
        b = fx["bb"][f"{s}_{d}"]
        k = b["source_coords"].shape[0]
        wt = LS.dino_bb_weights(b["r"], b["cos_sims"], w["bb_amb_sig_a"], w["bb_amb_sig_b"])
        parts.append((torch.full((k,), s), b["source_coords"], torch.full((k,), d), b["target_coords"], wt))
    cat = [torch.cat(z) for z in zip(*parts)]
    out["dino_bb"] = LS.dino_bb_loss(maps, cat[0], cat[1], cat[2], cat[3], cat[4], 14, 7,
                                     temperature=w["cl_temp"], divisor=w["cl_div_dino_bb"])
    out["norm"], out["angle"] = LS.prior_terms(maps, fx["raw"])
    out["total"] = (out["flow"] + w["lambda_cyc"] * out["cycle"] + w["lambda_cl_ref_bb"] * out["refined_bb"]
                    + w["lambda_cl_dino_bb"] * out["dino_bb"] + w["lambda_emb_norm"] * out["norm"]
                    + w["lambda_angle"] * out["angle"])
    return t, out


def test_losses_and_gradients(loss_fx):
    fx = loss_fx
    t, out = project_losses(fx)
    cy = fx["cycle_labels"]
    close(out["_cycle_fwd"], cy["target_points"][:, :2], atol=1e-4, what="cycle pseudo-labels x̂_t (px)")
    # second hop from a 1e-5 px-rounded label (fp32 RangeNormalizer round trip in the reference): 1e-3 px
    close(out["_cycle_back"], cy["cycle_points"][:, :2], atol=1e-3, what="cycle back-tracked x̃_s (px)")
    assert bool(out["_cycle_keep"].all()), "a point the reference kept fails the project's 4 px cycle test"
    for k in ("flow", "cycle", "refined_bb", "dino_bb", "norm", "angle", "total"):
        close(out[k].detach(), fx["losses"][k], atol=1e-7, rtol=2e-5, what=f"loss {k}")  # fp32 reductions
    out["total"].backward()
    ref_head = {k.replace("cnn_refiner.", "net.", 1): v for k, v in fx["grads_head"].items()}
    for name, mod, ref in (("delta", t.delta_dino, fx["grads_delta"]), ("head", t.refiner, ref_head)):
        close_grads(mod, ref, 1e-4, name)


def test_training_module_losses_and_gradients(loss_fx):
    """DinoTrackerModule.compute_losses at step 5000 (all five losses on) in the reference-compatible
    settings (model.align_mode=reference, loss.cycle.pseudo_labels=same) on the fixture's samples."""
    import numpy as np

    from dinotracker.geometry import Resize
    from dinotracker.preprocessing.types import BestBuddies, PreprocessedVideo
    from dinotracker.training.module import DinoTrackerModule
    from dinotracker.training.sampler import Batch, Correspondences, RegionPairs

    fx = loss_fx
    n, hw = fx["video"].shape[0], tuple(fx["video"].shape[-2:])
    frames = (fx["video"] * 255).round().to(torch.uint8)
    assert torch.equal(frames.float() / 255, fx["video"])
    video = PreprocessedVideo(name="parity", frames=frames, features=fx["raw"], patch=14, stride=7,
                              tracks=torch.zeros(0, n, 2), tracks_fg=torch.zeros(0, dtype=torch.bool),
                              fg_masks=fx["fg_masks"] > 0, best_buddies=BestBuddies.empty(), resize=Resize(hw, hw),
                              frame_indices=np.arange(n))
    ch = fx["channels"].tolist()
    mod = DinoTrackerModule(video, **module_options(model={"align_mode": "reference",
                                                           "delta_channels": tuple(ch[1:-1])},
                                                    loss={"cycle": {"pseudo_labels": "same"}}))
    mod.tracker.load_reference_state_dicts(without_filters(mod.tracker.delta_dino, fx["delta_sd"]), fx["head_sd"])
    mod.train()
    w = fx["weights"]

    def corr(src, dst, sxy, dxy, weight):
        return Correspondences(src.long(), dst.long(), sxy.float(), dxy.float(), weight.float(),
                               torch.zeros(len(src), dtype=torch.bool))

    flow = corr(fx["src"], fx["dst"], fx["points"], from_norm(fx["labels"], hw), torch.ones(len(fx["src"])))
    parts = []
    for s, d in fx["selectors"]["dino"].T.tolist():
        b = fx["bb"][f"{s}_{d}"]
        k = b["source_coords"].shape[0]
        wt = LS.dino_bb_weights(b["r"], b["cos_sims"], w["bb_amb_sig_a"], w["bb_amb_sig_b"])
        parts.append(corr(torch.full((k,), s), torch.full((k,), d), b["source_coords"], b["target_coords"], wt))
    sel = fx["selectors"]["refined"]
    cells = int(fx["raw"].shape[-2] * fx["raw"].shape[-1])
    refined = RegionPairs(sel[0].long(), sel[1].long(), torch.rand(sel.shape[1], cells),
                          torch.zeros(sel.shape[1], cells, dtype=torch.bool), n_fg=179, n_bg=cells)
    cy = fx["cycle_labels"]
    m = len(cy["source_points"])
    cycle = corr(cy["source_frame_indices"], cy["target_frame_indices"], cy["source_points"][:, :2],
                 torch.full((m, 2), float("nan")), torch.ones(m))
    batch = Batch(step=5000, frames=torch.arange(n), flow=flow, dino_bb=Correspondences.cat(parts),
                  refined_bb=refined, cycle=cycle)
    total, terms = mod.compute_losses(batch, 5000)
    names = {"flow": "flow", "dino_bb": "dino_bb", "refined_bb": "refined_bb", "cycle": "cycle",
             "prior_norm": "norm", "prior_angle": "angle", "loss": "total"}
    for ours, ref in names.items():
        close(terms[ours], fx["losses"][ref], atol=1e-7, rtol=2e-5, what=f"module loss {ours}")
    assert float(terms["cycle_kept"]) == 1.0
    total.backward()
    ref_head = {k.replace("cnn_refiner.", "net.", 1): v for k, v in fx["grads_head"].items()}
    close_grads(mod.tracker.delta_dino, fx["grads_delta"], 1e-4, "module delta")
    close_grads(mod.tracker.refiner, ref_head, 1e-4, "module head")


# ------------------------------------------------------------------------------------------ best buddies
@pytest.fixture(scope="module")
def bb_fx():
    return load("bb")


def ref_pairs(d: dict, with_r: bool = False) -> dict:
    """{(s, t, sx, sy, tx, ty): (cos, r)} over ordered keys s < t of a reference BB dict."""
    out = {}
    for key, v in d.items():
        s, t = map(int, key.split("_"))
        if s > t or "source_coords" not in v:
            continue
        for i in range(v["source_coords"].shape[0]):
            k = (s, t, *v["source_coords"][i].tolist(), *v["target_coords"][i].tolist())
            out[k] = (float(v["cos_sims"][i]), float(v["r"][i]) if with_r else 0.0)
    return out


def project_pairs(bb) -> dict:
    return {(int(bb.src_t[i]), int(bb.dst_t[i]), *bb.src_xy[i].tolist(), *bb.dst_xy[i].tolist()):
            (float(bb.cos[i]), float(bb.ratio[i])) for i in range(len(bb))}


def test_best_buddies_mutual_nn(bb_fx):
    got = project_pairs(BB.mutual_nearest_neighbours(bb_fx["features"], 14, 7, progress=False))
    want = ref_pairs(bb_fx["mnn"])
    assert got.keys() == want.keys(), f"{len(got.keys() ^ want.keys())} best-buddy pairs differ"
    close([got[k][0] for k in want], [want[k][0] for k in want], atol=1e-6, what="BB cosines")


@pytest.mark.parametrize("nms", ["fast", "torchvision"])
def test_best_buddies_flow_filter_and_nms_ratio(bb_fx, nms):
    tracks = bb_fx["tracks_ref"] + 0.5  # the reference's pixel indices -> raster
    bb = BB.compute_best_buddies(bb_fx["features"], 14, 7, tracks_unfiltered=tracks, progress=False, nms=nms)
    got, want = project_pairs(bb), ref_pairs(bb_fx["filtered"], with_r=True)
    assert len(want) > 20
    assert got.keys() == want.keys(), (f"kept pairs differ: {len(got.keys() - want.keys())} extra, "
                                       f"{len(want.keys() - got.keys())} missing")
    close([got[k][1] for k in want], [want[k][1] for k in want], atol=1e-6, what="NMS ratio r")


# ------------------------------------------------------------------------------------------ trajectories
@pytest.fixture(scope="module")
def chain_fx():
    return load("chain")


def _estimator(direct: torch.Tensor, n: int):
    """Flow estimator of the fixture's analytic direct flows; frame k is the constant grey level 10 k."""
    pairs = [(a, b) for a in range(n) for b in range(n) if a != b]
    table = {p: direct[i] for i, p in enumerate(pairs)}

    def est(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        ia = (src.float().mean(dim=(1, 2, 3)) / 10).round().long().tolist()
        ib = (dst.float().mean(dim=(1, 2, 3)) / 10).round().long().tolist()
        return torch.stack([table[(a, b)] for a, b in zip(ia, ib)])

    return est


def _frames(n, hw):
    return (torch.arange(n) * 10).to(torch.uint8)[:, None, None, None].expand(n, 3, *hw).contiguous()


@pytest.mark.parametrize("kind", ["translation", "rotation", "blob", "noisy"])
def test_trajectory_chaining_on_analytic_flows(chain_fx, kind):
    fx = chain_fx[kind]
    hw = tuple(chain_fx["hw"].tolist())
    n = fx["forward"].shape[0] + 1
    cont = continuation_masks(fx["forward"], fx["backward"], 1.5)
    assert torch.equal(cont, fx["continuation"]), \
        f"{int((cont != fx['continuation']).sum())} continuation-mask pixels differ"
    fn = make_direct_flow_fn(_estimator(fx["direct"], n), _frames(n, hw), fb_threshold=1.5)
    res = chain_trajectories(fx["forward"], fx["backward"], 1.5, 2, direct_flow=fn, direct_threshold=2.5,
                             progress=False)
    plain = chain_trajectories(fx["forward"], fx["backward"], 1.5, 2, progress=False).tracks
    for what, got, want in (("filtered", res.tracks, fx["filtered"]), ("unfiltered", plain, fx["unfiltered"])):
        assert got.shape == want.shape, f"{kind} {what}: {got.shape[0]} trajectories, reference {want.shape[0]}"
        want = want + 0.5  # pixel index -> raster
        assert torch.equal(torch.isnan(got), torch.isnan(want)), f"{kind} {what}: different segments"
        ok = ~torch.isnan(want)
        close(got[ok], want[ok], atol=1e-4, what=f"{kind} {what} positions (px)")


def test_fg_bg_split():
    fx = load("split")
    fg = split_foreground(fx["tracks_ref"] + 0.5, fx["masks"])
    assert torch.equal(fx["tracks_ref"][fg].nan_to_num(-1), fx["fg"].nan_to_num(-1))
    assert torch.equal(fx["tracks_ref"][~fg].nan_to_num(-1), fx["bg"].nan_to_num(-1))


def test_occlusion_prediction():
    """ModelInference.infer: trajectories (the query frame re-predicted: force_query=False) and occlusion."""
    from dinotracker.inference.occlusion import predict_occlusion, track_cosines
    from dinotracker.inference.tracker import refined_maps, track_queries

    fx = load("occlusion")
    t = build_tracker(fx).eval()
    maps = refined_maps(t, fx["video"], fx["raw"], dtype=torch.float32)
    q = fx["queries"][:, [2, 0, 1]]  # reference (x, y, t) -> (t, x, y)
    tracks = track_queries(t, maps, q, force_query=False)
    # 5e-4 px: the reference normalises cosines as dot / (|a||b|) on gathered copies, the project with unit
    # vectors; fp32 rounding of ~1e-7 in the logits moves a soft-argmax over a peaked heatmap by ~1e-4 px
    close(tracks, fx["tracks"], atol=5e-4, what="inference tracks (px)")
    close(track_cosines(t, maps, tracks, q[:, 0].long()), fx["cos"], atol=1e-5, what="track cosines")
    occ = predict_occlusion(t, maps, q, tracks, anchor_cos=0.7, visible_cos=0.6).occluded
    assert 0 < int(fx["occluded"].sum()) < fx["occluded"].numel()
    assert torch.equal(occ, fx["occluded"]), f"{int((occ != fx['occluded']).sum())} occlusion flags differ"


def test_lr_schedule():
    lr = load("schedule")["lr"]
    steps = range(lr.shape[0])
    ours = torch.tensor([[0.01 * StepDecay(0.999, 40)(i), 0.01 * Constant()(i)] for i in steps], dtype=torch.float64)
    close(ours, lr, atol=1e-12, what="lr of (Delta-DINO, refiner)")


def test_frame_downscaling_is_antialiased_like_pil_lanczos():
    """The reference resizes frames with PIL's Lanczos (antialiased); a high-frequency 1080p pattern
    downscaled to 476 rows must match it within 2 grey levels on average (cv2 INTER_LANCZOS4: 47)."""
    import numpy as np
    from PIL import Image

    from dinotracker.preprocessing.pipeline import resize_frames

    yy, xx = np.mgrid[0:1080, 0:720].astype(np.float32)
    zone = 127.5 + 127.5 * np.cos(np.pi * (xx ** 2 + yy ** 2) / 2500.0)  # zone plate: every frequency
    noise = np.random.default_rng(0).integers(0, 256, (1080, 720))
    frames = np.stack([zone, noise, 255 - zone], -1)[None].astype(np.uint8)
    got = resize_frames(frames, (476, 320)).transpose(0, 2, 3, 1).astype(np.float32)
    want = np.asarray(Image.fromarray(frames[0]).resize((320, 476), Image.LANCZOS))[None]
    assert got.shape == want.shape == (1, 476, 320, 3)
    assert np.abs(got - want).mean() <= 2.0
