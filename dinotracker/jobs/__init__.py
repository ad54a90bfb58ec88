"""Orchestration: the bodies of the ``python -m dinotracker.<verb>`` commands (fit, preprocess, track,
benchmark, demo, segtrack) and their Hydra plumbing (:mod:`.cli`). The top layer of the package: a job may
import any library layer below it, and no library module imports a job (``docs/DESIGN.md``, enforced by
``lint-imports``)."""
