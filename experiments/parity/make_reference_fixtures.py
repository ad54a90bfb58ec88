"""Golden outputs of the official DINO-Tracker code (github.com/AssafSinger94/dino-tracker) on tiny inputs.

The reference is imported at run time from a local clone (``--ref``); nothing of it is copied into this
project. Each section builds fixed, seeded inputs, runs the reference's own modules / functions / scripts'
``run()`` on them and writes inputs + outputs to ``tests/fixtures/reference/<section>.pt`` (plain dicts of
tensors, read by ``tests/test_reference_parity.py`` with ``torch.load(weights_only=True)``).

Regenerate (CPU is enough, ~1 min)::

    pip install antialiased_cnns einops   # the reference's only extra imports used here
    python experiments/parity/make_reference_fixtures.py --ref /path/to/dino-tracker [--only model,bb]

Sections (shapes are tiny; C is small where the reference allows):

* ``model``: Delta-DINO (channels 3-8-16-32-24, random weights incl. the zero-initialised last layer)
  in eval mode (random BN running stats) and train mode (output, updated BN stats, gradients); the full
  ``Tracker`` forward (cost volume + ReLU + NormalizedConv2d refiner + softmax + radius soft-argmax) on a
  56x84 video (7x11 patch grid), its gradients, and the head alone on a given cost volume.
* ``losses``: the five losses of ``DINOTracker`` (flow, DINO-BB, refined-BB, cycle, norm + angle prior)
  with the train.yaml weights, their weighted total and its gradients. ``torch.randint`` is replaced by
  a queue of recorded frame selectors and ``torch.randperm`` by ``arange`` (every best buddy is used,
  the first fg/bg pixels are the cycle candidates), so the result is a function of the saved inputs.
* ``bb``: ``extract_dino_best_buddies.run`` -> ``of_filter_dino_best_buddies.run`` ->
  ``compute_dino_bb_nms.run`` (box 30, IoU 0.2, top-400 clipped to the grid) on structured features of
  4 frames (8x12 grid) and integer-pixel trajectories (the reference's pixel-index convention).
* ``chain``: ``extract_trajectories.save_trajectories`` (with and without the direct-flow filter) on
  analytic flow fields (translation, rotation, a blob occluding a translating background, and a fast
  translation plus smooth noise whose fields sample outside the frame), 4 frames at
  32x48. The flows come from a stand-in for RAFT that reads the frame index out of the frame's grey
  level; frames are written to a temporary folder.
* ``split``: ``split_trajectories_to_fg_bg.mask_filter_trajectories`` on the translation trajectories.
* ``occlusion``: ``ModelInference.infer`` (trajectories of 16 queries over 6 frames, anchor threshold 0.7,
  cosine threshold 0.6) and the trajectory cosines, on a random tracker in eval mode.
* ``schedule``: ``get_cnn_refiner_scheduler`` learning rates of both Adam groups over 400 steps.

CPU patches applied at run time (the reference assumes CUDA and 476x854):
``torch.Tensor.cuda`` -> identity; ``RangeNormalizer`` and ``get_vit_feature_coords_from_mask`` default to
device ``"cpu"``; ``compute_dino_bb_nms.create_meshgrid`` gets this video's size instead of its hard-coded
476x854 and its top-400 is clipped to the 96-cell grid; ``split_trajectories_to_fg_bg.load_masks`` defaults
to the fixture's size instead of 476x854; ``raft_large`` is the analytic stand-in; ``imageio`` /
``matplotlib`` are stubbed when absent (only its frame-saving and plotting helpers use them);
``extract_trajectories`` turns autograd off globally at import, which is undone. Everything runs in fp32
on the CPU.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import tempfile
import types
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "reference"
H, W, T, C = 56, 84, 3, 24  # model section: 7x11 patch grid
CH = [3, 8, 16, 32, C]


# ------------------------------------------------------------------------------------------ setup
def setup_reference(ref: str):
    sys.path.insert(0, str(Path(ref).resolve()))
    for name in ("imageio", "imageio.v3", "matplotlib", "matplotlib.pyplot"):
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = types.ModuleType(name)
    sys.modules["matplotlib"].pyplot = sys.modules["matplotlib.pyplot"]
    sys.modules["imageio"].v3 = sys.modules["imageio.v3"]
    torch.Tensor.cuda = lambda self, *a, **k: self
    import data.dataset
    import models.utils
    data.dataset.RangeNormalizer.__init__.__defaults__ = ("cpu",)
    models.utils.get_vit_feature_coords_from_mask.__defaults__ = (7, 14, "cpu")


class Draws:
    """Replaces torch.randint with a queue of given tensors and torch.randperm with arange."""

    def __init__(self, queue):
        self.queue = [torch.as_tensor(q) for q in queue]

    def __enter__(self):
        self._randint, self._randperm = torch.randint, torch.randperm

        def randint(*a, **k):
            if not self.queue:
                raise RuntimeError("reference drew more frame selectors than recorded")
            return self.queue.pop(0)

        torch.randint = randint
        torch.randperm = lambda n, *a, **k: torch.arange(n)
        return self

    def __exit__(self, *exc):
        torch.randint, torch.randperm = self._randint, self._randperm


def randomize(module: torch.nn.Module, g: torch.Generator, scale: float = 0.2) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))


def smooth_video(g: torch.Generator, t: int, h: int, w: int) -> torch.Tensor:
    """Frames in [0, 1]: one smooth random image translated by 3 px per frame."""
    big = torch.nn.functional.interpolate(torch.rand(1, 3, h // 4 + 4, w // 4 + 8, generator=g),
                                          size=(h + 16, w + 32), mode="bicubic", align_corners=False)
    big = big.clamp(0, 1)
    return torch.stack([big[0, :, 8:8 + h, 3 * i:3 * i + w] for i in range(t)]).contiguous()


def tracker_shell(g: torch.Generator, T: int = T):
    """The reference ``Tracker`` without its file loading: random Delta-DINO, head, video, features."""
    from data.dataset import RangeNormalizer
    from models.networks.delta_dino import DeltaDINO
    from models.networks.tracker_head import TrackerHead
    from models.tracker import Tracker

    m = Tracker.__new__(Tracker)
    torch.nn.Module.__init__(m)
    m.stride, m.dino_patch_size, m.device, m.refined_features = 7, 14, "cpu", None
    m.cyc_n_frames, m.cyc_batch_size_per_frame, m.cyc_fg_points_ratio, m.cyc_thresh = 4, 256, 0.7, 4
    m.video = (smooth_video(g, T, H, W) * 255).round() / 255  # exactly uint8 / 255, as a decoded video
    base = torch.randn(1, C, 7, 11 + 2, generator=g)
    m.dino_embed_video = torch.cat([base[:, :, :, i % 3:i % 3 + 11] for i in range(T)]) \
        + 0.3 * torch.randn(T, C, 7, 11, generator=g)
    m.delta_dino = DeltaDINO(channels=CH, vit_stride=7)
    randomize(m.delta_dino, g, 0.1)
    m.cmap_relu = torch.nn.ReLU(inplace=True)
    m.tracker_head = TrackerHead(use_cnn_refiner=True, patch_size=14, step_h=7, step_w=7, video_h=H, video_w=W)
    with torch.no_grad():
        for p in m.tracker_head.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    m.range_normalizer = RangeNormalizer(shapes=(W, H, T))
    return m


def grads(module) -> dict:
    return {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for k, p in module.named_parameters()}


# ------------------------------------------------------------------------------------------ sections
def section_model() -> dict:
    g = torch.Generator().manual_seed(0)
    m = tracker_shell(g)
    out = {"video": m.video.clone(), "raw": m.dino_embed_video.clone(), "channels": torch.tensor(CH)}
    out["delta_sd"] = {k: v.clone() for k, v in m.delta_dino.state_dict().items()}
    out["head_sd"] = {k: v.clone() for k, v in m.tracker_head.state_dict().items()}
    # Delta-DINO, eval
    m.eval()
    with torch.no_grad():
        out["delta_eval"] = m.delta_dino(m.video, m.dino_embed_video)
    # Delta-DINO, train: output, BN statistics after one forward, gradients of a fixed projection
    m.train()
    proj = torch.randn(T, C, 7, 11, generator=g)
    d = m.delta_dino(m.video, m.dino_embed_video)
    (d * proj).sum().backward()
    out["delta_proj"], out["delta_train"] = proj, d.detach()
    out["delta_train_sd"] = {k: v.clone() for k, v in m.delta_dino.state_dict().items()}
    out["delta_train_grads"] = grads(m.delta_dino)
    m.zero_grad()
    # full tracker forward (train mode, BN batch stats) and gradients
    m.delta_dino.load_state_dict(out["delta_sd"])
    n = 40
    pts = torch.stack([torch.rand(n, generator=g) * (W - 1), torch.rand(n, generator=g) * (H - 1)], 1)
    src = torch.randint(0, T, (n,), generator=g)
    dst = torch.randint(0, T, (n,), generator=g)
    frames = torch.arange(T)
    inp = (torch.cat([pts, src[:, None].float()], 1), src, dst, frames)
    coords = m(inp)
    w2 = torch.randn(n, 2, generator=g)
    (coords * w2).sum().backward()
    out.update(points=pts, src=src, dst=dst, coords_weights=w2, coords=coords.detach(),
               refined=m.frame_embeddings.detach().clone(),
               tracker_grads_delta=grads(m.delta_dino), tracker_grads_head=grads(m.tracker_head))
    # head alone on a given (non-negative) cost volume
    cv = torch.rand(n, 1, 7, 11, generator=g) ** 4
    with torch.no_grad():
        out["head_cost"], out["head_out"] = cv, m.tracker_head(cv)
    return out


def random_bb_pairs(g, frames, k=30):
    from models.utils import get_vit_feature_coords_from_mask
    grid = get_vit_feature_coords_from_mask(H, W)
    pairs = {}
    for s in frames:
        for t in frames:
            if s != t:
                a = torch.randperm(len(grid), generator=g)[:k]
                b = torch.randperm(len(grid), generator=g)[:k]
                pairs[f"{s}_{t}"] = {"source_coords": grid[a], "target_coords": grid[b],
                                     "cos_sims": torch.rand(k, generator=g) * 1.2 - 0.2,
                                     "r": torch.rand(k, generator=g)}
    return pairs


def section_losses() -> dict:
    import yaml
    from dino_tracker import DINOTracker

    g = torch.Generator().manual_seed(1)
    m = tracker_shell(g)
    m.train()
    cfg = yaml.safe_load(open(Path(sys.path[0]) / "config" / "train.yaml"))
    dt = DINOTracker.__new__(DINOTracker)
    dt.config = cfg
    dt.of_loss_fn = torch.nn.HuberLoss(delta=1 / 32, reduction="none")
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    masks = torch.stack([((xx - 30 - 3 * i) ** 2 + (yy - 28) ** 2 < 15 ** 2) for i in range(T)]).to(torch.uint8) * 255
    dt.fg_masks = masks
    dt.dino_bb_pairs = random_bb_pairs(g, range(T))
    out = {"video": m.video.clone(), "raw": m.dino_embed_video.clone(), "fg_masks": masks, "channels": torch.tensor(CH),
           "delta_sd": {k: v.clone() for k, v in m.delta_dino.state_dict().items()},
           "head_sd": {k: v.clone() for k, v in m.tracker_head.state_dict().items()},
           "bb": {k: {kk: vv.clone() for kk, vv in v.items()} for k, v in dt.dino_bb_pairs.items()},
           "weights": {k: float(cfg[k]) for k in ("lambda_cyc", "lambda_cl_ref_bb", "lambda_cl_dino_bb",
                                                     "lambda_emb_norm", "lambda_angle", "cl_temp",
                                                     "cl_div_dino_bb", "cl_div_ref_bb", "cyc_gamma",
                                                     "bb_amb_sig_a", "bb_amb_sig_b")}}
    n = 64
    pts = torch.stack([torch.rand(n, generator=g) * (W - 1), torch.rand(n, generator=g) * (H - 1)], 1)
    src = torch.randint(0, T, (n,), generator=g)
    dst = (src + torch.randint(1, T, (n,), generator=g)) % T
    labels = torch.rand(n, 2, generator=g) * 2 - 1
    frames = torch.arange(T)
    inputs = (torch.cat([pts, src[:, None].float()], 1), src, dst, frames)
    out.update(points=pts, src=src, dst=dst, labels=labels)
    sel = {"cycle": [torch.tensor([0, 1, 2, 1]), torch.tensor([1, 1, 0, 2])],
           "refined": [torch.tensor([0, 2, 1, 1]), torch.tensor([1, 0, 1, 2])],
           "dino": [torch.tensor([0, 1, 2, 0]), torch.tensor([1, 2, 0, 2])]}
    out["selectors"] = {k: torch.stack(v) for k, v in sel.items()}
    coords = m(inputs)
    loss_flow = dt.of_loss_fn(coords, labels).mean()
    recorded = {}
    orig = m.get_cycle_consistent_coords

    def record(*a):
        r = orig(*a)
        recorded.update({k: v.clone() for k, v in r.items()})
        return r

    m.get_cycle_consistent_coords = record
    with Draws(sel["cycle"]):
        loss_cyc = dt.get_cycle_consistency_loss(m, inputs)
    with Draws(sel["refined"]):
        loss_ref = dt.get_refiner_contrastive_loss(m, frames)
    with Draws(sel["dino"]):
        loss_dino = dt.get_dino_bb_contrastive_loss(m, frames)
    loss_norm = dt.get_emb_norm_regularization_loss(m)
    loss_angle = dt.get_emb_angle_regularization_loss(m)
    total = (loss_flow + cfg["lambda_cyc"] * loss_cyc + cfg["lambda_cl_ref_bb"] * loss_ref
             + cfg["lambda_cl_dino_bb"] * loss_dino + cfg["lambda_emb_norm"] * loss_norm
             + cfg["lambda_angle"] * loss_angle)
    total.backward()
    out["cycle_labels"] = recorded
    out["losses"] = {k: v.detach().clone() for k, v in dict(flow=loss_flow, cycle=loss_cyc, refined_bb=loss_ref,
                                                            dino_bb=loss_dino, norm=loss_norm, angle=loss_angle,
                                                            total=total).items()}
    out["grads_delta"], out["grads_head"] = grads(m.delta_dino), grads(m.tracker_head)
    return out


def bb_features(g, t=4, h=8, w=12, c=16):
    """Patch features of t frames: one random field shifted by one cell per frame, plus noise."""
    base = torch.randn(c, h + 2, w + t, generator=g)
    return torch.stack([base[:, 1:1 + h, i:i + w] for i in range(t)]) + 0.35 * torch.randn(t, c, h, w, generator=g)


def integer_tracks(g, t, h, w):
    """Reference-convention (integer pixel) trajectories: every pixel of frame 0 moving by (1, 0) px per
    frame until a random last frame, plus tracks starting at frame 2 on a random half of the pixels."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    p = torch.stack([xx, yy], -1).reshape(-1, 2).float()
    steps = torch.arange(t).float()
    a = p[:, None] + steps[None, :, None] * torch.tensor([1.0, 0.0])
    end = torch.randint(0, t, (len(p),), generator=g)
    a[steps[None].expand(len(p), -1) > end[:, None]] = float("nan")
    sel = torch.rand(len(p), generator=g) < 0.5
    b = p[sel][:, None] + (steps[None, :, None] - 2).clamp_min(0) * torch.tensor([0.0, 1.0])
    b[:, :2] = float("nan")
    return torch.cat([a, b])


