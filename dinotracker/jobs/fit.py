"""The ``fit`` job: video -> preprocessing (cached) -> training -> tracking -> evaluation.

Everything lands in the run folder (Hydra's run directory): ``.hydra/`` (resolved config),
``fit.log``, ``checkpoints/`` (full training state, resumable), ``tracker.pt`` (weights for
inference), ``run_info.json`` (what :func:`dinotracker.load` needs), ``tracks.npz`` and
``tracks.mp4``, and ``metrics.json`` / ``metrics.md`` when the video has ground truth.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig, OmegaConf

from dinotracker.jobs.cli import hydra_entry
from dinotracker.utils.arrays import to_numpy

if TYPE_CHECKING:
    import torch

log = logging.getLogger("dinotracker.fit")


def _output_dir(cfg) -> Path:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # called from Python without Hydra
        out = Path(cfg.get("output_dir") or "runs/fit/python")
        out.mkdir(parents=True, exist_ok=True)
        return out


def _wandb_has_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def build_loggers(cfg, out: Path, resume_step: int | None = None) -> list:
    """The ``logger`` configs instantiated, made to continue this run folder's logs when resuming from a
    checkpoint of global step ``resume_step`` (:func:`dinotracker.training.loggers.logger_config`)."""
    from hydra.utils import instantiate

    from dinotracker.training.loggers import logger_config

    loggers = []
    for name, lcfg in (cfg.get("logger") or {}).items():
        if lcfg is None or "_target_" not in lcfg:
            continue
        lcfg = OmegaConf.to_container(lcfg, resolve=True)
        if name == "wandb":
            if lcfg.get("offline") is None:
                lcfg["offline"] = not _wandb_has_key()
                if lcfg["offline"]:
                    log.info("W&B: no API key found, logging offline (sync later with `wandb sync`)")
        loggers.append(instantiate(logger_config(name, lcfg, out, resume_step)))
    return loggers


def build_callbacks(cfg) -> list:
    from hydra.utils import instantiate

    return [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None and "_target_" in c]


def resolve_ckpt_path(ckpt_path, out: Path) -> str | None:
    """``last`` -> this run folder's checkpoints/last.ckpt when it exists (else start fresh)."""
    if ckpt_path in (None, "", "null"):
        return None
    if str(ckpt_path) == "last":
        last = out / "checkpoints" / "last.ckpt"
        if last.is_file():
            log.info("resuming from %s", last)
            return str(last)
        log.info("ckpt_path=last but %s does not exist yet: starting fresh", last)
        return None
    path = Path(str(ckpt_path))
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path {path} does not exist")
    return str(path)


def write_json(path: Path, obj) -> None:
    from dinotracker.utils.atomic import write_text

    write_text(path, json.dumps(obj, indent=1, default=_jsonable))


def _jsonable(x):
    import torch

    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return str(x)


def evaluate_methods(predictions: dict, gt, video_hw, query_mode: str) -> dict:
    """TAP-Vid metrics of every method against ``gt`` (input px): {method: metrics}.

    ``predictions[method] = (tracks [N,T,2], visible [N,T])`` for the ground truth's queries.
    """
    from dinotracker.evaluation.tapvid import evaluate_tracks, occlusion_rate_bins

    out = {}
    for method, (tracks, visible) in predictions.items():
        tracks = np.asarray(tracks, np.float32)
        visible = np.asarray(visible, bool)
        m = evaluate_tracks(tracks, visible, gt.tracks, ~gt.occluded, gt.query_frames, video_hw,
                            query_mode=query_mode)
        m = {k: float(v) for k, v in m.items() if np.isscalar(v) or np.ndim(v) == 0}
        try:
            m["occlusion_bins"] = occlusion_rate_bins(tracks, visible, gt.tracks, ~gt.occluded, gt.query_frames,
                                                      video_hw, query_mode=query_mode)
        except TypeError:
            pass
        out[method] = m
    return out


