"""The previous synthesis and attention code paths, for before/after timings in one process (benchmarks only).

    with old_paths():   # TrainDataset, TextureSource and MultiSizeSelfAttention use the previous code inside
        ...

Previous paths: Perlin noise from per-pixel corner gathers, the Perlin blend over the whole image, extended
anomalies through torchvision.transforms.v2 ops on tv_tensors (flips, 90° turns, affine, elastic, one op at a
time over the whole image), and the attention block with per-branch q/k/v token copies and SDPA on every branch.
They draw the same kinds of samples; the exact draws of extended anomalies differ from the current path.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

import prnet.datasets as datasets
from prnet.datasets import synthesis, textures
from prnet.models.attention import MultiSizeSelfAttention, patch_size


def perlin_noise(hw: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
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
        rows_y, rows_x = gy[y0 + dy], gx[y0 + dy]
        return rows_y[:, x0 + dx] * (fy - dy) + rows_x[:, x0 + dx] * (fx - dx)

    fade = synthesis._fade
    sy, sx = fade(fy), fade(fx)
    n0 = corner(0, 0)
    n0 += sx * (corner(0, 1) - n0)
    n1 = corner(1, 0)
    n1 += sx * (corner(1, 1) - n1)
    return (math.sqrt(2.0) * (n0 + sy * (n1 - n0))).astype(np.float32)


def perlin_anomaly(image: np.ndarray, texture_source, rng: np.random.Generator, beta_max: float = 0.8,
                   scale_max: int = 5, foreground: Optional[np.ndarray] = None,
                   grey: bool = False) -> tuple[np.ndarray, np.ndarray]:
    hw = image.shape[:2]
    mask = synthesis.perlin_mask(hw, rng, scale_max, within=foreground)
    texture = synthesis.augment_texture(texture_source.sample_uint8(rng, hw), rng)
    if grey:
        texture = synthesis.to_grey(texture)
    texture = texture.astype(np.float32) / 255.0
    beta = float(rng.uniform(0.0, beta_max))
    return synthesis.blend(image.astype(np.float32), texture, mask, 1.0 - beta), mask


def _elastic_displacement(hw: tuple[int, int], rng: np.random.Generator, amplitude: float,
                          cell: int = 16) -> torch.Tensor:
    h, w = hw
    coarse = rng.uniform(-amplitude, amplitude, size=(max(2, h // cell), max(2, w // cell), 2)).astype(np.float32)
    d = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    d[..., 0] *= 2.0 / w
    d[..., 1] *= 2.0 / h
    return torch.from_numpy(np.ascontiguousarray(d))[None]


def _augment_defect(image: tv_tensors.Image, mask: tv_tensors.Mask, rng: np.random.Generator,
                    extra: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, ...]:
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
                      interpolation=TF.InterpolationMode.BILINEAR) for x in pair]
    if rng.random() < 0.5:
        s = min(h, w) / 256.0
        disp = _elastic_displacement((h, w), rng, amplitude=float(rng.uniform(2.0, 6.0)) * s,
                                     cell=max(4, int(round(16 * s))))
        pair = [TF.elastic(x, disp) for x in pair]
    return tuple(x.as_subclass(torch.Tensor) for x in pair)


def _jitter_colour(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    img = np.clip(image * np.float32(rng.uniform(0.8, 1.2)), 0.0, 1.0)
    c = np.float32(rng.uniform(0.8, 1.2))
    grey_mean = np.float32(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).mean())
    img = np.clip((img - grey_mean) * c + grey_mean, 0.0, 1.0)
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0] + np.float32(rng.uniform(-18.0, 18.0))) % 360.0
    hsv[..., 1] = np.clip(hsv[..., 1] * np.float32(rng.uniform(0.8, 1.2)), 0.0, 1.0)
    img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (3, 3), float(rng.uniform(0.1, 1.0)))
    return np.clip(img, 0.0, 1.0)


def extended_anomaly(normal: np.ndarray, defect_image: np.ndarray, defect_mask: np.ndarray,
                     rng: np.random.Generator, max_tries: int = 10,
                     match_context: bool = False) -> tuple[np.ndarray, np.ndarray]:
    image_t = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(defect_image.transpose(2, 0, 1),
                                                                       dtype=np.float32)))
    mask_t = tv_tensors.Mask(torch.from_numpy((defect_mask > 0).astype(np.uint8))[None])
    valid = np.ones(defect_mask.shape, bool)
    with torch.no_grad():
        for _ in range(max_tries):
            ones = torch.ones_like(mask_t) if match_context else None
            img, msk, *warped = _augment_defect(image_t, mask_t, rng, ones)
            m = (msk[0] > 0).numpy()
            if m.any():
                if warped:
                    valid = (warped[0][0] > 0).numpy()
                pasted = _jitter_colour(np.ascontiguousarray(img.clamp(0.0, 1.0).numpy().transpose(1, 2, 0)), rng)
                break
        else:
            m = defect_mask > 0
            pasted = defect_image
    out = np.array(normal, dtype=np.float32)
    if match_context:
        pasted = np.clip(pasted + synthesis.context_offset(out, pasted, m, valid), 0.0, 1.0)
    out[m] = pasted[m]
    return out, m.astype(np.float32)


def attention_forward(self: MultiSizeSelfAttention, x: torch.Tensor) -> torch.Tensor:
    def tokens(t: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
        n, c, h, w = t.shape
        nh, nw = h // ph, w // pw
        t = t.reshape(n, self.heads, c // self.heads, nh, ph, nw, pw)
        t = t.permute(0, 1, 3, 5, 2, 4, 6)
        return t.reshape(n, self.heads, nh * nw, (c // self.heads) * ph * pw)

    def fold(t: torch.Tensor, c: int, h: int, w: int, ph: int, pw: int) -> torch.Tensor:
        nh, nw = h // ph, w // pw
        t = t.reshape(t.shape[0], self.heads, nh, nw, c // self.heads, ph, pw)
        t = t.permute(0, 1, 4, 2, 5, 3, 6)
        return t.reshape(t.shape[0], c, h, w)

    h, w = int(x.shape[-2]), int(x.shape[-1])
    q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=1)
    outs = []
    for b, d in enumerate(self.divisors):
        sl = slice(b * self.branch_ch, (b + 1) * self.branch_ch)
        ph, pw = patch_size(h, d), patch_size(w, d)
        qt, kt, vt = (tokens(t[:, sl], ph, pw) for t in (q, k, v))
        o = F.scaled_dot_product_attention(qt, kt, vt)
        outs.append(fold(o, self.branch_ch, h, w, ph, pw))
    x = x + self.proj(torch.cat(outs, dim=1))
    return x + self.ffn(x)


@contextlib.contextmanager
def old_paths(enabled: bool = True) -> Iterator[None]:
    """Inside: the previous synthesis (TrainDataset, TextureSource, perlin_mask/large_mask) and attention code.
    DataLoader workers forked inside inherit it."""
    if not enabled:
        yield
        return
    patches = [(synthesis, "perlin_noise", perlin_noise), (textures, "perlin_noise", perlin_noise),
               (synthesis, "perlin_anomaly", perlin_anomaly), (datasets, "perlin_anomaly", perlin_anomaly),
               (synthesis, "extended_anomaly", extended_anomaly), (datasets, "extended_anomaly", extended_anomaly),
               (MultiSizeSelfAttention, "forward", attention_forward)]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    try:
        for obj, name, value in patches:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)
