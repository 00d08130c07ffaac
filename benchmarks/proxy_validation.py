"""Choose settings without the test set: a validation category made only of training data.

    python benchmarks/proxy_validation.py --data ../shared/data/magnetic_tile --dtd ../shared/data/dtd \
        --out val_mt --seeds 0,1 --variant base --variant wide "model.head_widths=[64,128,256]"

`--data` is a category folder in the MVTec AD layout (or a root, with `--category NAME`); any such data set with
at least 2 defective test images and 2 normal training images works, at any `--size` (256 or H,W).

The proxy category (written once under <out>/proxy, symlinks where possible):
- train/good: the normal training images minus a seeded hold-out (`--holdout`, default 15 %);
- test/good: the held-out normal images (never trained on, never in the prototypes);
- test/perlin_unseen_textures: one Perlin anomaly per held-out image, filled with textures of DTD classes the
  proxy runs never train with (`--val-texture-classes` of them, seeded);
- test/extended_unseen_defects: one extended anomaly per held-out image, cut from the *second* half of the real
  few-shot anomalies; the proxy runs train on the first half only (so these defects are unseen too);
- test/<defect>: the first half of the few-shot anomalies, which the proxy runs train on (excluded from scoring);
- test/swap_unseen_shapes (added to an existing proxy when missing): per held-out image, a band across the
  image (one side of a line within ±15° of horizontal, 10–40 % of the image, the shape of the `uneven` few-shot
  anomalies) taken from *another held-out* image at opacity U(0.2, 1). Training's region swaps
  (synthesis.swap_fraction) are Perlin blobs from training images: these shapes and images are unseen. Scored
  on its own; "all" keeps its first meaning (normals, Perlin, extended), so older rows stay comparable.
- test/extended_in_context (added to an existing proxy when missing): the same pastes as
  extended_unseen_defects (same defect, same random draws, same mask), each shifted to the level of its new
  surroundings (`synthesis.extended_anomaly(..., match_context=True)`): the defect keeps its contrast to its own
  surface, as a real one in place does, where the plain paste carries the brightness of the tile it was cut from
  (dark cracks from a bright tile pasted bright on a dark one). Scored on its own, like the swaps.
- test/small_unseen_spots (added to an existing proxy when missing): per held-out image, 1–3 ellipses covering
  0.05–0.5 % of the image together (BSData's pits: median 0.17 %), filled with a validation texture (the classes
  training never sees) at opacity U(0.5, 1). The synthetic Perlin blobs cover far more of the image; a proxy
  where the head is at its ceiling on them can still rank tiny defects badly. Scored on its own.
- test/tiny_unseen_spots (added to an existing proxy when missing): the same, about ten times smaller: 1–2
  ellipses, nominally 0.003–0.03 % of the image together; with semi-axes of at least one pixel they cover 5–38
  pixels at 256² (median 18). BSData's smallest pits (30–130 pixels of its 1130×460 shots, 0.006–0.025 %) are this
  size: a feature cell of stride 4 holds the whole defect. Scored on its own.
- test/tiny_real_pastes (added to an existing proxy when missing): per held-out image, the defect of a validation
  few-shot anomaly (the extended images' source, in turn) shrunk with its surroundings (area averaging) to cover
  about 0.008–0.06 % of the image (5–40 pixels at 256²; never enlarged), shifted to the level of its new
  surroundings (`synthesis.context_offset`) and pasted at a random place. Real defect appearance at the size of
  BSData's smallest pits, where the texture spots above are far more salient. Scored on its own.
- test/faint_real_pastes (added to an existing proxy when missing): tiny_real_pastes' pastes, the same draws, with
  only a quarter to a half of their difference from the normal image kept: a real defect at the size and about the
  contrast of an early pit (BSData's pits under 130 pixels differ from their surroundings by 0.036 grey levels,
  median, the shrunk pastes by 0.115, these by 0.044: docs/experiments.md, round 32). Scored on its own.
- test/real_unseen_defects (added to an existing proxy when missing): the second half of the few-shot anomalies
  themselves, whole, in their own images (links, as test/<defect>), the source of the extended pastes: real
  defects on their own surface, which no proxy run trains on. Scored on its own; `score_fusion.py --subsets` also
  pools them with every real defect image a run did not train on (`real_defects`: for a run without real
  anomalies the first half too).
The few-shot anomalies are the ones the real benchmark trains on (same `select_few_shot` rule and seed), so the
real test set is never read beyond them.

The proxy is built once per --out with the proxy seed (`--proxy-seed`, default 0) and records what it was made
from (data, size, hold-out, texture classes, shots, seeds); another setting on a later call is refused (use another
--out). Training seeds are apart from it: `--seeds 0,1` trains every variant once per seed on the same proxy, into
<out>/runs/<variant> (seed 0) and <out>/runs/<variant>-seed<S> (other seeds). `--set key=value` (repeatable) adds
config overrides to every variant (before the variant's own).

Every variant is trained on the proxy with train.py's code path (which does not score the test split itself:
eval.score_test=false), then scored here on the proxy test split, per
subset (held-out normals vs each synthetic kind) and for several image-score rules (Gaussian σ × top-k mean).
Prints one table per run, then the mean ± sample standard deviation over the seeds of each variant, and writes
<out>/proxy_validation.json (a row per variant and seed, and that summary).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import cv2
import numpy as np
import torch


from real_data import parse_seeds, parse_size, spread, train_script, value, write_json

log = logging.getLogger("proxy_validation")

PERLIN = "perlin_unseen_textures"
EXTENDED = "extended_unseen_defects"
SWAP = "swap_unseen_shapes"
IN_CONTEXT = "extended_in_context"
SMALL = "small_unseen_spots"
TINY = "tiny_unseen_spots"
TINY_REAL = "tiny_real_pastes"
FAINT_REAL = "faint_real_pastes"
APART = (SWAP, IN_CONTEXT, SMALL, TINY, TINY_REAL, FAINT_REAL)  # added later: scored on their own, never in "all"
REAL = "real_unseen_defects"  # added later still; scored on its own, never part of "all", not judged by proxy_rules
SYNTHETIC = (PERLIN, EXTENDED, *APART)  # every subset made by the proxy; any other defect folder holds real images
SIGMAS = (0.0, 2.0, 4.0, 8.0)
TOPKS = (1, 10, 100, 1000)


def _link(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if not os.path.lexists(dst):
        os.symlink(os.path.abspath(src), dst)


def _save_rgb(path: str, image: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, cv2.cvtColor((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), cv2.COLOR_RGB2BGR))


def _save_mask(path: str, mask: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, (mask > 0).astype(np.uint8) * 255)


def texture_classes(dtd: str) -> tuple[str, list[str]]:
    """(folder holding the class folders, sorted class names): DTD's images/<class> or <class> directly."""
    base = os.path.join(dtd, "images") if os.path.isdir(os.path.join(dtd, "images")) else dtd
    classes = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)) and not d.startswith("."))
    if len(classes) < 2:
        raise SystemExit(f"{base}: expected at least 2 texture class folders, found {classes}")
    return base, classes


