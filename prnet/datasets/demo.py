"""A procedural demo category in the MVTec AD layout (brushed-metal surface with holes, scratches and stains).

    make_demo_category("/tmp/data", "demo")   # -> /tmp/data/demo/{train/good, test/<type>, ground_truth/<type>}

Normal images: brushed-metal streaks, a faint woven periodic pattern, fine grain and smooth random
illumination, shifted a little per image; every image differs but they share one look. Defects: `hole` (a dark
pit with a soft edge), `scratch` (a thin bright or dark curved line), `stain` (an irregular blob of subtle
brownish tint). Everything depends only on `seed`. The category is written into a temporary folder that is
renamed at the end, so a killed generation never leaves a half category that looks complete.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile

import cv2
import numpy as np

from ..utils import numpy_rng
from .synthesis import perlin_noise

log = logging.getLogger(__name__)

DEFECT_TYPES = ("hole", "scratch", "stain")


def demo_surface(rng: np.random.Generator, size: int) -> np.ndarray:
    """One normal demo image: RGB float32 size×size×3 in [0, 1]."""
    s = size
    streak_len = max(3, s // 6) | 1
    pad = streak_len + s // 16
    raw = rng.normal(0.0, 1.0, size=(s + pad, s + pad)).astype(np.float32)
    streaks = cv2.blur(raw, (streak_len, 1))  # long along x: brushed metal
    dy, dx = rng.integers(0, pad + 1, size=2)  # small random shift
    streaks = streaks[dy:dy + s, dx:dx + s]
    streaks /= streaks.std() + 1e-6
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    period = max(4.0, s / 16.0)
    phase = rng.uniform(0, 2 * np.pi, size=2)
    weave = np.sin(2 * np.pi * yy / period + phase[0]) * np.sin(2 * np.pi * xx / period + phase[1])
    illum = 0.06 * perlin_noise((s, s), (2, 2), rng) + rng.uniform(-0.04, 0.04) * (xx / s - 0.5)
    grain = rng.normal(0.0, 1.0, size=(s, s)).astype(np.float32)
    base = np.array([0.60, 0.60, 0.62], np.float32) * (1.0 + rng.normal(0.0, 0.01, 3)).astype(np.float32)
    lum = 1.0 + illum + 0.045 * streaks + 0.02 * weave + 0.012 * grain
    return np.clip(base[None, None, :] * lum[..., None], 0.0, 1.0).astype(np.float32)


def _soft(mask: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), max(0.5, sigma))


def add_defect(image: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw one defect of `kind` (hole, scratch, stain) on an RGB float image; returns (image, bool mask)."""
    s = image.shape[0]
    k = s / 256.0
    margin = int(0.15 * s)
    cy, cx = rng.integers(margin, s - margin, size=2)
    canvas = np.zeros((s, s), np.float32)
    if kind == "hole":
        r = max(2.0, rng.uniform(5.0, 11.0) * k)
        cv2.ellipse(canvas, (int(cx), int(cy)), (int(round(r)), int(round(r * rng.uniform(0.7, 1.0)))),
                    float(rng.uniform(0, 180)), 0, 360, 1.0, -1, cv2.LINE_AA)
        alpha = _soft(canvas, 0.8 * k)[..., None]
        dark = np.array([0.10, 0.09, 0.09], np.float32) * rng.uniform(0.8, 1.5)
        out = image * (1 - alpha) + alpha * (0.35 * image + dark)
        mask = alpha[..., 0] > 0.5
    elif kind == "scratch":
        length = rng.uniform(0.2, 0.45) * s
        angle = rng.uniform(0, np.pi)
        bend = rng.uniform(-0.15, 0.15) * length
        t = np.linspace(-0.5, 0.5, 24)[:, None]
        direction = np.array([np.cos(angle), np.sin(angle)])
        normal = np.array([-np.sin(angle), np.cos(angle)])
        pts = np.array([cx, cy]) + t * length * direction + (1 - 4 * t ** 2) * bend * normal
        pts = np.round(pts * 16).astype(np.int32)  # 4 fractional bits for anti-aliasing
        thickness = max(1, int(round(1.5 * k)))
        cv2.polylines(canvas, [pts], False, 1.0, thickness, cv2.LINE_AA, shift=4)
        alpha = np.clip(canvas, 0, 1)[..., None]
        delta = rng.choice([-1.0, 1.0]) * rng.uniform(0.22, 0.32)
        out = image + alpha * delta
        mask = cv2.dilate((canvas > 0.25).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    elif kind == "stain":
        r = rng.uniform(12.0, 24.0) * k
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        ar = rng.uniform(0.6, 1.0)
        th = rng.uniform(0, np.pi)
        u = ((xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)) / r
        v = (-(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)) / (r * ar)
        wobble = 0.35 * perlin_noise((s, s), (8, 8), rng)
        canvas = ((u ** 2 + v ** 2) < (1.0 + wobble)).astype(np.float32)
        alpha = _soft(canvas, 2.0 * k)[..., None]
        tint = np.array([0.07, 0.015, -0.06], np.float32) * rng.uniform(0.9, 1.3)
        out = image + alpha * tint
        mask = alpha[..., 0] > 0.5
    else:
        raise ValueError(f"unknown demo defect type {kind!r}: expected one of {', '.join(DEFECT_TYPES)}")
    if not mask.any():  # tiny sizes: keep the defect's centre in the mask
        mask[int(cy), int(cx)] = True
    return np.clip(out, 0.0, 1.0).astype(np.float32), mask


def _write_png(path: str, rgb_or_grey: np.ndarray) -> None:
    arr = rgb_or_grey
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(path, arr):
        raise OSError(f"cannot write {path}")


def _u8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255.0 + 0.5).astype(np.uint8)


