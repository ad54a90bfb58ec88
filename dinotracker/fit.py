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
    in its run folder and returns NaN, so one bad trial or video does not end the sweep. Inside a Slurm
    job, ``slurm.json`` in the run folder records the job id, times, outcome and peak memory."""
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from dinotracker.jobs.fit import fit_video
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

if __name__ == "__main__":
    main()