def check_proxy(info: dict, made_from: dict, info_path: str) -> None:
    """Refuse a proxy made from other data or settings than `made_from` (older proxies record less: a warning)."""
    have = info.get("made_from")
    if have is None:
        log.warning("%s records no settings (made before they were recorded): assuming %s", info_path, made_from)
        if info.get("category") != made_from["category"]:
            raise SystemExit(f"{info_path}: a proxy of category {info.get('category')!r}, asked for "
                             f"{made_from['category']!r}: use another --out")
        return
    diff = [f"{k} {have.get(k)!r} (asked {v!r})" for k, v in made_from.items() if have.get(k) != v]
    if diff:
        raise SystemExit(f"{info_path}: the proxy was made with other settings: {'; '.join(diff)}: use another --out")


def build_proxy(data: str, dtd: str, out: str, holdout: float, val_classes: int, shots: int, split_seed: int,
                seed: int, size) -> dict:
    """Write the proxy category, the training and validation texture folders; returns their description. `size`:
    an int or [h, w]. An existing proxy in `out` is reused if it was made from the same data and settings."""
    from prnet.datasets import TextureSource, load_mask, load_rgb, scan_split, select_few_shot
    from prnet.datasets.mvtec import as_hw
    from prnet.datasets.synthesis import extended_anomaly, perlin_anomaly
    from prnet.utils import numpy_rng

    data = os.path.abspath(data.rstrip("/"))
    root, category = os.path.split(data)
    hw = as_hw(size)
    proxy_root = os.path.join(os.path.abspath(out), "proxy")
    cat = os.path.join(proxy_root, category)
    info_path = os.path.join(proxy_root, "proxy.json")
    made_from = {"data": data, "category": category, "dtd": os.path.abspath(dtd), "size": list(hw),
                 "holdout": holdout, "val_texture_classes": val_classes, "shots": shots, "split_seed": split_seed,
                 "seed": seed}
    if os.path.exists(info_path):
        info = json.load(open(info_path))
        check_proxy(info, made_from, info_path)
        log.info("reusing the proxy category in %s", proxy_root)
        return {**info, "root": proxy_root, "dtd_fit": os.path.join(proxy_root, "dtd_fit")}
    if os.path.exists(cat):
        raise SystemExit(f"{cat} exists but has no proxy.json (an interrupted build?): remove it and rerun")
    normals = scan_split(root, category, "train")
    order = numpy_rng(seed, 0x401D).permutation(len(normals))
    n_hold = max(1, int(round(holdout * len(normals))))
    held = sorted(order[:n_hold].tolist())
    fit = sorted(order[n_hold:].tolist())
    for i in fit:
        _link(normals[i].path, os.path.join(cat, "train", "good", os.path.basename(normals[i].path)))
    for i in held:
        _link(normals[i].path, os.path.join(cat, "test", "good", os.path.basename(normals[i].path)))

    base, classes = texture_classes(dtd)
    if not 0 < val_classes < len(classes):
        raise SystemExit(f"--val-texture-classes {val_classes}: {base} has {len(classes)} texture classes "
                         f"(expected 1 .. {len(classes) - 1}, the rest stay for training)")
    perm = numpy_rng(seed, 0x7E87).permutation(len(classes))
    val_tex = sorted(classes[j] for j in perm[:val_classes])
    fit_tex = sorted(c for c in classes if c not in val_tex)
    for c in fit_tex:
        _link(os.path.join(base, c), os.path.join(proxy_root, "dtd_fit", c))
    for c in val_tex:
        _link(os.path.join(base, c), os.path.join(proxy_root, "dtd_val", c))

    real = select_few_shot(scan_split(root, category, "test"), shots, split_seed)
    half = (len(real) + 1) // 2
    train_shots, val_shots = real[:half], real[half:]
    if not val_shots:
        raise SystemExit(f"{data}: need at least 2 defective test images for the proxy, found {len(real)}")
    for s in train_shots:
        stem = os.path.splitext(os.path.basename(s.path))[0]
        _link(s.path, os.path.join(cat, "test", s.defect, os.path.basename(s.path)))
        _link(s.mask_path, os.path.join(cat, "ground_truth", s.defect, stem + "_mask" +
                                        os.path.splitext(s.mask_path)[1]))
    defects = [(load_rgb(s.path, hw), load_mask(s.path if s.mask_path is None else s.mask_path, hw))
               for s in val_shots]
    textures = TextureSource(os.path.join(proxy_root, "dtd_val"))
    for k, i in enumerate(held):
        image = load_rgb(normals[i].path, hw)
        stem = f"{k:04d}"
        img, mask = perlin_anomaly(image, textures, numpy_rng(seed, 0xBE41, k))
        _save_rgb(os.path.join(cat, "test", PERLIN, stem + ".png"), img)
        _save_mask(os.path.join(cat, "ground_truth", PERLIN, stem + "_mask.png"), mask)
        d_img, d_mask = defects[k % len(defects)]
        img, mask = extended_anomaly(image, d_img, d_mask, numpy_rng(seed, 0xE47D, k), match_context=False)
        _save_rgb(os.path.join(cat, "test", EXTENDED, stem + ".png"), img)
        _save_mask(os.path.join(cat, "ground_truth", EXTENDED, stem + "_mask.png"), mask)
    info = {"made_from": made_from, "category": category, "seed": seed, "fit_normals": len(fit),
            "held_out_normals": len(held), "fit_textures": fit_tex, "val_textures": val_tex,
            "train_shots": [s.name for s in train_shots], "val_shots": [s.name for s in val_shots]}
    write_json(info_path, info)
    info = {**info, "root": proxy_root, "dtd_fit": os.path.join(proxy_root, "dtd_fit")}
    log.info("proxy category: %d fit normals, %d held out; textures fit %s / val %s; shots train %s / val %s",
             len(fit), len(held), fit_tex, val_tex, info["train_shots"], info["val_shots"])
    return info


