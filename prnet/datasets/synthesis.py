"""Synthetic anomalies: Perlin masks, augmented texture blending (DRAEM style) and copy-paste "extended" ones.

Everything works on RGB float32 images in [0, 1] (H×W×3) and float32 masks in {0, 1} (H×W); textures are RGB
uint8 while they are augmented and become float [0, 1] before blending, so image and texture are in one space
(blending a [0, 1] texture into a [0, 255] image, or BGR into RGB, would make every anomaly a dark patch). Every random choice draws from the `numpy.random.Generator` passed in. numpy and OpenCV do
the work, with torch for the small matrix products of the Perlin noise; everything runs on one thread per
DataLoader worker.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Optional, Protocol

import cv2
import numpy as np
import torch


class TextureProvider(Protocol):
    def sample_uint8(self, rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray: ...


# ----------------------------------------------------------------------------------------------- Perlin noise
def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


@functools.lru_cache(maxsize=64)
def _lattice_weights(n: int, cells: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Interpolation matrices of one axis with `n` pixels and `cells` lattice cells, both n×(cells+1) float32:
    `mix` holds the fade weights (1 − s, s) of the two lattice points around each pixel, `dist` the same weights
    times the pixel's signed distance to each point (f, f − 1). Shared between calls: never modified."""
    u = np.arange(n, dtype=np.float32) * np.float32(cells / n)
    i0 = np.floor(u).astype(np.int64)
    f = u - i0
    s = _fade(f)
    rows = np.arange(n)
    mix = np.zeros((n, cells + 1), np.float32)
    dist = np.zeros((n, cells + 1), np.float32)
    mix[rows, i0], mix[rows, i0 + 1] = 1.0 - s, s
    dist[rows, i0], dist[rows, i0 + 1] = (1.0 - s) * f, s * (f - 1.0)
    return torch.from_numpy(mix), torch.from_numpy(dist)


def perlin_noise(hw: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise of shape `hw` with `res` = (cells along y, cells along x); values ≈ [-1, 1].

    Random unit gradients (gy, gx) sit on the (res+1) lattice; each pixel mixes the dot products of its 4 corner
    gradients with its offsets to them, weighted by the quintic fade, scaled by √2 as in DRAEM. The mix is
    separable, so the whole field is two small matrix products:
    noise = √2 · (Dy · gy · Mxᵀ + My · gx · Dxᵀ), with M the fade weights and D the weights times the offsets per
    axis (`_lattice_weights`). Any size works (no divisibility needed).
    """
    h, w = hw
    ry, rx = max(1, int(res[0])), max(1, int(res[1]))
    angles = rng.uniform(0.0, 2.0 * math.pi, size=(ry + 1, rx + 1))
    gy = np.sin(angles).astype(np.float32)
    gx = np.cos(angles).astype(np.float32)
    my, dy = _lattice_weights(h, ry)
    mx, dx = _lattice_weights(w, rx)
    # torch matmul: it follows torch.set_num_threads (one thread in a DataLoader worker), numpy's BLAS does not
    out = (dy @ torch.from_numpy(gy)) @ mx.T
    out.addmm_(my @ torch.from_numpy(gx), dx.T)
    return out.mul_(math.sqrt(2.0)).numpy()


def _rotate(image: np.ndarray, angle: float, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Rotate about the centre by `angle` degrees, reflecting at the borders (no empty corners)."""
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1.0)
    return cv2.warpAffine(image, m, (w, h), flags=interpolation, borderMode=cv2.BORDER_REFLECT_101)


def perlin_mask(hw: tuple[int, int], rng: np.random.Generator, scale_max: int = 5, threshold: float = 0.5,
                within: Optional[np.ndarray] = None, max_tries: int = 50) -> np.ndarray:
    """A non-empty float32 {0,1} mask: Perlin noise at scale 2^k per axis (k ∈ 0..scale_max, independent),
    rotated by U(-90°, 90°) (nearest-neighbour sampling: the threshold makes the mask pixel-exact anyway),
    thresholded (> threshold). Redrawn while empty (inside `within` if given); after `max_tries` the top 10 % of
    the last noise inside `within` is used so the result is never empty."""
    if within is not None and not within.any():
        within = None
    noise = None
    for _ in range(max_tries):
        ky, kx = rng.integers(0, scale_max + 1, size=2)
        noise = perlin_noise(hw, (2 ** int(ky), 2 ** int(kx)), rng)
        noise = _rotate(noise, float(rng.uniform(-90.0, 90.0)), cv2.INTER_NEAREST)
        mask = noise > threshold
        if within is not None:
            mask &= within
        if mask.any():
            return mask.astype(np.float32)
    region = within if within is not None else np.ones(hw, bool)
    cut = np.quantile(noise[region], 0.9)
    return ((noise >= cut) & region).astype(np.float32)