def section_bb() -> dict:
    import preprocessing_dino_bb.compute_dino_bb_nms as nms
    import preprocessing_dino_bb.extract_dino_best_buddies as ex
    import preprocessing_dino_bb.of_filter_dino_best_buddies as of

    g = torch.Generator().manual_seed(2)
    t, h, w = 4, 8, 12
    ih, iw = 14 + 7 * (h - 1), 14 + 7 * (w - 1)  # 63 x 91
    feats = bb_features(g, t, h, w)
    tracks = integer_tracks(g, t, ih, iw)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        torch.save(feats, d / "emb.pt")
        torch.save(tracks, d / "traj.pt")
        ex.run(Namespace(dino_emb_path=str(d / "emb.pt"), h=ih, w=iw, stride=7, out_path=str(d / "bb.pt")))
        of.run(Namespace(dino_bb_path=str(d / "bb.pt"), traj_path=str(d / "traj.pt"), out_path=str(d / "f.pt"),
                         dino_bb_stride=7, h=ih, w=iw))
        orig_grid, orig_sim = nms.create_meshgrid, nms.get_bb_sim_indices
        nms.create_meshgrid = lambda h=None, w=None, step=7: orig_grid(ih, iw, step=step)  # it hard-codes 476x854
        # top-400 exceeds this 96-cell grid: clip k to the grid (the reference's topk would fail)
        nms.get_bb_sim_indices = lambda a, c, box_size=50, iou_thresh=0.5, topk=400, device="cpu": \
            orig_sim(a, c, box_size=box_size, iou_thresh=iou_thresh, topk=min(topk, a.shape[1]), device=device)
        nms.run(Namespace(dino_bb_path=str(d / "f.pt"), dino_emb_path=str(d / "emb.pt"), out_path=str(d / "n.pt"),
                          stride=7, box_size=30, iou_thresh=0.2))
        nms.create_meshgrid, nms.get_bb_sim_indices = orig_grid, orig_sim
        raw = torch.load(d / "bb.pt")
        filt = torch.load(d / "n.pt")
    def clean(dd):
        return {k: {kk: vv for kk, vv in v.items() if vv is not None} for k, v in dd.items()}

    return {"features": feats, "tracks_ref": tracks, "image_hw": torch.tensor([ih, iw]),
            "mnn": clean(raw), "filtered": clean(filt)}


