"""Fail-safe stage keys: every option a stage reads changes its key unless it is on the stage's
"does not affect output" list (and those do not), walked over the composed ``fit`` config."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from dinotracker import config_dir
from dinotracker.preprocessing.keys import STAGES, leaves, plain, stage_key, stage_options

UPSTREAM = {name: {u: f"key-of-{u}" for u in spec.upstream} for name, spec in STAGES.items()}


@pytest.fixture(scope="module", params=["synthetic", "horsejump"])
def fit_cfg(request):
    # each video's defaults (and the vitl14 / dis / default-preprocess groups of fit.yaml)
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("fit", overrides=[f"+video={request.param}"])
    return {k: plain(cfg[k]) for k in ("preprocess", "flow", "backbone")}


def _changed(value):
    """A different value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 1.5 + 0.25
    if isinstance(value, str):
        return value + "_x"
    if value is None:
        return 3
    if isinstance(value, list):
        return [_changed(value[0]), *value[1:]] if value else [1]
    if isinstance(value, dict):
        return {"x": 1}
    raise TypeError(type(value))


def _set(cfg, path, value):
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg.items()}  # shallow copies per level below
    node = out
    parts = path.split(".")
    for p in parts[:-1]:
        node[p] = dict(node[p])
        node = node[p]
    node[parts[-1]] = value
    return out


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_read_option_changes_the_key_unless_ignored(fit_cfg, stage):
    spec = STAGES[stage]
    base = stage_key(stage, fit_cfg, UPSTREAM[stage])
    every = leaves(fit_cfg)
    read = {p for p in every if any(p == r or p.startswith(r + ".") for r in spec.reads)}
    ignored = {p for p in read if any(p == i or p.startswith(i + ".") for i in spec.ignores)}
    assert set(stage_options(stage, fit_cfg)) == read - ignored
    if spec.reads:
        assert read - ignored or stage == "split", f"{stage} hashes no option"
    for path in sorted(read):
        key = stage_key(stage, _set(fit_cfg, path, _changed(every[path])), UPSTREAM[stage])
        if path in ignored:
            assert key == base, f"{stage}: {path} is on the ignore list but changes the key"
        else:
            assert key != base, f"{stage}: changing {path} keeps the key (a stale entry would be reused)"
    # options of sections the stage does not read never change its key
    for path in sorted(set(every) - read)[:50]:
        assert stage_key(stage, _set(fit_cfg, path, _changed(every[path])), UPSTREAM[stage]) == base, path
    # an option added later to a read section is hashed by default (fail-safe)
    for root in spec.reads:
        if isinstance(fit_cfg.get(root.split(".")[0]), dict) and root.count(".") <= 1:
            new = f"{root}.brand_new_option"
            if not any(new == i or new.startswith(i + ".") for i in spec.ignores):
                assert stage_key(stage, _set(fit_cfg, new, 1), UPSTREAM[stage]) != base


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_upstream_keys_version_and_inputs_change_the_key(fit_cfg, stage, monkeypatch):
    import dataclasses

    from dinotracker.preprocessing import keys

    base = stage_key(stage, fit_cfg, UPSTREAM[stage], x=1)
    assert stage_key(stage, fit_cfg, UPSTREAM[stage], x=2) != base
    for u in STAGES[stage].upstream:
        assert stage_key(stage, fit_cfg, {**UPSTREAM[stage], u: "other"}, x=1) != base
    bumped = dataclasses.replace(STAGES[stage], version=STAGES[stage].version + 1)
    monkeypatch.setitem(keys.STAGES, stage, bumped)
    assert stage_key(stage, fit_cfg, UPSTREAM[stage], x=1) != base
    with pytest.raises(ValueError, match="upstream"):
        stage_key(stage, fit_cfg, {"not_a_stage": "k"})


def test_ignore_lists_name_real_options(fit_cfg):
    every = leaves(fit_cfg)
    for spec in STAGES.values():
        for path in spec.ignores:
            assert any(p == path or p.startswith(path + ".") for p in every), f"{spec.name}: {path} is no option"
            assert any(path == r or path.startswith(r + ".") for r in spec.reads), f"{spec.name}: {path} not read"
