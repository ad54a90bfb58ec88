"""What checking the preprocessing cache costs: loading a filled cache with and without content checksums,
and a full xxh3 hash against a sampled digest, per cached array.

    python -m dinotracker.preprocess +video=horsejump backbone=none preprocess.device=cpu \\
        preprocess.trajectories.direct_window=8 paths.cache_dir=/tmp/bench_cache      # fill once
    python experiments/bench/cache_verify.py /tmp/bench_cache [--repeats 5]

Times (best of ``--repeats``, page cache warm, the data copied to memory as the pipeline does):
``load_preprocessed`` of the cache's most recent index with ``verify`` on and off, and for every array
the full :func:`~dinotracker.preprocessing.cache.content_digest` against a digest of 256 sampled 64 KiB
blocks (what a sampled check would read).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def sampled_digest(arr: np.ndarray, blocks: int = 256, block_bytes: int = 64 << 10) -> str:
    import xxhash

    buf = memoryview(arr.reshape(-1)).cast("B")
    n = len(buf)
    h = xxhash.xxh3_64(str(n).encode())
    if n <= blocks * block_bytes:
        h.update(buf)
    else:
        for off in np.linspace(0, n - block_bytes, blocks).astype(np.int64):
            h.update(buf[int(off):int(off) + block_bytes])
    return h.hexdigest()


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    from dinotracker.preprocessing import cache as cache_mod
    from dinotracker.preprocessing.cache import CacheIndex, content_digest
    from dinotracker.preprocessing.pipeline import load_preprocessed

    ap = argparse.ArgumentParser()
    ap.add_argument("cache_root")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    folder = next(p for p in sorted(Path(args.cache_root).iterdir()) if (p / "preprocessed.json").is_file())
    index = CacheIndex.read(folder)

    def load(verify: bool):
        orig = CacheIndex.load

        def patched(self, stage, verify_=verify):
            return orig(self, stage, verify=verify_)

        CacheIndex.load = patched
        try:
            load_preprocessed(index)
        finally:
            CacheIndex.load = orig

    load(True)  # warm the page cache
    on, off = best(lambda: load(True), args.repeats), best(lambda: load(False), args.repeats)
    total = sum(a.nbytes for s in index.stages for a in index.load(s, verify=False).values())
    print(f"cache {folder} ({total / 1e6:.0f} MB of arrays in {len(index.stages)} entries)")
    print(f"load_preprocessed: verify on {on:.2f} s, off {off:.2f} s (+{on - off:.2f} s, {100 * (on / off - 1):.0f} %)")
    print("| stage/array | MB | full xxh3 (s) | GB/s | sampled 256x64KiB (s) |")
    print("|---|---|---|---|---|")
    for stage in index.stages:
        for name, a in cache_mod.StageCache(index.cache_dir, create=False).load(stage, index.ref(stage).key,
                                                                                 verify=False)[0].items():
            mem = np.array(a)
            full = best(lambda m=mem: content_digest(m), args.repeats)
            samp = best(lambda m=mem: sampled_digest(m), args.repeats)
            print(f"| {stage}/{name} | {mem.nbytes / 1e6:.0f} | {full:.3f} | {mem.nbytes / 1e9 / max(full, 1e-9):.1f} "
                  f"| {samp:.4f} |")


if __name__ == "__main__":
    main()
