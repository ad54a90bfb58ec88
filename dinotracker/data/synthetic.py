"""Synthetic videos with exact ground truth: textured layers under smooth affine motion.

A background layer (camera motion: slow translation, rotation and zoom) and several
textured objects (ellipses and rounded boxes) move under smooth affine motion, occlude
one another by a fixed depth order and leave the frame. Every pixel is rendered from
the analytic inverse map of the top-most layer that contains it, so ground truth is
exact:

* a track is the image ``A_t(q)`` of a fixed texture point ``q`` of one layer;
* a point is occluded at ``t`` when it is outside the frame or when the pixel that
  contains it is owned by a nearer layer (``layer_ids``).

Tracks use the TAP-Vid layout ([N, T, 2] raster (x, y) px, occluded [N, T], query
frame = first visible frame). Deterministic per seed; 32 frames at 240x320 render in
well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class SyntheticVideo:
    """frames uint8 [T,H,W,3]; tracks float32 [N,T,2] raster (x, y); occluded bool [N,T];
    query_frames int64 [N]; point_layer int64 [N] (0 = background); layer_ids uint8 [T,H,W]
    (owner layer of each pixel); masks uint8 [T,H,W] object ids (0 = background)."""

    frames: np.ndarray
    tracks: np.ndarray
    occluded: np.ndarray
    query_frames: np.ndarray
    point_layer: np.ndarray
    layer_ids: np.ndarray
    masks: np.ndarray
    name: str = "synthetic"
    fps: float = 12.0

    @property
    def queries(self) -> np.ndarray:
        """[N, 3] (t, x, y) at each track's first visible frame."""
        n = np.arange(len(self.tracks))
        xy = self.tracks[n, self.query_frames]
        return np.concatenate([self.query_frames[:, None].astype(np.float32), xy], axis=1)


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Colourful multi-scale noise texture, uint8 [h, w, 3]: rich detail for flow and DINO."""
    out = np.zeros((h, w, 3), np.float32)
    for scale, weight in ((64, 1.0), (16, 0.6), (4, 0.35), (1, 0.2)):
        gh, gw = max(2, h // scale + 2), max(2, w // scale + 2)
        noise = rng.standard_normal((gh, gw, 3)).astype(np.float32)
        out += weight * cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
    # a few sharp stripes / blobs give corners that any tracker can lock on
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    f = rng.uniform(0.05, 0.2, size=2)
    out += 0.8 * np.sign(np.sin(xx * f[0] + np.sin(yy * f[1]) * 3.0))[..., None] * rng.uniform(-1, 1, 3)
    out -= out.mean(axis=(0, 1))
    out /= out.std(axis=(0, 1)) + 1e-6
    base = rng.uniform(60, 195, size=3)
    return np.clip(base + 45.0 * out, 0, 255).astype(np.uint8)


class _Layer:
    """A textured layer with an analytic shape and a per-frame affine map texture -> frame."""

    def __init__(self, tex: np.ndarray, shape: str, params: dict):
        self.tex = tex
        self.shape = shape  # "full", "ellipse" or "box"
        self.p = params

    def affine(self, t: float) -> np.ndarray:
        """2x3 matrix mapping texture raster (x, y) to frame raster (x, y) at time t."""
        p = self.p
        ang = p["rot0"] + p["rot_v"] * t + p["rot_a"] * np.sin(p["w"] * t)
        scl = p["s0"] * (1.0 + p["s_v"] * t + p["s_a"] * np.sin(p["w"] * t + 1.0))
        tx = p["tx0"] + p["vx"] * t + p["ax"] * np.sin(p["w"] * t)
        ty = p["ty0"] + p["vy"] * t + p["ay"] * np.cos(p["w"] * t)
        c, s = np.cos(ang) * scl, np.sin(ang) * scl
        cx, cy = self.tex.shape[1] / 2.0, self.tex.shape[0] / 2.0
        # rotate/scale about the texture centre, then place that centre at (tx, ty)
        return np.array([[c, -s, tx - (c * cx - s * cy)], [s, c, ty - (s * cx + c * cy)]], np.float64)

    def inside(self, q: np.ndarray) -> np.ndarray:
        """Whether texture raster points q [..., 2] lie inside the layer's shape."""
        h, w = self.tex.shape[:2]
        x, y = q[..., 0], q[..., 1]
        if self.shape == "full":
            return np.ones(x.shape, bool)
        u, v = (x - w / 2.0) / (w / 2.0), (y - h / 2.0) / (h / 2.0)
        if self.shape == "ellipse":
            return u * u + v * v <= 1.0
        return (np.abs(u) ** 4 + np.abs(v) ** 4) <= 1.0  # rounded box (superellipse)