def band_mask(hw: tuple[int, int], rng: np.random.Generator, area: tuple[float, float] = (0.1, 0.4),
              max_angle: float = 15.0) -> np.ndarray:
    """float32 {0,1} H×W: the pixels above (or below) a line at U(-max_angle°, max_angle°) from horizontal placed
    so that a fraction a ~ U(area) of the image is inside (never empty)."""
    h, w = hw
    a = float(rng.uniform(*area))
    slope = np.tan(np.deg2rad(rng.uniform(-max_angle, max_angle)))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    signed = yy - slope * (xx - w / 2.0)  # constant along the line
    if rng.random() < 0.5:
        signed = -signed  # the band at the bottom
    mask = signed <= np.quantile(signed, a)
    return mask.astype(np.float32)


def _write_subset(info: dict, name: str, make, min_held: int = 1) -> bool:
    """Write test/<name> and its masks into the proxy unless it exists: image k from make(k, held-out file names)
    -> (RGB float image, {0,1} mask), both under .tmp folders renamed at the end (the masks first: a test folder
    implies its masks). Returns whether it wrote the subset."""
    cat = os.path.join(info["root"], info["category"])
    if os.path.isdir(os.path.join(cat, "test", name)):
        return False
    good = os.path.join(cat, "test", "good")
    held = sorted(os.listdir(good))  # k = 0.. as build_proxy numbers the held-out images
    if len(held) < min_held:
        raise SystemExit(f"{good}: {name} needs at least {min_held} held-out normal images")
    tmp = os.path.join(cat, "test", name + ".tmp"), os.path.join(cat, "ground_truth", name + ".tmp")
    for k in range(len(held)):
        img, mask = make(k, held)
        _save_rgb(os.path.join(tmp[0], f"{k:04d}.png"), img)
        _save_mask(os.path.join(tmp[1], f"{k:04d}_mask.png"), mask)
    os.replace(tmp[1], os.path.join(cat, "ground_truth", name))
    os.replace(tmp[0], os.path.join(cat, "test", name))
    log.info("proxy: %d images in %s", len(held), name)
    return True


