"""Every option lives in conf/ (no Python copy), unknown keys fail at compose time with the valid names,
bad values fail right after compose with one line, and backbone=none is a config-level switch."""

from __future__ import annotations

import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dinotracker import config as C
from dinotracker import config_dir
from dinotracker.config import ConfigError, compose

REPO = Path(__file__).resolve().parents[2]
FIT_GROUPS = ("backbone", "flow", "preprocess", "model", "loss", "data", "optim", "trainer", "logger", "callbacks",
              "paths", "debug", "hparams_search")


def _options(group):
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in FIT_GROUPS for o in _options(g)])
def test_every_group_option_composes_with_known_keys(group, option):
    cfg = compose("fit", ["+video=synthetic", f"{group}={option}"])
    assert cfg.trainer.max_steps > 0


@pytest.mark.parametrize("video", _options("video"))
def test_every_video_composes(video):
    compose("fit", [f"+video={video}"] + (["video.path=/x/clip.mp4"] if video == "path" else []))


def test_other_entry_configs_compose():
    assert compose("preprocess", ["+video=synthetic"]).backbone.name
    assert compose("benchmark", []).benchmark.name


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "dinotracker.fit", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_mistyped_key_fails_at_compose_time_naming_the_valid_one():
    r = _cli("+video=synthetic", "loss.flow.wieght=1", "--cfg", "job")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "loss.flow.wieght" in lines[0] and "did you mean loss.flow.weight?" in lines[0]
    assert "huber_delta, start, weight" in lines[0]
    with pytest.raises(ConfigError, match=r"did you mean model\.lora\.enabled\?"):
        compose("fit", ["+video=synthetic", "model.lora.enabld=true"])
    with pytest.raises(ConfigError, match=r"unknown option lossy \(did you mean loss\?\)"):
        compose("fit", ["+video=synthetic", "lossy.flow.weight=1"])


def test_an_added_key_fails_too():
    # `+key=value` and keys set by experiment/debug/local files are compared with the reference config
    with pytest.raises(ConfigError, match=r"unknown option loss\.flow\.wieght \(did you mean loss\.flow\.weight\?\)"):
        compose("fit", ["+video=synthetic", "+loss.flow.wieght=1"])
    with pytest.raises(ConfigError, match=r"unknown option data\.flow_pair "):
        compose("fit", ["+video=synthetic", "+data.flow_pair=3"])
    # the open subtrees take Lightning's kwargs
    cfg = compose("fit", ["+video=synthetic", "+trainer.profiler=simple", "+callbacks.x={_target_: a.B}"])
    assert cfg.trainer.profiler == "simple"


def test_an_experiment_that_sets_a_missing_key_fails(tmp_path, monkeypatch):
    from hydra import initialize_config_dir

    conf = tmp_path / "conf"
    shutil.copytree(config_dir(), conf)
    (conf / "experiment" / "typo.yaml").write_text("# @package _global_\nloss:\n  cycle:\n    treshold: 2.0\n")
    monkeypatch.setattr(C, "config_dir", lambda: conf)
    C._reference.cache_clear()
    with initialize_config_dir(str(conf), version_base="1.3"):
        cfg = compose("fit", ["+video=synthetic", "experiment=quick_cpu"])  # a good one passes
        assert cfg.data.flow_pairs == 256
        with pytest.raises(ConfigError, match=r"unknown option loss\.cycle\.treshold \(did you mean "
                                              r"loss\.cycle\.threshold\?\); loss\.cycle has: "):
            compose("fit", ["+video=synthetic", "experiment=typo"])
    C._reference.cache_clear()


def test_unknown_keys_walk():
    ref = OmegaConf.create({"a": {"b": 1, "c": {"d": 2}}, "free": None, "t": {"x": 1}, "l": [1]})
    cfg = OmegaConf.create({"a": {"b": 1, "c": {"d": 2, "e": 3}, "z": 0}, "free": {"any": 1}, "t": {"y": 2},
                            "l": [{"q": 1}]})
    assert C.unknown_keys(cfg, ref, open_paths=("t",)) == ["a.c.e", "a.z"]


