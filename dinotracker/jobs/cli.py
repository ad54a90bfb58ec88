"""Shared plumbing of the ``python -m dinotracker.<verb>`` entry points (Hydra)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from omegaconf import OmegaConf

from dinotracker import config_dir

log = logging.getLogger("dinotracker")

_INFO_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "--shell-completion", "-sc",
               "--version")


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("basename"):
        OmegaConf.register_new_resolver("basename", lambda p: Path(str(p)).stem or Path(str(p)).name)


def available(group: str) -> list[str]:
    """Option names of a config group, e.g. the videos users can pass as ``+video=<name>``."""
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def video_help() -> str:
    return ("choose a video with +video=<name>; available: " + ", ".join(available("video"))
            + "\n  your own video: +video=path video.path=<folder of frames or video file>"
            " [video.masks=<mask folder>]")


def require_video(argv: list[str]) -> None:
    """Exit with the list of videos when the command line names none (before Hydra makes a run folder)."""
    if any(a.split("=")[0] in _INFO_FLAGS or a in _INFO_FLAGS for a in argv):
        return
    if any(a.lstrip("+~").startswith("video=") for a in argv):
        unknown = [a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith("video=")]
        names = set(available("video"))
        bad = [u for u in unknown if "," not in u and "(" not in u and u not in names]
        if bad:
            print(f"error: unknown video {bad[0]!r}\n  {video_help()}", file=sys.stderr)
            raise SystemExit(2)
        return
    print(f"error: no video given\n  {video_help()}", file=sys.stderr)
    raise SystemExit(2)


def hydra_entry(task: Callable, config_name: str, needs_video: bool = True) -> Callable[[], None]:
    """Wrap ``task(cfg)`` as a console entry point with the package's config folder."""
    import hydra

    from dinotracker.utils.errors import one_line_errors, precheck_argv

    def main() -> None:
        _register_resolvers()
        if needs_video:
            require_video(sys.argv[1:])
        precheck_argv(sys.argv[1:])  # a missing input file in a second, before torch/Lightning load
        os.environ.setdefault("HYDRA_FULL_ERROR", "0")
        hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")(
            one_line_errors(task))()

    return main


def resolve_precision(precision: str) -> str:
    """``auto`` -> bf16-mixed on a CUDA GPU that supports bf16, else 32-true."""
    if str(precision) != "auto":
        return str(precision)
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"
