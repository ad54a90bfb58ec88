"""The Hydra config (``conf/``) as the only source of options: compose, check the keys, validate the values.

The YAML files are the one place where option names and default values live (no Python copy): code
reads ``cfg.<section>.<key>`` without defaults, so ``--cfg job`` lists every option a run uses.

* **Keys** (:func:`check_keys`): Hydra's struct mode rejects ``loss.flow.wieght=1`` on the command line;
  :func:`compose` turns that into one line naming the valid keys (a did-you-mean). A key that an
  ``experiment=``/``debug=``/``local`` file or a ``+key=value`` adds is caught by comparing the run's
  config with the *reference* config of the same group choices composed without them: every key must
  exist there, except under the open subtrees of :data:`OPEN` (Lightning's Trainer / callback / logger
  kwargs, Hydra's own settings) and under keys whose reference value is null or ``{}`` (free-form).
* **Values** (:func:`validate`): ranges and choices of every option the training path reads, checked
  right after compose, before the run folder, preprocessing or any heavy import. A failure is a
  :class:`ConfigError`, one line: ``<key>=<value>: <what is allowed>``.

Only omegaconf, hydra and the standard library are imported here (the CLI's fast path).
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from dinotracker import config_dir

# subtrees whose keys are not a closed set (passed on as keyword arguments to other libraries)
OPEN = {"fit": ("hydra", "trainer", "callbacks", "logger"), "preprocess": ("hydra",), "benchmark": ("hydra",)}
# groups that only override values of other groups (their keys must already exist without them)
MODIFIER_GROUPS = ("experiment", "debug", "hparams_search", "local")
PRECISIONS = ("auto", "64-true", "64", "32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16", "16-true",
              "bf16-true", "transformer-engine", "transformer-engine-float16")  # Lightning's, plus our "auto"
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu")
PSEUDO_LABELS = ("ema", "lagged", "same")
LOSS_TERMS = ("flow", "dino_bb", "refined_bb", "cycle", "prior")


class ConfigError(ValueError):
    """A bad option: one line naming the key and what is allowed."""


def register_resolvers() -> None:
    """The package's OmegaConf resolvers (``${basename:...}``), needed before composing ``conf/``."""
    if not OmegaConf.has_resolver("basename"):
        OmegaConf.register_new_resolver("basename", lambda p: Path(str(p)).stem or Path(str(p)).name)


# ------------------------------------------------------------------ compose
def _compose_raw(config_name: str, overrides: Sequence[str], return_hydra_config: bool = False) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    if GlobalHydra.instance().is_initialized():
        return hydra_compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)


def compose(config_name: str = "fit", overrides: Sequence[str] = (), check: bool = True,
            return_hydra_config: bool = False) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with command-line style ``overrides`` (struct mode), then (``check``)
    :func:`check_keys` and :func:`validate`. Any problem is a one-line :class:`ConfigError`."""
    try:
        cfg = _compose_raw(config_name, overrides, return_hydra_config=True)
    except Exception as err:  # noqa: BLE001 - Hydra's composition errors, explained in one line
        raise ConfigError(explain_compose_error(err, config_name, overrides)) from None
    if check:
        check_keys(cfg, config_name, OmegaConf.to_container(cfg.hydra.runtime.choices), overrides)
        validate(cfg)
    if not return_hydra_config:
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg


def _group_overrides(overrides: Sequence[str]) -> list[str]:
    """The overrides that choose a config group option (``backbone=none``, ``+video=x``), not values."""
    root = config_dir()
    out = []
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if "=" in o and key.split("@")[0] and (root / key.split("@")[0]).is_dir():
            out.append(o)
    return out


def explain_compose_error(err: Exception, config_name: str, overrides: Sequence[str]) -> str:
    """One line for a Hydra composition error; for an unknown key, the valid keys and a did-you-mean."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    try:
        base = _compose_raw(config_name, _group_overrides(overrides))
    except Exception:  # noqa: BLE001 - the group choices themselves fail: Hydra's message says why
        text = str(err).split("Config search path")[0]
        return " ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    for o in overrides:
        if o.startswith(("+", "~")) or "=" not in o or o in _group_overrides([o]):
            continue
        key = o.split("=", 1)[0]
        if not key.startswith("hydra") and "/" not in key and not _exists(base, key):
            return unknown_key_message(base, key)
    return first


