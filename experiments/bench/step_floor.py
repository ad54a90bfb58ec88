"""How fast can the CPU training step get? Delta-DINO's convolutions alone against issue 13's 3x budget.

    git worktree add /tmp/base dbd4dc7                           # the code before issue 13's work
    python experiments/bench/step_floor.py --baseline /tmp/base --threads 2

Per shape (``train_step.py``'s random videos; ``demo`` and ``quick_cpu`` by default) it times, in one process:

* the whole training step of dbd4dc7 and ours with ``model.fast_conv`` (the CPU setting), interleaved step by
  step as ``train_step.py --baseline`` does; the 3x budget is a third of dbd4dc7's median s/step;
* the convolutions of Delta-DINO that such a step has to run, with the kernels the fast path uses (NNPACK's FFT
  tiles for the forwards and input gradients, :mod:`~dinotracker.models.fft_conv`'s tiled FFTs or oneDNN's direct
  kernel for the weight gradients, as planned): the student's forward + backward and the EMA teacher's forward,
  at the exact layer shapes of the step (recorded from a forward of the module's own Delta-DINO on the frame
  count the step's sampler drew). Best of 3 each.

Nothing else of the step is in that number (BatchNorm, ReLU, padding, BlurPool, the refiner's convolutions, the
cost volumes, Adam), so where the convolutions alone take longer than the budget, no arrangement of the rest
reaches it with these kernels: only faster convolution kernels would. The table says so per shape.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

import train_step as ts  # noqa: E402

from dinotracker.config import module_options  # noqa: E402
from dinotracker.models import delta_dino as dd  # noqa: E402
from dinotracker.training.module import DinoTrackerModule  # noqa: E402
from dinotracker.training.sampler import CorrespondenceSampler  # noqa: E402


def record_convs(delta: torch.nn.Module, images: torch.Tensor) -> list[tuple]:
    """(padded input shape, weight, bias, dilation) of each NNPACK convolution of one fast-path forward."""
    calls, run = [], dd._nnpack_conv

    def rec(x, weight, bias, dilation):
        calls.append((tuple(x.shape), weight.detach(), None if bias is None else bias.detach(), dilation))
        return run(x, weight, bias, dilation)

    dd._nnpack_conv = rec  # DeltaDINO.forward looks the function up in its module at each call
    try:
        with torch.no_grad():
            delta(images)
    finally:
        dd._nnpack_conv = run
    n_conv = sum(isinstance(m, torch.nn.Conv2d) for m in delta.modules())
    if len(calls) != n_conv:  # a refactor that bypasses the hook must not report a floor of 0
        raise SystemExit(f"recorded {len(calls)} NNPACK convolutions for Delta-DINO's {n_conv}: the fast path "
                         "no longer goes through delta_dino._nnpack_conv; update record_convs")
    return calls


def best_of(fn, n: int = 3) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def conv_seconds(calls: list[tuple], seed: int = 0) -> tuple[float, float]:
    """(student forward + backward, teacher forward) seconds of the recorded convolutions: the backward gives
    the weight and bias gradients of every layer and the input gradient of every layer but the first (the
    frames need none), exactly what the step's autograd asks of these layers."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(s, generator=g) for s, *_ in calls]
    with torch.no_grad():
        gys = [torch.randn(dd._nnpack_conv(x, w, b, d).shape, generator=g) for x, (_, w, b, d) in zip(xs, calls)]

    def student():
        for i, (x, (_, w, b, d), gy) in enumerate(zip(xs, calls, gys)):
            wl = w.clone().requires_grad_()
            bl = None if b is None else b.clone().requires_grad_()
            y = dd._nnpack_conv(x.requires_grad_(i > 0), wl, bl, d)
            y.backward(gy)
            x.grad = None

    def teacher():
        with torch.no_grad():
            for x, (_, w, b, d) in zip(xs, calls):
                dd._nnpack_conv(x, w, b, d)

    student()  # NNPACK's first call sizes its thread pool
    return best_of(student), best_of(teacher)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=list(ts.SHAPES), action="append",
                    help="shapes of train_step.py (default: demo and quick_cpu)")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="checkout of dbd4dc7 (git worktree add /tmp/base dbd4dc7); without it only our step")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per version")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--tracks", type=int, default=20000)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not dd.nnpack_available():
        raise SystemExit("this torch has no NNPACK: the CPU fast path (and this floor) does not apply")
    base = ts.import_baseline(args.baseline) if args.baseline is not None else None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", baseline {args.baseline}" if base else ""))
    out = []
    for shape in args.shape or ["demo", "quick_cpu"]:
        sh = ts.SHAPES[shape]
        video = ts.random_video(sh["frames"], sh["dim"], sh["hw"], sh["patch"], sh["stride"], args.tracks, 200)
        if not sh["features"]:
            video.features.zero_()
        loss = ts.loss_overrides(sh["features"])
        model = {} if sh["features"] else {"delta_zero_init": False}
        fns = {}
        if base is not None:
            fns["base"] = ts.build_step(base["module"].DinoTrackerModule, base["sampler"].CorrespondenceSampler,
                                        video, sh, dict(model=model, loss=loss))[0]
        fast, module = ts.build_step(DinoTrackerModule, CorrespondenceSampler, video, sh,
                                     module_options(model={**model, "fast_conv": True}, loss=loss))
        fns["fast"] = fast
        r = ts.interleaved_steps(fns, args.steps, args.warmup)
        # the frame counts the step's sampler drew in the timed steps (the same seed: the same batches)
        sampler = CorrespondenceSampler(video, flow_pairs=sh["pairs"][0], bb_pairs=sh["pairs"][1],
                                        cycle_pairs=sh["pairs"][2], seed=0)
        counts = [len(sampler.sample(k).frames) for k in range(args.warmup, args.warmup + args.steps)]
        nf = int(statistics.median_low(counts))
        delta = module.tracker.delta_dino
        images = module.frames[:nf].float() / 255.0
        s_conv, t_conv = conv_seconds(record_convs(delta, images))
        row = dict(shape=shape, frames=nf, ours=r["fast"][0], student=s_conv, teacher=t_conv,
                   base=r["base"][0] if base is not None else None)
        out.append(row)
        print(f"{shape}: {row}", flush=True)
    print("\n| shape | frames/step | dbd4dc7 s/step | 3x budget | ours (fast_conv) s/step | Delta-DINO convs: "
          "student fwd+bwd / teacher fwd / sum | convs vs budget | rest of our step |")
    print("|---|---|---|---|---|---|---|---|")
    for row in out:
        conv = row["student"] + row["teacher"]
        if row["base"] is not None:
            budget = row["base"] / 3
            b_txt, bud, verdict = f"{row['base']:.2f}", f"{budget:.2f}", (
                f"{conv / budget:.2f}x: " + ("over, out of reach with these kernels" if conv > budget
                                             else f"{budget - conv:.2f} s left for the rest"))
        else:
            b_txt = bud = verdict = "-"
        print(f"| {row['shape']} | {row['frames']} | {b_txt} | {bud} | {row['ours']:.2f} | {row['student']:.2f} / "
              f"{row['teacher']:.2f} / **{conv:.2f}** | {verdict} | {row['ours'] - conv:.2f} |")


if __name__ == "__main__":
    main()
