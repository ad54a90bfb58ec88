"""Two processes preprocessing the same video into the same fresh cache at once (a sweep's jobs do
exactly this): both succeed, each stage is computed once, and the cache equals a one-process run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from dinotracker.preprocessing.cache import CacheIndex

REPO = Path(__file__).resolve().parents[2]

SETUP = textwrap.dedent("""
    import numpy as np
    from omegaconf import OmegaConf
    from dinotracker import config_dir
    from dinotracker.data.synthetic import make_synthetic_video
    from dinotracker.data.video import Video

    PRE = OmegaConf.load(config_dir() / "preprocess" / "default.yaml")
    PRE.size, PRE.short_side, PRE.device = None, 56, "cpu"
    PRE.trajectories.direct_window = 3
    FLOW = OmegaConf.create(dict(method="dis", weights=None, num_updates=24, dis_preset="medium", batch_size=8))
    BACKBONE = OmegaConf.create(dict(name="none", weights=None, source="none", dim=16, patch=14, stride=7, layer=0,
                                     facet="tokens", mask_layer=0, batch_size=4))
    syn = make_synthetic_video(num_frames=5, height=64, width=96, num_points=16, seed=1)
    VIDEO = Video(frames=syn.frames, masks=(syn.masks > 0).astype(np.uint8), frame_indices=np.arange(5),
                  name="syn", source="synthetic")
""")

WORKER = SETUP + textwrap.dedent("""
    import logging, sys, time
    from pathlib import Path
    from dinotracker.preprocessing.pipeline import preprocess_video

    cache, me, other = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s %(message)s")
    me.touch()
    deadline = time.time() + 120
    while not other.exists() and time.time() < deadline:  # start together
        time.sleep(0.01)
    preprocess_video(VIDEO, BACKBONE, FLOW, PRE, cache, progress=False)
""")


def _stage_arrays(index: CacheIndex) -> dict:
    return {s: {k: np.array(v) for k, v in index.load(s).items()} for s in index.stages}


def test_two_processes_compute_each_stage_once(tmp_path):
    cache = tmp_path / "shared"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    ready = [tmp_path / "ready0", tmp_path / "ready1"]
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(cache), str(ready[i]), str(ready[1 - i])],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    computing = [line.split()[2] for out in outs for line in out.splitlines()
                 if line.startswith("dinotracker.preprocessing.cache stage") and line.endswith("computing ...")]
    stages = ["frames", "flow", "trajectories", "features", "masks", "split", "best_buddies"]
    assert sorted(computing) == sorted(stages), computing  # each once, across both processes
    assert not list(cache.glob("*/.*tmp*")), "temporary files left behind"

    # the shared cache equals a one-process run into its own cache
    ns: dict = {}
    exec(SETUP, ns)  # noqa: S102 (the same setup the workers ran)
    from dinotracker.preprocessing.pipeline import preprocess_video

    single = preprocess_video(ns["VIDEO"], ns["BACKBONE"], ns["FLOW"], ns["PRE"], tmp_path / "single",
                              progress=False)
    shared = CacheIndex.read(next(cache.iterdir()))
    assert shared.stages == single.index.stages
    got, want = _stage_arrays(shared), _stage_arrays(single.index)
    for stage in want:
        for name in want[stage]:
            np.testing.assert_array_equal(got[stage][name], want[stage][name], err_msg=f"{stage}/{name}")
