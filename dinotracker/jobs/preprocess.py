"""``python -m dinotracker.preprocess +video=...``: compute (or reuse) the preprocessing cache.

Flow, chained trajectories, backbone features, foreground masks and best-buddies are cached
per video and per config (see :mod:`dinotracker.preprocessing.pipeline`); ``fit`` calls the
same function, so running this first only front-loads the work.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from dinotracker.jobs.cli import hydra_entry

log = logging.getLogger("dinotracker.preprocess")


def run(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig

    from dinotracker.data.sources import video_from_config
    from dinotracker.preprocessing.pipeline import preprocess_video, preprocessed_info

    if cfg.get("video") is None:
        from dinotracker.jobs.cli import video_help

        raise SystemExit(f"error: no video given\n  {video_help()}")
    video, _ = video_from_config(cfg.video)
    from dinotracker.backbones.weights import resolve_backbone

    resolve_backbone(cfg)
    stats: dict = {}
    pre = preprocess_video(video, cfg.backbone, cfg.flow, cfg.preprocess, cfg.paths.cache_dir, stats=stats)
    out = Path(HydraConfig.get().runtime.output_dir)
    info = dict(preprocessed=preprocessed_info(pre), stats=stats)
    (out / "preprocess_summary.json").write_text(json.dumps(info, indent=1, default=str))
    log.info("cache ready: %s", pre.meta["cache_dir"])
    return info


main = hydra_entry(run, "preprocess")

if __name__ == "__main__":
    main()