def add_swap_subset(info: dict, seed: int, size) -> None:
    """Write test/swap_unseen_shapes into the proxy if it is missing (see the module docstring)."""
    from prnet.datasets import load_rgb
    from prnet.datasets.mvtec import as_hw
    from prnet.datasets.synthesis import blend
    from prnet.utils import numpy_rng

    good = os.path.join(info["root"], info["category"], "test", "good")
    hw = as_hw(size)

    def make(k: int, held: list[str]):
        rng = numpy_rng(seed, 0x5A4B, k)
        j = int(rng.integers(0, len(held) - 1))
        j += j >= k  # another held-out image
        image, other = load_rgb(os.path.join(good, held[k]), hw), load_rgb(os.path.join(good, held[j]), hw)
        mask = band_mask(hw, rng)
        return blend(image, other, mask, 1.0 - float(rng.uniform(0.0, 0.8))), mask

    _write_subset(info, SWAP, make, min_held=2)  # a region from another held-out image


def validation_shots(info: dict, data: str) -> list:
    """The proxy's validation few-shot anomalies (info["val_shots"], in order) as samples of `data`'s test split,
    the real category folder the proxy was made from."""
    from prnet.datasets import scan_split

    root, category = os.path.split(os.path.abspath(data.rstrip("/")))
    found = {s.name: s for s in scan_split(root, category, "test")}
    missing = [n for n in info["val_shots"] if n not in found]
    if missing:
        raise SystemExit(f"{data}: the proxy's validation anomalies {missing} are not in its test split")
    return [found[n] for n in info["val_shots"]]


def _write_shot_subset(info: dict, data: str, name: str, size, paste) -> None:
    """Write test/<name> into the proxy unless it exists: held-out image k gets paste(normal image, defect image,
    defect mask, k) with the validation few-shot anomaly k mod their number, read at the proxy's size from `data`,
    the real category folder the proxy was made from."""
    from prnet.datasets import load_mask, load_rgb
    from prnet.datasets.mvtec import as_hw

    if os.path.isdir(os.path.join(info["root"], info["category"], "test", name)):
        return
    good = os.path.join(info["root"], info["category"], "test", "good")
    hw = as_hw(size)
    shots = [(load_rgb(v.path, hw), load_mask(v.path if v.mask_path is None else v.mask_path, hw))
             for v in validation_shots(info, data)]

    def make(k: int, held: list[str]):
        d_img, d_mask = shots[k % len(shots)]
        return paste(load_rgb(os.path.join(good, held[k]), hw), d_img, d_mask, k)

    _write_subset(info, name, make)


def add_in_context_subset(info: dict, data: str, seed: int, size) -> None:
    """Write test/extended_in_context into the proxy if it is missing (see the module docstring); `data` is the
    real category folder the proxy was made from (the validation few-shot anomalies are read from it)."""
    from prnet.datasets.synthesis import extended_anomaly
    from prnet.utils import numpy_rng

    _write_shot_subset(info, data, IN_CONTEXT, size, lambda normal, d_img, d_mask, k: extended_anomaly(
        normal, d_img, d_mask, numpy_rng(seed, 0xE47D, k), match_context=True))  # build_proxy's draws for image k


TINY_REAL_AREA = (0.00008, 0.0006)  # tiny_real_pastes: the shrunk defect's share of the image, drawn uniformly


def shrunk_paste(normal: np.ndarray, defect_image: np.ndarray, defect_mask: np.ndarray, rng: np.random.Generator,
                 area: tuple[float, float] = TINY_REAL_AREA) -> tuple[np.ndarray, np.ndarray]:
    """The defect of (defect_image, defect_mask) shrunk (never enlarged) with a ring of its surroundings so that it
    covers about a fraction a ~ U(area) of the image, shifted to the level of the new surroundings
    (context_offset over a 2-pixel ring) and pasted into `normal` at a random place. Returns (image, non-empty
    float32 {0,1} mask), both of normal's size; the pixels outside the mask are normal's."""
    from prnet.datasets.synthesis import _box, context_offset

    h, w = normal.shape[:2]
    m = defect_mask > 0
    if not m.any():
        raise ValueError("shrunk_paste: the defect's mask is empty")
    f = min(1.0, float(np.sqrt(rng.uniform(*area) * h * w / m.sum())))
    y0, y1, x0, x1 = _box(m, int(np.ceil(3.0 / f)))  # 3 pixels of surroundings after shrinking
    size = (max(1, min(w, int(round((x1 - x0) * f)))), max(1, min(h, int(round((y1 - y0) * f)))))  # (w, h)
    crop = cv2.resize(np.ascontiguousarray(defect_image[y0:y1, x0:x1], np.float32), size, interpolation=cv2.INTER_AREA)
    soft = cv2.resize(m[y0:y1, x0:x1].astype(np.float32), size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0])
    small = soft >= 0.5
    if not small.any():
        small[np.unravel_index(int(np.argmax(soft)), soft.shape)] = True
    sh, sw = small.shape
    y, x = int(rng.integers(0, h - sh + 1)), int(rng.integers(0, w - sw + 1))
    out = np.array(normal, dtype=np.float32)
    view = out[y:y + sh, x:x + sw]
    view[small] = np.clip(crop + context_offset(view, crop, small, width=2), 0.0, 1.0)[small]
    mask = np.zeros((h, w), np.float32)
    mask[y:y + sh, x:x + sw] = small
    return out, mask


