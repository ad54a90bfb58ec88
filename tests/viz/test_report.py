"""report.md: facts, metrics and the no-DINO note only where it applies."""

from __future__ import annotations

import json

from dinotracker.viz.report import NO_DINO_NOTE, write_report


def _run(tmp_path, backbone):
    run = tmp_path / backbone
    run.mkdir()
    (run / "run_info.json").write_text(json.dumps({"backbone": backbone, "input_hw": [240, 320],
                                                   "model_hw": [112, 154], "video": {"name": "v", "source": "s"}}))
    (run / "metrics.md").write_text("# v\n\n| method | δ_avg |\n|---|---|\n| dinotracker | 43.5 |\n")
    return run


def test_report_explains_a_fit_without_dino_and_only_then(tmp_path):
    none = write_report(_run(tmp_path, "none")).read_text()
    dino = write_report(_run(tmp_path, "dinov2_vits14")).read_text()
    assert "| dinotracker | 43.5 |" in none and "| dinotracker | 43.5 |" in dino
    assert "input 320x240, model 154x112" in none
    assert NO_DINO_NOTE in none and NO_DINO_NOTE not in dino
    assert not list(tmp_path.rglob("*.tmp*"))  # written atomically, no temp file left
