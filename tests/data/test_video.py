import numpy as np
import pytest
from PIL import Image

from dinotracker.data.video import VideoError, load_masks, load_video, natural_key, write_frames, write_video


def _frames(t=5, h=24, w=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def test_frame_folder_round_trip_exact(tmp_path):
    frames = _frames()
    write_frames(tmp_path / "f", frames, ".png")
    v = load_video(tmp_path / "f")
    assert v.frames.shape == frames.shape and v.num_frames == 5 and v.hw == (24, 40)
    np.testing.assert_array_equal(v.frames, frames)
    np.testing.assert_array_equal(v.frame_indices, np.arange(5))


def test_natural_sort(tmp_path):
    frames = _frames(t=12)
    (tmp_path / "f").mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(tmp_path / "f" / f"frame{i}.png")  # frame10 after frame9
    v = load_video(tmp_path / "f")
    np.testing.assert_array_equal(v.frames, frames)
    assert sorted(["a10", "a9", "a1"], key=natural_key) == ["a1", "a9", "a10"]


def test_range_and_stride(tmp_path):
    frames = _frames(t=10)
    write_frames(tmp_path / "f", frames)
    v = load_video(tmp_path / "f", start=1, end=9, stride=3)
    np.testing.assert_array_equal(v.frame_indices, [1, 4, 7])
    np.testing.assert_array_equal(v.frames, frames[[1, 4, 7]])


def test_mp4_round_trip(tmp_path):
    # smooth frames so that lossless H.264 in yuv444p is exact up to colour-space rounding
    t, h, w = 6, 32, 48
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.stack([np.stack([(xx * 5 + i * 7) % 256, (yy * 7) % 256, np.full_like(xx, 40 * i)], -1)
                       for i in range(t)]).astype(np.uint8)
    path = write_video(tmp_path / "v.mp4", frames, fps=10, lossless=True)
    v = load_video(path)
    assert v.frames.shape == frames.shape and v.num_frames == t
    assert np.abs(v.frames.astype(int) - frames.astype(int)).max() <= 3
    assert v.fps == pytest.approx(10)


def test_mp4_range_and_stride_decode_only_what_is_needed(tmp_path):
    """start/end/stride on a video file: the same frames as a full decode, frames outside the selection are
    never converted to RGB and decoding stops at ``end`` (or once ``max_frames`` frames are kept)."""
    from dinotracker.data import video as V

    frames = _frames(t=20, h=32, w=48, seed=1)
    path = write_video(tmp_path / "v.mp4", frames, fps=10, lossless=True)
    full = load_video(path)
    v = load_video(path, start=3, end=15, stride=4)
    np.testing.assert_array_equal(v.frame_indices, [3, 7, 11])
    np.testing.assert_array_equal(v.frames, full.frames[[3, 7, 11]])
    assert v.source_num_frames == 20 and v.fps == pytest.approx(10 / 4)
    kept, idx, fps, total, decoded = V._read_video_file(path, start=3, end=15, stride=4)
    assert len(kept) == 3 and idx.tolist() == [3, 7, 11] and total == 20 and decoded <= 15
    kept, idx, _, total, decoded = V._read_video_file(path, start=0, end=None, stride=2, max_frames=3)
    assert idx.tolist() == [0, 2, 4] and total == 20 and decoded <= 5
    kept, idx, _, total, decoded = V._read_video_file(path)
    assert len(kept) == 20 and total == decoded == 20


def test_mp4_odd_size_lossy(tmp_path):
    frames = _frames(t=4, h=31, w=45)
    v = load_video(write_video(tmp_path / "v.mp4", frames, fps=5))
    assert v.num_frames == 4 and v.hw == (32, 46)  # padded to even size for yuv420p


def test_masks_binary_and_palette(tmp_path):
    frames = _frames(t=3)
    write_frames(tmp_path / "f", frames)
    (tmp_path / "m").mkdir()
    (tmp_path / "p").mkdir()
    for i in range(3):
        m = np.zeros((24, 40), np.uint8)
        m[5:10, 5 + i:20] = 255
        Image.fromarray(m).save(tmp_path / "m" / f"{i:05d}.png")
        p = Image.fromarray((m // 255 * (i + 1)).astype(np.uint8), mode="P")
        p.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
        p.save(tmp_path / "p" / f"{i:05d}.png")
    v = load_video(tmp_path / "f", masks=tmp_path / "m")
    assert set(np.unique(v.masks)) == {0, 1} and v.masks[0, 7, 7] == 1
    ids = np.zeros((24, 40), np.uint8)
    ids[2:5, 2:5] = 1
    Image.fromarray(ids).save(tmp_path / "ids.png")
    from dinotracker.data.video import read_mask

    assert read_mask(tmp_path / "ids.png")[3, 3] == 1  # grey ids {0, 1} stay ids
    pal = load_masks(tmp_path / "p", 3, (24, 40))
    assert pal[2, 7, 7] == 3 and pal.max() == 3


def test_errors(tmp_path):
    with pytest.raises(VideoError, match="not found"):
        load_video(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoError, match="no frames"):
        load_video(tmp_path / "empty")
    write_frames(tmp_path / "one", _frames(t=1))
    with pytest.raises(VideoError, match="at least 2"):
        load_video(tmp_path / "one")
    d = tmp_path / "sizes"
    write_frames(d, _frames(t=2))
    Image.fromarray(_frames(t=1, h=30)[0]).save(d / "00002.png")
    with pytest.raises(VideoError, match="different sizes"):
        load_video(d)
    d = tmp_path / "mixed"
    write_frames(d, _frames(t=2))
    Image.fromarray(_frames(t=1)[0]).save(d / "00002.jpg")
    with pytest.raises(VideoError, match="mixes"):
        load_video(d)
    d = tmp_path / "trunc"
    write_frames(d, _frames(t=3), ".jpg")
    data = (d / "00001.jpg").read_bytes()
    (d / "00001.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match="cannot read frame"):
        load_video(d)
    (d / "00001.jpg").write_bytes(b"not an image")
    with pytest.raises(VideoError, match="cannot read frame"):
        load_video(d)
    with pytest.raises(VideoError, match="unsupported"):
        (tmp_path / "x.txt").write_text("hi")
        load_video(tmp_path / "x.txt")
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(VideoError, match="cannot decode"):
        load_video(tmp_path / "bad.mp4")


def test_mask_errors(tmp_path):
    write_frames(tmp_path / "f", _frames(t=3))
    write_frames(tmp_path / "m2", _frames(t=2))
    with pytest.raises(VideoError, match="2 masks"):
        load_video(tmp_path / "f", masks=tmp_path / "m2")
    write_frames(tmp_path / "m3", np.repeat(_frames(t=3, h=10)[..., :1] // 128 * 255, 3, -1))  # grey, 0/255
    with pytest.raises(VideoError, match="masks in"):
        load_video(tmp_path / "f", masks=tmp_path / "m3")
    write_frames(tmp_path / "m4", _frames(t=3))  # colour photos are not masks
    with pytest.raises(VideoError, match="DAVIS palette"):
        load_video(tmp_path / "f", masks=tmp_path / "m4")
    with pytest.raises(VideoError, match="mask folder not found"):
        load_video(tmp_path / "f", masks=tmp_path / "nope")


def test_real_horsejump(shared_data):
    v = load_video(shared_data / "horsejump" / "video", masks=shared_data / "horsejump" / "masks", end=5)
    assert v.frames.shape == (5, 480, 854, 3) and v.masks.shape == (5, 480, 854)
    assert 0 < v.masks.mean() < 1


def test_real_mp4(shared_data):
    v = load_video(shared_data / "clips" / "apple.mp4", stride=10)
    assert v.hw == (720, 1296) and v.num_frames == 5 and v.source_num_frames == 50


def test_mp4_writer_is_atomic_and_checks_frames(tmp_path):
    from dinotracker.data.video import Mp4Writer

    frames = _frames(t=3)
    with pytest.raises(RuntimeError):
        with Mp4Writer(tmp_path / "a.mp4", fps=5) as w:
            w.write(frames[0])
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary file
    with pytest.raises(ValueError, match="no frames"):
        with Mp4Writer(tmp_path / "b.mp4"):
            pass
    with pytest.raises(ValueError, match="the video is"):
        with Mp4Writer(tmp_path / "c.mp4") as w:
            w.write(frames[0])
            w.write(frames[1, :10])
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "d.mp4", frames.astype(np.float32))
    assert list(tmp_path.iterdir()) == []
    assert load_video(write_video(tmp_path / "e.mp4", iter(frames), fps=5)).num_frames == 3  # any iterable
