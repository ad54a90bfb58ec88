"""Optical flow front-ends: DIS on real frames, RAFT shapes/padding with random weights, weight lookup, and
one estimator call per consecutive ordered pair."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dinotracker.preprocessing import flow as flow_mod
from dinotracker.preprocessing.flow import (
    DISFlow,
    RAFTFlow,
    build_flow,
    compute_consecutive_flows,
    load_raft_weights,
    raft_weights_file,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """RAFT on a shared, oversubscribed CPU is far faster single-threaded; restore afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class RecordingEstimator:
    """Fake estimator on constant frames (value = frame index): flow[0] = src index, flow[1] = dst index."""

    def __init__(self):
        self.pairs: list[tuple[int, int]] = []
        self.calls = 0

    def __call__(self, src, dst):
        self.calls += 1
        b, _, h, w = src.shape
        out = torch.empty(b, 2, h, w)
        for k in range(b):
            a, c = int(src[k, 0, 0, 0]), int(dst[k, 0, 0, 0])
            self.pairs.append((a, c))
            out[k, 0], out[k, 1] = a, c
        return out


def test_consecutive_flows_each_pair_once():
    t = 7
    frames = torch.arange(t, dtype=torch.uint8)[:, None, None, None].expand(t, 3, 5, 6).contiguous()
    est = RecordingEstimator()
    fwd, bwd = compute_consecutive_flows(est, frames, batch_size=3, progress=False)
    assert fwd.shape == bwd.shape == (t - 1, 2, 5, 6) and fwd.dtype == bwd.dtype == torch.float32
    expected = [(i, i + 1) for i in range(t - 1)] + [(i + 1, i) for i in range(t - 1)]
    assert sorted(est.pairs) == sorted(expected)  # every ordered consecutive pair exactly once
    assert est.calls == 2  # ceil(6 / 3) calls, both directions in the same call
    for i in range(t - 1):
        assert (fwd[i, 0] == i).all() and (fwd[i, 1] == i + 1).all()  # forward[i]: i -> i+1
        assert (bwd[i, 0] == i + 1).all() and (bwd[i, 1] == i).all()  # backward[i]: i+1 -> i


class FractionalEstimator:
    """Constant sub-pixel flow 1/3 + 100 (not representable in fp16: 100.3125 there)."""

    def __call__(self, src, dst):
        return torch.full((src.shape[0], 2, *src.shape[-2:]), 100 + 1 / 3)


def test_consecutive_flows_cached_fp32_by_default_fp16_optional():
    frames = torch.zeros(3, 3, 4, 5, dtype=torch.uint8)
    fwd, bwd = compute_consecutive_flows(FractionalEstimator(), frames, progress=False)
    assert fwd.dtype == torch.float32 and (fwd == torch.tensor(100 + 1 / 3)).all()  # exact, like the reference
    f16, _ = compute_consecutive_flows(FractionalEstimator(), frames, progress=False, dtype="float16")
    assert f16.dtype == torch.float16 and abs(float(f16[0, 0, 0, 0]) - (100 + 1 / 3)) > 1e-2
    with pytest.raises(ValueError, match="float32 or float16"):
        compute_consecutive_flows(FractionalEstimator(), frames, progress=False, dtype="int8")


