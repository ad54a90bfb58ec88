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

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from dinotracker.utils.arrays import to_numpy

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


def build_loggers(cfg, out: Path) -> list:
    from hydra.utils import instantiate

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
            os.environ.setdefault("WANDB_DIR", str(out))
        loggers.append(instantiate(lcfg))
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
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_jsonable))
    tmp.replace(path)


def _jsonable(x):
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


def metrics_table(methods: dict) -> str:
    lines = ["| method | δ_avg | OA | AJ | <δ1 | <δ2 | <δ4 | <δ8 | <δ16 |", "|---|---|---|---|---|---|---|---|---|"]
    for name, m in methods.items():
        cells = [m.get("delta_avg"), m.get("occlusion_accuracy"), m.get("average_jaccard")]
        cells += [m.get(f"pts_within_{d}") for d in (1, 2, 4, 8, 16)]
        lines.append(f"| {name} | " + " | ".join("–" if c is None else f"{100 * c:.1f}" for c in cells) + " |")
    return "\n".join(lines)


def paper_line(ref: dict) -> str:
    """One Markdown line with the paper's numbers for an experiment (``paper_reference``)."""
    names = {"delta_avg": "δ_avg", "occlusion_accuracy": "OA", "average_jaccard": "AJ"}
    vals = ", ".join(f"{n} {100 * float(ref[k]):.1f}" for k, n in names.items() if ref.get(k) is not None)
    return (f"Paper ({ref.get('label', '?')}, method `{ref.get('method', 'dinotracker')}`, full TAP-Vid-DAVIS-480): "
            f"{vals}")


def fit_video(cfg: DictConfig) -> float | None:
    """The whole ``fit`` job for one video (see the module docstring). Returns the optimised metric."""
    import lightning as L
    from hydra.utils import instantiate

    from dinotracker.jobs.cli import resolve_precision, video_help
    from dinotracker.training.progress import dedupe_lightning_logging

    dedupe_lightning_logging()
    from dinotracker.data.sources import video_from_config
    from dinotracker.preprocessing.pipeline import preprocess_video, preprocessed_info

    if cfg.get("video") is None:
        raise SystemExit(f"error: no video given\n  {video_help()}")
    out = _output_dir(cfg)
    if cfg.get("skip_if_done") and (out / "metrics.json").is_file():
        log.info("%s already has metrics.json: skipping (skip_if_done=true)", out)
        return _optimised(json.loads((out / "metrics.json").read_text()), cfg)
    L.seed_everything(int(cfg.seed), workers=True)
    video, gt = video_from_config(fitted_video_config(cfg))
    from dinotracker.backbones.weights import resolve_backbone

    resolve_backbone(cfg)  # weights found, replaced by backbone_fallback, or a one-line error: before any work
    log.info("video %s: %d frames %s from %s", video.name, video.num_frames, video.hw, video.source)
    log.info("backbone %s (%s), flow %s", cfg.backbone.name, cfg.backbone.get("source"), cfg.flow.method)
    pre = preprocess_video(video, cfg.backbone, cfg.flow, cfg.preprocess, cfg.paths.cache_dir)
    run_info = dict(video=dict(name=video.name, source=video.source, fps=video.fps,
                               frame_indices=[int(i) for i in video.frame_indices]),
                    input_hw=list(video.hw), model_hw=list(pre.model_hw), preprocessed=preprocessed_info(pre),
                    cache_dir=pre.meta["cache_dir"], backbone=str(cfg.backbone.name))
    write_json(out / "run_info.json", run_info)

    module, datamodule = build_training(pre, cfg)
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg["precision"] = resolve_precision(trainer_cfg.get("precision", "32-true"))
    trainer = instantiate(trainer_cfg, callbacks=build_callbacks(cfg), logger=build_loggers(cfg, out) or False)
    log.info("training %d steps on %s (%s)", cfg.trainer.max_steps, trainer.strategy.root_device,
             trainer_cfg["precision"])
    trainer.fit(module, datamodule=datamodule, ckpt_path=resolve_ckpt_path(cfg.get("ckpt_path"), out))
    if trainer.global_rank != 0:
        return None
    module.export(out / "tracker.pt")
    log.info("wrote %s", out / "tracker.pt")
    results = track_and_evaluate(cfg, out, pre, video, gt, module)
    from dinotracker.viz.report import write_report

    log.info("report -> %s", write_report(out))
    return _optimised(results, cfg) if results else None


def _optimised(results: dict, cfg) -> float | None:
    name = cfg.get("optimized_metric") or "average_jaccard"
    m = results.get("methods", {}).get("dinotracker", {})
    return float(m[name]) if name in m else None


