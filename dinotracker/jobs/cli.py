"""Shared plumbing of the ``python -m dinotracker.<verb>`` entry points (Hydra)."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable

from omegaconf import OmegaConf

from dinotracker import config_dir
from dinotracker.config import ConfigError, register_resolvers

log = logging.getLogger("dinotracker")

_INFO_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "--shell-completion", "-sc",
               "--version")


_register_resolvers = register_resolvers  # the name tests and older callers use
# Hydra flags that take a value, and flags after which the command line is not one config to check
_VALUE_FLAGS = ("--cfg", "-c", "--package", "-p")
_NO_PRECHECK = ("--multirun", "-m", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
                "--experimental-rerun")


def available(group: str) -> list[str]:
    """Option names of a config group, e.g. the videos users can pass as ``+video=<name>``."""
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def video_help() -> str:
    return ("choose a video with +video=<name>; available: " + ", ".join(available("video"))
            + "\n  your own video: +video=path video.path=<folder of frames or video file>"
            " [video.masks=<mask folder>]")


def require_video(source) -> None:
    """The one missing/unknown-video check of the fit and preprocess jobs: exit (status 2) with the list
    of videos when ``source`` names none. ``source`` is the command line (a list of arguments, checked
    before Hydra makes a run folder; unknown names are refused too) or a composed config (a job called
    from Python)."""
    if not isinstance(source, (list, tuple)):
        if source.get("video") is None:
            _no_video("no video given")
        return
    argv = list(source)
    if any(a.split("=")[0] in _INFO_FLAGS or a in _INFO_FLAGS for a in argv):
        return
    if any(a.lstrip("+~").startswith("video=") for a in argv):
        unknown = [a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith("video=")]
        names = set(available("video"))
        if any(a.startswith("hydra.searchpath") for a in argv):  # videos from other config folders too
            return
        bad = [u for u in unknown if "," not in u and "(" not in u and u not in names]
        if bad:
            _no_video(f"unknown video {bad[0]!r}")
        return
    _no_video("no video given")


def _no_video(problem: str):
    print(f"error: {problem}\n  {video_help()}", file=sys.stderr)
    raise SystemExit(2)


def command_line_overrides(argv: list[str]) -> list[str] | None:
    """The Hydra overrides of a command line, or None when it is not one run of the packaged config
    (help/info flags, ``-m``, another config folder or name)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        flag = a.split("=", 1)[0] if a.startswith("-") else None
        if flag in _NO_PRECHECK or flag in _INFO_FLAGS and flag not in ("--cfg", "-c"):
            return None
        if flag is not None:
            skip = flag in _VALUE_FLAGS and "=" not in a
            continue
        out.append(a)
    return out


def precheck(config_name: str, argv: list[str]) -> None:
    """Compose the command line's config once, check its keys and values (:mod:`dinotracker.config`) and exit
    with one line (status 2) on a bad one: before Hydra makes a run folder, before any heavy import."""
    from dinotracker.config import compose

    overrides = command_line_overrides(argv)
    if overrides is None:
        return
    try:
        compose(config_name, overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _checked(task: Callable, config_name: str) -> Callable:
    """``task`` that first checks the keys of each job of a multirun (a single run was checked by
    :func:`precheck`). Values are checked by the job itself (``fit_video`` calls ``validate``), so a bad
    value swept over fails only its own job."""

    @functools.wraps(task)  # Hydra names the job after the wrapped task's module
    def run(cfg):
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from dinotracker.config import check_keys

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            try:  # an unknown key: one line, and the sweep stops (its other jobs share the mistake)
                check_keys(cfg, config_name, OmegaConf.to_container(hc.runtime.choices), list(hc.overrides.task))
            except ConfigError as err:
                raise SystemExit(f"error: {err}") from None
        return task(cfg)

    return run


def hydra_entry(task: Callable, config_name: str, needs_video: bool = True) -> Callable[[], None]:
    """Wrap ``task(cfg)`` as a console entry point with the package's config folder."""
    import hydra

    from dinotracker.utils.errors import one_line_errors, precheck_argv

    def main() -> None:
        register_resolvers()
        if needs_video:
            require_video(sys.argv[1:])
        precheck(config_name, sys.argv[1:])  # a mistyped option or bad value: one line, before any work
        precheck_argv(sys.argv[1:])  # a missing input file in a second, before torch/Lightning load
        os.environ.setdefault("HYDRA_FULL_ERROR", "0")
        hydra.main(config_path=str(config_dir()), config_name=config_name,
                   version_base="1.3")(one_line_errors(_checked(task, config_name)))()

    return main


def resolve_precision(precision: str) -> str:
    """``auto`` -> bf16-mixed on a CUDA GPU that supports bf16, else 32-true."""
    if str(precision) != "auto":
        return str(precision)
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"