def _has(node, key) -> bool:
    """``key`` is a key of ``node`` (also when its value is ``???``, which ``in`` does not count)."""
    return isinstance(node, DictConfig) and key in node.keys()


def _exists(cfg, dotted: str) -> bool:
    node = cfg
    for part in dotted.split("."):
        if not _has(node, part):
            return False
        node = node._get_node(part)
    return True


def unknown_key_message(cfg, dotted: str) -> str:
    """``unknown option a.b.c (did you mean a.b.d?); a.b has: ...`` for the first missing part of ``dotted``."""
    parts = dotted.split(".")
    node, where = cfg, []
    for part in parts:
        if _has(node, part):
            node, where = node._get_node(part), [*where, part]
            continue
        parent = ".".join(where) or "the top level"
        keys = sorted(str(k) for k in node.keys()) if isinstance(node, DictConfig) else []
        bad = ".".join([*where, part])
        close = difflib.get_close_matches(part, keys, n=1, cutoff=0.6)
        hint = f" (did you mean {'.'.join([*where, close[0]])}?)" if close else ""
        if not keys:
            return f"unknown option {bad}{hint}: {parent} is not a group of options"
        return f"unknown option {bad}{hint}; {parent} has: {', '.join(keys)}"
    return f"unknown option {dotted}"


# ------------------------------------------------------------------ keys
def reference_overrides(config_name: str, choices: Mapping[str, str | None]) -> list[str]:
    """Overrides that recompose the same group choices without the modifier groups (:data:`MODIFIER_GROUPS`)."""
    in_primary: set[str] = set()
    pending = [config_name]
    while pending:  # the primary config's defaults, and those of root configs it includes (preprocess: fit)
        for entry in OmegaConf.load(config_dir() / f"{pending.pop()}.yaml").get("defaults") or []:
            key = next(iter(entry)) if isinstance(entry, Mapping) else str(entry)
            key = key.replace("optional ", "").replace("override ", "").split("@")[0].strip()
            if not isinstance(entry, Mapping) and key != "_self_" and (config_dir() / f"{key}.yaml").is_file():
                pending.append(key)
            in_primary.add(key)
    out = []
    for group, choice in choices.items():
        if choice is None or group.startswith("hydra") or group in MODIFIER_GROUPS:
            continue
        if not (config_dir() / group / f"{choice}.yaml").is_file():
            continue
        out.append(f"{group}={choice}" if group in in_primary else f"+{group}={choice}")
    return out


def unknown_keys(cfg, reference, open_paths: Iterable[str] = ()) -> list[str]:
    """Dotted keys of ``cfg`` that ``reference`` lacks (lists are leaves; null / ``{}`` reference nodes and
    ``open_paths`` subtrees accept anything)."""
    open_paths = tuple(open_paths)
    found: list[str] = []

    def walk(node, ref, path):
        if path in open_paths or not isinstance(node, DictConfig):
            return
        if not isinstance(ref, DictConfig) or (len(ref) == 0):
            return
        for key in node.keys():
            sub = f"{path}.{key}" if path else str(key)
            if sub in open_paths:
                continue
            if not _has(ref, key):
                found.append(sub)
                continue
            walk(node._get_node(key), ref._get_node(key), sub)

    walk(cfg, reference, "")
    return found


def check_keys(cfg, config_name: str, choices: Mapping[str, str | None] | None,
               overrides: Sequence[str] | None = None) -> None:
    """Every key of ``cfg`` exists in the reference config of its group choices (see the module docstring).

    With the command line's ``overrides`` known, the common case needs no second compose: without a
    modifier group and a ``+key=value``, the reference *is* ``cfg`` (struct mode rejected unknown keys)."""
    if not choices:
        return
    if overrides is not None and not any(choices.get(g) for g in MODIFIER_GROUPS) and not any(
            o.startswith("+") and o not in _group_overrides([o]) for o in overrides):
        return
    reference = _reference(config_name, tuple(reference_overrides(config_name, choices)))
    # a group option from a hydra.searchpath folder is not in the package's conf/: its keys cannot be checked
    elsewhere = tuple(g for g, c in choices.items() if c and not g.startswith("hydra")
                      and not (config_dir() / g / f"{c}.yaml").is_file())
    bad = unknown_keys(cfg, reference, OPEN.get(config_name, ("hydra",)) + elsewhere)
    if bad:
        raise ConfigError(unknown_key_message(reference, bad[0])
                          + " (set by an experiment/debug/local file or a +key=value override)")