@pytest.mark.parametrize("override,message", [
    ("trainer.max_steps=-5", "trainer.max_steps=-5: must be an integer >= 1"),
    ("trainer.max_steps=0", "trainer.max_steps=0: must be an integer >= 1"),
    ("trainer.precision=fp17", "trainer.precision='fp17': must be one of auto, "),
    ("trainer.accelerator=quantum", "trainer.accelerator='quantum': must be one of auto, cpu"),
    ("loss.dino_bb.weight=-1", "loss.dino_bb.weight=-1: must be a number >= 0"),
    ("loss.prior.angle_weight=-0.1", "loss.prior.angle_weight=-0.1: must be a number >= 0"),
    ("loss.cycle.start=-1", "loss.cycle.start=-1: must be an integer >= 0"),
    ("loss.refined_bb.temperature=0", "loss.refined_bb.temperature=0: must be a number > 0"),
    ("loss.dino_bb.divisor=0", "loss.dino_bb.divisor=0: must be a number > 0 or null"),
    ("loss.cycle.pseudo_labels=teacher", "loss.cycle.pseudo_labels='teacher': must be one of ema, lagged, same"),
    ("loss.cycle.ema_decay=1.0", "loss.cycle.ema_decay=1.0: must be a number in [0, 1)"),
    ("loss.cycle.reduction=max", "loss.cycle.reduction='max': must be one of mean, sum"),
    ("loss.flow.enabled=maybe", "loss.flow.enabled='maybe': must be true or false"),
    ("optim.lr_delta=0", "optim.lr_delta=0: must be a number > 0"),
    ("optim.lr_refiner=-0.01", "optim.lr_refiner=-0.01: must be a number > 0"),
    ("optim.gamma=1.5", "optim.gamma=1.5: must be a number in (0, 1]"),
    ("optim.decay_every=0", "optim.decay_every=0: must be an integer >= 1"),
    ("optim.betas=[0.9]", "optim.betas=[0.9]: must be two numbers in [0, 1)"),
    ("data.flow_pairs=-1", "data.flow_pairs=-1: must be an integer >= 0"),
    ("data.fg_ratio=1.5", "data.fg_ratio=1.5: must be a number in [0, 1]"),
    ("data.region_fg_ratio=-0.1", "data.region_fg_ratio=-0.1: must be a number in [0, 1]"),
    ("data.max_frames=3", "data.max_frames=3: must be >= data.flow_frames (4)"),
    ("data.flow_pairs=abc", "data.flow_pairs='abc': must be an integer >= 0"),
    ("model.radius=0", "model.radius=0: must be a number > 0"),
    ("model.coarse_from=best", "model.coarse_from='best': must be one of raw, refined"),
    ("model.delta_channels=[8,0,8]", "model.delta_channels=[8, 0, 8]: must be a non-empty list of positive"),
    ("model.lora.dropout=1.0", "model.lora.dropout=1.0: must be a number in [0, 1)"),
    ("model.lora.prefix_dtype=int8", "model.lora.prefix_dtype='int8': must be one of float32, float16, bfloat16"),
    ("subsample=0", "subsample=0: must be an integer >= 1"),
    ("track.grid_step=0", "track.grid_step=0: must be an integer >= 1"),
    ("evaluate.query_mode=last", "evaluate.query_mode='last': must be one of first, strided"),
    ("ckpt_path=/no/such.ckpt", "ckpt_path='/no/such.ckpt': must be null, 'last' or an existing checkpoint file"),
])
def test_bad_values_fail_in_one_line(base_cfg, override, message):
    """What :func:`compose` runs right after composing (the command line's path: see the CLI tests below)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = base_cfg.copy()
    OmegaConf.set_struct(cfg, False)
    o = OverridesParser.create().parse_override(override)
    OmegaConf.update(cfg, o.key_or_group, o.value(), merge=False)
    with pytest.raises(ConfigError) as err:
        C.validate(cfg)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"invalid option {message}")


@pytest.fixture(scope="module")
def base_cfg():
    cfg = compose("fit", ["+video=synthetic"])
    C.validate(cfg)
    return cfg


def test_cross_key_checks():
    with pytest.raises(ConfigError, match="nothing to train"):
        compose("fit", ["+video=synthetic", "model.use_delta=false", "model.use_refiner=false"])
    with pytest.raises(ConfigError, match=r"loss\.prior\.enabled=true: must be false with backbone=none"):
        compose("fit", ["+video=synthetic", "backbone=none", "loss.prior.enabled=true"])
    with pytest.raises(ConfigError, match=r"model\.lora\.enabled=true: needs a DINO backbone"):
        compose("fit", ["+video=synthetic", "experiment=ablation/lora_tune", "backbone=none"])
    for ok in ("ckpt_path=last", "ckpt_path=null"):
        compose("fit", ["+video=synthetic", ok])


def test_bad_value_on_the_command_line_is_one_line_before_any_work(tmp_path):
    r = _cli("+video=synthetic", "trainer.max_steps=-5", f"hydra.run.dir={tmp_path / 'run'}",
             f"paths.cache_dir={tmp_path / 'cache'}")
    assert r.returncode == 2
    assert r.stderr.strip() == "error: invalid option trainer.max_steps=-5: must be an integer >= 1", r.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()  # no run folder, no preprocessing


def test_cfg_job_lists_the_options_that_used_to_live_in_python():
    r = _cli("+video=synthetic", "--cfg", "job", "--resolve")
    assert r.returncode == 0, r.stderr
    cfg = OmegaConf.create(r.stdout)
    assert cfg.loss.dino_bb.divisor == 700.0 and cfg.loss.refined_bb.divisor == 900.0
    assert cfg.loss.cycle.reduction == "mean" and cfg.loss.cycle.huber_delta == 1 / 32
    assert cfg.data.region_same_frame is True and cfg.data.max_redraws == 100
    assert list(cfg.optim.betas) == [0.9, 0.999] and cfg.optim.eps == 1e-8
    assert cfg.model.lora.layer == cfg.backbone.layer and cfg.model.lora.facet == cfg.backbone.facet
    assert all(cfg.loss[t].enabled for t in C.LOSS_TERMS) and cfg.model.delta_zero_init is True


def test_backbone_none_is_a_config_switch():
    for overrides in (["backbone=none"], ["experiment=demo", "backbone=none", "backbone.dim=128"],
                      ["experiment=ablation/no_dino"]):
        cfg = compose("fit", ["+video=synthetic", *overrides])
        assert cfg.backbone.has_features is False
        assert not cfg.loss.dino_bb.enabled and not cfg.loss.prior.enabled
        assert cfg.loss.flow.enabled and cfg.loss.refined_bb.enabled and cfg.loss.cycle.enabled
        assert cfg.model.delta_zero_init is False
    cfg = compose("fit", ["+video=synthetic", "backbone=random_vits14"])
    assert cfg.loss.dino_bb.enabled and cfg.loss.prior.enabled and cfg.model.delta_zero_init


def test_no_python_copy_of_the_defaults():
    import ast

    pkg = REPO / "dinotracker"
    gone = {"MODEL_DEFAULTS", "LOSS_DEFAULTS", "OPTIM_DEFAULTS", "LORA_DEFAULTS", "SAMPLER_KEYS", "merge_config"}
    for path in pkg.rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) for t in n.targets
                 if isinstance(t, ast.Name)} | {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert not names & gone, (path, names & gone)
        if path.name == "module.py" and path.parent.name == "training":
            # the module takes the config's sections whole: no defaults to fall back on
            cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "DinoTrackerModule")
            init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
            args = [a.arg for a in init.args.args]
            assert args[1:5] == ["video", "model", "loss", "optim"] and len(init.args.defaults) == 3


def test_sampler_keyword_defaults_equal_the_yaml():
    """CorrespondenceSampler keeps keyword defaults for library use; the config path passes every data.* key
    (so it never depends on them), and they may not drift from conf/data/default.yaml."""
    from dinotracker.training.sampler import CorrespondenceSampler

    data = OmegaConf.to_container(OmegaConf.load(config_dir() / "data" / "default.yaml"))
    params = {k: p.default for k, p in inspect.signature(CorrespondenceSampler).parameters.items()
              if k not in ("video", "seed")}
    assert params == data


def test_training_options_for_python_use():
    o = C.training_options(["backbone=none"], loss={"cycle": {"start": 2}}, data={"flow_pairs": 8})
    assert o["loss"]["cycle"]["start"] == 2 and o["data"]["flow_pairs"] == 8
    assert o["loss"]["dino_bb"]["enabled"] is False and o["model"]["delta_zero_init"] is False
    assert C.training_options()["loss"]["cycle"]["start"] == 5000  # the override did not leak into the cache
    with pytest.raises(ConfigError, match=r"unknown option optim\.lr_dleta \(did you mean optim\.lr_delta\?\)"):
        C.training_options(optim={"lr_dleta": 1.0})
    with pytest.raises(ConfigError, match=r"optim\.eps=0: must be a number > 0"):
        C.training_options(optim={"eps": 0})


def test_multirun_checks_the_keys_of_each_job(tmp_path):
    # a sweep skips the single-run precheck; each job checks its keys before any work
    r = _cli("-m", "+video=synthetic", "experiment=quick_cpu", "+loss.flow.wieght=1,2",
             f"hydra.sweep.dir={tmp_path / 'sweep'}", f"paths.cache_dir={tmp_path / 'cache'}")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith(
        "error: unknown option loss.flow.wieght (did you mean loss.flow.weight?)"), r.stderr
    assert not (tmp_path / "cache").exists()


def test_track_command_names_the_valid_option():
    r = subprocess.run([sys.executable, "-m", "dinotracker.track", "run=/nowhere", "grid_stp=10"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: unknown option grid_stp (did you mean grid_step?)"), r.stderr


def test_group_option_from_a_searchpath_folder_passes_the_key_check(tmp_path):
    """A video config in a ``hydra.searchpath`` folder (a benchmark's own videos) is not in conf/: its keys
    cannot be checked against the package's, and must not be reported as unknown (they were, so a
    benchmark job on such a video died before it could record its error)."""
    from dinotracker.config import compose

    (tmp_path / "video").mkdir()
    (tmp_path / "video" / "mine.yaml").write_text("kind: synthetic\nname: mine\nnum_frames: 5\n")
    cfg = compose("fit", ["+video=mine", f"hydra.searchpath=[file://{tmp_path}]", "experiment=quick_cpu"])
    assert cfg.video.name == "mine"