def make_demo_category(root: str, category: str = "demo", seed: int = 0, size: int = 256, n_train: int = 80,
                       n_test_good: int = 25, n_test_bad: int = 25) -> str:
    """Write the demo category to <root>/<category> (MVTec layout) and return its path.

    Defective test images are spread round-robin over DEFECT_TYPES (those with at least one image get a
    folder). An existing <root>/<category> is an error (FileExistsError); a concurrent writer that finishes
    first wins and its folder is returned."""
    final = os.path.join(root, category)
    if os.path.exists(final):
        raise FileExistsError(f"demo category {final} already exists; remove it to regenerate")
    if min(n_train, n_test_good) < 1 or n_test_bad < 0:
        raise ValueError("make_demo_category: n_train and n_test_good must be >= 1 and n_test_bad >= 0")
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{category}.tmp-", dir=root)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would outlive the rename: the folder follows the umask
    try:
        good_dirs = [os.path.join(tmp, "train", "good"), os.path.join(tmp, "test", "good")]
        for d in good_dirs:
            os.makedirs(d)
        for split_id, (d, n) in enumerate(zip(good_dirs, (n_train, n_test_good))):
            for i in range(n):
                _write_png(os.path.join(d, f"{i:03d}.png"), _u8(demo_surface(numpy_rng(seed, split_id, 0, i), size)))
        counts = [len(range(t, n_test_bad, len(DEFECT_TYPES))) for t in range(len(DEFECT_TYPES))]
        for t, (kind, n) in enumerate(zip(DEFECT_TYPES, counts)):
            if n == 0:
                continue
            img_dir = os.path.join(tmp, "test", kind)
            gt_dir = os.path.join(tmp, "ground_truth", kind)
            os.makedirs(img_dir)
            os.makedirs(gt_dir)
            for i in range(n):
                rng = numpy_rng(seed, 2, t + 1, i)
                image, mask = add_defect(demo_surface(rng, size), kind, rng)
                _write_png(os.path.join(img_dir, f"{i:03d}.png"), _u8(image))
                _write_png(os.path.join(gt_dir, f"{i:03d}_mask.png"), mask.astype(np.uint8) * 255)
        try:
            os.rename(tmp, final)
        except OSError:
            if os.path.isdir(final):  # another process finished first
                shutil.rmtree(tmp, ignore_errors=True)
                return final
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote demo category %s (%d train, %d good + %d defective test images, %d px)", final, n_train,
             n_test_good, n_test_bad, size)
    return final
