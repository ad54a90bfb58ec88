"""``report.md``: a short page per fit run folder, written at the end of ``fit``.

What it holds (each part only when its file exists): the video and run facts (``run_info.json``), the
metrics beside the baselines and the paper's row (``metrics.md``), the loss curves
(``loss_curves.png``), a still grid of tracked frames (``tracks.png``), the links to the videos, and the
resolved config (``.hydra/config.yaml``). Links are relative, so the folder can be moved.
"""

from __future__ import annotations

import json
from pathlib import Path

from dinotracker.utils.atomic import write_text

NO_DINO_NOTE = ("> Backbone `none`: no DINO prior. Delta-DINO learns features from the pixels alone in this "
                "fit's steps (the paper's \"w/o DINO\" ablation, its weakest variant), so the fitted tracker can "
                "score below flow chaining; with DINOv2 weights (`backbone=dinov2_vits14 backbone.weights=...`) "
                "it does not have to.")


def write_report(run: Path) -> Path:
    """Write ``<run>/report.md`` from the files of the run folder; returns its path."""
    run = Path(run)
    lines: list[str] = []
    info = _json(run / "run_info.json")
    video = info.get("video") or {}
    lines.append(f"# {video.get('name', run.name)}: DINO-Tracker fit")
    facts = []
    if video:
        facts.append(f"video `{video.get('source', '?')}`, {len(video.get('frame_indices') or [])} frames")
    if info.get("input_hw"):
        facts.append(f"input {info['input_hw'][1]}x{info['input_hw'][0]}, model {info['model_hw'][1]}x"
                     f"{info['model_hw'][0]}")
    if info.get("backbone"):
        facts.append(f"backbone `{info['backbone']}`")
    if facts:
        lines.append("\n" + "; ".join(facts) + ".")
    metrics = run / "metrics.md"
    if metrics.is_file():
        body = metrics.read_text().split("\n", 1)[-1].strip()
        lines += ["\n## Metrics (%, ours beside the baselines)\n", body]
        if info.get("backbone") == "none":
            lines += ["", NO_DINO_NOTE]
    else:
        lines.append("\nNo ground truth: no metrics (tracks only).")
    for name, title in (("loss_curves.png", "Loss curves"), ("tracks.png", "Tracked grid (still frames)")):
        if (run / name).is_file():
            lines += [f"\n## {title}\n", f"![{title}]({name})"]
    vids = [n for n in ("tracks.mp4", "tracks_vs_gt.mp4") if (run / n).is_file()]
    if vids:
        lines.append("\nVideos: " + ", ".join(f"[{n}]({n})" for n in vids))
    cfg = run / ".hydra" / "config.yaml"
    if cfg.is_file():
        lines += ["\n## Config\n", "<details><summary>.hydra/config.yaml</summary>\n", "```yaml",
                  cfg.read_text().rstrip(), "```", "</details>"]
    return write_text(run / "report.md", "\n".join(lines) + "\n")


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
