"""Training callbacks: periodic track visualisation, loss-curve plot, progress bar factory.

Images are drawn with OpenCV (loss curves with matplotlib, :mod:`dinotracker.viz.plots`), written as PNG under the
run folder (``trainer.default_root_dir``) and, when the logger can take images (TensorBoard's
``add_image``, W&B's ``log_image``), logged too.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import torch

log = logging.getLogger(__name__)


def progress_bar(every_n_steps: int = 50, every_s: float = 30.0):
    """On a terminal the Rich bar (tqdm without ``rich``) counting steps of the whole run; otherwise
    log lines every ``every_n_steps`` steps or ``every_s`` seconds (:mod:`dinotracker.training.progress`)."""
    from dinotracker.training.progress import progress_callback

    return progress_callback(every_n_steps=every_n_steps, every_s=every_s)


def _run_dir(trainer) -> Path:
    return Path(trainer.default_root_dir or ".")


def _colors(n: int) -> list[tuple[int, int, int]]:
    """n distinct BGR colours (rainbow over hue)."""
    hsv = np.stack([np.linspace(0, 179, n, endpoint=False), np.full(n, 230), np.full(n, 255)], -1)
    bgr = cv2.cvtColor(hsv.astype(np.uint8)[None], cv2.COLOR_HSV2BGR)[0]
    return [tuple(int(c) for c in x) for x in bgr]


def _log_image(trainer, tag: str, rgb: np.ndarray, step: int) -> None:
    for lg in trainer.loggers:
        exp = getattr(lg, "experiment", None)
        try:
            if hasattr(exp, "add_image"):  # TensorBoard SummaryWriter
                exp.add_image(tag, rgb, step, dataformats="HWC")
            elif hasattr(lg, "log_image"):  # W&B
                lg.log_image(key=tag, images=[rgb], step=step)
        except Exception as e:  # a logger failing must not stop training
            log.warning("could not log image %s to %s: %s", tag, type(lg).__name__, e)


def track_grid_image(frames: np.ndarray, tracks: np.ndarray, frame_ids: list[int], tile_width: int = 320,
                     cols: int = 4, trail: bool = True) -> np.ndarray:
    """Grid of frames with tracked points drawn (RGB uint8).

    frames uint8 [K, H, W, 3] RGB of the frames ``frame_ids``; tracks [N, K, 2] raster (x, y)
    at the frames' resolution. Each tile shows the points at that frame and (``trail``) their path
    so far.
    """
    k, h, w = frames.shape[:3]
    scale = min(1.0, tile_width / w)
    tw, th = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    cols = max(1, min(cols, k))
    rows = math.ceil(k / cols)
    canvas = np.zeros((rows * th, cols * tw, 3), np.uint8)
    colors = _colors(max(1, tracks.shape[0]))
    for j in range(k):
        tile = cv2.cvtColor(cv2.resize(frames[j], (tw, th), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2BGR)
        pts = tracks[:, : j + 1] * scale  # [N, j+1, 2]
        for i in range(tracks.shape[0]):
            if trail and j > 0:
                poly = np.round(pts[i] - 0.5).astype(np.int32)
                cv2.polylines(tile, [poly], False, colors[i], 1, cv2.LINE_AA)
            x, y = pts[i, -1] - 0.5
            if np.isfinite(x) and np.isfinite(y):
                cv2.circle(tile, (int(round(x)), int(round(y))), 3, colors[i], -1, cv2.LINE_AA)
        cv2.putText(tile, f"t={frame_ids[j]}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                    cv2.LINE_AA)
        r, c = divmod(j, cols)
        canvas[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = tile
    return cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)


class TrackVisualization(L.Callback):
    """Every ``every_n_steps`` steps, track a grid of query points of ``query_frame`` through up to
    ``num_frames`` evenly spaced frames with the current model (eval mode, no grad) and save a
    PNG grid to ``<run>/<dirname>/step_XXXXXX.png`` (also logged when the logger takes images).

    Needs a module with ``track_points(query_frame, xy, frames)`` and a ``frames`` buffer
    (:class:`~dinotracker.training.module.DinoTrackerModule`).
    """

    def __init__(self, every_n_steps: int = 1000, num_points: int = 16, num_frames: int = 8,
                 query_frame: int = 0, dirname: str = "track_viz", tile_width: int = 320):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every, self.num_points, self.num_frames = int(every_n_steps), int(num_points), int(num_frames)
        self.query_frame, self.dirname, self.tile_width = int(query_frame), dirname, int(tile_width)
        self.written: list[Path] = []

    def query_points(self, pl_module) -> torch.Tensor:
        """Up to ``num_points`` model-raster points on a regular grid over the query frame."""
        h, w = pl_module.frames.shape[-2:]
        n = max(1, self.num_points)
        ny = max(1, int(round(math.sqrt(n * h / w))))
        nx = max(1, math.ceil(n / ny))
        ys = (torch.arange(ny) + 0.5) * h / ny
        xs = (torch.arange(nx) + 0.5) * w / nx
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([gx, gy], -1).reshape(-1, 2)[:n]

    def render(self, trainer, pl_module, step: int) -> Path:
        t = pl_module.frames.shape[0]
        k = min(self.num_frames, t)
        ids = torch.linspace(0, t - 1, k).round().long().unique()
        q = self.query_points(pl_module)
        tracks = pl_module.track_points(self.query_frame, q, ids).float().cpu().numpy()  # [N, K, 2]
        frames = pl_module.frames[ids.to(pl_module.frames.device)].permute(0, 2, 3, 1).cpu().numpy()
        img = track_grid_image(np.ascontiguousarray(frames), tracks, ids.tolist(), self.tile_width)
        out = _run_dir(trainer) / self.dirname / f"step_{step:06d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        _log_image(trainer, "train/tracks", img, step)
        self.written.append(out)
        return out

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every == 0 and trainer.is_global_zero:
            try:
                self.render(trainer, pl_module, step)
            except Exception as e:  # visualisation must never kill a long fit
                log.warning("track visualisation failed at step %d: %s", step, e)


def plot_curves(history: dict[str, list[tuple[int, float]]], width: int = 900, panel_height: int = 180,
                log_scale: bool = True) -> np.ndarray:
    """Stacked line plots (one panel per series) drawn with OpenCV -> RGB uint8 image."""
    names = [n for n in sorted(history) if history[n]]
    if not names:
        raise ValueError("no data to plot")
    img = np.full((panel_height * len(names), width, 3), 255, np.uint8)
    ml, mr, mt, mb = 70, 15, 22, 18
    for i, name in enumerate(names):
        y0 = i * panel_height
        steps = np.array([s for s, _ in history[name]], np.float64)
        vals = np.array([v for _, v in history[name]], np.float64)
        ok = np.isfinite(vals) & ((vals > 0) if log_scale else True)
        use_log = log_scale and ok.sum() > 0 and (vals[np.isfinite(vals)] > 0).all()
        ok = np.isfinite(vals) & ((vals > 0) if use_log else True)
        steps, vals = steps[ok], vals[ok]
        cv2.putText(img, name + (" (log)" if use_log else ""), (ml, y0 + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (0, 0, 0), 1, cv2.LINE_AA)
        x_lo, x_hi, y_lo, y_hi = ml, width - mr, y0 + panel_height - mb, y0 + mt
        cv2.rectangle(img, (x_lo, y_hi), (x_hi, y_lo), (180, 180, 180), 1)
        if len(vals) == 0:
            continue
        v = np.log10(vals) if use_log else vals
        vmin, vmax = float(v.min()), float(v.max())
        if vmax - vmin < 1e-12:
            vmin, vmax = vmin - 0.5, vmax + 0.5
        smin, smax = float(steps.min()), float(max(steps.max(), steps.min() + 1))
        px = x_lo + (steps - smin) / (smax - smin) * (x_hi - x_lo)
        py = y_lo - (v - vmin) / (vmax - vmin) * (y_lo - y_hi)
        pts = np.stack([px, py], -1).round().astype(np.int32)
        cv2.polylines(img, [pts], False, (200, 80, 30), 1, cv2.LINE_AA)
        grey, font = (60, 60, 60), cv2.FONT_HERSHEY_SIMPLEX
        for val, yy in ((vmax, y_hi), (vmin, y_lo)):
            lab = f"{10 ** val:.3g}" if use_log else f"{val:.3g}"
            cv2.putText(img, lab, (2, int(yy) + 4), font, 0.35, grey, 1, cv2.LINE_AA)
        cv2.putText(img, f"{int(smin)}", (x_lo, y_lo + 13), font, 0.35, grey, 1)
        cv2.putText(img, f"{int(smax)}", (x_hi - 40, y_lo + 13), font, 0.35, grey, 1)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class LossCurvePlot(L.Callback):
    """Records the ``terms`` returned by ``training_step`` every ``every_n_steps`` steps and writes
    ``<run>/<filename>`` (one panel per loss term) at the end of training. The history is kept in
    checkpoints (callback state), so a resumed run plots the whole curve."""

    def __init__(self, every_n_steps: int = 10, filename: str = "loss_curves.png", max_points: int = 5000):
        self.every, self.filename, self.max_points = max(1, int(every_n_steps)), filename, int(max_points)
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.path: Path | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step - 1  # the step that just ran
        if step % self.every or not isinstance(outputs, dict):
            return
        terms = outputs.get("terms") or {"loss": outputs.get("loss")}
        for k, v in terms.items():
            if v is None:
                continue
            series = self.history.setdefault(k, [])
            series.append((step, float(v)))
            if len(series) > self.max_points:  # keep memory bounded: drop every other point
                self.history[k] = series[::2]

    def on_train_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        if not any(self.history.values()):
            log.info("LossCurvePlot: nothing recorded, no plot written")
            return
        try:
            from dinotracker.viz.plots import loss_curves_image

            img = loss_curves_image(self.history, smooth=10 if max(map(len, self.history.values())) >= 50 else 0)
        except ImportError:  # matplotlib missing: the OpenCV drawing
            img = plot_curves(self.history)
        self.path = _run_dir(trainer) / self.filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(self.path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        _log_image(trainer, "train/loss_curves", img, trainer.global_step)
        log.info("loss curves written to %s", self.path)

    def state_dict(self) -> dict:
        return {"history": {k: list(v) for k, v in self.history.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = {k: [tuple(x) for x in v] for k, v in state_dict.get("history", {}).items()}