@functools.lru_cache(maxsize=8)
def _reference(config_name: str, overrides: tuple[str, ...]) -> DictConfig:
    return _compose_raw(config_name, overrides)


# ------------------------------------------------------------------ values
def _key(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _get(sec, key: str, where: str):
    try:
        if key not in sec.keys():
            raise ConfigError(f"missing option {_key(where, key)}")
        return sec[key]
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - an interpolation that does not resolve
        raise ConfigError(f"{_key(where, key)}: {str(err).splitlines()[0]}") from None


def _show(value) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, (ListConfig, tuple)):
        value = list(value)
    return repr(value)


def _fail(where: str, key: str, value, allowed: str):
    raise ConfigError(f"invalid option {_key(where, key)}={_show(value)}: {allowed}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(sec, key, where, lo: int = 0, optional: bool = False):
    v = _get(sec, key, where)
    if v is None and optional:
        return None
    if not _is_int(v) or v < lo:
        _fail(where, key, v, f"must be an integer >= {lo}" + (" or null" if optional else ""))
    return v


def _num(sec, key, where, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
         hi_open: bool = False, optional: bool = False):
    v = _get(sec, key, where)
    if v is None and optional:
        return None
    ok = _is_num(v) and (lo is None or (v > lo if lo_open else v >= lo)) and (
        hi is None or (v < hi if hi_open else v <= hi))
    if not ok:
        if lo is not None and hi is not None:
            rng = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        elif lo is not None:
            rng = f"{'>' if lo_open else '>='} {lo:g}"
        else:
            rng = "a number"
        _fail(where, key, v, f"must be a number {rng}" + (" or null" if optional else ""))
    return v


def _bool(sec, key, where):
    v = _get(sec, key, where)
    if not isinstance(v, bool):
        _fail(where, key, v, "must be true or false")
    return v


def _choice(sec, key, where, choices: Sequence, optional: bool = False):
    v = _get(sec, key, where)
    if v is None and optional:
        return None
    if v not in choices:
        _fail(where, key, v, "must be one of " + ", ".join(map(str, choices)))
    return v


def _list(sec, key, where, optional: bool = False):
    v = _get(sec, key, where)
    if v is None and optional:
        return None
    if not isinstance(v, (list, tuple, ListConfig)):
        _fail(where, key, v, "must be a list" + (" or null" if optional else ""))
    return list(v)


def validate_model(model, where: str = "model") -> None:
    """Values of the ``model`` section (:class:`~dinotracker.training.module.DinoTrackerModule`)."""
    _num(model, "radius", where, 0, lo_open=True)
    _choice(model, "coarse_from", where, ("raw", "refined"))
    for key in ("normalized_refiner", "use_delta", "use_refiner", "compile", "delta_zero_init", "channels_last",
                "fast_conv"):
        _bool(model, key, where)
    _choice(model, "align_mode", where, ("center", "reference"))
    chans = _list(model, "delta_channels", where)
    if not chans or not all(_is_int(c) and c > 0 for c in chans):
        _fail(where, "delta_channels", chans, "must be a non-empty list of positive integers")
    _int(model, "refiner_hidden", where, 1)
    _int(model, "refine_chunk", where, 1, optional=True)
    lora, lw = _get(model, "lora", where), f"{where}.lora"
    enabled = _bool(lora, "enabled", lw)
    blocks = _list(lora, "blocks", lw, optional=True)
    if blocks is not None and not all(_is_int(b) for b in blocks):
        _fail(lw, "blocks", blocks, "must be a list of block indices or null")
    _int(lora, "rank", lw, 1)
    _num(lora, "alpha", lw, 0, lo_open=True)
    _num(lora, "dropout", lw, 0, 1, hi_open=True)
    if not _list(lora, "targets", lw):
        _fail(lw, "targets", [], "must name at least one attention linear (e.g. [qkv])")
    layer = _get(lora, "layer", lw)
    if enabled and not _is_int(layer):
        _fail(lw, "layer", layer, "must be the cached features' block index (an integer)")
    _get(lora, "facet", lw)
    _bool(lora, "cache_prefix", lw)
    _choice(lora, "prefix_dtype", lw, ("float32", "float16", "bfloat16"))
    if not (model["use_delta"] or model["use_refiner"] or enabled):
        raise ConfigError(f"nothing to train: {where}.use_delta, {where}.use_refiner and {lw}.enabled are all false")


def validate_loss(loss, where: str = "loss") -> None:
    """Values of the ``loss`` section: weights >= 0, start steps >= 0, temperatures > 0, ..."""
    for term in LOSS_TERMS:
        sec, w = _get(loss, term, where), f"{where}.{term}"
        _bool(sec, "enabled", w)
        _int(sec, "start", w, 0)
        for key in (("norm_weight", "angle_weight") if term == "prior" else ("weight",)):
            _num(sec, key, w, 0)
    _num(loss["flow"], "huber_delta", f"{where}.flow", 0, lo_open=True)
    for term in ("dino_bb", "refined_bb"):
        _num(loss[term], "temperature", f"{where}.{term}", 0, lo_open=True)
        _num(loss[term], "divisor", f"{where}.{term}", 0, lo_open=True, optional=True)
    c, w = loss["cycle"], f"{where}.cycle"
    _num(c, "threshold", w, 0, lo_open=True)
    _num(c, "decay", w, 0, 1, lo_open=True)
    _choice(c, "pseudo_labels", w, PSEUDO_LABELS)
    _num(c, "ema_decay", w, 0, 1, hi_open=True)
    _int(c, "lag_every", w, 1)
    _choice(c, "reduction", w, ("mean", "sum"))
    _num(c, "huber_delta", w, 0, lo_open=True)


def validate_optim(optim, where: str = "optim") -> None:
    """Values of the ``optim`` section: learning rates > 0, gamma in (0, 1], ..."""
    _num(optim, "lr_delta", where, 0, lo_open=True)
    _num(optim, "lr_refiner", where, 0, lo_open=True)
    _num(optim, "lr_lora", where, 0, lo_open=True, optional=True)
    _num(optim, "gamma", where, 0, 1, lo_open=True)
    _int(optim, "decay_every", where, 1)
    _bool(optim, "decay_refiner", where)
    betas = _list(optim, "betas", where)
    if len(betas) != 2 or not all(_is_num(b) and 0 <= b < 1 for b in betas):
        _fail(where, "betas", betas, "must be two numbers in [0, 1)")
    _num(optim, "eps", where, 0, lo_open=True)


def validate_data(data, where: str = "data") -> None:
    """Values of the ``data`` section (:class:`~dinotracker.training.sampler.CorrespondenceSampler`)."""
    for key in ("flow_pairs", "bb_pairs", "cycle_pairs", "bb_frame_pairs", "cycle_frame_pairs"):
        _int(data, key, where, 0)
    for key in ("fg_ratio", "region_fg_ratio"):
        _num(data, key, where, 0, 1)
    frames = _int(data, "flow_frames", where, 2)
    if _int(data, "max_frames", where, 2) < frames:
        _fail(where, "max_frames", data["max_frames"], f"must be >= {where}.flow_frames ({frames})")
    _bool(data, "region_same_frame", where)
    _int(data, "max_redraws", where, 1)
    _bool(data, "static_frames", where)


def validate_trainer(trainer, where: str = "trainer") -> None:
    _int(trainer, "max_steps", where, 1)
    precision = _get(trainer, "precision", where)
    if str(precision) not in PRECISIONS:  # Lightning also takes the ints 16, 32, 64
        _fail(where, "precision", precision, "must be one of " + ", ".join(PRECISIONS))
    acc = _get(trainer, "accelerator", where)
    if isinstance(acc, str) and acc not in ACCELERATORS:
        _fail(where, "accelerator", acc, "must be one of " + ", ".join(ACCELERATORS))
    if "log_every_n_steps" in trainer:
        _int(trainer, "log_every_n_steps", where, 1)
    if "gradient_clip_val" in trainer:
        _num(trainer, "gradient_clip_val", where, 0, optional=True)


def validate(cfg) -> None:
    """Check every option of a composed config that the jobs read (sections it lacks are skipped). Raises a
    one-line :class:`ConfigError` naming the key and the allowed values; cheap (no file or network access,
    except that ``ckpt_path`` must exist when it is a path)."""
    sections = (("model", validate_model), ("loss", validate_loss), ("optim", validate_optim),
                ("data", validate_data), ("trainer", validate_trainer))
    for name, fn in sections:
        if name in cfg:
            fn(cfg[name], name)
    if "subsample" in cfg:
        _int(cfg, "subsample", "", 1)
    if "track" in cfg and cfg.track is not None:
        t = cfg.track
        _int(t, "grid_step", "track", 1)
        _int(t, "grid_frame", "track", 0)
        _int(t, "chunk", "track", 1, optional=True)
        _num(t, "anchor_cos", "track", -1, 1)
        _num(t, "visible_cos", "track", -1, 1)
    if "evaluate" in cfg and cfg.evaluate is not None:
        _choice(cfg.evaluate, "query_mode", "evaluate", ("first", "strided"))
        for b in _list(cfg.evaluate, "baselines", "evaluate"):
            if b not in ("still", "flow_chaining", "raw_dino"):
                _fail("evaluate", "baselines", b, "each must be one of still, flow_chaining, raw_dino")
    if "backbone" in cfg:
        for key in ("dim", "patch", "stride", "batch_size"):
            if key in cfg.backbone:
                _int(cfg.backbone, key, "backbone", 1)
        features = _bool(cfg.backbone, "has_features", "backbone") if "has_features" in cfg.backbone else True
        if not features:  # Phi = 0 (backbone=none)
            for term in ("dino_bb", "prior"):
                if "loss" in cfg and cfg.loss[term].enabled:
                    _fail("loss", f"{term}.enabled", True, f"must be false with backbone={cfg.backbone.name} "
                          "(zero features: no DINO best buddies, the prior is undefined)")
            if "model" in cfg and cfg.model.lora.enabled:
                _fail("model", "lora.enabled", True, f"needs a DINO backbone (backbone={cfg.backbone.name} "
                      "has no weights to tune)")
    if "flow" in cfg and "batch_size" in cfg.flow:
        _int(cfg.flow, "batch_size", "flow", 1)
    ckpt = cfg.get("ckpt_path") if "ckpt_path" in cfg else None
    if ckpt not in (None, "", "last") and not Path(str(ckpt)).is_file():
        _fail("", "ckpt_path", ckpt, "must be null, 'last' or an existing checkpoint file")


# ------------------------------------------------------------------ Python use
@functools.lru_cache(maxsize=8)
def _training_defaults(overrides: tuple[str, ...]) -> dict:
    cfg = _compose_raw("fit", overrides)
    return {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "loss", "optim", "data")}


