"""Track video and still grid: decodable mp4 with every frame, hollow occluded points, GT overlay."""

from __future__ import annotations

import av
import cv2
import numpy as np

from dinotracker.viz.tracks import draw_tracks_grid, draw_tracks_video, render_frames, track_colors


def _scene(t=9, h=48, w=70):
    frames = np.zeros((t, h, w, 3), np.uint8)
    tracks = np.zeros((2, t, 2), np.float32)
    tracks[0, :, 0] = 10.5 + 3 * np.arange(t)
    tracks[0, :, 1] = 12.5
    tracks[1, :, 0] = 50.5
    tracks[1, :, 1] = 30.5
    visible = np.ones((2, t), bool)
    visible[1] = False  # point 1 occluded throughout
    return frames, tracks, visible


def test_mp4_is_readable_with_every_frame(tmp_path):
    frames, tracks, visible = _scene(h=47, w=71)  # odd sizes are padded for yuv420p
    p = draw_tracks_video(tmp_path / "v" / "tracks.mp4", frames, tracks, visible, fps=8)
    with av.open(str(p)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        codec = c.streams.video[0].codec_context.name
    assert len(decoded) == 9 and decoded[0].shape == (48, 72, 3)
    assert codec in ("h264", "mpeg4")
    assert [f.name for f in (tmp_path / "v").iterdir()] == ["tracks.mp4"]
    # the visible point's disc is coloured where it is, the frames are not all black
    assert decoded[4][12, 10 + 12].max() > 60


def test_visible_filled_occluded_hollow_and_trails():
    frames, tracks, visible = _scene()
    imgs = list(render_frames(frames, tracks, visible, trail=4, radius=4))
    assert len(imgs) == 9
    img = imgs[5]
    # visible point 0 at (25.5, 12.5) raster -> pixel (row 12, col 25): filled
    assert img[12, 25].max() > 100
    # occluded point 1 at pixel (30, 50): hollow centre, coloured ring at radius 4
    assert img[30, 50].max() == 0
    assert img[30, 54].max() > 50 or img[30, 46].max() > 50
    # a fading trail behind point 0 (it moves +3 px / frame), dimmer with age
    row = img[12].max(-1).astype(int)
    assert row[9] == 0  # older than the trail: not drawn
    assert 0 < row[13] < row[16] < row[19]  # segments ages 4, 3, 2: alpha 0.25 < 0.5 < 0.75


def test_gt_overlay_draws_error_lines():
    frames, tracks, visible = _scene()
    gt = tracks.copy()
    gt[0, :, 1] += 15  # 15 px below the prediction
    img = list(render_frames(frames, tracks, visible, gt_tracks=gt, gt_visible=np.ones((2, 9), bool)))[0]
    col = img[14:26, 10]
    assert (col[:, 0] > 100).any()  # a red error line between prediction and GT


def test_colors_follow_query_position():
    c = track_colors(np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [1.0, 1.0]]), (100, 100))
    assert c.shape == (4, 3) and c.dtype == np.uint8
    assert not np.array_equal(c[0], c[1]) and not np.array_equal(c[1], c[2])
    assert np.abs(c[0].astype(int) - c[3].astype(int)).max() < 30  # nearby points, similar colours


def test_still_grid_png(tmp_path):
    frames, tracks, visible = _scene()
    p = draw_tracks_grid(tmp_path / "g.png", frames, tracks, visible, num=6, cols=3, tile_width=70)
    img = cv2.imread(str(p))
    assert img.shape == (2 * 48, 3 * 70, 3)
