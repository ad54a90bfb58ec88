"""Training-step benchmark: s per step and peak memory, ours vs a baseline in the same run.

    git worktree add /tmp/base dbd4dc7                               # the code before issue 13's work
    python experiments/bench/train_step.py --baseline /tmp/base --only-steps --threads 1   # CPU: demo, quick_cpu
    python experiments/bench/train_step.py --shape paper --steps 10   # on a CUDA machine

Shapes (random frames/features/tracks/best buddies of the right sizes; content is irrelevant):
* ``demo``: ``make demo``'s model resolution 112x154 (synthetic 240x320 video, short side 112), T=24,
  ``backbone=none`` (C=256 zero features: the DINO-BB and prior terms off, Delta-DINO not zero-initialised).
* ``quick_cpu``: C=384 features, 238x427 model resolution, patch 14 / stride 7 (33x60 grid), T=16,
  256 flow / 256 BB / 256 cycle pairs (``experiment=quick_cpu``).
* ``paper``: C=1024, 476x854, 67x121 grid, 512 / 1024 / 1024 pairs (the reference).
* ``ref238``: C=1024, 238x322, T=24, 512 / 1024 / 1024 pairs: the shape at which
  ``../shared/tools/ref_train_bench.py`` times the official training loop on a CPU.

Rows:
* with ``--baseline DIR`` (CPU): the whole step (sample, EMA teacher update, all losses incl. refined-BB and
  cycle with the EMA teacher's labels, backward, Adam, LR schedule) of that checkout's code vs ours with the
  plain fp32 path vs ours with ``model.fast_conv`` (NNPACK convolutions, the ``quick_cpu``/``demo`` setting),
  all three built in this process (the baseline package imported beside ours) and run interleaved step by
  step (ABC, CBA, ...), so that a shared machine's load hits all alike; median s/step, peak RSS above the
  step's start, and the largest relative difference of the per-step losses to the baseline's (the batches
  and rounding differ between the versions, so this only shows that the losses stay of the same size).
* DINO-BB loss: point sampling with ``grid_sample`` (its backward loops over channels with atomics) vs
  row gathers from the channels-last rows the step builds once (``gather_points``), same values.
* sampler: our vectorised :class:`CorrespondenceSampler` vs a reference-style per-point loop
  sampler (same algorithm: multinomial per flow point, Python index lookups per point).
* step (CUDA): plain fp32 eager step vs ours with bf16-mixed autocast; also with channels-last
  Delta-DINO (measured slower on an H100: reflect padding / BlurPool) and, with ``--compile``,
  torch.compile of Delta-DINO (recompiles per distinct frame count; no gain measured).
Peak memory: host RSS above the start (sampled) on CPU, ``torch.cuda.max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from dinotracker.config import module_options  # noqa: E402
from dinotracker.geometry import Resize, patch_grid_size  # noqa: E402
from dinotracker.preprocessing.types import BestBuddies, PreprocessedVideo  # noqa: E402
from dinotracker.training.module import DinoTrackerModule  # noqa: E402
from dinotracker.training.sampler import (  # noqa: E402
    Batch,
    Correspondences,
    CorrespondenceSampler,
    RegionPairs,
    mask_at,
)
from dinotracker.utils.memory import PeakMemory  # noqa: E402

SHAPES = {
    "demo": dict(dim=256, hw=(112, 154), patch=14, stride=7, pairs=(256, 256, 256), frames=24, features=False),
    "quick_cpu": dict(dim=384, hw=(238, 427), patch=14, stride=7, pairs=(256, 256, 256), frames=16, features=True),
    "paper": dict(dim=1024, hw=(476, 854), patch=14, stride=7, pairs=(512, 1024, 1024), frames=16, features=True),
    # ../shared/tools/ref_train_bench.py's CPU shape: the official loop at 238x322, 24 frames, its pair counts
    "ref238": dict(dim=1024, hw=(238, 322), patch=14, stride=7, pairs=(512, 1024, 1024), frames=24, features=True),
}


def random_video(frames: int, dim: int, hw: tuple[int, int], patch: int, stride: int, tracks: int,
                 bb_per_pair: int, seed: int = 0) -> PreprocessedVideo:
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    gh, gw = patch_grid_size(hw, patch, stride)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    masks = torch.stack([((xx - w / 2 - 3 * k) / (w / 5)) ** 2 + ((yy - h / 2) / (h / 4)) ** 2 <= 1
                         for k in range(frames)])
    start = torch.rand(tracks, 2, generator=g) * torch.tensor([w - 1.0, h - 1.0])
    steps = torch.randn(tracks, frames, 2, generator=g).cumsum(1)
    tr = (start[:, None] + steps).clamp(torch.zeros(2), torch.tensor([w - 1.0, h - 1.0]))
    t0 = torch.randint(0, frames - 1, (tracks,), generator=g)
    t1 = torch.minimum(t0 + 2 + torch.randint(0, frames, (tracks,), generator=g), torch.tensor(frames))
    ar = torch.arange(frames)[None]
    tr[(ar < t0[:, None]) | (ar >= t1[:, None])] = float("nan")
    fg = mask_at(masks, t0, tr[torch.arange(tracks), t0])
    pairs = [(s, t) for s in range(frames) for t in range(s + 1, frames)]
    n = len(pairs) * bb_per_pair
    st = torch.tensor(pairs).repeat_interleave(bb_per_pair, 0)
    cells = torch.randint(0, gh * gw, (n, 2), generator=g)
    xy = torch.stack([(cells % gw) * stride + patch / 2, (cells // gw) * stride + patch / 2], -1).float()
    cos, ratio = torch.rand(n, generator=g), torch.rand(n, generator=g)
    weight = torch.sigmoid(27 * (1 - ratio) - 5.7) * (2 * cos ** 3).clamp_min(0)
    bb = BestBuddies(st[:, 0], st[:, 1], xy[:, 0], xy[:, 1], cos, ratio, weight)
    return PreprocessedVideo(
        name="bench", frames=torch.randint(0, 256, (frames, 3, h, w), dtype=torch.uint8, generator=g),
        features=torch.randn(frames, dim, gh, gw, generator=g).to(torch.float16), patch=patch, stride=stride,
        tracks=tr, tracks_fg=fg, fg_masks=masks, best_buddies=bb, resize=Resize(hw, hw),
        frame_indices=np.arange(frames))


class LoopSampler(CorrespondenceSampler):
    """The reference's sampling algorithm with its per-point Python loops (baseline only)."""

    def sample(self, step=None):
        step = self.next_step if step is None else step
        self.next_step = step + 1
        g = self.generator(step)
        t, k = self.num_frames, min(self.flow_frames, self.num_frames)
        n_fg = int(self.flow_pairs * self.fg_ratio)
        groups = []
        for which, n in ((0, n_fg), (1, self.flow_pairs - n_fg)):
            rows, valid = self.rows[which], self.valid[which]
            while True:
                fr = torch.randperm(t, generator=g)[:k]
                v = valid[:, fr]
                elig = torch.nonzero(v.sum(1) >= 2, as_tuple=True)[0]
                if len(elig) >= 2:
                    break
            pick = elig[torch.randperm(len(elig), generator=g)[:n]]
            src, dst, sxy, dxy = [], [], [], []
            for i in pick.tolist():  # per point: multinomial over its valid frames
                two = torch.multinomial(v[i].float(), 2, replacement=False, generator=g)
                a, b = int(fr[two[0]]), int(fr[two[1]])
                r = int(rows[i])
                src.append(a)
                dst.append(b)
                sxy.append(self.tracks[r, a])
                dxy.append(self.tracks[r, b])
            groups.append((fr, src, dst, sxy, dxy, which))
        frames_set = sorted(set(groups[0][0].tolist()) | set(groups[1][0].tolist()))
        parts = []
        for _fr, src, dst, sxy, dxy, which in groups:
            s_slot = torch.tensor([frames_set.index(a) for a in src])  # per-point index lookups
            d_slot = torch.tensor([frames_set.index(b) for b in dst])
            parts.append(Correspondences(s_slot, d_slot, torch.stack(sxy), torch.stack(dxy),
                                         torch.ones(len(src)), torch.tensor([which == 0] * len(src))))
        frames = torch.tensor(frames_set)
        nf = len(frames)
        # DINO-BB: per frame pair, boolean search over all best buddies, fg split, random subset
        bb, out = self.bb, []
        s = torch.randint(nf, (self.bb_frame_pairs,), generator=g)
        tt = (s + torch.randint(1, nf, (self.bb_frame_pairs,), generator=g)) % nf
        n_fg_bb = int(self.bb_pairs // self.bb_frame_pairs * self.region_fg_ratio)
        n_bg_bb = self.bb_pairs // self.bb_frame_pairs - n_fg_bb
        for a, b in zip(s.tolist(), tt.tolist()):
            fa, fb = int(frames[a]), int(frames[b])
            fwd = torch.nonzero((bb.src_t == fa) & (bb.dst_t == fb), as_tuple=True)[0]
            bwd = torch.nonzero((bb.src_t == fb) & (bb.dst_t == fa), as_tuple=True)[0]
            sxy = torch.cat([bb.src_xy[fwd], bb.dst_xy[bwd]])
            dxy = torch.cat([bb.dst_xy[fwd], bb.src_xy[bwd]])
            wts = torch.cat([bb.weight[fwd], bb.weight[bwd]])
            fgm = mask_at(self.masks, torch.full((len(sxy),), fa), sxy)
            for want, quota in ((fgm, n_fg_bb), (~fgm, n_bg_bb)):
                idx = torch.nonzero(want, as_tuple=True)[0]
                idx = idx[torch.randperm(len(idx), generator=g)[:quota]]
                out.append(Correspondences(torch.tensor([a] * len(idx)), torch.tensor([b] * len(idx)),
                                           sxy[idx], dxy[idx], wts[idx], want[idx]))
        dino_bb = Correspondences.cat(out)
        # cycle: per frame pair, nonzero over the mask + randperm
        h, w = self.masks.shape[-2:]
        s = torch.randint(nf, (self.cycle_frame_pairs,), generator=g)
        tt = torch.randint(nf, (self.cycle_frame_pairs,), generator=g)
        nc_fg = int(self.cycle_pairs // self.cycle_frame_pairs * self.region_fg_ratio)
        nc_bg = self.cycle_pairs // self.cycle_frame_pairs - nc_fg
        out = []
        for a, b in zip(s.tolist(), tt.tolist()):
            m = self.masks[int(frames[a])]
            for want, quota in ((m, nc_fg), (~m, nc_bg)):
                yx = torch.nonzero(want)
                yx = yx[torch.randperm(len(yx), generator=g)[:quota]]
                xy = yx.flip(-1).float() + 0.5
                out.append(Correspondences(torch.tensor([a] * len(xy)), torch.tensor([b] * len(xy)), xy,
                                           torch.full_like(xy, float("nan")), torch.ones(len(xy)),
                                           torch.tensor([want is m] * len(xy))))
        cycle = Correspondences.cat(out)
        p = self.bb_frame_pairs
        s = torch.randint(nf, (p,), generator=g)
        tt = torch.randint(nf, (p,), generator=g)
        n_fg_r = int(self.bb_pairs // p * self.region_fg_ratio)
        hw = self.grid_hw[0] * self.grid_hw[1]
        refined = RegionPairs(s, tt, torch.rand(p, hw, generator=g), self.cell_fg[frames[s]], n_fg_r,
                              self.bb_pairs // p - n_fg_r)
        return Batch(step=step, frames=frames, flow=Correspondences.cat(parts), dino_bb=dino_bb,
                     refined_bb=refined, cycle=cycle)


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def time_sampler(sampler, steps: int) -> tuple[float, float]:
    sampler.sample(0)
    with PeakMemory() as pm:
        t0 = time.perf_counter()
        for k in range(1, steps + 1):
            sampler.sample(k)
        dt = (time.perf_counter() - t0) / steps
    return dt * 1e3, pm.peak_mb


def time_steps(video, sampler, dev, steps: int, warmup: int, mixed: bool, channels_last: bool,
               compile_: bool) -> tuple[float, float]:
    torch.manual_seed(0)
    opts = module_options(model={"channels_last": channels_last, "compile": compile_},
                          loss={"refined_bb": {"start": 0}, "cycle": {"start": 0, "threshold": 1e6}})
    m = DinoTrackerModule(video, **opts).to(dev)
    m.setup("fit")
    m.train()
    return time_module_steps(m, sampler, dev, steps, warmup, mixed)


def time_module_steps(m, sampler, dev, steps: int, warmup: int, mixed: bool) -> tuple[float, float]:
    """ms per full training step (sample, teacher update, losses, backward, Adam) and peak memory MB of
    the module ``m`` (already on ``dev``, train mode); ``mixed``: bf16 autocast."""
    cfg = m.configure_optimizers()
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    ctx = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if mixed else contextlib.nullcontext

    def one(k):
        batch = sampler.sample(k).to(dev)
        m.update_teacher(k)
        with ctx():
            total, _ = m.compute_losses(batch, step=10**6)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        sched.step()

    for k in range(warmup):
        one(k)
    sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with PeakMemory() as pm:
        t0 = time.perf_counter()
        for k in range(warmup, warmup + steps):
            one(k)
        sync(dev)
        dt = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else pm.peak_mb
    return dt * 1e3, peak


def time_bb_loss(video, dev, pairs: int, use_rows: bool, repeats: int = 3) -> tuple[float, float]:
    """DINO-BB loss forward + backward on 8 frames' maps: grid_sample point sampling (baseline) vs row gathers
    from the channels-last rows the step already builds (ours). Median ms, peak MB."""
    from dinotracker.models.tracker import point_rows
    from dinotracker.training.losses import dino_bb_loss

    g = torch.Generator().manual_seed(0)
    f = min(8, video.num_frames)
    maps0 = video.features[:f].float().to(dev)
    gh, gw = video.grid_hw
    idx = [torch.randint(0, f, (pairs,), generator=g).to(dev) for _ in range(2)]
    s, c = video.stride, video.patch / 2
    xy = [torch.stack([torch.randint(0, gw, (pairs,), generator=g) * s + c,
                       torch.randint(0, gh, (pairs,), generator=g) * s + c], -1).float().to(dev) for _ in range(2)]
    wts = torch.rand(pairs, generator=g).to(dev)
    times = []
    with PeakMemory() as pm:
        for _ in range(repeats):
            maps = maps0.clone().requires_grad_(True)
            rows = point_rows(maps) if use_rows else None
            sync(dev)
            t0 = time.perf_counter()
            dino_bb_loss(maps, idx[0], xy[0], idx[1], xy[1], wts, video.patch, video.stride, rows=rows).backward()
            sync(dev)
            times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3, pm.peak_mb


# --------------------------------------------------------------------------- ours vs an older checkout, interleaved
def import_baseline(path: Path) -> dict:
    """Import the ``dinotracker`` package of another checkout (e.g. ``git worktree add /tmp/base dbd4dc7``)
    beside ours in this process: its modules are loaded under the same names, kept aside and ours restored,
    so both versions run in the same process, interleaved step by step. Returns the modules the bench uses."""
    path = Path(path).resolve()
    if not (path / "dinotracker" / "training" / "module.py").is_file():
        raise SystemExit(f"--baseline {path}: not a dinotracker checkout (git worktree add {path} dbd4dc7)")
    ours = {k: v for k, v in sys.modules.items() if k == "dinotracker" or k.startswith("dinotracker.")}
    for k in ours:
        del sys.modules[k]
    sys.path.insert(0, str(path))
    try:
        mods = {n: importlib.import_module(f"dinotracker.training.{n}") for n in ("module", "sampler")}
    finally:
        sys.path.remove(str(path))
        for k in [k for k in sys.modules if k == "dinotracker" or k.startswith("dinotracker.")]:
            del sys.modules[k]
        sys.modules.update(ours)
    return mods


def loss_overrides(features: bool) -> dict:
    """All losses on from step 0 (cycle: every point kept); without DINO features (``backbone=none``, the
    demo) the DINO-BB and prior terms are off as the config turns them off (weights 0 work in both versions)."""
    loss = {"refined_bb": {"start": 0}, "cycle": {"start": 0, "threshold": 1e6}}
    if not features:
        loss.update(dino_bb={"weight": 0.0}, prior={"norm_weight": 0.0, "angle_weight": 0.0})
    return loss


def build_step(module_cls, sampler_cls, video, sh, options: dict):
    """(one(k) -> total loss, module) for one version of the code: its own sampler, module, Adam, LR schedule."""
    fp, bp, cp = sh["pairs"]
    sampler = sampler_cls(video, flow_pairs=fp, bb_pairs=bp, cycle_pairs=cp, seed=0)
    torch.manual_seed(0)
    m = module_cls(video, **options)
    m.setup("fit")
    m.train()
    cfg = m.configure_optimizers()
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]

    def one(k):
        batch = sampler.sample(k)
        m.update_teacher(k)
        total, _ = m.compute_losses(batch, step=10**6)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        sched.step()
        return float(total.detach())

    return one, m


def _trim():
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def interleaved_steps(fns: dict, steps: int, warmup: int) -> dict:
    """Median s/step, peak MB and per-step losses of each callable in ``fns``, run in alternating order
    (ABAB..., BABA.. every other round), so load changes on a shared machine hit both alike."""
    names = list(fns)
    out = {n: {"t": [], "mb": [], "loss": []} for n in names}
    for k in range(warmup + steps):
        order = names if k % 2 == 0 else names[::-1]
        for n in order:
            _trim()
            with PeakMemory() as pm:
                t0 = time.perf_counter()
                v = fns[n](k)
                dt = time.perf_counter() - t0
            out[n]["loss"].append(v)
            if k >= warmup:
                out[n]["t"].append(dt)
                out[n]["mb"].append(pm.peak_mb)
    return {n: (float(np.median(r["t"])), float(max(r["mb"])), r["loss"]) for n, r in out.items()}


def compare_with_baseline(base_mods: dict, video, sh, shape: str, threads: list[int], steps: int,
                          warmup: int) -> None:
    """dbd4dc7's step vs ours (plain fp32 path) vs ours with ``model.fast_conv`` (the quick_cpu / demo
    setting), interleaved; loss columns: max relative difference of the per-step losses to dbd4dc7's."""
    loss = loss_overrides(sh["features"])
    model = {} if sh["features"] else {"delta_zero_init": False}
    print("\n| threads | dbd4dc7 s/step | ours plain s/step | ours fast_conv s/step | speed-up plain / fast | "
          "peak MB dbd4dc7 / plain / fast | loss rel. diff plain / fast |")
    print("|---|---|---|---|---|---|---|")
    for nt in threads:
        torch.set_num_threads(nt)
        fns = {"base": build_step(base_mods["module"].DinoTrackerModule,
                                  base_mods["sampler"].CorrespondenceSampler, video, sh,
                                  dict(model=model, loss=loss))[0],
               "plain": build_step(DinoTrackerModule, CorrespondenceSampler, video, sh,
                                   module_options(model=model, loss=loss))[0],
               "fast": build_step(DinoTrackerModule, CorrespondenceSampler, video, sh,
                                  module_options(model={**model, "fast_conv": True}, loss=loss))[0]}
        r = interleaved_steps(fns, steps, warmup)
        tb, mb, lb = r["base"]

        def diff(ls, lb=lb):
            return max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(lb, ls))

        print(f"| {nt} | {tb:.2f} | {r['plain'][0]:.2f} | {r['fast'][0]:.2f} | {tb / r['plain'][0]:.2f}x / "
              f"**{tb / r['fast'][0]:.2f}x** | {mb:.0f} / {r['plain'][1]:.0f} / {r['fast'][1]:.0f} | "
              f"{diff(r['plain'][2]):.1e} / {diff(r['fast'][2]):.1e} |", flush=True)

def row(name, base, ours, unit_mem):
    (tb, mb), (to, mo) = base, ours
    print(f"| {name} | {tb:.1f} | {to:.1f} | {tb / to:.2f}x | {mb:.0f} | {mo:.0f} | {unit_mem} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=[*SHAPES, "auto"], default="auto",
                    help="auto: demo and quick_cpu on CPU, quick_cpu and paper on CUDA")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--frames", type=int, default=None, help="video length T (default: the shape's)")
    ap.add_argument("--tracks", type=int, default=20000, help="trajectories N")
    ap.add_argument("--bb-per-pair", type=int, default=200)
    ap.add_argument("--baseline", type=Path, default=None,
                    help="a checkout of the code to compare with, timed interleaved in this process "
                         "(git worktree add /tmp/base dbd4dc7; CPU)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads for the --baseline rows (default: torch's); one value per process, "
                         "since NNPACK sizes its thread pool once, at its first call")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 5 on CPU, 5 on CUDA)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (default 1 on CPU, 2 on CUDA)")
    ap.add_argument("--sampler-steps", type=int, default=20)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd Delta-DINO (CUDA)")
    ap.add_argument("--no-steps", action="store_true", help="only the sampler and loss rows (no full steps)")
    ap.add_argument("--only-steps", action="store_true", help="skip the sampler and loss rows")
    args = ap.parse_args()
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(auto if args.device == "auto" else args.device)
    if args.steps is None:
        args.steps = 5
    if args.warmup is None:
        args.warmup = 2 if dev.type == "cuda" else 1
    shapes = ([args.shape] if args.shape != "auto"
              else (["quick_cpu", "paper"] if dev.type == "cuda" else ["demo", "quick_cpu"]))
    base_mods = import_baseline(args.baseline) if args.baseline is not None else None
    print(f"device {dev} ({torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'}), torch "
          f"{torch.__version__}, {torch.get_num_threads()} CPU threads, N={args.tracks}"
          + (f", baseline {args.baseline}" if base_mods else ""))
    for shape in shapes:
        sh = SHAPES[shape]
        frames = args.frames or sh["frames"]
        video = random_video(frames, sh["dim"], sh["hw"], sh["patch"], sh["stride"], args.tracks,
                             args.bb_per_pair)
        if not sh["features"]:
            video.features.zero_()  # backbone=none
        fp, bp, cp = sh["pairs"]
        kw = dict(flow_pairs=fp, bb_pairs=bp, cycle_pairs=cp, seed=0)
        print(f"\n### {shape}: T={frames}, C={sh['dim']}, {sh['hw'][0]}x{sh['hw'][1]}, grid {video.grid_hw}, "
              f"pairs flow/bb/cycle {fp}/{bp}/{cp}")
        if base_mods is not None and not args.no_steps:
            if dev.type != "cpu":
                raise SystemExit("--baseline compares on CPU only")
            compare_with_baseline(base_mods, video, sh, shape, [args.threads or torch.get_num_threads()],
                                  args.steps, args.warmup)
        if args.only_steps:
            continue
        vec, loop = CorrespondenceSampler(video, **kw), LoopSampler(video, **kw)
        mem = "host RSS MB" if dev.type == "cpu" else "CUDA MB"
        print("\n| what | baseline ms | ours ms | speed-up | baseline peak MB | ours peak MB | memory |")
        print("|---|---|---|---|---|---|---|")
        row("sampler (per-point loop vs vectorised)", time_sampler(loop, args.sampler_steps),
            time_sampler(vec, args.sampler_steps), "host RSS MB")
        if sh["features"]:
            row(f"DINO-BB loss fwd+bwd, {bp} pairs (grid_sample vs row-gather sampling)",
                time_bb_loss(video, dev, bp, False), time_bb_loss(video, dev, bp, True), "host RSS MB")
        if args.no_steps or dev.type == "cpu":
            continue
        base = time_steps(video, vec, dev, args.steps, args.warmup, False, False, False)
        ours = time_steps(video, vec, dev, args.steps, args.warmup, True, False, False)
        row("step: fp32 eager vs bf16-mixed", base, ours, mem)
        cl = time_steps(video, vec, dev, args.steps, args.warmup, True, True, False)
        row("step: fp32 eager vs bf16-mixed + channels_last", base, cl, mem)
        if args.compile:
            comp = time_steps(video, vec, dev, args.steps, max(args.warmup, 3), True, False, True)
            row("step: fp32 eager vs bf16-mixed + compile (Delta-DINO)", base, comp, mem)


if __name__ == "__main__":
    main()
