"""Metrics and baselines: TAP-Vid (:func:`compute_tapvid_metrics`, tapnet's signature, so code written for
tapnet can swap it in), BADJA, DAVIS J&F, still / flow-chaining baselines."""

from dinotracker.evaluation.tapvid import compute_tapvid_metrics, evaluate_tracks, mean_over_videos

__all__ = ["compute_tapvid_metrics", "evaluate_tracks", "mean_over_videos"]