def training_options(overrides: Sequence[str] = (), **sections: Mapping) -> dict[str, dict]:
    """The ``model``, ``loss``, ``optim`` and ``data`` sections of the ``fit`` config (``conf/``), for using
    the training classes from Python: Hydra ``overrides`` (e.g. ``["backbone=none"]``) and partial
    ``sections`` dicts (``loss={"cycle": {"start": 2}}``) merged over them. An unknown key is a
    :class:`ConfigError` naming the valid ones; the values are validated."""
    base = _training_defaults(tuple(overrides))
    out = {}
    for name in ("model", "loss", "optim", "data"):
        node = OmegaConf.create(base[name])
        OmegaConf.set_struct(node, True)
        for key in _flat_keys(sections.get(name) or {}, name):
            if not _exists(OmegaConf.create({name: node}), key):
                raise ConfigError(unknown_key_message(OmegaConf.create({name: node}), key))
        merged = OmegaConf.merge(node, OmegaConf.create(_plain(sections.get(name) or {})))
        out[name] = OmegaConf.to_container(merged, resolve=True)
    unknown = set(sections) - set(out)
    if unknown:
        raise ConfigError(f"unknown section {sorted(unknown)[0]}; training_options takes model, loss, optim, data")
    validate_model(out["model"])
    validate_loss(out["loss"])
    validate_optim(out["optim"])
    validate_data(out["data"])
    return out


def _plain(d):
    if isinstance(d, Mapping):
        return {k: _plain(v) for k, v in d.items()}
    if isinstance(d, tuple):
        return [_plain(v) for v in d]
    return d


def _flat_keys(d: Mapping, prefix: str) -> list[str]:
    out = []
    for k, v in d.items():
        key = f"{prefix}.{k}"
        out.extend(_flat_keys(v, key) if isinstance(v, Mapping) and v else [key])
    return out


def module_options(overrides: Sequence[str] = (), **sections: Mapping) -> dict[str, dict]:
    """:func:`training_options` without ``data``: ``DinoTrackerModule(video, **module_options(loss=...))``."""
    o = training_options(overrides, **sections)
    return {k: o[k] for k in ("model", "loss", "optim")}