def add_tiny_real_subset(info: dict, data: str, seed: int, size) -> None:
    """Write test/tiny_real_pastes into the proxy if it is missing (see the module docstring); `data` is the real
    category folder the proxy was made from (the validation few-shot anomalies are read from it)."""
    from prnet.utils import numpy_rng

    _write_shot_subset(info, data, TINY_REAL, size, lambda normal, d_img, d_mask, k: shrunk_paste(
        normal, d_img, d_mask, numpy_rng(seed, 0x7E11, k)))


FAINT_OPACITY = (0.25, 0.5)  # faint_real_pastes: the share of the paste's difference from the normal image kept


def add_faint_real_subset(info: dict, data: str, seed: int, size) -> None:
    """Write test/faint_real_pastes into the proxy if it is missing (see the module docstring): tiny_real_pastes'
    pastes (the same draws: place, size, defect) of which only a share b ~ U(FAINT_OPACITY) of the difference from
    the normal image is kept."""
    from prnet.utils import numpy_rng

    def paste(normal, d_img, d_mask, k):
        image, mask = shrunk_paste(normal, d_img, d_mask, numpy_rng(seed, 0x7E11, k))
        b = float(numpy_rng(seed, 0xFA17, k).uniform(*FAINT_OPACITY))
        return normal + b * (image - normal), mask

    _write_shot_subset(info, data, FAINT_REAL, size, paste)


def spots_mask(hw: tuple[int, int], rng: np.random.Generator, area: tuple[float, float] = (0.0005, 0.005),
               max_spots: int = 3) -> np.ndarray:
    """float32 {0,1} H×W: 1–max_spots filled ellipses (axis ratio 1–3, any angle) that cover about a fraction
    a ~ U(area) of the image together (at least one pixel each)."""
    h, w = hw
    n = int(rng.integers(1, max_spots + 1))
    share = float(rng.uniform(*area)) * h * w / n  # pixels per spot
    mask = np.zeros((h, w), np.uint8)
    for _ in range(n):
        ratio = float(rng.uniform(1.0, 3.0))
        b = max(0.5, float(np.sqrt(share / (np.pi * ratio))))  # semi-axes b and ratio·b: area π·ratio·b²
        a = ratio * b
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        cv2.ellipse(mask, (cx, cy), (max(1, int(round(a))), max(1, int(round(b)))), float(rng.uniform(0, 180)),
                    0, 360, 1, thickness=-1)
    return mask.astype(np.float32)


# the spot subsets: (share of the image the spots cover together, most spots, the draws' stream tag)
SPOTS = {SMALL: ((0.0005, 0.005), 3, 0x5B07), TINY: ((0.00003, 0.0003), 2, 0x71A7)}


def add_spots_subset(info: dict, seed: int, size, name: str = SMALL) -> None:
    """Write test/<name> (SMALL or TINY) into the proxy if it is missing (see the module docstring)."""
    from prnet.datasets import TextureSource, load_rgb
    from prnet.datasets.mvtec import as_hw
    from prnet.datasets.synthesis import blend
    from prnet.utils import numpy_rng

    area, max_spots, tag = SPOTS[name]
    good = os.path.join(info["root"], info["category"], "test", "good")
    hw = as_hw(size)
    textures = TextureSource(os.path.join(info["root"], "dtd_val"))

    def make(k: int, held: list[str]):
        rng = numpy_rng(seed, tag, k)
        mask = spots_mask(hw, rng, area, max_spots)
        image = load_rgb(os.path.join(good, held[k]), hw)
        return blend(image, textures.sample(rng, hw), mask, float(rng.uniform(0.5, 1.0))), mask

    _write_subset(info, name, make)


def add_real_subset(info: dict, data: str) -> None:
    """Link the validation few-shot anomalies (their images and masks, as found in `data`'s test split) into
    test/real_unseen_defects if it is missing (see the module docstring). Files are named <k>_<defect>_<stem> so
    that images of different defect types with the same file name stay apart."""
    cat = os.path.join(info["root"], info["category"])
    if os.path.isdir(os.path.join(cat, "test", REAL)):
        return
    tmp = os.path.join(cat, "test", REAL + ".tmp"), os.path.join(cat, "ground_truth", REAL + ".tmp")
    for k, s in enumerate(validation_shots(info, data)):
        if s.mask_path is None:
            raise SystemExit(f"{s.path}: a validation anomaly without a mask; {REAL} needs one per image")
        stem = f"{k:02d}_{s.defect}_{os.path.splitext(os.path.basename(s.path))[0]}"
        _link(s.path, os.path.join(tmp[0], stem + os.path.splitext(s.path)[1]))
        _link(s.mask_path, os.path.join(tmp[1], stem + "_mask" + os.path.splitext(s.mask_path)[1]))
    os.replace(tmp[1], os.path.join(cat, "ground_truth", REAL))
    os.replace(tmp[0], os.path.join(cat, "test", REAL))
    log.info("proxy: %d images in %s", len(info["val_shots"]), REAL)


