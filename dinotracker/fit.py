"""``python -m dinotracker.fit +video=...``: preprocess (cached) -> train -> track -> evaluate.

The run folder is Hydra's run directory (``hydra.run.dir=...``): resolved config in
``.hydra/``, ``fit.log``, ``checkpoints/``, ``tracker.pt``, ``run_info.json``, the exported
tracks and, when the video has ground truth, ``metrics.json``. Returns the metric named by
``optimized_metric`` so that Hydra sweepers (Optuna) can optimise it.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from dinotracker.cli import hydra_entry

log = logging.getLogger("dinotracker.fit")


def run(cfg: DictConfig) -> float | None:
    from dinotracker.training.run import fit_video

    return fit_video(cfg)


main = hydra_entry(run, "fit")

if __name__ == "__main__":
    main()
