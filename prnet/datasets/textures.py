"""Textures for synthetic anomalies: every image below the DTD root, or a procedural fallback without DTD.

`TextureSource(root).sample(rng, hw)` returns an RGB float32 H×W×3 texture in [0, 1]. DTD files are listed
once (recursively: `images/<class>/*.jpg` and `<class>/*.jpg` both work) and decoded on first use; resized
copies are kept in a bounded cache (default 128 MiB per process), so 5640 full-size DTD images are never all
held in memory. Without DTD (root None, missing, or holding no image) a warning is logged and textures are
procedural: coloured Perlin noise, or augmented copies of the normal training images when they are given.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Callable, Optional

import cv2
import numpy as np

from .mvtec import _decode, _resize, is_image_file, load_rgb
from .synthesis import perlin_noise

log = logging.getLogger(__name__)

NormalImages = Callable[[np.random.Generator], np.ndarray]  # rng -> a normal training image, RGB uint8 or float


def find_images(root: str) -> list[str]:
    """Every image file below `root`, sorted (hidden folders skipped)."""
    found = []
    for directory, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(directory, f) for f in files if is_image_file(f) and not f.startswith("."))
    return sorted(found)


def colored_perlin(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    """A procedural RGB uint8 texture: two octaves of Perlin noise mapped between two random colours, plus a
    third random colour on a second noise field (made at half resolution, then upsampled: it is smooth)."""
    h, w = hw
    small = (max(8, (h + 1) // 2), max(8, (w + 1) // 2))
    k = int(rng.integers(1, 5))
    n1 = perlin_noise(small, (2 ** k, 2 ** k), rng) + 0.5 * perlin_noise(small, (2 ** (k + 2), 2 ** (k + 2)), rng)
    n2 = perlin_noise(small, (2 ** int(rng.integers(0, 4)),) * 2, rng)
    a = np.clip(n1 * 0.5 + 0.5, 0.0, 1.0)[..., None]
    b = np.clip(n2 * 0.5 + 0.5, 0.0, 1.0)[..., None]
    c1, c2, c3 = rng.uniform(0.0, 1.0, size=(3, 1, 1, 3)).astype(np.float32)
    tex = (c1 * (1.0 - a) + c2 * a) * (1.0 - 0.5 * b) + c3 * 0.5 * b
    tex = (np.clip(tex, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return cv2.resize(tex, (w, h), interpolation=cv2.INTER_LINEAR)


def load_rgb_uint8(path: str, hw: tuple[int, int]) -> np.ndarray:
    """An image file as RGB uint8 H×W×3 at `hw`. An 8-bit colour file (every DTD JPEG) is resized in uint8, half
    the work of load_rgb's float path; any other file goes through load_rgb."""
    image = _decode(path)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        return (load_rgb(path, hw) * 255.0 + 0.5).astype(np.uint8)
    return cv2.cvtColor(_resize(image, hw), cv2.COLOR_BGR2RGB)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def augmented_copy(image: np.ndarray, rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    """A texture made from a normal image: a random crop zoomed to `hw`, a random 90° turn or flip, and the
    colour channels permuted (so it does not look like the normal surface). RGB uint8."""
    img = _to_uint8(image)
    h, w = img.shape[:2]
    f = rng.uniform(0.25, 0.75)
    ch, cw = max(2, int(h * f)), max(2, int(w * f))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = img[y:y + ch, x:x + cw]
    crop = np.rot90(crop, int(rng.integers(0, 4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    crop = crop[..., rng.permutation(3)]
    return cv2.resize(np.ascontiguousarray(crop), (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)


class TextureSource:
    """Random textures from a DTD-like folder, or procedural ones when there is none (with a warning)."""

    def __init__(self, root: Optional[str], normal_images: Optional[NormalImages] = None,
                 cache_bytes: int = 128 << 20) -> None:
        self.root = root
        self.normal_images = normal_images
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._cached_bytes = 0
        self.files: list[str] = []
        if root is None:
            reason = "data.dtd_root is not set"
        elif not os.path.isdir(root):
            reason = f"DTD folder {root} does not exist"
        else:
            self.files = find_images(root)
            reason = f"no image files under DTD folder {root}"
        if self.files:
            log.info("textures: %d images under %s", len(self.files), root)
        else:
            what = "coloured Perlin noise and augmented normal images" if normal_images else "coloured Perlin noise"
            log.warning("%s: synthetic anomalies use procedural textures (%s) instead of DTD", reason, what)

    @property
    def procedural(self) -> bool:
        """True when no DTD image was found and textures are generated."""
        return not self.files

    def _load(self, index: int, hw: tuple[int, int]) -> np.ndarray:
        key = (index, hw[0], hw[1])
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        tex = load_rgb_uint8(self.files[index], hw)  # DatasetError names the file
        self._cache[key] = tex
        self._cached_bytes += tex.nbytes
        while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= old.nbytes
        return tex

    def sample_uint8(self, rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
        """A random texture as RGB uint8 H×W×3 (a fresh array the caller may modify)."""
        hw = (int(hw[0]), int(hw[1]))
        if self.files:
            return self._load(int(rng.integers(0, len(self.files))), hw).copy()
        if self.normal_images is not None and rng.random() < 0.5:
            return augmented_copy(self.normal_images(rng), rng, hw)
        return colored_perlin(rng, hw)

    def sample(self, rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
        """A random texture as RGB float32 H×W×3 in [0, 1]."""
        return self.sample_uint8(rng, hw).astype(np.float32) / 255.0
