"""Synthetic anomalies: Perlin masks, augmented texture blending (DRAEM style) and copy-paste "extended" ones.

Everything works on RGB float32 images in [0, 1] (H×W×3) and float32 masks in {0, 1} (H×W); textures are RGB
uint8 while they are augmented and become float [0, 1] before blending, so image and texture are in one space
(GUIDE pitfall 2). Every random choice draws from the `numpy.random.Generator` passed in. Only numpy, OpenCV
and torchvision.transforms.v2 are used.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Protocol

import cv2
import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF


class TextureProvider(Protocol):
    def sample_uint8(self, rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray: ...


# ----------------------------------------------------------------------------------------------- Perlin noise
def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(hw: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise of shape `hw` with `res` = (cells along y, cells along x); values ≈ [-1, 1].

    Random unit gradients sit on the (res+1) lattice; each pixel mixes the dot products of its 4 corner
    gradients with the quintic fade, scaled by √2 as in DRAEM. Any size works (no divisibility needed).
    """
    h, w = hw
    ry, rx = max(1, int(res[0])), max(1, int(res[1]))
    angles = rng.uniform(0.0, 2.0 * math.pi, size=(ry + 1, rx + 1))
    gy = np.sin(angles).astype(np.float32)
    gx = np.cos(angles).astype(np.float32)
    y = np.arange(h, dtype=np.float32) * np.float32(ry / h)
    x = np.arange(w, dtype=np.float32) * np.float32(rx / w)
    y0 = np.floor(y).astype(np.int64)
    x0 = np.floor(x).astype(np.int64)
    fy = (y - y0)[:, None]
    fx = (x - x0)[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        rows_y, rows_x = gy[y0 + dy], gx[y0 + dy]  # h × (rx+1)
        return rows_y[:, x0 + dx] * (fy - dy) + rows_x[:, x0 + dx] * (fx - dx)

    sy, sx = _fade(fy), _fade(fx)
    n0 = corner(0, 0)
    n0 += sx * (corner(0, 1) - n0)
    n1 = corner(1, 0)
    n1 += sx * (corner(1, 1) - n1)
    return (math.sqrt(2.0) * (n0 + sy * (n1 - n0))).astype(np.float32)


def _rotate(image: np.ndarray, angle: float, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Rotate about the centre by `angle` degrees, reflecting at the borders (no empty corners)."""
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1.0)
    return cv2.warpAffine(image, m, (w, h), flags=interpolation, borderMode=cv2.BORDER_REFLECT_101)


def perlin_mask(hw: tuple[int, int], rng: np.random.Generator, scale_max: int = 5, threshold: float = 0.5,
                within: Optional[np.ndarray] = None, max_tries: int = 50) -> np.ndarray:
    """A non-empty float32 {0,1} mask: Perlin noise at scale 2^k per axis (k ∈ 0..scale_max, independent),
    rotated by U(-90°, 90°), thresholded (> threshold). Redrawn while empty (inside `within` if given); after
    `max_tries` the top 10 % of the last noise inside `within` is used so the result is never empty."""
    if within is not None and not within.any():
        within = None
    noise = None
    for _ in range(max_tries):
        ky, kx = rng.integers(0, scale_max + 1, size=2)
        noise = perlin_noise(hw, (2 ** int(ky), 2 ** int(kx)), rng)
        noise = _rotate(noise, float(rng.uniform(-90.0, 90.0)))
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
    hue = (hsv[..., 0].astype(np.int16) + int(rng.integers(-25, 26))) % 180
    sat = np.clip(hsv[..., 1].astype(np.int16) + int(rng.integers(-50, 51)), 0, 255)
    hsv[..., 0], hsv[..., 1] = hue.astype(np.uint8), sat.astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


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
    out = texture.astype(np.float32) - image
    out *= m.astype(np.float32) * np.float32(beta)
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
                   grey: bool = False, texture_weight: str = "1-beta") -> tuple[np.ndarray, np.ndarray]:
    """A DRAEM-style anomaly on RGB float image H×W×3: (anomalous image, non-empty float32 mask H×W).

    Perlin mask (restricted to `foreground` if given), a random texture with 3 random ops (turned into its grey
    luminance if `grey`, for greyscale images: no colour cue that a real defect of such a category never has),
    β ~ U(0, beta_max), blended with `blend`. As in DRAEM, β is the weight of the *original* image inside the mask
    and the texture gets 1 − β ∈ (1 − beta_max, 1] (`texture_weight="1-beta"`): every anomaly is visible.
    `texture_weight="beta"` gives the texture β instead (our earlier, inverted reading: opacity in [0, beta_max),
    near-invisible anomalies still labelled as anomalous). The random draws are the same for every option."""
    hw = image.shape[:2]
    mask = perlin_mask(hw, rng, scale_max, within=foreground)
    texture = augment_texture(textures.sample_uint8(rng, hw), rng)
    if grey:
        texture = to_grey(texture)
    texture = texture.astype(np.float32) / 255.0
    beta = float(rng.uniform(0.0, beta_max))
    if texture_weight == "1-beta":
        opacity = 1.0 - beta
    elif texture_weight == "beta":
        opacity = beta
    else:
        raise ValueError(f"perlin_anomaly: texture_weight must be '1-beta' or 'beta', got {texture_weight!r}")
    return blend(image.astype(np.float32), texture, mask, opacity), mask


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


def _elastic_displacement(hw: tuple[int, int], rng: np.random.Generator, amplitude: float,
                          cell: int = 16) -> torch.Tensor:
    """A smooth random displacement field 1×H×W×2 (normalised coordinates, as v2.functional.elastic takes):
    uniform offsets of up to `amplitude` pixels on a grid of `cell`-pixel cells, upsampled bicubically."""
    h, w = hw
    coarse = rng.uniform(-amplitude, amplitude, size=(max(2, h // cell), max(2, w // cell), 2)).astype(np.float32)
    d = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    d[..., 0] *= 2.0 / w
    d[..., 1] *= 2.0 / h
    return torch.from_numpy(np.ascontiguousarray(d))[None]


def _augment_defect(image: tv_tensors.Image, mask: tv_tensors.Mask, rng: np.random.Generator,
                    extra: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, ...]:
    """Random flips, 90° turns, affine and elastic warp applied to image and mask together (v2 functional ops on
    tv_tensors: the mask is warped with nearest neighbour); `extra`, another mask, takes the same warp and is
    returned third. The random draws do not depend on `extra`."""
    h, w = image.shape[-2:]
    pair = [image, mask] + ([tv_tensors.Mask(extra)] if extra is not None else [])
    if rng.random() < 0.5:
        pair = [TF.horizontal_flip(x) for x in pair]
    if rng.random() < 0.5:
        pair = [TF.vertical_flip(x) for x in pair]
    k = int(rng.integers(0, 4)) if h == w else 2 * int(rng.integers(0, 2))
    if k:
        pair = [tv_tensors.wrap(torch.rot90(x, k, dims=(-2, -1)), like=x) for x in pair]
    angle = float(rng.uniform(-30.0, 30.0))
    translate = [float(rng.uniform(-0.3, 0.3) * w), float(rng.uniform(-0.3, 0.3) * h)]
    scale = float(rng.uniform(0.75, 1.25))
    shear = [float(rng.uniform(-10.0, 10.0)), float(rng.uniform(-10.0, 10.0))]
    pair = [TF.affine(x, angle=angle, translate=translate, scale=scale, shear=shear,
                      interpolation=TF.InterpolationMode.BILINEAR) for x in pair]  # masks: nearest (v2 dispatch)
    if rng.random() < 0.5:
        s = min(h, w) / 256.0
        disp = _elastic_displacement((h, w), rng, amplitude=float(rng.uniform(2.0, 6.0)) * s,
                                     cell=max(4, int(round(16 * s))))
        pair = [TF.elastic(x, disp) for x in pair]
    return tuple(x.as_subclass(torch.Tensor) for x in pair)


def _jitter_colour(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast, saturation and hue jitter, then sometimes a slight blur (RGB float [0,1], OpenCV:
    much faster on one core than the torch kernels)."""
    img = np.clip(image * np.float32(rng.uniform(0.8, 1.2)), 0.0, 1.0)
    c = np.float32(rng.uniform(0.8, 1.2))
    grey_mean = np.float32(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).mean())
    img = np.clip((img - grey_mean) * c + grey_mean, 0.0, 1.0)
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)  # float: H in [0, 360), S, V in [0, 1]
    hsv[..., 0] = (hsv[..., 0] + np.float32(rng.uniform(-18.0, 18.0))) % 360.0
    hsv[..., 1] = np.clip(hsv[..., 1] * np.float32(rng.uniform(0.8, 1.2)), 0.0, 1.0)
    img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (3, 3), float(rng.uniform(0.1, 1.0)))
    return np.clip(img, 0.0, 1.0)


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