def test_consecutive_flows_bad_input():
    with pytest.raises(ValueError, match="at least 2 frames"):
        compute_consecutive_flows(RecordingEstimator(), torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        compute_consecutive_flows(RecordingEstimator(), torch.zeros(3, 3, 4, 4))


def _textured_image(shared_root: Path | None, hw=(120, 160)) -> np.ndarray:
    """RGB uint8 [h+20, w+20, 3]: a horsejump frame (downscaled) if available, else smooth random texture."""
    h, w = hw[0] + 20, hw[1] + 20
    folder = shared_root / "horsejump" / "video" if shared_root is not None else None
    if folder is not None and folder.is_dir() and sorted(folder.glob("*.jpg")):
        img = cv2.cvtColor(cv2.imread(str(sorted(folder.glob("*.jpg"))[0])), cv2.COLOR_BGR2RGB)
        return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(0)
    tex = cv2.GaussianBlur(rng.uniform(0, 255, (h, w, 3)).astype(np.float32), (0, 0), 2.0)
    return np.clip((tex - tex.mean()) * 4 + 128, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shift", [(3, 2), (-2, 4)])
def test_dis_recovers_integer_shift(shift):
    from tests.conftest import SHARED_DATA  # noqa: PLC0415 - real frames when present

    img = _textured_image(SHARED_DATA if SHARED_DATA.is_dir() else None)
    h, w = 120, 160
    dx, dy = shift
    src = img[10:10 + h, 10:10 + w]
    dst = img[10 - dy:10 - dy + h, 10 - dx:10 - dx + w]  # content moves by +(dx, dy)
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]  # noqa: E731
    flow = DISFlow("medium")(to_t(src), to_t(dst))
    assert flow.shape == (1, 2, h, w) and flow.dtype == torch.float32
    inner = flow[0, :, 8:-8, 8:-8].reshape(2, -1)
    med = inner.median(dim=1).values
    assert abs(float(med[0]) - dx) < 0.5 and abs(float(med[1]) - dy) < 0.5, med


def test_dis_bad_preset_and_method():
    with pytest.raises(ValueError, match="dis_preset"):
        build_flow("dis", dis_preset="slowest")
    with pytest.raises(ValueError, match="unknown flow.method"):
        build_flow("farneback")
    with pytest.raises(ValueError, match="uint8"):
        DISFlow()(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


def _frames(b, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, 3, h, w, generator=g) * 255).to(torch.uint8)


@pytest.fixture(scope="module")
def random_raft():
    torch.manual_seed(0)
    return RAFTFlow("raft_small", weights="random", num_updates=1, chunk=1)


def test_raft_padding_and_unpadding(random_raft):
    h, w = 124, 130  # RAFT needs >= 128 px; pads to 128 x 136: rows 2/2, cols 3/3
    assert RAFTFlow.padding(h, w) == (3, 3, 2, 2)
    assert RAFTFlow.padding(476, 854) == (1, 1, 2, 2)  # the reference's 480 x 856
    src, dst = _frames(2, h, w, 1), _frames(2, h, w, 2)  # 2 pairs, one per chunk
    out = random_raft(src, dst)
    assert out.shape == (2, 2, h, w) and out.dtype == torch.float32 and torch.isfinite(out).all()
    # independent padding: numpy edge mode, normalise to [-1, 1], run the bare model, crop
    def prep(x):
        a = np.pad(x.numpy().astype(np.float32) / 255.0, ((0, 0), (0, 0), (2, 2), (3, 3)), mode="edge")
        return torch.from_numpy(a) * 2.0 - 1.0
    with torch.no_grad():
        ref = random_raft.model(prep(src), prep(dst), num_flow_updates=1)[-1][..., 2:126, 3:133]
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_raft_no_padding_at_multiple_of_8(random_raft):
    src, dst = _frames(1, 128, 136, 3), _frames(1, 128, 136, 4)
    out = random_raft(src, dst)
    with torch.no_grad():
        ref = random_raft.model(src.float() / 127.5 - 1, dst.float() / 127.5 - 1, num_flow_updates=1)[-1]
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_raft_weights_file_hub_cache_and_offline_error(tmp_path, monkeypatch, random_raft):
    def offline(variant):
        raise OSError("network is unreachable")

    monkeypatch.setattr(flow_mod, "_download_state_dict", offline)
    # torch.hub.set_dir would pin the hub folder for the rest of the session (restoring get_dir()'s value is
    # not "unset": TORCH_HOME set by later tests would be ignored and they would write to the real cache)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    fname = raft_weights_file("raft_small")
    assert fname == "raft_small_C_T_V2-01064c6d.pth"
    assert raft_weights_file("raft_large") == "raft_large_C_T_SKHT_V2-ff5fadd5.pth"
    with pytest.raises(FileNotFoundError) as err:
        load_raft_weights("raft_small")
    msg = str(err.value)
    assert fname in msg and str(tmp_path / "hub" / "checkpoints") in msg and "flow.weights" in msg
    with pytest.raises(FileNotFoundError, match="not a file"):
        load_raft_weights("raft_small", str(tmp_path / "missing.pth"))
    # a local file
    sd = random_raft.model.state_dict()
    local = tmp_path / "mine.pth"
    torch.save(sd, local)
    est = build_flow("raft_small", weights=str(local), num_updates=2)
    assert est.num_updates == 2
    for k, v in est.model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    # the torch hub cache under the official name
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(sd, tmp_path / "hub" / "checkpoints" / fname)
    est = build_flow("raft_small", num_updates=2)
    for k, v in est.model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_raft_bad_arguments():
    with pytest.raises(ValueError, match="RAFT variant"):
        RAFTFlow("raft_huge", weights="random")
    with pytest.raises(ValueError, match="num_updates"):
        RAFTFlow("raft_small", weights="random", num_updates=0)
