"""``python -m dinotracker.fit +video=...``: preprocess (cached) -> train -> track -> evaluate.

The run folder is Hydra's run directory (``hydra.run.dir=...``): resolved config in
``.hydra/``, ``fit.log``, ``checkpoints/``, ``tracker.pt``, ``run_info.json``, the exported
tracks and, when the video has ground truth, ``metrics.json``. Returns the metric named by
``optimized_metric`` so that Hydra sweepers (Optuna) can optimise it.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from dinotracker.jobs.cli import hydra_entry

log = logging.getLogger("dinotracker.fit")


def run(cfg: DictConfig) -> float | None:
    """One fit job. In a multirun (sweeps, benchmarks) a failing job is logged, leaves ``error.txt``
    in its run folder and returns NaN, so one bad trial or video does not end the sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from dinotracker.jobs.fit import fit_video

    if HydraConfig.get().mode != RunMode.MULTIRUN:
        return fit_video(cfg)
    try:
        return fit_video(cfg)
    except Exception as err:  # noqa: BLE001 - reported, and the sweep goes on
        import traceback
        from pathlib import Path

        out = Path(HydraConfig.get().runtime.output_dir)
        (out / "error.txt").write_text(traceback.format_exc())
        log.error("job failed (%s: %s); see %s -- the sweep continues", type(err).__name__, err, out / "error.txt")
        return float("nan")


main = hydra_entry(run, "fit")

if __name__ == "__main__":
    main()