def _invert(a: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(a)


def _apply(a: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ a[:, :2].T + a[:, 2]


def _desaturate(tex: np.ndarray, saturation: float) -> np.ndarray:
    """Mix every pixel towards its luma (BT.601) by ``1 - saturation``: same brightness pattern (the
    texture DIS flow sees), calmer colours. 1.0 returns ``tex`` itself."""
    if saturation == 1.0:
        return tex
    rgb = tex.astype(np.float32)
    luma = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(luma[..., None] + saturation * (rgb - luma[..., None]), 0, 255).round().astype(np.uint8)


def make_synthetic_video(num_frames: int = 32, height: int = 240, width: int = 320, num_objects: int = 3,
                         num_points: int = 256, seed: int = 0, speed: float = 1.0,
                         saturation: float = 1.0) -> SyntheticVideo:
    """Render a synthetic layered video with exact tracks and occlusion flags.

    ``speed`` scales every motion (1.0: objects move ~2-5 px per frame). ``saturation`` in [0, 1] scales the
    textures' colourfulness (1.0: the full colour noise; the geometry and tracks do not depend on it).
    """
    if not 0.0 <= saturation <= 1.0:
        raise ValueError(f"saturation must be in [0, 1], got {saturation}")
    if num_frames < 2:
        raise ValueError("a synthetic video needs at least 2 frames")
    if height < 32 or width < 32:
        raise ValueError("synthetic videos need at least 32x32 pixels")
    rng = np.random.default_rng(seed)
    T, H, W = num_frames, height, width
    layers: list[_Layer] = []
    # background: larger than the frame so camera motion never shows its edge
    bg_tex = _desaturate(_texture(rng, int(H * 1.6), int(W * 1.6)), saturation)
    layers.append(_Layer(bg_tex, "full", dict(
        rot0=0.0, rot_v=rng.uniform(-1, 1) * 0.002 * speed, rot_a=0.0, w=0.0,
        s0=1.0, s_v=rng.uniform(-1, 1) * 0.002 * speed, s_a=0.0,
        tx0=W / 2.0, ty0=H / 2.0, vx=rng.uniform(-1.5, 1.5) * speed, vy=rng.uniform(-1.0, 1.0) * speed,
        ax=0.0, ay=0.0)))
    for k in range(num_objects):
        oh = int(rng.uniform(0.25, 0.45) * H)
        ow = int(rng.uniform(0.2, 0.4) * W)
        tex = _desaturate(_texture(rng, oh, ow), saturation)
        # start inside the frame, drift so that the last object leaves it
        x0, y0 = rng.uniform(0.25, 0.75) * W, rng.uniform(0.3, 0.7) * H
        direction = rng.uniform(0, 2 * np.pi)
        v = rng.uniform(1.5, 3.5) * speed
        if k == num_objects - 1:  # guarantee one object leaves the frame
            v = (0.7 * W) / max(T - 1, 1)
            direction = 0.0 if x0 < W / 2 else np.pi
        layers.append(_Layer(tex, "ellipse" if k % 2 == 0 else "box", dict(
            rot0=rng.uniform(-0.3, 0.3), rot_v=rng.uniform(-0.02, 0.02) * speed,
            rot_a=rng.uniform(0, 0.1), w=rng.uniform(0.1, 0.3),
            s0=1.0, s_v=rng.uniform(-0.004, 0.004) * speed, s_a=rng.uniform(0, 0.05),
            tx0=x0, ty0=y0, vx=v * np.cos(direction), vy=v * np.sin(direction),
            ax=rng.uniform(0, 4) * speed, ay=rng.uniform(0, 4) * speed)))

    # render back to front; layer_ids records the owner of each pixel centre
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    centres = np.stack([xs + 0.5, ys + 0.5], axis=-1)  # raster coords of pixel centres
    frames = np.zeros((T, H, W, 3), np.uint8)
    layer_ids = np.zeros((T, H, W), np.uint8)
    for t in range(T):
        for li, layer in enumerate(layers):
            q = _apply(_invert(layer.affine(t)), centres)  # texture raster coords
            idx = (q - 0.5).astype(np.float32)  # cv2.remap samples at pixel-index coords
            img = cv2.remap(layer.tex, idx[..., 0], idx[..., 1], cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT)
            own = layer.inside(q)
            frames[t][own] = img[own]
            layer_ids[t][own] = li

    # ground-truth points: texture points of every layer, visible in >= 2 frames
    per_layer = [num_points // 2] + [num_points // 2 // max(num_objects, 1)] * num_objects
    tracks, occl, owner = [], [], []
    for li, (layer, n) in enumerate(zip(layers, per_layer)):
        if n == 0:
            continue
        th, tw = layer.tex.shape[:2]
        cand = rng.uniform([0, 0], [tw, th], size=(n * 8, 2))
        cand = cand[layer.inside(cand)]
        if li == 0:  # background points that start inside the frame
            a0 = layer.affine(0)
            p0 = _apply(a0, cand)
            cand = cand[(p0[:, 0] >= 2) & (p0[:, 0] < W - 2) & (p0[:, 1] >= 2) & (p0[:, 1] < H - 2)]
        cand = cand[: n * 3]
        pos = np.stack([_apply(layer.affine(t), cand) for t in range(T)], axis=1)  # [n, T, 2]
        px = np.floor(pos).astype(np.int64)
        inside = (px[..., 0] >= 0) & (px[..., 0] < W) & (px[..., 1] >= 0) & (px[..., 1] < H)
        owner_layer = np.full(inside.shape, -1, np.int64)
        tt = np.broadcast_to(np.arange(T), inside.shape)
        owner_layer[inside] = layer_ids[tt[inside], px[..., 1][inside], px[..., 0][inside]]
        occluded = ~inside | (owner_layer > li)
        keep = (~occluded).sum(1) >= 2
        tracks.append(pos[keep][:n])
        occl.append(occluded[keep][:n])
        owner.append(np.full(min(int(keep.sum()), n), li))
    tracks_a = np.concatenate(tracks).astype(np.float32)
    occl_a = np.concatenate(occl)
    owner_a = np.concatenate(owner).astype(np.int64)
    query_frames = np.argmax(~occl_a, axis=1).astype(np.int64)
    return SyntheticVideo(frames=frames, tracks=tracks_a, occluded=occl_a, query_frames=query_frames,
                          point_layer=owner_a, layer_ids=layer_ids,
                          masks=layer_ids.copy(), name=f"synthetic-s{seed}")


def save_synthetic(video: SyntheticVideo, folder) -> None:
    """Write frames/%05d.png, masks/%05d.png and gt.npz (the tapvid_davis_mini folder layout)."""
    from pathlib import Path

    from PIL import Image

    from dinotracker.data.video import write_frames

    folder = Path(folder)
    write_frames(folder / "frames", video.frames)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(video.masks):
        Image.fromarray(m).save(folder / "masks" / f"{i:05d}.png")
    np.savez(folder / "gt.npz", points_xy=video.tracks, occluded=video.occluded,
             query_frame=video.query_frames, height=video.frames.shape[1], width=video.frames.shape[2])
