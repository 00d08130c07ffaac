"""Does a data set's image AUROC need the defects? A check for shortcuts in a test split, without training.

    python benchmarks/shortcut_check.py --data ../shared/data --category bsdata [--size 256] [--dilate 16,48] \
        [--out shortcut_bsdata.json] [--write-control DIR]

The PatchCore-style baseline (benchmarks/patchcore.py, the settings of real_data.py's baseline) is fitted on the
normal training images and reads every test image. Its image AUROC is then computed three ways:

- as the baseline scores: the anomaly map's maximum;
- defects hidden: the map's maximum over the pixels outside the defect, i.e. outside the ground-truth mask
  dilated by D pixels at the input size (the baseline's stride-16 features are averaged over 3×3 cells and its map
  is smoothed with σ 4, so a defect's own signal reaches about 40 pixels beyond it: the default 48 hides it,
  16 shows what a smaller margin lets through); normal images are scored as they are;
- defect-blind: the map's mean over the same pixels (over the whole map for normal images): a global statistic
  of how far the image's surface is from the normal training images.

and the same three on a control (below); the control as scored is the baseline's image AUROC when the defective and
normal images differ only by the defects.

A defect's signal can still reach beyond the dilated mask (the features' receptive fields, the smoothing), more so
for large defects. So the same figures are also computed on a control: each defective image's masked pixels pasted
at the same place into a normal test image (seeded draw), so that everything outside the mask is normal surface.
If the defect-blind figure of the real defective images stays far above 0.5 and above the control's, the
defective test images differ from the normal ones in more than their defects (lighting, dirt, wear, the camera,
when they were taken, or normal test images that nearly repeat training images), and an image score can gain
there without finding a single defect: compare detectors on such a data set by their pixel metrics, or by image
AUROC only next to this check. Defective images without a mask are left out of the last two. Each figure is given
for all defective images and per defect type, each against every normal test image; the figures are the
baseline's, and another detector's own dependence on the defects can differ (docs/experiments.md reads PRNet's on
BSData). `--write-control DIR` also writes the control as a data set of its own at the images' own size
(`write_control`), on which any detector can be evaluated where only the defects differ
(`real_data.py --control` writes and scores it for every run of a benchmark).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import maximum_filter
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader
from tqdm import tqdm

from patchcore import PatchCore
from prnet.datasets.mvtec import MVTEC, load_mask, load_rgb, scan_split
from prnet.utils import atomic_write, numpy_rng, resolve_device, setup_logging
from real_data import parse_size

log = logging.getLogger(__name__)

SHORTCUT_AUROC = 0.75  # a defect-blind image AUROC at or above this (and above the control's) is a shortcut
SHORTCUT_MARGIN = 0.05  # ... by at least this much


def hidden_topk(maps: np.ndarray, hide: np.ndarray, k: int) -> np.ndarray:
    """The mean of each map's k highest pixels among those not in `hide` (N×H×W bool); k=1: the maximum."""
    flat = np.where(hide, -np.inf, maps).reshape(maps.shape[0], -1)
    return np.sort(flat, axis=1)[:, -k:].mean(axis=1)


def outside_mean(maps: np.ndarray, hide: np.ndarray) -> np.ndarray:
    """The mean of each map over the pixels not in `hide`."""
    keep = (~hide).reshape(maps.shape[0], -1)
    return (maps.reshape(maps.shape[0], -1) * keep).sum(1) / keep.sum(1)


def dilated(masks: np.ndarray, pixels: int) -> np.ndarray:
    """Each N×H×W bool mask grown by `pixels` in every direction (a square neighbourhood); 0: the mask itself."""
    return np.stack([maximum_filter(m, size=2 * pixels + 1) if pixels else m for m in masks])


def aurocs(scores: np.ndarray, labels: np.ndarray, defects: np.ndarray, keep: np.ndarray) -> dict:
    """Image AUROC of `scores` for every kept defective image and per defect type, against every normal image."""
    normal = labels == 0
    groups = {"all": (labels == 1) & keep}
    for d in sorted(set(defects[labels == 1])):
        groups[str(d)] = (defects == d) & keep
    return {g: float(roc_auc_score(labels[normal | sel], scores[normal | sel])) for g, sel in groups.items()
            if sel.any()}