def run_name(name: str, seed: int) -> str:
    """The folder of a variant's run under <out>/runs: the name for seed 0, <name>-seed<S> for other seeds."""
    return name if seed == 0 else f"{name}-seed{seed}"


def overrides(args, info: dict, name: str, extra: list[str]) -> list[str]:
    """A run's config overrides: the proxy, the common settings, --set (args.set), then the variant's own."""
    run = os.path.join(os.path.abspath(args.out), "runs", run_name(name, args.seed))
    return [
        f"data.root={value(info['root'])}", f"data.classes={value([info['category']])}",
        f"data.image_size={value(args.size)}", f"data.dtd_root={value(info['dtd_fit'])}",
        f"data.num_anomalies={len(info['train_shots'])}", f"data.few_shot={value(info['train_shots'])}",
        f"output_dir={value(run)}", f"prototypes.dir={value(os.path.join(run, 'prototypes'))}",
        f"model.backbone={args.backbone}", f"model.backbone_weights={args.weights}",
        f"model.head_widths={args.widths}", f"train.epochs={args.epochs}", f"train.batch_size={args.batch}",
        f"train.lr={args.lr}", f"train.workers={args.workers}", f"train.device={args.device}", f"seed={args.seed}",
        "train.overwrite=true", "eval.score_test=false", *getattr(args, "set", []), *extra,
    ]


def extended_sources(names: list[str], val_shots: list[str]) -> np.ndarray:
    """The defect type each extended validation image was cut from ('' for other images): image k (file
    <k:04d>.png) took val_shots[k % len(val_shots)], as build_proxy made it."""
    out = []
    for n in names:
        d, f = n.split("/", 1)
        out.append(val_shots[int(os.path.splitext(f)[0]) % len(val_shots)].split("/")[0] if d == EXTENDED else "")
    return np.array(out)


def score_table(maps: np.ndarray, labels: np.ndarray, masks: np.ndarray, defects: np.ndarray,
                device: torch.device, sources: np.ndarray | None = None) -> dict:
    """Image AUROC per (subset, σ, top-k) and the five metrics per subset at each σ (top-100 mean image score);
    with `sources` (extended_sources), also the five metrics at σ = 0 of the extended images cut from each defect
    type, next to the held-out normals ('extended:<type>')."""
    from prnet.engine.evaluator import gaussian_smooth, image_scores
    from prnet.metrics import compute_metrics, image_auroc

    out: dict = {"image_auroc": {}, "metrics": {}}
    normal = defects == "good"
    # "all": normals, Perlin and extended only (as score_fusion's), also where a 0-shot run keeps test/<defect>
    subsets = {"all": np.isin(defects, ("good", PERLIN, EXTENDED)), PERLIN: normal | (defects == PERLIN),
               EXTENDED: normal | (defects == EXTENDED)}
    for sub in (*APART, REAL):
        if (defects == sub).any():
            subsets[sub] = normal | (defects == sub)
    for sigma in SIGMAS:
        sm = torch.cat([gaussian_smooth(torch.from_numpy(maps[i:i + 64])[:, None].to(device), sigma).cpu()
                        for i in range(0, len(maps), 64)])
        for k in TOPKS:
            s = image_scores(sm, k).numpy()
            for sub, sel in subsets.items():
                out["image_auroc"][f"{sub}|sigma={sigma:g}|top{k}"] = float(image_auroc(s[sel], labels[sel]))
        s100 = image_scores(sm, 100).numpy()
        for sub, sel in subsets.items():
            m = compute_metrics(s100[sel], labels[sel], sm[:, 0].numpy()[sel], masks[sel])
            out["metrics"][f"{sub}|sigma={sigma:g}"] = {k: float(v) for k, v in m.items()}
        if sources is not None and sigma == 0.0:
            for src in sorted(set(sources) - {""}):
                sel = normal | (sources == src)
                m = compute_metrics(s100[sel], labels[sel], sm[:, 0].numpy()[sel], masks[sel])
                out["metrics"][f"{EXTENDED}:{src}|sigma=0"] = {k: float(v) for k, v in m.items()}
    return out


