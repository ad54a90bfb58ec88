"""Fail-safe cache keys of the preprocessing stages.

A stage's key hashes, besides its upstream stages' keys and its input values (e.g. the model
resolution), **every option** under the config subtrees it reads (:attr:`StageSpec.reads`, paths in
the composed config: ``preprocess.*``, ``flow.*``, ``backbone.*``) except the options listed in
:attr:`StageSpec.ignores`, each with the reason it provably does not change the stage's output. A
new option therefore invalidates the cache by default; only an explicit, reviewed entry in
``ignores`` lets a stage reuse its entries across values of an option.

Every stage also hashes its :attr:`StageSpec.version`: **a change to a stage's maths (anything
that changes the arrays it writes for the same inputs and options) must bump that stage's
version** (downstream stages follow, since their keys hash this one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from dinotracker.preprocessing.cache import stable_hash

_DEVICE = "where it runs: the same maths on every device (float rounding aside)"


@dataclass(frozen=True)
class StageSpec:
    """What a stage's key hashes: ``version``, every leaf under ``reads`` but ``ignores``."""

    name: str
    version: int
    reads: tuple[str, ...]
    ignores: dict[str, str] = field(default_factory=dict)  # path (leaf or subtree) -> why it cannot matter
    upstream: tuple[str, ...] = ()  # the stages whose keys it hashes (documentation; checked by the pipeline)


STAGES: dict[str, StageSpec] = {s.name: s for s in (
    # v2: PIL Lanczos (antialiased) resize, as the reference
    StageSpec("frames", 2, reads=("preprocess",), ignores={
        "preprocess.device": _DEVICE,
        "preprocess.verify": "how entries are checked on load, not what they hold",
        "preprocess.trajectories": "the trajectories stage's section",
        "preprocess.masks": "the masks stage's section",
        "preprocess.best_buddies": "the best_buddies stage's section",
    }),
    StageSpec("flow", 1, reads=("flow", "preprocess.device"), upstream=("frames",), ignores={
        "flow.batch_size": "frame pairs per estimator call (each pair is estimated on its own)",
        "preprocess.device": _DEVICE,
    }),
    # v2: consecutive flows sampled with zero padding, as the reference
    StageSpec("trajectories", 2, reads=("preprocess.trajectories", "preprocess.device"), upstream=("flow",),
              ignores={"preprocess.device": _DEVICE}),
    StageSpec("features", 1, reads=("backbone", "preprocess.device"), upstream=("frames",), ignores={
        "backbone.batch_size": "frames per backbone call (each frame is encoded on its own)",
        "preprocess.device": _DEVICE,
    }),
    # user masks: frames + the masks' content; saliency masks: frames + features
    StageSpec("masks", 1, reads=("preprocess.masks",), upstream=("frames", "features")),
    StageSpec("split", 1, reads=(), upstream=("trajectories", "masks")),
    # v2: flow-filter trajectory looked up at the reference's pixel (tie-break)
    StageSpec("best_buddies", 2, reads=("preprocess.best_buddies", "preprocess.device"),
              upstream=("features", "trajectories"), ignores={
                  "preprocess.best_buddies.pair_batch": "frame pairs per batch (each pair is matched on its own)",
                  "preprocess.device": _DEVICE,
              }),
)}


def plain(cfg):
    """A config (DictConfig, dataclass, mapping) as plain nested dicts/lists, interpolations resolved."""
    if cfg is None:
        return None
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(cfg, (DictConfig, ListConfig)):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return dataclasses.asdict(cfg)
    if isinstance(cfg, Mapping):
        return {k: plain(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [plain(v) for v in cfg]
    if hasattr(cfg, "__dict__") and not isinstance(cfg, (str, bytes, int, float, bool)):
        return {k: plain(v) for k, v in vars(cfg).items() if not k.startswith("_")}
    return cfg


def leaves(tree, prefix: str = "") -> dict[str, object]:
    """``{"a.b.c": value}`` of every leaf (lists are leaves) of a nested dict."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for k, v in tree.items():
        path = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(leaves(v, path))
        else:
            out[path] = v
    return out


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root + ".")


def stage_options(stage: str, cfg: Mapping) -> dict[str, object]:
    """The options ``stage``'s key hashes: every leaf of ``cfg`` (a composed config, or a dict with its
    ``preprocess``/``flow``/``backbone`` sections) under the stage's ``reads``, minus its ``ignores``."""
    spec = STAGES[stage]
    flat = leaves(plain({k: cfg[k] for k in ("preprocess", "flow", "backbone") if k in cfg}))
    return {p: v for p, v in sorted(flat.items())
            if any(_under(p, r) for r in spec.reads) and not any(_under(p, i) for i in spec.ignores)}


def stage_key(stage: str, cfg: Mapping, upstream: Mapping[str, str], **inputs) -> str:
    """The cache key of ``stage``: its version, its upstream stages' keys, ``inputs`` (JSON-able values that
    are not config, e.g. the model resolution) and :func:`stage_options`."""
    spec = STAGES[stage]
    unknown = set(upstream) - set(spec.upstream)
    if unknown:
        raise ValueError(f"stage {stage} does not declare upstream {sorted(unknown)} (declared {spec.upstream})")
    return stable_hash([stage, spec.version, dict(upstream), inputs, stage_options(stage, cfg)])