def check(data: str, category: str, size, dilations: Sequence[int], seed: int = 0, batch: int = 16,
          device: str = "cpu", weights: str = "package") -> dict:
    """Fit the baseline on <data>/<category>/train and return the three kinds of image AUROC (see the module
    docstring) for each dilation in `dilations`."""
    train = MVTEC(data, category, "train", size)
    test = MVTEC(data, category, "test", size)
    kinds = {s.label for s in test.samples}
    if kinds != {0, 1}:
        raise ValueError(f"{data}/{category}/test: expected normal (good/) and defective test images, found only "
                         f"{'normal' if kinds == {0} else 'defective'} ones")
    model = PatchCore(weights=weights, sigma=4.0, seed=seed, device=resolve_device(device), batch_size=batch)
    model.fit(DataLoader(train, batch_size=batch, shuffle=False, num_workers=0))
    maps, scores = [], []
    for b in tqdm(DataLoader(test, batch_size=batch, shuffle=False, num_workers=0), desc="test", unit="batch"):
        m, s = model.predict(b)
        maps.append(m)
        scores.append(s)
    maps_a, scores_a = np.concatenate(maps), np.concatenate(scores)
    labels = np.array([s.label for s in test.samples])
    defects = np.array([s.defect for s in test.samples])
    masked = np.array([s.label == 0 or s.mask_path is not None for s in test.samples])
    masks = np.stack([test.mask(i) for i in range(len(test))]) > 0.5
    control = pasted_control(model, test, labels, masked, seed, batch)
    result = {"category": category, "image_size": list(test.hw), "seed": seed, "normal": int((labels == 0).sum()),
              "defective": int(labels.sum()), "defective_without_mask": int((~masked).sum()),
              "shortcut_auroc": SHORTCUT_AUROC, "baseline": aurocs(scores_a, labels, defects, np.ones_like(masked)),
              "hidden": {}, "blind": {}}
    # the control: the pasted images in the defective images' places, the normal images as they are
    c_maps = np.where((labels == 1)[:, None, None] & masked[:, None, None], control, maps_a)
    result["control"] = aurocs(c_maps.reshape(len(c_maps), -1).max(1), labels, defects, masked)
    result["control_hidden"], result["control_blind"] = {}, {}
    for d in dilations:
        hide = dilated(masks, d)
        result["hidden"][str(d)] = aurocs(hidden_topk(maps_a, hide, 1), labels, defects, masked)
        result["blind"][str(d)] = aurocs(outside_mean(maps_a, hide), labels, defects, masked)
        result["control_hidden"][str(d)] = aurocs(hidden_topk(c_maps, hide, 1), labels, defects, masked)
        result["control_blind"][str(d)] = aurocs(outside_mean(c_maps, hide), labels, defects, masked)
    result["shortcut"] = any(row["all"] >= SHORTCUT_AUROC and row["all"] >= result["control_blind"][d]["all"]
                             + SHORTCUT_MARGIN for d, row in result["blind"].items())
    return result


def pasted_control(model: PatchCore, test: MVTEC, labels: np.ndarray, masked: np.ndarray, seed: int,
                   batch: int) -> np.ndarray:
    """The baseline's maps of the control images (N×H×W, in the test order; only the rows of defective images with a
    mask are filled): each such image's pixels inside its mask pasted at the same place into a normal test image
    drawn with numpy_rng(seed, i)."""
    normal = np.flatnonzero(labels == 0)
    todo = [int(i) for i in np.flatnonzero((labels == 1) & masked)]
    out = np.zeros((len(test), *test.hw), np.float32)
    for start in tqdm(range(0, len(todo), batch), desc="control", unit="batch"):
        rows = todo[start:start + batch]
        pasted = []
        for i in rows:
            item, host = test[i], test[int(normal[numpy_rng(seed, i).integers(normal.size)])]
            m = (item["mask"] > 0.5).to(item["image"].dtype)
            pasted.append(host["image"] * (1 - m) + item["image"] * m)
        out[rows] = model.predict(torch.stack(pasted))[0]
    return out