def metrics_table(methods: dict, query_mode: str) -> str:
    """Markdown table of TAP-Vid metrics (%), with the query mode (``first`` / ``strided``) of each row."""
    lines = ["| method | query mode | δ_avg | OA | AJ | <δ1 | <δ2 | <δ4 | <δ8 | <δ16 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in methods.items():
        cells = [m.get("delta_avg"), m.get("occlusion_accuracy"), m.get("average_jaccard")]
        cells += [m.get(f"pts_within_{d}") for d in (1, 2, 4, 8, 16)]
        lines.append(f"| {name} | {query_mode} | "
                     + " | ".join("–" if c is None else f"{100 * c:.1f}" for c in cells) + " |")
    return "\n".join(lines)


def paper_line(ref: dict) -> str:
    """One Markdown line with the paper's numbers for an experiment (``paper_reference``)."""
    names = {"delta_avg": "δ_avg", "occlusion_accuracy": "OA", "average_jaccard": "AJ"}
    vals = ", ".join(f"{n} {100 * float(ref[k]):.1f}" for k, n in names.items() if ref.get(k) is not None)
    return (f"Paper ({ref.get('label', '?')}, method `{ref.get('method', 'dinotracker')}`, full TAP-Vid-DAVIS-480, "
            f"query mode {ref.get('query_mode', 'strided')}): {vals}")


def fit_video(cfg: DictConfig) -> float | None:
    """The whole ``fit`` job for one video (see the module docstring). Returns the optimised metric.

    Holds the run folder's lock (:mod:`dinotracker.utils.runlock`): a second fit on the same folder refuses."""
    from dinotracker.config import validate
    from dinotracker.jobs.cli import require_video
    from dinotracker.training.loggers import own_experiments
    from dinotracker.utils.runlock import run_folder_lock

    validate(cfg)  # bad values stop here, before any heavy import or work
    require_video(cfg)
    out = _output_dir(cfg)
    if cfg.get("skip_if_done") and (out / "metrics.json").is_file():
        log.info("%s already has metrics.json: skipping (skip_if_done=true)", out)
        return _optimised(json.loads((out / "metrics.json").read_text()), cfg)
    with run_folder_lock(out), own_experiments():
        return _fit_locked(cfg, out)


def _fit_locked(cfg: DictConfig, out: Path) -> float | None:
    """:func:`fit_video` while holding the run folder's lock."""
    import lightning as L
    from hydra.utils import instantiate

    from dinotracker.training.progress import dedupe_lightning_logging

    dedupe_lightning_logging()

    from dinotracker.data.sources import video_from_config
    from dinotracker.jobs.cli import resolve_precision
    from dinotracker.preprocessing.pipeline import preprocess_video, preprocessed_info
    from dinotracker.training import preemption
    from dinotracker.training.loggers import checkpoint_step
    from dinotracker.utils.stagetimes import StageTimes

    times = StageTimes()  # wall time and peak memory per stage: logged at the end and kept in timings.json
    L.seed_everything(int(cfg.seed), workers=True)
    video, gt = video_from_config(fitted_video_config(cfg))
    from dinotracker.backbones.weights import resolve_backbone

    resolve_backbone(cfg)  # weights found, replaced by backbone_fallback, or a one-line error: before any work
    log.info("video %s: %d frames %s from %s", video.name, video.num_frames, video.hw, video.source)
    log.info("backbone %s (%s), flow %s", cfg.backbone.name, cfg.backbone.get("source"), cfg.flow.method)
    with times.stage("preprocessing"):
        pre = preprocess_video(video, cfg.backbone, cfg.flow, cfg.preprocess, cfg.paths.cache_dir)
    run_info = dict(video=dict(name=video.name, source=video.source, fps=video.fps,
                               frame_indices=[int(i) for i in video.frame_indices]),
                    input_hw=list(video.hw), model_hw=list(pre.model_hw), preprocessed=preprocessed_info(pre),
                    backbone=str(cfg.backbone.name))
    write_json(out / "run_info.json", run_info)

    module, datamodule = build_training(pre, cfg)
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg["precision"] = resolve_precision(trainer_cfg["precision"])
    # a requeued Slurm job resumes from its own last.ckpt
    ckpt_path = resolve_ckpt_path(preemption.resume_ckpt_path(cfg.get("ckpt_path"), out), out)
    resume_step = checkpoint_step(ckpt_path) if ckpt_path else None
    trainer = instantiate(trainer_cfg, callbacks=build_callbacks(cfg) + preemption.callbacks(cfg, out),
                          logger=build_loggers(cfg, out, resume_step) or False)
    log.info("training %d steps on %s (%s)", cfg.trainer.max_steps, trainer.strategy.root_device,
             trainer_cfg["precision"])
    with times.stage("training"):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    if trainer.global_rank != 0:
        return None
    module.export(out / "tracker.pt")
    log.info("wrote %s", out / "tracker.pt")
    results = track_and_evaluate(cfg, out, pre, video, gt, module, times)
    from dinotracker.viz.report import write_report

    log.info("report -> %s", write_report(out))
    times.write(out / "timings.json")
    log.info("time and peak memory per stage (timings.json):\n%s", times.table())
    return _optimised(results, cfg) if results else None


def _optimised(results: dict, cfg) -> float | None:
    name = cfg.optimized_metric
    m = results.get("methods", {}).get("dinotracker", {})
    return float(m[name]) if name in m else None


def build_training(pre, cfg):
    """The LightningModule and DataModule for ``pre`` from the ``model``/``loss``/``optim``/``data`` configs."""
    from dinotracker.backbones import backbone_spec, build_from_spec
    from dinotracker.training.datamodule import CorrespondenceDataModule
    from dinotracker.training.module import DinoTrackerModule

    off = [k for k in ("flow", "dino_bb", "refined_bb", "cycle", "prior") if not cfg.loss[k].enabled]
    if off:  # e.g. backbone=none: backbone.has_features=false switches L_dino-bb and L_prior off (conf/loss)
        log.info("loss terms off (loss.<term>.enabled=false): %s", ", ".join(off))
    backbone, spec = None, backbone_spec(cfg.backbone)
    if cfg.model.lora.enabled:
        # paper Tab. 2 "LoRA tune": the backbone runs in the training loop with adapters instead of Delta-DINO
        backbone = build_from_spec(spec)
    module = DinoTrackerModule(pre, model=cfg.model, loss=cfg.loss, optim=cfg.optim, backbone=backbone,
                               backbone_spec=spec, seed=int(cfg.seed))
    datamodule = CorrespondenceDataModule(pre, seed=int(cfg.seed), **OmegaConf.to_container(cfg.data, resolve=True))
    return module, datamodule


def track_and_evaluate(cfg, out: Path, pre, video, gt, module=None, times=None) -> dict:
    """After training: track a query grid (exported + drawn) and, with ground truth, score the
    fitted tracker against the still-point and flow-chaining baselines (and raw DINO when a
    backbone is used) on the ground truth's queries. Writes metrics.json / metrics.md."""

    from dinotracker.inference.api import load
    from dinotracker.inference.tracks_schema import write_tracks

    if not cfg.track.enabled:
        return {}
    tcfg = cfg.track
    chunk = tcfg.get("chunk") or (4096 if _device_of(module).type == "cuda" else 512)  # small chunks starve a GPU
    tkw = dict(chunk=int(chunk), anchor_cos=float(tcfg.anchor_cos), visible_cos=float(tcfg.visible_cos),
               fast_conv=bool(tcfg.get("fast_conv", False)))
    tracker = load(out, device=str(_device_of(module)), **tkw)
    from dinotracker.inference.queries import capped_grid_step

    step = capped_grid_step(tracker.input_hw, float(tcfg.grid_step), tcfg.get("max_points"))
    if step != float(tcfg.grid_step):
        log.info("track.grid_step=%g would give more than track.max_points=%d points: using a %g px grid",
                 float(tcfg.grid_step), int(tcfg.max_points), step)
    if times is None:
        from dinotracker.utils.stagetimes import StageTimes

        times = StageTimes()
    t0 = time.perf_counter()
    with times.stage("tracking + occlusion (post-fit grid)"):
        grid = tracker.track_grid(step, frame=int(tcfg.grid_frame), occlusion=bool(tcfg.occlusion))
    write_tracks(out / "tracks.npz", grid["tracks"], grid["visible"], grid["confidence"], grid["queries"],
                 input_hw=video.hw, fps=video.fps, video=video.name)
    log.info("grid of %d queries tracked in %.1f s -> %s", grid["tracks"].shape[0], time.perf_counter() - t0,
             out / "tracks.npz")
    if "mp4" in (tcfg.get("export") or []):
        from dinotracker.viz.tracks import draw_tracks_grid, draw_tracks_video

        with times.stage("track video + stills"):
            draw_tracks_video(out / "tracks.mp4", video.frames, to_numpy(grid["tracks"]), to_numpy(grid["visible"]),
                              fps=video.fps, query_frames=to_numpy(grid["queries"])[:, 0].astype(int))
            draw_tracks_grid(out / "tracks.png", video.frames, to_numpy(grid["tracks"]), to_numpy(grid["visible"]),
                             query_frames=to_numpy(grid["queries"])[:, 0].astype(int))
        log.info("track video -> %s", out / "tracks.mp4")
    if gt is None or not cfg.evaluate.enabled:
        return {}
    with times.stage("evaluation (ground-truth queries, baselines)"):
        return _evaluate(cfg, out, pre, video, gt, module, tracker, tkw)


def _evaluate(cfg, out: Path, pre, video, gt, module, tracker, tkw) -> dict:
    """The fitted tracker and the baselines on the ground truth's queries -> metrics.json / metrics.md."""
    import torch

    from dinotracker.evaluation.baselines import flow_chaining_baseline, still_baseline
    from dinotracker.inference.api import load

    tcfg = cfg.track
    shown, full_index = video, None  # the frames tracked and scored (all of them for a subsampled fit)
    if cfg.evaluate.all_frames and int(cfg.subsample) > 1:
        # fitted on every k-th frame, tracked and scored on every frame (paper Tab. 4): the fitted model
        # runs on frames it never saw in training (their frozen features and flow are computed here)
        from dinotracker.preprocessing.pipeline import preprocess_inference_inputs

        shown, gt = _full_video(cfg)
        full_index = preprocess_inference_inputs(shown, cfg.backbone, cfg.flow, cfg.preprocess, cfg.paths.cache_dir)
        tracker = load(out, device=str(_device_of(module)), video=full_index, **tkw)
        log.info("evaluating on all %d frames (fitted on %d)", shown.num_frames, video.num_frames)
    queries = torch.from_numpy(gt.queries)
    ours = tracker.track(queries, occlusion=bool(tcfg.occlusion))
    preds = {"dinotracker": (to_numpy(ours["tracks"]), to_numpy(ours["visible"]))}
    baselines = list(cfg.evaluate.get("baselines") or [])
    if "still" in baselines:
        tr, vis = still_baseline(queries, shown.num_frames)
        preds["still"] = (to_numpy(tr), to_numpy(vis))
    if "flow_chaining" in baselines:
        arr = (full_index or pre.index).load("flow")
        q_model = queries.clone()
        q_model[:, 1:] = pre.resize.to_model(queries[:, 1:])
        tr, vis = flow_chaining_baseline(q_model, torch.from_numpy(np.array(arr["forward"])),
                                         torch.from_numpy(np.array(arr["backward"])))
        preds[f"{cfg.flow.method}_chaining"] = (to_numpy(pre.resize.to_input(tr)), to_numpy(vis))
    if "raw_dino" in baselines and str(cfg.backbone.name) != "none":
        raw = load(out, device=str(_device_of(module)), raw_features=True, video=full_index, **tkw)
        r = raw.track(queries, occlusion=bool(tcfg.occlusion))
        preds["raw_dino"] = (to_numpy(r["tracks"]), to_numpy(r["visible"]))
    if "mp4" in (tcfg.get("export") or []):
        from dinotracker.viz.tracks import draw_tracks_video

        draw_tracks_video(out / "tracks_vs_gt.mp4", shown.frames, to_numpy(ours["tracks"]), to_numpy(ours["visible"]),
                          fps=shown.fps, gt_tracks=gt.tracks, gt_visible=~gt.occluded, query_frames=gt.query_frames)
    methods = evaluate_methods(preds, gt, video.hw, str(cfg.evaluate.query_mode))
    results = dict(video=video.name, query_mode=str(cfg.evaluate.query_mode), num_queries=int(len(queries)),
                   num_frames=shown.num_frames, fitted_frames=video.num_frames, methods=methods)
    ref = cfg.get("paper_reference")
    if ref:
        results["paper_reference"] = OmegaConf.to_container(ref, resolve=True)
    write_json(out / "metrics.json", results)
    table = metrics_table(methods, str(cfg.evaluate.query_mode))
    if ref:
        table += "\n\n" + paper_line(results["paper_reference"])
    (out / "metrics.md").write_text(f"# {video.name} ({len(queries)} ground-truth tracks, "
                                    f"query mode {cfg.evaluate.query_mode})\n\n{table}\n")
    log.info("TAP-Vid metrics (%%):\n%s", table)
    return results


def fitted_video_config(cfg):
    """The ``video`` config with ``subsample`` applied: every k-th frame of the video's own range/stride."""
    k = int(cfg.subsample)
    if k < 1:
        raise ValueError(f"subsample must be >= 1, got {k}")
    if k == 1:
        return cfg.video
    vcfg = OmegaConf.to_container(cfg.video, resolve=True)
    vcfg["stride"] = int(vcfg.get("stride") or 1) * k
    return OmegaConf.create(vcfg)


def _full_video(cfg):
    """The configured video (its own range and stride, without ``subsample``) and its ground truth."""
    from dinotracker.data.sources import video_from_config

    return video_from_config(cfg.video)


def _device_of(module) -> torch.device:
    import torch

    if module is None:
        return torch.device("cpu")
    try:
        return next(module.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def run(cfg: DictConfig) -> float | None:
    """The Hydra task of ``python -m dinotracker.fit``. In a multirun (sweeps, benchmarks) a failing job is
    logged, leaves ``error.txt`` in its run folder and returns NaN, so one bad trial or video does not end
    the sweep. Inside a Slurm job, ``slurm.json`` in the run folder records the job id, times, outcome and
    peak memory. Returns the metric named by ``optimized_metric`` so that Hydra sweepers (Optuna) can
    optimise it."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from dinotracker.training.preemption import Preempted
    from dinotracker.utils import slurm

    out = Path(HydraConfig.get().runtime.output_dir)
    if cfg.get("skip_if_done") and (out / "metrics.json").is_file():
        return fit_video(cfg)  # skips; keeps the record of the job that did the work
    slurm.record_job(out, started_at=slurm.now(), ended_at=None, outcome="running")
    outcome = "failed"
    try:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            result = fit_video(cfg)
            outcome = "done"
            return result
        (out / "error.txt").unlink(missing_ok=True)  # from an earlier attempt of this job
        try:
            result = fit_video(cfg)
            outcome = "done"
            return result
        except Exception as err:  # noqa: BLE001 - reported, and the sweep goes on
            import traceback

            (out / "error.txt").write_text(traceback.format_exc())
            log.error("job failed (%s: %s); see %s -- the sweep continues", type(err).__name__, err, out / "error.txt")
            return float("nan")
    except Preempted:
        outcome = "preempted"
        raise
    finally:
        slurm.record_job(out, ended_at=slurm.now(), outcome=outcome, max_rss_mb=round(slurm.peak_rss_mb(), 1))


main = hydra_entry(run, "fit")