def extended_anomaly(normal: np.ndarray, defect_image: np.ndarray, defect_mask: np.ndarray,
                     rng: np.random.Generator, max_tries: int = 10,
                     match_context: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Cut the defect of a real anomaly (RGB float H×W×3 + mask H×W), augment image and mask together (flips,
    90° turns, affine, elastic), jitter the colours and sometimes blur the image, and paste the defect pixels
    onto the normal image (same size). With `match_context` the pasted pixels are first shifted by
    `context_offset`, so the defect keeps its contrast to its *own* surroundings and sits at the level of the new
    ones, as a real defect of that surface would, instead of carrying the brightness of the tile (and of the
    jitter) it was cut from. Same random draws either way. Returns (image, non-empty float32 mask H×W)."""
    if normal.shape != defect_image.shape or defect_mask.shape != defect_image.shape[:2]:
        raise ValueError(f"extended_anomaly: shapes differ: normal {normal.shape}, defect {defect_image.shape}, "
                         f"mask {defect_mask.shape}")
    if not (defect_mask > 0).any():
        raise ValueError("extended_anomaly: the real anomaly's mask is empty")
    image_t = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(defect_image.transpose(2, 0, 1),
                                                                       dtype=np.float32)))
    mask_t = tv_tensors.Mask(torch.from_numpy((defect_mask > 0).astype(np.uint8))[None])
    valid = np.ones(defect_mask.shape, bool)
    with torch.no_grad():
        for _ in range(max_tries):
            # with match_context, an all-ones mask takes the same warp: 0 where the warp brought in fill
            ones = torch.ones_like(mask_t) if match_context else None
            img, msk, *warped = _augment_defect(image_t, mask_t, rng, ones)
            m = (msk[0] > 0).numpy()
            if m.any():
                if warped:
                    valid = (warped[0][0] > 0).numpy()
                pasted = _jitter_colour(np.ascontiguousarray(img.clamp(0.0, 1.0).numpy().transpose(1, 2, 0)), rng)
                break
        else:  # augmentation kept pushing the defect out: paste it unaugmented
            m = defect_mask > 0
            pasted = defect_image
    out = np.array(normal, dtype=np.float32)  # a copy: pixels outside the mask stay exactly the normal ones
    if match_context:
        pasted = np.clip(pasted + context_offset(out, pasted, m, valid), 0.0, 1.0)
    out[m] = pasted[m]
    return out, m.astype(np.float32)