def build_training(pre, cfg):
    """The LightningModule and DataModule for ``pre`` from the ``model``/``loss``/``optim``/``data`` configs."""
    from dinotracker.backbones import backbone_spec, build_from_spec
    from dinotracker.training.datamodule import CorrespondenceDataModule
    from dinotracker.training.module import DinoTrackerModule

    model = OmegaConf.to_container(cfg.model, resolve=True)
    loss = OmegaConf.to_container(cfg.loss, resolve=True)
    optim = OmegaConf.to_container(cfg.optim, resolve=True)
    if str(cfg.backbone.name) == "none":
        # Phi = 0: the prior terms are undefined and there are no DINO best-buddies (paper "w/o DINO")
        loss["prior"]["norm_weight"] = loss["prior"]["angle_weight"] = 0.0
        loss["dino_bb"]["weight"] = 0.0
        model["delta_zero_init"] = False  # a zero residual on zero features would get no gradient
        log.info("backbone=none: L_prior and L_dino-bb off, Delta-DINO's last layer randomly initialised")
    backbone, spec = None, backbone_spec(cfg.backbone)
    if model.get("lora", {}).get("enabled"):
        # paper Tab. 2 "LoRA tune": the backbone runs in the training loop with adapters instead of Delta-DINO
        if str(cfg.backbone.name) == "none":
            raise ValueError("model.lora needs a DINO backbone (backbone=none has no weights to tune)")
        backbone = build_from_spec(spec)
        model["lora"]["layer"] = int(cfg.backbone.layer) if model["lora"]["layer"] is None else model["lora"]["layer"]
        model["lora"]["facet"] = str(cfg.backbone.facet) if model["lora"]["facet"] is None else model["lora"]["facet"]
    module = DinoTrackerModule(pre, model=model, loss=loss, optim=optim, backbone=backbone, backbone_spec=spec,
                               seed=int(cfg.seed))
    datamodule = CorrespondenceDataModule(pre, seed=int(cfg.seed), **OmegaConf.to_container(cfg.data, resolve=True))
    return module, datamodule


def track_and_evaluate(cfg, out: Path, pre, video, gt, module=None) -> dict:
    """After training: track a query grid (exported + drawn) and, with ground truth, score the
    fitted tracker against the still-point and flow-chaining baselines (and raw DINO when a
    backbone is used) on the ground truth's queries. Writes metrics.json / metrics.md."""
    from dinotracker.evaluation.baselines import flow_chaining_baseline, still_baseline
    from dinotracker.inference.api import load
    from dinotracker.inference.export import save_npz

    if not cfg.track.enabled:
        return {}
    tcfg = cfg.track
    chunk = tcfg.get("chunk") or (4096 if _device_of(module).type == "cuda" else 512)  # small chunks starve a GPU
    tkw = dict(chunk=int(chunk), anchor_cos=float(tcfg.anchor_cos), visible_cos=float(tcfg.visible_cos))
    tracker = load(out, device=str(_device_of(module)), **tkw)
    from dinotracker.inference.queries import capped_grid_step

    step = capped_grid_step(tracker.input_hw, float(tcfg.grid_step), tcfg.get("max_points"))
    if step != float(tcfg.grid_step):
        log.info("track.grid_step=%g would give more than track.max_points=%d points: using a %g px grid",
                 float(tcfg.grid_step), int(tcfg.max_points), step)
    t0 = time.perf_counter()
    grid = tracker.track_grid(step, frame=int(tcfg.grid_frame), occlusion=bool(tcfg.occlusion))
    save_npz(out / "tracks.npz", grid["tracks"], grid["visible"], grid["confidence"], grid["queries"])
    log.info("grid of %d queries tracked in %.1f s -> %s", grid["tracks"].shape[0], time.perf_counter() - t0,
             out / "tracks.npz")
    if "mp4" in (tcfg.get("export") or []):
        from dinotracker.viz.tracks import draw_tracks_grid, draw_tracks_video

        draw_tracks_video(out / "tracks.mp4", video.frames, to_numpy(grid["tracks"]), to_numpy(grid["visible"]),
                          fps=video.fps, query_frames=to_numpy(grid["queries"])[:, 0].astype(int))
        draw_tracks_grid(out / "tracks.png", video.frames, to_numpy(grid["tracks"]), to_numpy(grid["visible"]),
                         query_frames=to_numpy(grid["queries"])[:, 0].astype(int))
        log.info("track video -> %s", out / "tracks.mp4")
    if gt is None or not cfg.evaluate.enabled:
        return {}
    shown, full_index = video, None  # the frames tracked and scored (all of them for a subsampled fit)
    if cfg.evaluate.get("all_frames") and int(cfg.get("subsample") or 1) > 1:
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
        from dinotracker.preprocessing.cache import StageCache

        index = full_index or pre.meta
        flow_entry = next(e for e in index["entries"] if e.startswith("flow-"))
        arr, _ = StageCache(index["cache_dir"]).load("flow", flow_entry.split("-", 1)[1])
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
    table = metrics_table(methods)
    if ref:
        table += "\n\n" + paper_line(results["paper_reference"])
    (out / "metrics.md").write_text(f"# {video.name} ({len(queries)} ground-truth tracks, "
                                    f"query mode {cfg.evaluate.query_mode})\n\n{table}\n")
    log.info("TAP-Vid metrics (%%):\n%s", table)
    return results


def fitted_video_config(cfg):
    """The ``video`` config with ``subsample`` applied: every k-th frame of the video's own range/stride."""
    k = int(cfg.get("subsample") or 1)
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
    if module is None:
        return torch.device("cpu")
    try:
        return next(module.parameters()).device
    except StopIteration:
        return torch.device("cpu")