# ------------------------------------------------------------------------------------- texture augmentation
def _lut(table: np.ndarray) -> np.ndarray:
    return np.clip(np.round(table), 0, 255).astype(np.uint8)


_RAMP = np.arange(256, dtype=np.float64)


def _op_gamma(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return cv2.LUT(t, _lut(255.0 * (_RAMP / 255.0) ** rng.uniform(0.5, 2.0)))


def _op_brightness(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return cv2.LUT(t, _lut(_RAMP * rng.uniform(0.8, 1.2) + rng.uniform(-30.0, 30.0)))


def _op_sharpness(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    f = float(rng.uniform(0.0, 2.0))  # 0: blurred, 1: unchanged, 2: sharpened (PIL ImageEnhance.Sharpness-like)
    blurred = cv2.GaussianBlur(t, (3, 3), 0)
    return cv2.addWeighted(t, f, blurred, 1.0 - f, 0.0)


def _op_hue_saturation(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    hsv = cv2.cvtColor(t, cv2.COLOR_RGB2HSV)  # OpenCV hue is 0..179 (2° units)
    hue = (np.arange(256) + int(rng.integers(-25, 26))) % 180  # hue shift, saturation shift, value kept:
    sat = _RAMP + int(rng.integers(-50, 51))  # one table per channel
    return cv2.cvtColor(cv2.LUT(hsv, _lut(np.stack([hue, sat, _RAMP], axis=1)).reshape(256, 1, 3)),
                        cv2.COLOR_HSV2RGB)


def _op_solarize(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    threshold = int(rng.integers(32, 129))
    return cv2.LUT(t, _lut(np.where(_RAMP >= threshold, 255.0 - _RAMP, _RAMP)))


def _op_posterize(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    bits = int(rng.integers(1, 9))
    return t & np.uint8((0xFF << (8 - bits)) & 0xFF)


def _op_invert(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return 255 - t


def _op_autocontrast(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    tables = []
    for c in cv2.split(t):  # stretch each channel's [min, max] to [0, 255]
        lo, hi = cv2.minMaxLoc(c)[:2]
        tables.append(_RAMP if hi <= lo else (_RAMP - lo) * (255.0 / (hi - lo)))
    return cv2.LUT(t, _lut(np.stack(tables, axis=1)).reshape(256, 1, 3))


def _op_equalize(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return cv2.merge([cv2.equalizeHist(np.ascontiguousarray(t[..., c])) for c in range(3)])


def _op_rotate(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _rotate(t, float(rng.uniform(-45.0, 45.0)))


TEXTURE_OPS: list[Callable[[np.ndarray, np.random.Generator], np.ndarray]] = [
    _op_gamma, _op_brightness, _op_sharpness, _op_hue_saturation, _op_solarize, _op_posterize, _op_invert,
    _op_autocontrast, _op_equalize, _op_rotate]


def augment_texture(texture: np.ndarray, rng: np.random.Generator, n_ops: int = 3) -> np.ndarray:
    """Apply `n_ops` distinct random ops from TEXTURE_OPS to an RGB uint8 H×W×3 texture; returns RGB uint8."""
    if texture.dtype != np.uint8 or texture.ndim != 3 or texture.shape[2] != 3:
        raise ValueError(f"augment_texture expects RGB uint8 H×W×3, got {texture.dtype} {texture.shape}")
    out = np.ascontiguousarray(texture)
    for i in rng.choice(len(TEXTURE_OPS), size=n_ops, replace=False):
        out = np.ascontiguousarray(TEXTURE_OPS[int(i)](out, rng))
    return out


def blend(image: np.ndarray, texture: np.ndarray, mask: np.ndarray, beta: float) -> np.ndarray:
    """x·(1−m) + (1−β)·x·m + β·t·m with x, t RGB float [0,1] H×W×3 and m H×W (or H×W×1) in {0,1}.

    Pixels where m = 0 come out exactly unchanged."""
    m = mask[..., None] if mask.ndim == 2 else mask
    # x·(1−m) + (1−β)·x·m + β·t·m  ==  x + β·m·(t − x): the same blend in fewer passes; m = 0 gives x + 0 = x
    out = np.subtract(texture, image, dtype=np.float32)
    out *= m * np.float32(beta)
    out += image
    return out.astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------- foreground
def estimate_foreground(image: np.ndarray, threshold: float = 0.1, min_fraction: float = 0.02) -> np.ndarray:
    """A bool H×W estimate of the object: after a Gaussian blur, pixels whose colour differs from the median
    colour of the image border by more than `threshold` (max over RGB, image in [0,1]); opened, closed and
    hole-filled. If less than `min_fraction` of the image is found, the whole image is returned."""
    h, w = image.shape[:2]
    s = min(h, w)
    blurred = cv2.GaussianBlur(image.astype(np.float32), (0, 0), max(1.0, s / 128.0))
    b = max(1, s // 32)
    border = np.concatenate([blurred[:b].reshape(-1, 3), blurred[-b:].reshape(-1, 3),
                             blurred[:, :b].reshape(-1, 3), blurred[:, -b:].reshape(-1, 3)])
    ref = np.median(border, axis=0)
    fg = (np.abs(blurred - ref).max(axis=2) > threshold).astype(np.uint8)
    k_open = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (max(3, s // 64) | 1,) * 2)
    k_close = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (max(3, s // 32) | 1,) * 2)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, k_open)
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, k_close)
    # fill holes: background components that do not touch the border belong to the object
    n, labels = cv2.connectedComponents((fg == 0).astype(np.uint8), connectivity=4)
    outside = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    holes = (fg == 0) & ~np.isin(labels, outside)
    fg = (fg > 0) | holes
    if fg.mean() < min_fraction:
        return np.ones((h, w), bool)
    return fg


# ------------------------------------------------------------------------------------------- anomalies
def to_grey(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 H×W×3 -> its luminance (ITU-R 601, as OpenCV) repeated in three channels, uint8 H×W×3."""
    return np.repeat(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)


def is_greyscale(image: np.ndarray, tolerance: float = 3.0 / 255.0) -> bool:
    """True when an RGB image (uint8 or float [0,1], H×W×3) carries no colour: the 99th percentile over pixels of
    max − min across the channels is at most `tolerance` (in [0,1] units; JPEG chroma noise stays below it)."""
    img = image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else 1.0)
    spread = img.max(axis=2) - img.min(axis=2)
    return float(np.quantile(spread, 0.99)) <= tolerance + 1e-6


def perlin_anomaly(image: np.ndarray, textures: TextureProvider, rng: np.random.Generator, beta_max: float = 0.8,
                   scale_max: int = 5, foreground: Optional[np.ndarray] = None,
                   grey: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A DRAEM-style anomaly on RGB float image H×W×3: (anomalous image, non-empty float32 mask H×W).

    Perlin mask (restricted to `foreground` if given), a random texture with 3 random ops (turned into its grey
    luminance if `grey`, for greyscale images: no colour cue that a real defect of such a category never has),
    β ~ U(0, beta_max), blended with `blend`. As in DRAEM, β is the weight of the *original* image inside the mask
    and the texture gets 1 − β ∈ (1 − beta_max, 1]: every anomaly is visible."""
    mask = perlin_mask(image.shape[:2], rng, scale_max, within=foreground)
    return texture_fill(image, mask, textures, rng, beta_max, grey), mask


def texture_fill(image: np.ndarray, mask: np.ndarray, textures: TextureProvider, rng: np.random.Generator,
                 beta_max: float = 0.8, grey: bool = False) -> np.ndarray:
    """`image` (RGB float H×W×3) with a random texture (3 random ops; its grey luminance if `grey`) blended in at
    opacity 1 − β, β ~ U(0, beta_max), where `mask` (H×W {0,1}) is set; pixels outside it are unchanged."""
    hw = image.shape[:2]
    texture = augment_texture(textures.sample_uint8(rng, hw), rng)
    if grey:
        texture = to_grey(texture)
    beta = float(rng.uniform(0.0, beta_max))
    out = np.array(image, dtype=np.float32)
    flat = out.reshape(-1, 3)
    inside = np.flatnonzero(mask)
    picked = flat[inside]
    d = texture.reshape(-1, 3)[inside].astype(np.float32)
    d *= np.float32(1.0 / 255.0)
    d -= picked
    d *= np.float32(1.0 - beta)
    d += picked
    flat[inside] = d
    return out


def scratch_mask(hw: tuple[int, int], rng: np.random.Generator, max_count: int = 3,
                 width: tuple[float, float] = (2.0, 6.0), length: tuple[float, float] = (0.1, 0.5),
                 within: Optional[np.ndarray] = None, max_tries: int = 50) -> np.ndarray:
    """A non-empty float32 {0,1} mask of 1–max_count thin curves (scratches, cracks). Each is a walk of 8–24 equal
    steps from a random point whose heading turns by N(0, 20°) per step, of total length U(length) times the
    image diagonal, drawn as a polyline of U(width) pixels at 256² (scaled with the shorter side, at least 1
    pixel). Restricted to `within` if given (redrawn while empty there; after `max_tries` one pixel of `within`)."""
    h, w = hw
    if within is not None and not within.any():
        within = None
    scale = min(h, w) / 256.0
    diagonal = float(np.hypot(h, w))
    for _ in range(max_tries):
        canvas = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(1, max_count + 1))):
            steps = int(rng.integers(8, 25))
            step = float(rng.uniform(*length)) * diagonal / steps
            heading = float(rng.uniform(0.0, 2.0 * np.pi)) + np.cumsum(rng.normal(0.0, np.deg2rad(20.0), steps))
            start = np.array([rng.uniform(0, w), rng.uniform(0, h)])
            path = start + np.cumsum(np.stack([np.cos(heading), np.sin(heading)], 1) * step, axis=0)
            points = np.round(np.vstack([start, path])).astype(np.int32)
            thickness = max(1, int(round(float(rng.uniform(*width)) * scale)))
            cv2.polylines(canvas, [points.reshape(-1, 1, 2)], False, 1, thickness=thickness)
        mask = canvas.astype(bool)
        if within is not None:
            mask &= within
        if mask.any():
            return mask.astype(np.float32)
    mask = np.zeros((h, w), bool)
    ys, xs = np.nonzero(within if within is not None else np.ones((h, w), bool))
    k = int(rng.integers(0, len(ys)))
    mask[ys[k], xs[k]] = True
    return mask.astype(np.float32)


def scratch_anomaly(image: np.ndarray, textures: TextureProvider, rng: np.random.Generator, beta_max: float = 0.8,
                    foreground: Optional[np.ndarray] = None, grey: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A thin-curve anomaly (a scratch or crack of unseen appearance): `scratch_mask` (inside `foreground` if
    given) filled like a Perlin anomaly (`texture_fill`). Returns (anomalous image, non-empty float32 mask H×W)."""
    mask = scratch_mask(image.shape[:2], rng, within=foreground)
    return texture_fill(image, mask, textures, rng, beta_max, grey), mask


SPOT_AREA = (5e-5, 5e-3)  # a spot's share of the image, log-uniform: 3-330 pixels at 256², BSData's pits 0.006-0.5 %
SPOT_FILL = 0.5  # about the share of its square window that a low-frequency Perlin blob above 0 covers


def spot_mask(hw: tuple[int, int], rng: np.random.Generator, area: tuple[float, float] = SPOT_AREA,
              within: Optional[np.ndarray] = None, max_tries: int = 50) -> np.ndarray:
    """A non-empty float32 {0,1} mask of one small irregular blob: a Perlin mask (scale 1 or 2 per axis, as
    `perlin_mask`, thresholded at 0) drawn in a square window of side sqrt(a·H·W / SPOT_FILL), a ~ log-uniform in
    `area` (a share of the image), placed at a random point (of `within` if given). Redrawn while empty; after
    `max_tries` the window's centre pixel alone."""
    h, w = hw
    if within is not None and not within.any():
        within = None
    ys, xs = np.nonzero(within) if within is not None else (None, None)
    y = x = 0
    for _ in range(max_tries):
        a = float(np.exp(rng.uniform(np.log(area[0]), np.log(area[1]))))
        side = int(min(h, w, max(2, round(np.sqrt(a * h * w / SPOT_FILL)))))
        blob = perlin_mask((side, side), rng, scale_max=1, threshold=0.0) > 0
        if ys is not None:
            k = int(rng.integers(0, len(ys)))
            y, x = int(ys[k]), int(xs[k])
        else:
            y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        top, left = min(max(0, y - side // 2), h - side), min(max(0, x - side // 2), w - side)
        mask = np.zeros((h, w), bool)
        mask[top:top + side, left:left + side] = blob
        if within is not None:
            mask &= within
        if mask.any():
            return mask.astype(np.float32)
    mask = np.zeros((h, w), np.float32)
    mask[y, x] = 1.0
    return mask


def spot_anomaly(image: np.ndarray, textures: TextureProvider, rng: np.random.Generator, beta_max: float = 0.8,
                 foreground: Optional[np.ndarray] = None, grey: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A small anomaly (a pit, a speck of dirt, a tiny chip): `spot_mask` (inside `foreground` if given) filled
    like a Perlin anomaly (`texture_fill`). Returns (anomalous image, non-empty float32 mask H×W)."""
    mask = spot_mask(image.shape[:2], rng, within=foreground)
    return texture_fill(image, mask, textures, rng, beta_max, grey), mask


def large_mask(hw: tuple[int, int], rng: np.random.Generator, area: tuple[float, float] = (0.05, 0.3),
               within: Optional[np.ndarray] = None) -> np.ndarray:
    """A large, smooth, non-empty float32 {0,1} mask: low-frequency Perlin noise (2^k cells per axis, k ∈ {0, 1},
    rotated by U(-90°, 90°)) cut at the quantile that leaves a fraction a ~ U(area) of the image (of `within` if
    given) inside. Blobs and bands of 5–30 % of the image by default, often touching the border, where DRAEM's
    Perlin masks cover a median 5 %."""
    if within is not None and not within.any():
        within = None
    ky, kx = rng.integers(0, 2, size=2)
    noise = _rotate(perlin_noise(hw, (2 ** int(ky), 2 ** int(kx)), rng), float(rng.uniform(-90.0, 90.0)))
    region = within if within is not None else np.ones(hw, bool)
    a = float(rng.uniform(area[0], area[1]))
    cut = np.quantile(noise[region], 1.0 - a)
    mask = (noise >= cut) & region
    if not mask.any():  # a constant noise field (cannot happen with random gradients, kept for safety)
        mask = region
    return mask.astype(np.float32)


def swap_anomaly(image: np.ndarray, other: np.ndarray, rng: np.random.Generator, beta_max: float = 0.0,
                 area: tuple[float, float] = (0.05, 0.3),
                 foreground: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """A region swap: a large region (`large_mask`) of `image` takes the same region of `other`, another normal
    image of the category (RGB float H×W×3 both), blended with opacity 1 − β, β ~ U(0, beta_max) (by default
    β = 0: replaced). Every pixel comes from a normal surface; what is anomalous is that two surfaces meet in one
    image (a patch of different finish, lighting or texture, e.g. Magnetic Tile's `uneven`), which the local
    Perlin textures of DRAEM do not teach. Keep the region a minority of the image and fully visible: which side of
    the seam is "the anomaly" is otherwise a guess, and a faint blend of two similar surfaces is labelled anomalous
    while it looks normal. Returns (image, non-empty float32 mask H×W)."""
    if other.shape != image.shape:
        raise ValueError(f"swap_anomaly: shapes differ: image {image.shape}, other {other.shape}")
    mask = large_mask(image.shape[:2], rng, area, within=foreground)
    opacity = 1.0 - float(rng.uniform(0.0, beta_max))
    return blend(image.astype(np.float32), other.astype(np.float32), mask, opacity), mask


STRUCTURE_GRIDS = (2, 4, 8)  # blocks per side of shuffle_blocks: 128, 64 or 32 pixels at 256²


def _derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of range(n) that moves every element (n ≥ 2), drawn by rejection (about e tries)."""
    while True:
        p = rng.permutation(n)
        if not (p == np.arange(n)).any():
            return p


def shuffle_blocks(image: np.ndarray, rng: np.random.Generator, grids: tuple[int, ...] = STRUCTURE_GRIDS) -> np.ndarray:
    """The image's own surface rearranged: cut into g×g blocks (g drawn from `grids`, block edges at round(i·H/g)
    and round(j·W/g)), every block moved to another block's place (a derangement) and flipped left-right and
    up-down at random, and turned by a random multiple of 90° where source and target are the same square size; a
    block whose size differs from its target's by the rounding is resized to it. RGB float H×W×3 in, same out."""
    h, w = image.shape[:2]
    g = int(grids[int(rng.integers(0, len(grids)))])
    g = max(2, min(g, h, w))
    ys = np.round(np.linspace(0, h, g + 1)).astype(int)
    xs = np.round(np.linspace(0, w, g + 1)).astype(int)
    boxes = [(ys[i], ys[i + 1], xs[j], xs[j + 1]) for i in range(g) for j in range(g)]
    out = np.empty_like(image, dtype=np.float32)
    for target, source in enumerate(_derangement(len(boxes), rng)):
        ty0, ty1, tx0, tx1 = boxes[target]
        sy0, sy1, sx0, sx1 = boxes[int(source)]
        block = image[sy0:sy1, sx0:sx1]
        if rng.random() < 0.5:
            block = block[:, ::-1]
        if rng.random() < 0.5:
            block = block[::-1]
        k = int(rng.integers(0, 4))
        if k and block.shape[0] == block.shape[1] == ty1 - ty0 == tx1 - tx0:
            block = np.rot90(block, k)
        if block.shape[:2] != (ty1 - ty0, tx1 - tx0):
            block = cv2.resize(np.ascontiguousarray(block), (tx1 - tx0, ty1 - ty0), interpolation=cv2.INTER_LINEAR)
        out[ty0:ty1, tx0:tx1] = block
    return out


def structure_anomaly(image: np.ndarray, rng: np.random.Generator, beta_max: float = 0.8, scale_max: int = 5,
                      foreground: Optional[np.ndarray] = None,
                      grids: tuple[int, ...] = STRUCTURE_GRIDS) -> tuple[np.ndarray, np.ndarray]:
    """A structural anomaly made of the image itself: a Perlin mask (as `perlin_anomaly`'s, inside `foreground`
    if given) filled with `shuffle_blocks` of the same image at DRAEM's opacity 1 − β, β ~ U(0, beta_max). No
    foreign colour or texture: what is anomalous is the surface's own structure out of place (misaligned edges,
    turned patterns, seams), the "unseen appearance" that DTD textures do not cover. On a surface that looks the
    same everywhere (a plain colour) the filled region barely differs from its surroundings, as with any
    anomaly made from the image itself. Returns (anomalous image, non-empty float32 mask H×W)."""
    mask = perlin_mask(image.shape[:2], rng, scale_max, within=foreground)
    fill = shuffle_blocks(image, rng, grids)
    opacity = 1.0 - float(rng.uniform(0.0, beta_max))
    return blend(image.astype(np.float32), fill, mask, opacity), mask


def jitter_image(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """The whole image's brightness and contrast changed at random, much as torchvision's ColorJitter(brightness=
    strength, contrast=strength) does (which also clips between the two steps): the image times b, then its mean
    grey level m plus c times (that − m), b and c drawn from U(1 − strength, 1 + strength), clipped to [0, 1]. A
    grey image stays grey. The change is global, so a training sample's mask and label stay as they were. Returns a
    new float32 image H×W×3."""
    b, c = rng.uniform(1.0 - strength, 1.0 + strength, size=2)
    out = image.astype(np.float32) * np.float32(b)
    grey = out @ np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601 luminance, as to_grey
    m = np.float32(grey.mean())
    return np.clip(m + np.float32(c) * (out - m), 0.0, 1.0).astype(np.float32, copy=False)


SHADE_GAIN = (0.15, 0.4)  # |gain − 1| of the surface's level inside the mask
SHADE_CONTRAST = (1.5, 3.0)  # factor (or its inverse) on the surface's fine texture inside the mask
SHADE_MIN_CHANGE = 0.02  # least mean change of a texture-only shade; below it the level changes too


def shade_anomaly(image: np.ndarray, rng: np.random.Generator, scale_max: int = 5,
                  foreground: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """A photometric anomaly made of the image itself: inside a Perlin mask (as `perlin_anomaly`'s, inside
    `foreground` if given) the surface's local level (its Gaussian blur, σ = min(H, W)/32) is made darker or
    brighter (gain 1 ± U(SHADE_GAIN)), or its fine texture (the image minus that level) stronger or weaker
    (factor U(SHADE_CONTRAST) or its inverse), or both: one of the three, equally likely. A texture change that
    would move the mask's pixels by less than SHADE_MIN_CHANGE on the mean (a smooth surface) gets the level change
    too, so that every sample is visible. A shade of the same material, with no foreign texture or colour: uneven
    finish, stains, a smoother or rougher ground patch; a grey image stays grey. The change fades in over the
    mask's inner edge (the mask blurred at σ = min(H, W)/128, kept inside the mask and scaled to reach 1), so
    pixels outside the mask are unchanged and the label covers every changed pixel.
    Returns (anomalous image clipped to [0, 1], non-empty float32 mask H×W)."""
    hw = image.shape[:2]
    mask = perlin_mask(hw, rng, scale_max, within=foreground)
    side = min(hw)
    x = image.astype(np.float32)
    level = cv2.GaussianBlur(x, (0, 0), side / 32.0)
    mode = int(rng.integers(0, 3))  # 0: level, 1: texture, 2: both
    gain = 1.0 + float(rng.choice([-1.0, 1.0])) * float(rng.uniform(*SHADE_GAIN))
    contrast = float(rng.uniform(*SHADE_CONTRAST)) ** float(rng.choice([-1.0, 1.0]))
    detail = x - level
    m = mask > 0
    if mode == 1 and float(np.abs(detail[m]).mean()) * abs(contrast - 1.0) < SHADE_MIN_CHANGE:
        mode = 2  # too little texture under the mask to see it change: change the level too
    fill = level * np.float32(gain if mode != 1 else 1.0) + detail * np.float32(contrast if mode != 0 else 1.0)
    fill = np.clip(fill, 0.0, 1.0)
    # about half strength on the mask's edge, full strength a few pixels in (or at the peak of a small blob)
    weight = cv2.GaussianBlur(mask, (0, 0), max(1.0, side / 128.0)) * mask
    weight /= max(float(weight.max()), 1e-6)
    out = x + weight[..., None] * (fill - x)
    return out.astype(np.float32, copy=False), mask


def _box(mask: np.ndarray, margin: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): the bounding box of a non-empty mask grown by `margin` pixels, inside the image."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    return (max(0, rows[0] - margin), min(h, rows[-1] + 1 + margin),
            max(0, cols[0] - margin), min(w, cols[-1] + 1 + margin))


def context_offset(target: np.ndarray, source: np.ndarray, mask: np.ndarray, valid: Optional[np.ndarray] = None,
                   width: Optional[int] = None) -> np.ndarray:
    """Per-channel offset that brings the surroundings of `mask` in `source` to the level of the same surroundings
    in `target` (RGB float H×W×3 both): mean over a ring of `width` pixels around the mask (default 3 % of the
    shorter side) of target − source, counting only `valid` source pixels (not the fill of a warp). Zero when the
    ring is empty (a mask that covers the image)."""
    h, w = mask.shape
    r = max(2, int(round(0.03 * min(h, w)))) if width is None else int(width)
    m = (mask > 0).astype(np.uint8)
    ring = (cv2.dilate(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))) > 0) & (m == 0)
    if valid is not None:
        ring &= valid
    if not ring.any():
        return np.zeros(target.shape[-1], np.float32)
    return (target[ring].mean(0) - source[ring].mean(0)).astype(np.float32)


def _elastic_displacement(hw: tuple[int, int], rng: np.random.Generator, amplitude: float,
                          cell: int = 16) -> np.ndarray:
    """A smooth random displacement field H×W×2 in pixels (x, y): uniform offsets of up to `amplitude` pixels on
    a grid of `cell`-pixel cells, upsampled bicubically."""
    h, w = hw
    coarse = rng.uniform(-amplitude, amplitude, size=(max(2, h // cell), max(2, w // cell), 2)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


class _Warp:
    """A geometric augmentation as one inverse map: output pixel p reads the source at A⁻¹(p + d(p)), with A an
    affine map of pixel coordinates (flips, 90° turns, rotation, scale, shear, translation about the centre) and
    d an optional elastic displacement field (pixels). `sample` evaluates it on any window of the output grid, so
    only the pixels needed are interpolated, in one pass (OpenCV remap, zero outside the source)."""

    def __init__(self, inverse: np.ndarray, displacement: Optional[np.ndarray]) -> None:
        self.inverse = inverse.astype(np.float32)  # 2×3: output pixel -> source pixel
        self.displacement = displacement

    def sample(self, src: np.ndarray, box: tuple[int, int, int, int], interpolation: int,
               step: int = 1) -> np.ndarray:
        """The warped `src` at output rows y0:y1:step, columns x0:x1:step of box (y0, y1, x0, x1)."""
        y0, y1, x0, x1 = box
        ys = np.arange(y0, y1, step, dtype=np.float32)[:, None]
        xs = np.arange(x0, x1, step, dtype=np.float32)[None, :]
        if self.displacement is None:
            qx, qy = xs, ys
        else:
            d = self.displacement[y0:y1:step, x0:x1:step]
            qx, qy = xs + d[..., 0], ys + d[..., 1]
        (a, b, c), (d_, e, f) = self.inverse
        map_x = a * qx + b * qy + c  # rows × columns (qx and qy broadcast)
        map_y = d_ * qx + e * qy + f
        return cv2.remap(src, map_x, map_y, interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


WARP_SCALE = (0.75, 1.25)  # the pasted defect's default scale range (config: synthesis.extended_scale)


def _random_warp(hw: tuple[int, int], rng: np.random.Generator, scale_range: tuple[float, float] = WARP_SCALE
                 ) -> _Warp:
    """Random flips, 90° turns (180° only for a non-square image), affine (rotation U(±30°), translation U(±30 %),
    scale U(scale_range), shear U(±10°) per axis) and, half of the time, an elastic warp, composed into one map."""
    h, w = hw
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    centre, uncentre = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]]), np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1]])
    fx = -1.0 if rng.random() < 0.5 else 1.0
    fy = -1.0 if rng.random() < 0.5 else 1.0
    k = int(rng.integers(0, 4)) if h == w else 2 * int(rng.integers(0, 2))
    cos_k, sin_k = [(1, 0), (0, 1), (-1, 0), (0, -1)][k]
    turn = np.array([[cos_k, -sin_k, 0], [sin_k, cos_k, 0], [0, 0, 1]]) @ np.diag([fx, fy, 1.0])
    angle = math.radians(float(rng.uniform(-30.0, 30.0)))
    tx, ty = float(rng.uniform(-0.3, 0.3) * w), float(rng.uniform(-0.3, 0.3) * h)
    scale = float(rng.uniform(*scale_range))
    sx, sy = (math.radians(float(v)) for v in rng.uniform(-10.0, 10.0, size=2))
    # rotation-scale-shear as torchvision's affine builds it
    a = math.cos(angle - sy) / math.cos(sy)
    b = -math.cos(angle - sy) * math.tan(sx) / math.cos(sy) - math.sin(angle)
    c = math.sin(angle - sy) / math.cos(sy)
    d = -math.sin(angle - sy) * math.tan(sx) / math.cos(sy) + math.cos(angle)
    rss = np.array([[a * scale, b * scale, tx], [c * scale, d * scale, ty], [0, 0, 1]])
    forward = uncentre @ rss @ turn @ centre  # source pixel -> output pixel
    displacement = None
    if rng.random() < 0.5:
        s = min(h, w) / 256.0
        displacement = _elastic_displacement((h, w), rng, amplitude=float(rng.uniform(2.0, 6.0)) * s,
                                             cell=max(4, int(round(16 * s))))
    return _Warp(np.linalg.inv(forward)[:2], displacement)


def _jitter_colour(image: np.ndarray, rng: np.random.Generator, sample: Optional[np.ndarray] = None) -> np.ndarray:
    """Brightness, contrast, saturation and hue jitter, then sometimes a slight blur (RGB float [0,1], OpenCV).
    The contrast pivots on the mean grey level of `sample` (pixels of the whole picture that `image` is a window
    of; default `image` itself) after the same brightness change."""
    bright = np.float32(rng.uniform(0.8, 1.2))
    img = np.clip(image * bright, 0.0, 1.0)
    c = np.float32(rng.uniform(0.8, 1.2))
    ref = img if sample is None else np.clip(sample * bright, 0.0, 1.0)
    grey_mean = np.float32(cv2.cvtColor(ref, cv2.COLOR_RGB2GRAY).mean())
    img -= grey_mean
    img *= c
    img += grey_mean
    np.clip(img, 0.0, 1.0, out=img)
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)  # float: H in [0, 360), S, V in [0, 1]
    hsv[..., 0] = (hsv[..., 0] + np.float32(rng.uniform(-18.0, 18.0))) % 360.0
    hsv[..., 1] = np.clip(hsv[..., 1] * np.float32(rng.uniform(0.8, 1.2)), 0.0, 1.0)
    img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (3, 3), float(rng.uniform(0.1, 1.0)))
    return np.clip(img, 0.0, 1.0, out=img)


def extended_anomaly(normal: np.ndarray, defect_image: np.ndarray, defect_mask: np.ndarray,
                     rng: np.random.Generator, *, match_context: bool, scale: tuple[float, float] = WARP_SCALE,
                     max_tries: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Cut the defect of a real anomaly (RGB float H×W×3 + mask H×W), augment image and mask together (flips,
    90° turns, affine, elastic: one warp, bilinear for the image, nearest for the mask), jitter the colours and
    sometimes blur the image, and paste the defect pixels onto the normal image (same size). With `match_context`
    the pasted pixels are first shifted by `context_offset`, so the defect keeps its contrast to its *own*
    surroundings and sits at the level of the new ones, as a real defect of that surface would, instead of
    carrying the brightness of the tile (and of the jitter) it was cut from. Same random draws either way.
    Only the window around the warped defect (its ring for `context_offset` and the blur's border included) is
    warped and jittered; the contrast pivot is the mean grey of the whole warped image, read on a 4-pixel grid.
    `scale`: the warp's scale range (linear). Returns (image, non-empty float32 mask H×W)."""
    if normal.shape != defect_image.shape or defect_mask.shape != defect_image.shape[:2]:
        raise ValueError(f"extended_anomaly: shapes differ: normal {normal.shape}, defect {defect_image.shape}, "
                         f"mask {defect_mask.shape}")
    if not (defect_mask > 0).any():
        raise ValueError("extended_anomaly: the real anomaly's mask is empty")
    h, w = defect_mask.shape
    full = (0, h, 0, w)
    source = np.ascontiguousarray(defect_image, dtype=np.float32)
    source_mask = (defect_mask > 0).astype(np.uint8)
    margin = max(2, int(round(0.03 * min(h, w)))) + 2  # context_offset's ring width + the blur's border
    for _ in range(max_tries):
        warp = _random_warp((h, w), rng, scale)
        m = warp.sample(source_mask, full, cv2.INTER_NEAREST) > 0
        if m.any():
            box = _box(m, margin)
            window = warp.sample(source, box, cv2.INTER_LINEAR)
            pasted = _jitter_colour(window, rng, warp.sample(source, full, cv2.INTER_LINEAR, step=4))
            # where the warp brought in fill (no source pixel), for context_offset
            valid = warp.sample(np.ones_like(source_mask), box, cv2.INTER_NEAREST) > 0 if match_context else None
            break
    else:  # augmentation kept pushing the defect out: paste it unaugmented
        m = source_mask > 0
        box = _box(m, margin)
        pasted, valid = source[box[0]:box[1], box[2]:box[3]], None
    out = np.array(normal, dtype=np.float32)  # a copy: pixels outside the mask stay exactly the normal ones
    view = out[box[0]:box[1], box[2]:box[3]]
    m_box = m[box[0]:box[1], box[2]:box[3]]
    if match_context:
        pasted = np.clip(pasted + context_offset(view, pasted, m_box, valid, width=margin - 2), 0.0, 1.0)
    view[m_box] = pasted[m_box]
    return out, m.astype(np.float32)