def run_variant(args, info: dict, name: str, extra: list[str], previous: dict | None = None) -> dict:
    """Train variant `name` at seed args.seed (or, with args.rescore, take its trained model) and score it."""
    from prnet.config import load_config
    from prnet.datasets import build_test_dataset
    from prnet.engine.checkpoint import model_from_checkpoint
    from prnet.engine.evaluator import run_inference
    from prnet.provenance import provenance
    from prnet.utils import resolve_device

    ov = overrides(args, info, name, extra)
    cfg = load_config(None, ov)
    ckpt = os.path.join(cfg.output_dir, info["category"], "last.pt")
    if args.rescore:
        if not os.path.exists(ckpt):
            raise SystemExit(f"--rescore: variant {name} (seed {args.seed}) has no trained model at {ckpt}")
        minutes = float((previous or {}).get("train_minutes", float("nan")))
        extra = list((previous or {}).get("overrides", extra))
    else:
        t0 = time.time()
        if train_script().main(ov) != 0:
            raise SystemExit(f"variant {name} (seed {args.seed}): training failed")
        minutes = (time.time() - t0) / 60.0
    device = resolve_device(args.device)
    model, cfg, _ = model_from_checkpoint(ckpt, device)
    cfg.eval.sigma = 0.0  # raw maps: the σ / top-k rules are applied below
    cfg.eval.second_read = "none"  # those rules score the maps; the second read adds only to the released score
    test = build_test_dataset(cfg, info["category"])
    raw = run_inference(model, test, cfg, device, progress=False)
    defects = np.array([s.defect for s in test.samples])
    sources = extended_sources([s.name for s in test.samples], info["val_shots"])
    table = score_table(raw["maps"], raw["labels"], raw["masks"], defects, device, sources)
    trained = os.path.join(cfg.output_dir, info["category"], "results.json")
    trained = json.load(open(trained, encoding="utf-8")) if os.path.exists(trained) else {}
    return {"variant": name, "seed": args.seed, "overrides": extra, "common_overrides": list(getattr(args, "set", [])),
            "train_args": train_args(args), "train_minutes": minutes, **table,
            # the code and machine of the training (None for runs made before results.json held it) and the scoring
            "train_provenance": trained.get("provenance"), "provenance": provenance(device)}


def train_args(args) -> dict:
    """The command-line settings a variant's training depends on besides its overrides (a row keeps them)."""
    return {k: str(getattr(args, k)) for k in ("size", "backbone", "weights", "widths", "epochs", "batch", "lr")}


def other_settings(rows: list[dict], name: str, seed: int, extra: list[str], args) -> str | None:
    """Why variant `name` may not run at `seed` with these settings next to its rows at other seeds (the summary
    averages a variant's seeds: one variant, one set of settings), or None. Rows made before they kept train_args
    are compared on their overrides."""
    mine = {"overrides": list(extra), "common_overrides": list(getattr(args, "set", [])), **train_args(args)}
    for r in rows:
        if r["variant"] != name or r.get("seed", 0) == seed:
            continue
        theirs = {"overrides": r["overrides"], "common_overrides": r.get("common_overrides", []),
                  **{k: r.get("train_args", {}).get(k, v) for k, v in train_args(args).items()}}
        diff = [f"{k}: {theirs[k]} -> {mine[k]}" for k in mine if theirs[k] != mine[k]]
        if diff:
            return (f"variant {name} was run at seed {r.get('seed', 0)} with other settings ({'; '.join(diff)}); its "
                    f"seeds are averaged together, so give this run another variant name")
    return None


def summary_lines(row: dict) -> list[str]:
    lines = [f"== {row['variant']}, seed {row.get('seed', 0)} ({' '.join(row['overrides']) or 'as given'}), "
             f"{row['train_minutes']:.1f} min"]
    lines.append("  image AUROC (all / perlin / extended) by sigma, top-k:")
    for sigma in SIGMAS:
        cells = []
        for k in TOPKS:
            vals = [row["image_auroc"][f"{sub}|sigma={sigma:g}|top{k}"] for sub in ("all", PERLIN, EXTENDED)]
            cells.append(f"top{k}: " + "/".join(f"{v:.3f}" for v in vals))
        lines.append(f"    sigma={sigma:g}  " + "  ".join(cells))
    for sigma in SIGMAS:
        m = row["metrics"][f"all|sigma={sigma:g}"]
        lines.append(f"  all, sigma={sigma:g}: pixel AUROC {m['pixel_auroc']:.3f}  pixel AP {m['pixel_ap']:.3f}  "
                     f"AUPRO {m['aupro']:.3f}")
    for sub in (*APART, REAL):
        if f"{sub}|sigma=0" in row["metrics"]:
            m = row["metrics"][f"{sub}|sigma=0"]
            lines.append(f"  {sub}, sigma=0: image AUROC {m['image_auroc']:.3f}  pixel AUROC {m['pixel_auroc']:.3f}  "
                         f"pixel AP {m['pixel_ap']:.3f}  AUPRO {m['aupro']:.3f}")
    per_source = sorted(k for k in row["metrics"] if k.startswith(EXTENDED + ":"))
    if per_source:
        lines.append("  extended, by the defect type cut from (sigma=0): image AUROC / pixel AUROC / AUPRO")
        for k in per_source:
            m = row["metrics"][k]
            src = k.split("|")[0].split(":", 1)[1]
            lines.append(f"    {src:<10} {m['image_auroc']:.3f} / {m['pixel_auroc']:.3f} / {m['aupro']:.3f}")
    return lines


