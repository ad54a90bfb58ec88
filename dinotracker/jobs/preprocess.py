"""``python -m dinotracker.preprocess +video=...``: compute (or reuse) the preprocessing cache.

Flow, chained trajectories, backbone features, foreground masks and best-buddies are cached
per video and per config (see :mod:`dinotracker.preprocessing.pipeline`); ``fit`` calls the
same function, so running this first only front-loads the work.

``python -m dinotracker.preprocess cache=check`` checks every entry under ``paths.cache_dir``
instead (sizes and content checksums), moves corrupt ones aside and exits 1 if it found any.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from omegaconf import DictConfig

from dinotracker.jobs.cli import hydra_entry, require_video

log = logging.getLogger("dinotracker.preprocess")


def run(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig

    from dinotracker.data.sources import video_from_config
    from dinotracker.preprocessing.pipeline import preprocess_video, preprocessed_info

    mode = str(cfg.get("cache") or "use")
    if mode not in ("use", "check"):
        raise SystemExit(f"error: cache={mode!r}: choose use (compute or reuse) or check (verify the whole cache)")
    if mode == "check":
        return check(cfg)
    require_video(cfg)
    video, _ = video_from_config(cfg.video)
    from dinotracker.backbones.weights import resolve_backbone

    resolve_backbone(cfg)
    stats: dict = {}
    pre = preprocess_video(video, cfg.backbone, cfg.flow, cfg.preprocess, cfg.paths.cache_dir, stats=stats)
    out = Path(HydraConfig.get().runtime.output_dir)
    info = dict(preprocessed=preprocessed_info(pre), stats=stats)
    (out / "preprocess_summary.json").write_text(json.dumps(info, indent=1, default=str))
    log.info("cache ready: %s", pre.index.cache_dir)
    return info


def check(cfg: DictConfig) -> dict:
    """``cache=check``: :func:`~dinotracker.preprocessing.cache.check_cache` over ``paths.cache_dir``."""
    from hydra.core.hydra_config import HydraConfig

    from dinotracker.preprocessing.cache import check_cache

    report = check_cache(Path(str(cfg.paths.cache_dir)), verify=True)
    out = Path(HydraConfig.get().runtime.output_dir)
    (out / "cache_check.json").write_text(json.dumps(report, indent=1))
    for c in report["corrupt"]:
        print(f"corrupt: {c['file']}: {c['reason']}", file=sys.stderr)
    print(f"{len(report['ok'])} entries ok, {len(report['corrupt'])} corrupt (moved aside, recomputed by the next "
          f"run), {len(report['dangling'])} indexed but missing; report in {out / 'cache_check.json'}")
    if report["corrupt"]:
        raise SystemExit(1)
    return report


def main() -> None:
    hydra_entry(run, "preprocess", needs_video="cache=check" not in sys.argv[1:])()


if __name__ == "__main__":
    main()
