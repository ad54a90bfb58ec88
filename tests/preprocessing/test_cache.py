import shutil

import numpy as np
import pytest

from dinotracker.preprocessing.cache import StageCache, array_hash, stable_hash


def test_keys_depend_on_content_and_config():
    a = np.arange(12).reshape(3, 4)
    assert array_hash(a) == array_hash(a.copy())
    assert array_hash(a) != array_hash(a + 1)
    assert array_hash(a) != array_hash(a.astype(np.float32))
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_get_or_compute_caches_and_recomputes_on_key_change(tmp_path):
    cache = StageCache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"x": np.arange(5)}, {"note": "hi"}

    stats = {}
    arr, meta = cache.get_or_compute("flow", "k1", compute, stats)
    np.testing.assert_array_equal(arr["x"], np.arange(5))
    assert meta["note"] == "hi" and not stats["flow"]["cached"]
    arr, _ = cache.get_or_compute("flow", "k1", compute, stats)
    assert len(calls) == 1 and stats["flow"]["cached"]
    cache.get_or_compute("flow", "k2", compute)
    assert len(calls) == 2


def test_interrupted_stage_leaves_no_entry_and_resumes(tmp_path):
    cache = StageCache(tmp_path)
    cache.get_or_compute("a", "k", lambda: ({"x": np.ones(3)}, {}))

    def boom():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.get_or_compute("b", "k", boom)
    assert not cache.has("b", "k") and cache.has("a", "k")
    # a half-written temporary folder from a killed writer is ignored and replaced
    (tmp_path / ".b-k.tmp-999").mkdir()
    arr, _ = cache.get_or_compute("b", "k", lambda: ({"y": np.zeros(2)}, {}))
    assert arr["y"].shape == (2,) and cache.has("b", "k")


def test_clean_stale(tmp_path):
    cache = StageCache(tmp_path)
    for k in ("k1", "k2"):
        cache.save("s", k, {"x": np.zeros(1)})
    removed = cache.clean_stale({"s-k2"})
    assert [p.name for p in removed] == ["s-k1"] and cache.has("s", "k2")


def test_cache_index_round_trip_and_legacy_entries(tmp_path):
    from dinotracker.preprocessing.cache import CacheIndex, StageRef

    cache = StageCache(tmp_path)
    cache.save("frames", "k1", {"frames": np.zeros((2, 3, 4, 4), np.uint8)})
    cache.save("flow", "k-2", {"forward": np.ones((1, 2, 4, 4), np.float16)})  # a key with a dash
    index = CacheIndex(name="v", cache_dir=tmp_path, patch=14, stride=7, input_hw=(8, 8), model_hw=(4, 4),
                       frame_indices=[0, 1], stages={"frames": StageRef("frames", "k1"),
                                                     "flow": StageRef("flow", "k-2")})
    index.write()
    back = CacheIndex.read(tmp_path)
    assert back == index and back.to_dict()["stages"] == {"frames": "k1", "flow": "k-2"}
    assert back.load("flow")["forward"].dtype == np.float16 and back.path("frames") == tmp_path / "frames-k1"
    with pytest.raises(FileNotFoundError, match="'features'"):
        back.load("features")
    # the untyped index written before (entries "<stage>-<key>") still reads
    legacy = {k: v for k, v in index.to_dict().items() if k not in ("stages", "format")}
    legacy["entries"] = ["frames-k1"]
    assert CacheIndex.from_dict(legacy).stages == {"frames": StageRef("frames", "k1")}
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "frames-k1", moved / "frames-k1")
    assert index.moved_to(moved).load("frames")["frames"].shape == (2, 3, 4, 4)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        index.moved_to(tmp_path / "nowhere").load("frames")
    with pytest.raises(ValueError, match="stages"):
        CacheIndex.from_dict({"cache_dir": "x"})


def test_atomic_path_unique_names_and_no_leftovers(tmp_path):
    from dinotracker.utils.atomic import atomic_path, temp_name, write_text

    target = tmp_path / "out.png"
    names = {temp_name(target) for _ in range(50)}
    assert len(names) == 50 and all(n.suffix == ".png" and n.parent == tmp_path for n in names)
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []  # neither the target nor the temporary file
    write_text(target, "one")
    write_text(target, "two")
    assert target.read_text() == "two" and list(tmp_path.iterdir()) == [target]
    # folders: filled under a temporary name, an existing folder (another writer's) is kept
    with atomic_path(tmp_path / "entry", folder=True, keep_existing=True) as d:
        (d / "a.npy").write_text("first")
    with atomic_path(tmp_path / "entry", folder=True, keep_existing=True) as d:
        (d / "a.npy").write_text("second")
    assert (tmp_path / "entry" / "a.npy").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry", "out.png"]