# --- analytic flows ----------------------------------------------------------------------------
CH_HW = (32, 48)


def motion(kind: str, t: float, xy: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Position at frame t of the point that is at xy at frame 0 (inverse: frame t -> frame 0);
    reference pixel-index coordinates."""
    sgn = -1.0 if inverse else 1.0
    if kind == "translation":
        return xy + sgn * t * torch.tensor([1.3, -0.7], dtype=xy.dtype)
    if kind == "rotation":
        c = torch.tensor([23.5, 15.5], dtype=xy.dtype)
        a = sgn * t * math.radians(4.0)
        r = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=xy.dtype)
        return (xy - c) @ r.T + c
    raise ValueError(kind)


NOISY_V = (0.3, -4.2)
BLOB_C0, BLOB_V, BLOB_R, BG_V = (8.0, 16.0), (4.6, 0.3), 6.5, (-0.6, 0.4)


def flow_field(kind: str, a: int, b: int, hw=CH_HW) -> torch.Tensor:
    """Flow a -> b [2, H, W] at the pixels of frame a (reference pixel-index coordinates)."""
    h, w = hw
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    p = torch.stack([xx, yy], -1).reshape(-1, 2)
    if kind == "noisy":  # fast upward translation + smooth noise: flows that are not exact inverses
        g = torch.Generator().manual_seed(100 * a + b)
        noise = torch.nn.functional.interpolate(torch.randn(1, 2, h // 4, w // 4, generator=g, dtype=torch.float64),
                                                size=(h, w), mode="bilinear", align_corners=True)[0]
        f = (b - a) * torch.tensor(NOISY_V, dtype=p.dtype) + 0.8 * noise.reshape(2, -1).T
    elif kind == "blob":  # a disc moving right over a slowly translating background: occlusion + disocclusion
        v, bv = torch.tensor(BLOB_V, dtype=p.dtype), torch.tensor(BG_V, dtype=p.dtype)
        centre = torch.tensor(BLOB_C0, dtype=p.dtype) + a * v
        inside = (p - centre).norm(dim=1) <= BLOB_R
        f = torch.where(inside[:, None], (b - a) * v, (b - a) * bv)
    else:
        f = motion(kind, b, motion(kind, a, p, inverse=True)) - p
    return f.T.reshape(2, h, w).float()


def all_flows(kind: str, t: int):
    fwd = torch.stack([flow_field(kind, i, i + 1) for i in range(t - 1)])
    bwd = torch.stack([flow_field(kind, i + 1, i) for i in range(t - 1)])
    direct = {(a, b): flow_field(kind, a, b) for a in range(t) for b in range(t) if a != b}
    return fwd, bwd, direct


class AnalyticRaft(torch.nn.Module):
    """Stand-in for torchvision's RAFT: decodes each frame's index from its grey level (10 * index) and
    returns the analytic flow between the two frames, as RAFT's list of flow updates."""

    def __init__(self, direct):
        super().__init__()
        self.direct = direct

    def forward(self, im1, im2, num_flow_updates=12):
        def idx(im):  # RAFT input is (x / 255 - 0.5) / 0.5
            return [int(round(float(((v.mean() * 0.5 + 0.5) * 255) / 10))) for v in im]
        out = torch.stack([self.direct[(a, b)] for a, b in zip(idx(im1), idx(im2))])
        return [out]


def section_chain() -> dict:
    import preprocessing.extract_trajectories as et
    torch.set_grad_enabled(True)  # it disables autograd globally at import
    t = 4
    h, w = CH_HW
    res = {"hw": torch.tensor(CH_HW)}
    for kind in ("translation", "rotation", "blob", "noisy"):
        fwd, bwd, direct = all_flows(kind, t)
        masks = {}
        orig = et.get_flows_with_masks

        def record(*a, _orig=orig, _masks=masks, **k):
            mk, fl = _orig(*a, **k)
            _masks["m"] = mk[..., 0].clone()
            return mk, fl

        et.get_flows_with_masks = record
        et.raft_large = lambda *a, _direct=direct, **k: AnalyticRaft(_direct)
        outs = {}
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            (d / "video").mkdir()
            for i in range(t):
                Image.fromarray(np.full((h, w, 3), 10 * i, np.uint8)).save(d / "video" / f"{i:05d}.png")
            for name, filt in (("filtered", True), ("unfiltered", False)):
                et.save_trajectories(Namespace(frames_path=str(d / "video"), output_path=str(d / f"{name}.pt"),
                                               infer_res_size=None, threshold=1.5, min_trajectory_length=2,
                                               filter_using_direct_flow=filt, direct_flow_threshold=2.5))
                outs[name] = torch.load(d / f"{name}.pt")
        et.get_flows_with_masks = orig
        torch.set_grad_enabled(True)
        res[kind] = {"forward": fwd, "backward": bwd,
                     "direct": torch.stack([direct[(a, b)] for a in range(t) for b in range(t) if a != b]),
                     "continuation": masks["m"][:t].bool(), **outs}
    return res


def section_split(chain: dict) -> dict:
    from preprocessing.split_trajectories_to_fg_bg import mask_filter_trajectories
    g = torch.Generator().manual_seed(3)
    tracks = chain["translation"]["unfiltered"]
    t = tracks.shape[1]
    h, w = CH_HW
    masks = (torch.rand(t, h // 4, w // 4, generator=g) < 0.4).repeat_interleave(4, 1).repeat_interleave(4, 2)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "m").mkdir()
        for i in range(t):
            Image.fromarray(masks[i].numpy().astype(np.uint8) * 255).save(d / "m" / f"{i:05d}.png")
        torch.save(tracks, d / "t.pt")
        import preprocessing.split_trajectories_to_fg_bg as sp
        sp.load_masks.__defaults__ = (h, w)  # the reference defaults to 476 x 854
        mask_filter_trajectories(str(d / "t.pt"), str(d / "m"), str(d / "fg.pt"), filter_bg=False)
        mask_filter_trajectories(str(d / "t.pt"), str(d / "m"), str(d / "bg.pt"), filter_bg=True)
        return {"tracks_ref": tracks, "masks": masks, "fg": torch.load(d / "fg.pt"), "bg": torch.load(d / "bg.pt")}


def section_occlusion() -> dict:
    from data.dataset import RangeNormalizer
    from models.model_inference import ModelInference

    g = torch.Generator().manual_seed(4)
    t = 6
    m = tracker_shell(g, t)
    out = {"video": m.video.clone(), "raw": m.dino_embed_video.clone(), "channels": torch.tensor(CH),
           "delta_sd": {k: v.clone() for k, v in m.delta_dino.state_dict().items()},
           "head_sd": {k: v.clone() for k, v in m.tracker_head.state_dict().items()}}
    n = 16
    q = torch.stack([torch.rand(n, generator=g) * (W - 1), torch.rand(n, generator=g) * (H - 1),
                     torch.randint(0, t, (n,), generator=g).float()], 1)
    inf = ModelInference(m, RangeNormalizer(shapes=(W, H, t)), anchor_cosine_similarity_threshold=0.7,
                         cosine_similarity_threshold=0.6)
    with torch.no_grad():
        tracks, occ = inf.infer(q)
        cos = inf.compute_trajectory_cos_sims(inf.compute_trajectories(q), q)
    out.update(queries=q, tracks=tracks, occluded=occ, cos=cos)
    return out


def section_schedule() -> dict:
    from optimization.schedulers import get_cnn_refiner_scheduler
    p1, p2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([{"params": [p1], "lr": 0.01}, {"params": [p2], "lr": 0.01}])
    sched = get_cnn_refiner_scheduler(opt, gamma=0.999, apply_every=40)
    lrs = []
    for _ in range(400):
        lrs.append([grp["lr"] for grp in opt.param_groups])
        opt.step()
        sched.step()
    return {"lr": torch.tensor(lrs, dtype=torch.float64)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", default="/work/ref/dino-tracker", help="clone of AssafSinger94/dino-tracker")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--only", default="", help="comma-separated sections (default: all)")
    a = ap.parse_args()
    setup_reference(a.ref)
    torch.set_num_threads(2)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    want = set(filter(None, a.only.split(","))) or {"model", "losses", "bb", "chain", "split", "occlusion", "schedule"}
    chain = None
    for name in ("model", "losses", "bb", "chain", "split", "occlusion", "schedule"):
        if name not in want:
            continue
        torch.manual_seed(10 + len(name))  # module inits (e.g. the head's kaiming init) use the global RNG
        if name == "split":
            chain = chain or torch.load(out / "chain.pt")
            res = section_split(chain)
        else:
            res = globals()[f"section_{name}"]()
        if name == "chain":
            chain = res
        torch.save(res, out / f"{name}.pt")
        print(f"{name}: {(out / f'{name}.pt').stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
