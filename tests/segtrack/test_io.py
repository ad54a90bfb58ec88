"""Palette PNG masks, mask reading conventions and the streaming mp4 writer."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dinotracker.data.video import Mp4Writer, davis_palette, read_mask, write_mask
from dinotracker.segtrack.io import FrameReader, overlay


def test_davis_palette_first_entries():
    pal = davis_palette()
    assert pal[:5].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]
    assert pal[255].tolist() == [224, 224, 192]  # DAVIS void colour


def test_palette_roundtrip(tmp_path):
    lab = np.zeros((6, 9), np.uint8)
    lab[1:3, 2:5], lab[4, 7] = 1, 3
    p = write_mask(tmp_path / "00000.png", lab)
    with Image.open(p) as im:
        assert im.mode == "P"
        assert im.getpalette()[3:6] == [128, 0, 0]
    np.testing.assert_array_equal(read_mask(p), lab)


def test_read_mask_conventions(tmp_path):
    binary = np.zeros((4, 5), np.uint8)
    binary[1:3, 1:3] = 255
    Image.fromarray(binary).save(tmp_path / "bin.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "bin.png"), binary // 255)
    ids = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    Image.fromarray(ids).save(tmp_path / "ids.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "ids.png"), ids)
    soft = np.tile(np.arange(0, 250, 2, dtype=np.uint8), (3, 1))  # 125 grey levels: a soft mask
    Image.fromarray(soft).save(tmp_path / "soft.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "soft.png"), (soft >= 128).astype(np.uint8))
    rgb = davis_palette()[ids]
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.png"), ids)
    Image.fromarray(np.full((2, 2, 3), (1, 2, 3), np.uint8)).save(tmp_path / "odd.png")
    with pytest.raises(ValueError, match="palette"):
        read_mask(tmp_path / "odd.png")


def test_mp4_writer_and_reader(tmp_path):
    av = pytest.importorskip("av")
    frames = np.random.default_rng(0).integers(0, 255, (5, 31, 45, 3), dtype=np.uint8)  # odd size
    lab = np.zeros((31, 45), np.uint8)
    lab[5:20, 10:30] = 2
    with Mp4Writer(tmp_path / "o.mp4", fps=10) as w:
        for f in frames:
            w.write(overlay(f, lab))
    with av.open(str(tmp_path / "o.mp4")) as c:
        s = c.streams.video[0]
        assert (s.codec_context.name in ("h264", "mpeg4")) and s.format.name == "yuv420p"
        decoded = [fr.to_ndarray(format="rgb24") for fr in c.decode(s)]
    assert len(decoded) == 5 and decoded[0].shape == (32, 46, 3)
    r = FrameReader(tmp_path / "o.mp4", start=1, stride=2)
    assert len([f for f in r]) == 2


def test_frame_reader_folder_natural_order(tmp_path):
    for i in (10, 2, 1):
        Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(tmp_path / f"f{i}.png")
    r = FrameReader(tmp_path)
    assert len(r) == 3 and [int(f[0, 0, 0]) for f in r] == [1, 2, 10]