def seed_summary(rows: list[dict]) -> dict:
    """variant -> {seeds, metrics: {"<subset>|sigma=<s>": {metric: {mean, std, min, max}}}} over the variant's rows
    (std: sample standard deviation, ddof 1; 0 for one seed)."""
    out: dict = {}
    for name in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == name]
        metrics = {}
        for key in rs[0]["metrics"]:
            if all(key in r["metrics"] for r in rs):
                metrics[key] = {m: spread([r["metrics"][key][m] for r in rs]) for m in rs[0]["metrics"][key]}
        out[name] = {"seeds": [r.get("seed", 0) for r in rs], "metrics": metrics}
    return out


def seed_summary_lines(summary: dict) -> list[str]:
    """Per variant, σ = 0: image AUROC, pixel AUROC and AUPRO per subset, mean ± std over the seeds."""
    lines = ["== mean ± sample std over the seeds, sigma=0, top-100 image score: image AUROC / pixel AUROC / AUPRO"]
    for name, e in summary.items():
        lines.append(f"  {name} (seeds {','.join(map(str, e['seeds']))}):")
        for sub in ("all", PERLIN, EXTENDED, *APART, REAL):
            m = e["metrics"].get(f"{sub}|sigma=0")
            if m:
                cells = " / ".join(f"{m[k]['mean']:.3f} ± {m[k]['std']:.3f}"
                                   for k in ("image_auroc", "pixel_auroc", "aupro"))
                lines.append(f"    {sub:<24} {cells}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="category folder in the MVTec AD layout (or a root: --category)")
    p.add_argument("--category", help="the category under --data when --data is a root")
    p.add_argument("--dtd", required=True, help="DTD folder (class folders, or images/<class>)")
    p.add_argument("--out", required=True)
    p.add_argument("--variant", nargs="+", action="append", metavar=("NAME", "KEY=VALUE"),
                   help="a run: its name, then config overrides (repeat the flag for several runs)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides for every variant (repeatable)")
    p.add_argument("--holdout", type=float, default=0.15)
    p.add_argument("--val-texture-classes", type=int, default=3)
    p.add_argument("--shots", type=int, default=10, help="the real benchmark's few-shot count (split in halves)")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--proxy-seed", type=int, default=0, help="seed of the proxy's hold-out and synthetic draws")
    p.add_argument("--size", type=parse_size, default=256, help="256 or H,W (multiples of 32)")
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--weights", default="package")
    p.add_argument("--widths", default="[32, 64, 128]")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seeds", "--seed", dest="seeds", type=parse_seeds, default=[0],
                   help="training seeds, e.g. 0,1 (every variant runs once per seed)")
    p.add_argument("--rescore", action="store_true",
                   help="score the variants' trained models again (current scoring), without training")
    args = p.parse_args(argv)

    from prnet.utils import setup_logging

    setup_logging()
    data = os.path.join(args.data, args.category) if args.category else args.data
    os.makedirs(args.out, exist_ok=True)
    info = build_proxy(data, args.dtd, args.out, args.holdout, args.val_texture_classes, args.shots,
                       args.split_seed, args.proxy_seed, args.size)
    add_swap_subset(info, int(info.get("seed", args.proxy_seed)), args.size)  # the proxy's own seed
    add_in_context_subset(info, data, int(info.get("seed", args.proxy_seed)), args.size)
    for name in SPOTS:
        add_spots_subset(info, int(info.get("seed", args.proxy_seed)), args.size, name)
    add_tiny_real_subset(info, data, int(info.get("seed", args.proxy_seed)), args.size)
    add_faint_real_subset(info, data, int(info.get("seed", args.proxy_seed)), args.size)
    add_real_subset(info, data)
    result_path = os.path.join(args.out, "proxy_validation.json")
    results = json.load(open(result_path)) if os.path.exists(result_path) else {"proxy": info, "rows": []}
    done = []
    for seed in args.seeds:
        args.seed = seed
        for spec in args.variant or [["base"]]:
            name, extra = spec[0], spec[1:]
            same = lambda r: r["variant"] == name and r.get("seed", 0) == seed  # noqa: E731
            previous = next((r for r in results["rows"] if same(r)), None)
            refused = None if args.rescore else other_settings(results["rows"], name, seed, extra, args)
            if refused:
                raise SystemExit(f"error: {refused}")
            row = run_variant(args, info, name, extra, previous)
            results["rows"] = [r for r in results["rows"] if not same(r)] + [row]
            done.append(row)
            results["summary"] = seed_summary(results["rows"])
            write_json(result_path, results)  # after every run: nothing lost if a later one fails
            print("\n".join(summary_lines(row)), flush=True)
    print("\n".join(seed_summary_lines(seed_summary(done))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
