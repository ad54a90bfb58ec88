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


# ---------------------------------------------------------------------- what the stages really read
class _Recorder(dict):
    """A config section that records which options are read (attribute, ``get`` or ``[]``) while a stage
    computes; iterating it (what hashing the section does) is not a read."""

    def __init__(self, tree: dict, prefix: str, log: list):
        super().__init__(tree)
        self._prefix, self._log = prefix, log

    def _wrap(self, key, value):
        path = f"{self._prefix}.{key}"
        if isinstance(value, dict):
            return _Recorder(value, path, self._log)
        self._log.append(path)
        return value

    def __getattr__(self, key):
        if key.startswith("_"):
            raise AttributeError(key)
        try:
            return self._wrap(key, dict.__getitem__(self, key))
        except KeyError:
            raise AttributeError(key) from None

    def __getitem__(self, key):
        return self._wrap(key, dict.__getitem__(self, key))

    def get(self, key, default=None):
        return self._wrap(key, dict.__getitem__(self, key)) if key in self else default


@pytest.mark.parametrize("backbone", ["none", "vit"])
@pytest.mark.parametrize("masks", [True, False])
def test_stages_read_only_what_their_keys_hash(tmp_path, monkeypatch, backbone, masks):
    """Fail-safe only holds if a stage reads no option outside the sections its key hashes (or, through its
    upstream keys, the options its upstream stages hash). Run the pipeline on config sections that record
    every read and attribute each read to the stage computing at that moment."""
    import numpy as np

    from dinotracker.data.synthetic import make_synthetic_video
    from dinotracker.data.video import Video
    from dinotracker.preprocessing import cache as cache_mod
    from dinotracker.preprocessing.pipeline import preprocess_video

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("fit", overrides=["+video=synthetic"])
    sections = {k: plain(cfg[k]) for k in ("preprocess", "flow", "backbone")}
    sections["preprocess"].update(size=None, short_side=56, device="cpu")
    sections["preprocess"]["trajectories"]["direct_window"] = 2
    sections["preprocess"]["best_buddies"]["topk"] = 10
    sections["backbone"].update(name="dinov2_vits14", source="random", dim=384, layer=2) if backbone == "vit" else \
        sections["backbone"].update(name="none", source="none", dim=8)
    reads: list[tuple[str, str]] = []
    current = ["setup"]
    log: list[str] = []

    orig = cache_mod.StageCache.get_or_compute

    def tracing(self, stage, key, compute, stats=None):
        def traced():
            current[0], n = stage, len(log)
            try:
                return compute()
            finally:
                reads.extend((stage, p) for p in log[n:])
                current[0] = "setup"
        return orig(self, stage, key, traced, stats)

    monkeypatch.setattr(cache_mod.StageCache, "get_or_compute", tracing)
    syn = make_synthetic_video(num_frames=4, height=64, width=96, num_points=8, seed=2)
    video = Video(frames=syn.frames, masks=(syn.masks > 0).astype(np.uint8) if masks else None,
                  frame_indices=np.arange(4), name="rec", source="synthetic")
    rec = {k: _Recorder(v, k, log) for k, v in sections.items()}
    preprocess_video(video, rec["backbone"], rec["flow"], rec["preprocess"], tmp_path, progress=False)
    assert {s for s, _ in reads} >= {"flow", "trajectories", "features"}  # the recorder saw the computes

    def covered(stage: str) -> set[str]:
        """Options ``stage``'s key depends on: its own and, transitively, its upstream stages'."""
        opts = set(stage_options(stage, sections))
        for u in STAGES[stage].upstream:
            opts |= covered(u)
        return opts

    def ignored(stage: str, path: str) -> bool:
        return any(path == i or path.startswith(i + ".") for i in STAGES[stage].ignores)

    for stage, path in reads:
        assert path in covered(stage) or ignored(stage, path), (
            f"stage {stage} reads {path}, which its key does not hash: add it to keys.STAGES[{stage!r}].reads")
    # reads outside any compute (set-up: model size, patch grid, device) must feed some stage's key
    setup = set(log) - {p for _, p in reads}
    every = set().union(*(covered(s) for s in STAGES)) | {i for s in STAGES.values() for i in s.ignores}
    assert setup <= every, setup - every
