"""Speed and exactness of prnet.metrics against plain references on synthetic maps.

    python benchmarks/bench_metrics.py [--n 200] [--size 256] [--repeats 3] [--seed 0] [--json OUT]

Times (best of --repeats) `aupro` and `compute_metrics` next to the straightforward exact versions: AUPRO from
one argsort of all pixels with cumulative sums (ties collapsed to their last index), and sklearn's
roc_auc_score / average_precision_score for the other metrics. Prints a table and the largest difference.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import cv2
import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from prnet.metrics import aupro, compute_metrics
from prnet.utils import atomic_write, numpy_rng


def make_data(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """n float32 maps with blob-shaped defects in about half the images; maps respond to the defects noisily."""
    rng = numpy_rng(seed)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        if rng.random() < 0.5:
            continue
        for _ in range(int(rng.integers(1, 4))):
            centre = tuple(int(c) for c in rng.integers(size // 8, size - size // 8, 2))
            axes = tuple(int(a) for a in rng.integers(2, size // 6, 2))
            cv2.ellipse(masks[i], centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    noise = rng.standard_normal((n, size, size)).astype(np.float32)
    noise = np.stack([cv2.GaussianBlur(x, (0, 0), 3) for x in noise]) * 3
    signal = np.stack([cv2.GaussianBlur(m.astype(np.float32), (0, 0), 4) for m in masks])
    maps = 1 / (1 + np.exp(-(noise + 4 * signal * rng.uniform(0.2, 1.5, (n, 1, 1)) - 2)))
    maps = maps.astype(np.float32)
    labels = masks.reshape(n, -1).max(1).astype(int)
    scores = np.sort(maps.reshape(n, -1), axis=1)[:, -100:].mean(1)
    return scores, labels, maps, masks


def reference_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """The plain exact version: label regions image by image, argsort every pixel, cumulative sums."""
    region_weight = np.zeros(maps.shape, np.float64)
    n_regions = 0
    for i, g in enumerate(masks):
        lab, k = ndimage.label(g, structure=np.ones((3, 3)))
        if k:
            sizes = np.bincount(lab.ravel())
            region_weight[i] = np.where(lab > 0, 1.0 / sizes[lab], 0.0)
        n_regions += k
    scores = maps.ravel()
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    s = scores[order]
    normal = (masks.ravel() == 0)[order]
    fpr = np.cumsum(normal) / normal.sum()
    pro = np.cumsum(region_weight.ravel()[order]) / n_regions
    last = np.r_[s[1:] != s[:-1], True]  # last index of each run of equal scores
    fpr = np.r_[0.0, fpr[last]]
    pro = np.r_[0.0, pro[last]]
    inside = fpr <= fpr_limit
    area = np.trapezoid(pro[inside], fpr[inside])
    j = int(inside.sum())
    if j < fpr.size and fpr[j - 1] < fpr_limit:
        y = np.interp(fpr_limit, fpr[j - 1:j + 1], pro[j - 1:j + 1])
        area += (fpr_limit - fpr[j - 1]) * (pro[j - 1] + y) / 2
    return float(area / fpr_limit)


def reference_metrics(scores, labels, maps, masks) -> dict[str, float]:
    return {
        "image_auroc": roc_auc_score(labels, scores),
        "image_ap": average_precision_score(labels, scores),
        "pixel_auroc": roc_auc_score(masks.ravel(), maps.ravel()),
        "pixel_ap": average_precision_score(masks.ravel(), maps.ravel()),
        "aupro": reference_aupro(maps, masks),
    }


def best_time(fn, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the figures to this JSON file")
    a = p.parse_args()

    scores, labels, maps, masks = make_data(a.n, a.size, a.seed)
    print(f"{a.n} maps of {a.size}x{a.size} ({maps.size / 1e6:.1f} M pixels, {masks.mean():.2%} anomalous, "
          f"{labels.sum()} defective images), best of {a.repeats}")
    t_pro, pro = best_time(lambda: aupro(maps, masks), a.repeats)
    t_pro_ref, pro_ref = best_time(lambda: reference_aupro(maps, masks), a.repeats)
    t_all, res = best_time(lambda: compute_metrics(scores, labels, maps, masks), a.repeats)
    t_all_ref, res_ref = best_time(lambda: reference_metrics(scores, labels, maps, masks), a.repeats)

    diff = {k: abs(res[k] - res_ref[k]) for k in res}
    print(f"{'':34s}{'prnet.metrics':>15s}{'reference':>12s}{'speed-up':>10s}")
    print(f"{'aupro (s)':34s}{t_pro:15.3f}{t_pro_ref:12.3f}{t_pro_ref / t_pro:9.1f}x")
    print(f"{'compute_metrics (s)':34s}{t_all:15.3f}{t_all_ref:12.3f}{t_all_ref / t_all:9.1f}x")
    for k in res:
        print(f"{k:34s}{res[k]:15.9f}{res_ref[k]:12.9f}   |diff| {diff[k]:.1e}")
    print(f"max abs difference: {max(diff.values()):.1e} (aupro alone: {abs(pro - pro_ref):.1e})")
    if a.json:
        out = {"n": a.n, "size": a.size, "repeats": a.repeats, "seed": a.seed,
               "aupro_s": t_pro, "aupro_reference_s": t_pro_ref,
               "compute_metrics_s": t_all, "compute_metrics_reference_s": t_all_ref,
               "metrics": res, "reference": res_ref, "max_abs_diff": max(diff.values())}

        def write(tmp: str) -> None:
            with open(tmp, "w") as f:
                json.dump(out, f, indent=2)
        atomic_write(a.json, write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
