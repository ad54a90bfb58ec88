"""LoRA-tune ablation training step (paper Tab. 2, App. B.1): ms per step and peak memory.

    python experiments/bench/lora_step.py                          # CPU: random ViT-S/14, quick_cpu shape
    python experiments/bench/lora_step.py --shape paper --steps 5  # CUDA: random ViT-L/14 at 476x854

Rows (same sampler, losses, EMA teacher and batch in every row; random backbone weights of the real
architecture, features = its own layer output so the prior loss is meaningful):
* naive vs ours: the LoRA step recomputing the whole frozen backbone (embedding + blocks 0..first-1) for
  the step's frames, as a plain PEFT model does, vs ours, which caches the tokens entering the first
  adapted block once per frame (``model.lora.cache_prefix``) and runs only the adapted blocks.
* LoRA (ours) vs Delta-DINO: how much faster the paper's method is than the ablation (the paper
  measured ~6x on an A100: 1.5 s vs < 1 s per iteration, App. B.1).
The one-off cost of filling the prefix cache is printed below the table.
Peak memory: host RSS above the start (sampled) on CPU, ``torch.cuda.max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

from train_step import random_video, row, sync, time_module_steps  # noqa: E402

from dinotracker.backbones import build_backbone  # noqa: E402
from dinotracker.config import module_options  # noqa: E402
from dinotracker.preprocessing.features import extract_video_features  # noqa: E402
from dinotracker.training.module import DinoTrackerModule  # noqa: E402
from dinotracker.training.sampler import CorrespondenceSampler  # noqa: E402

SHAPES = {
    "quick_cpu": dict(backbone="dinov2_vits14", layer=11, hw=(238, 420), pairs=(256, 256, 256)),
    "paper": dict(backbone="dinov2_vitl14", layer=15, hw=(476, 854), pairs=(512, 1024, 1024)),
}


def build(video, backbone_name, layer, mode, dev):
    """mode: 'delta' (the paper's method), 'lora_naive' (no prefix cache) or 'lora' (ours)."""
    torch.manual_seed(0)
    model = {}
    backbone = None
    if mode != "delta":
        model = {"use_delta": False, "lora": {"enabled": True, "layer": layer, "facet": "tokens",
                                              "cache_prefix": mode == "lora"}}
        backbone = build_backbone(backbone_name, source="random", stride=7)
    opts = module_options(model=model, loss={"refined_bb": {"start": 0}, "cycle": {"start": 0, "threshold": 1e6}})
    m = DinoTrackerModule(video, **opts, backbone=backbone).to(dev)
    m.train()
    fill = 0.0
    if mode == "lora":
        sync(dev)
        t0 = time.perf_counter()
        m.cache_lora_prefix()
        sync(dev)
        fill = time.perf_counter() - t0
    return m, fill


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=list(SHAPES), default=None, help="default: quick_cpu on CPU, paper on CUDA")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--frames", type=int, default=8, help="video length T (a step uses <= 8 frames)")
    ap.add_argument("--tracks", type=int, default=5000)
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 1 on CPU, 5 on CUDA)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (default 0 on CPU, 2 on CUDA)")
    args = ap.parse_args()
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    cuda = dev.type == "cuda"
    steps = args.steps or (5 if cuda else 1)
    warmup = args.warmup if args.warmup is not None else (2 if cuda else 0)
    sh = SHAPES[args.shape or ("paper" if cuda else "quick_cpu")]
    bb = build_backbone(sh["backbone"], source="random", stride=7)
    video = random_video(args.frames, bb.embed_dim, sh["hw"], 14, 7, args.tracks, 100)
    feats = extract_video_features(bb, video.frames, sh["layer"], device=dev, progress=False)
    video = dataclasses.replace(video, features=feats)
    del bb
    fp, bpairs, cp = sh["pairs"]
    sampler = CorrespondenceSampler(video, flow_pairs=fp, bb_pairs=bpairs, cycle_pairs=cp, seed=0)
    print(f"device {dev} ({torch.cuda.get_device_name() if cuda else 'cpu'}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads; {sh['backbone']} (random weights) layer {sh['layer']}, "
          f"LoRA on blocks {sh['layer'] - 1},{sh['layer']} qkv r=8; {sh['hw'][0]}x{sh['hw'][1]}, grid "
          f"{video.grid_hw}, T={args.frames}, pairs flow/bb/cycle {fp}/{bpairs}/{cp}, "
          f"{'bf16-mixed' if cuda else 'fp32'}, {steps} timed step(s)\n")
    mem = "CUDA MB" if cuda else "host RSS MB"
    print("| what | baseline ms | ours ms | speed-up | baseline peak MB | ours peak MB | memory |")
    print("|---|---|---|---|---|---|---|")
    naive, _ = build(video, sh["backbone"], sh["layer"], "lora_naive", dev)
    t_naive = time_module_steps(naive, sampler, dev, steps, warmup, cuda)
    del naive
    ours, fill = build(video, sh["backbone"], sh["layer"], "lora", dev)
    cache_mb = ours.lora_prefix.numel() * ours.lora_prefix.element_size() / 2**20
    t_ours = time_module_steps(ours, sampler, dev, steps, warmup, cuda)
    del ours
    row("LoRA step: full frozen backbone per step vs cached prefix", t_naive, t_ours, mem)
    delta, _ = build(video, sh["backbone"], sh["layer"], "delta", dev)
    t_delta = time_module_steps(delta, sampler, dev, steps, warmup, cuda)
    row("LoRA (ours, cached prefix) vs Delta-DINO (the paper's method)", t_ours, t_delta, mem)
    print(f"\nprefix cache: {fill:.2f} s once for {args.frames} frames, {cache_mb:.0f} MB "
          f"({cache_mb / args.frames:.1f} MB per frame, fp32)")


if __name__ == "__main__":
    main()