def write_control(data: str, category: str, out: str, seed: int = 0) -> str:
    """Write the control as a data set of its own, at the images' own size, so that any detector can be evaluated on
    it: <out>/<category>/ with train/ and test/good/ linked to the originals, and each defective test image that has a
    mask replaced by a normal test image (drawn with numpy_rng(seed, i), resized to the defective image's size if
    need be) holding the defective image's pixels inside the mask: test/<type>/<stem>.png (lossless, so the normal
    surface is the decoded original's, pixel for pixel) with its mask copied to ground_truth/<type>/. Returns the
    category folder; an existing one is an error."""
    src, dst = os.path.join(data, category), os.path.join(out, category)
    if os.path.exists(dst):
        raise FileExistsError(f"{dst} already exists; remove it to write the control again")
    samples = scan_split(data, category, "test")
    normal = [s for s in samples if s.label == 0]
    if not normal:
        raise ValueError(f"{src}/test: no normal test image to paste the defects into")
    os.makedirs(os.path.join(dst, "test"))
    os.symlink(os.path.abspath(os.path.join(src, "train")), os.path.join(dst, "train"))
    os.symlink(os.path.abspath(os.path.join(src, "test", "good")), os.path.join(dst, "test", "good"))
    for i, smp in enumerate(tqdm(samples, desc="control images", unit="image")):
        if smp.label == 0 or smp.mask_path is None:
            continue
        image, mask = load_rgb(smp.path), load_mask(smp.mask_path) > 0.5
        host = load_rgb(normal[int(numpy_rng(seed, i).integers(len(normal)))].path, image.shape[:2])
        host[mask] = image[mask]
        stem = os.path.splitext(os.path.basename(smp.path))[0]
        for d in ("test", "ground_truth"):
            os.makedirs(os.path.join(dst, d, smp.defect), exist_ok=True)
        Image.fromarray(np.round(host * 255).astype(np.uint8)).save(os.path.join(dst, "test", smp.defect,
                                                                            f"{stem}.png"))
        Image.fromarray(mask.astype(np.uint8) * 255).save(os.path.join(dst, "ground_truth", smp.defect,
                                                                       f"{stem}_mask.png"))
    return dst


def report(result: dict) -> str:
    groups = list(result["baseline"])
    h, w = result["image_size"]
    lines = [f"{result['category']} at {h}×{w}: {result['normal']} normal, "
             f"{result['defective']} defective test images ({result['defective_without_mask']} without a mask); "
             "image AUROC of the PatchCore-style baseline",
             "| score | " + " | ".join(groups) + " |", "|:---|" + "---:|" * len(groups)]

    def row(name: str, values: dict) -> str:
        return f"| {name} | " + " | ".join(f"{values[g]:.3f}" if g in values else "" for g in groups) + " |"

    lines.append(row("as scored (the map's maximum)", result["baseline"]))
    for d in result["hidden"]:
        lines.append(row(f"defects hidden, mask dilated by {d} px", result["hidden"][d]))
    for d in result["blind"]:
        lines.append(row(f"defect-blind: the map's mean outside, {d} px", result["blind"][d]))
    lines.append(row("control (defects pasted into normal images), as scored", result["control"]))
    for d in result["control_hidden"]:
        lines.append(row(f"control, defects hidden, {d} px", result["control_hidden"][d]))
    for d in result["control_blind"]:
        lines.append(row(f"control, defect-blind, {d} px", result["control_blind"][d]))
    if result["shortcut"]:
        lines.append(f"SHORTCUT: without looking at the defects the map's mean reaches image AUROC >= "
                     f"{result['shortcut_auroc']}, {SHORTCUT_MARGIN} or more above the control's: the test's defective "
                     "images differ from its normal ones in more than their defects, so image AUROC here rewards more "
                     "than finding them.")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="MVTec-layout root (holds <category>/train, test, ground_truth)")
    p.add_argument("--category", required=True)
    p.add_argument("--size", type=parse_size, default=256, metavar="S or H,W")
    p.add_argument("--dilate", default="16,48", help="mask dilations in pixels at the input size, comma-separated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--weights", default="package", help="backbone weights (patchcore.py's --weights)")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--write-control", metavar="DIR",
                   help="also write the control at the images' own size as DIR/<category> (train/ and normal test "
                        "images linked), for evaluating any detector on it")
    args = p.parse_args(argv)
    setup_logging()
    try:
        dilations = [int(x) for x in args.dilate.split(",") if x.strip()]
    except ValueError:
        p.error(f"--dilate: expected pixel counts such as 16,48, got {args.dilate!r}")
    if any(d < 0 for d in dilations):
        p.error(f"--dilate: expected pixel counts >= 0, got {args.dilate!r}")
    result = check(args.data, args.category, args.size, dilations, args.seed, args.batch, args.device, args.weights)
    print(report(result))
    if args.out:
        atomic_write(args.out, lambda tmp: json.dump(result, open(tmp, "w", encoding="utf-8"), indent=2))
    if args.write_control:
        print("control data set:", write_control(args.data, args.category, args.write_control, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
