"""Diagnostic (docs/experiments.md, "how faint are BSData's small pits?"): each defect's contrast against its
surroundings, |mean grey level inside the mask - mean over a ring 3-6 pixels around it| (grey levels in [0, 1]),
with the ring's standard deviation, per size bin. For BSData's test pits (read after the decisions), the 10 real
anomalies the 10-shot runs train on (listed in a real_data.py evaluation file) and a proxy's tiny_real_pastes.

    python docs/results/real_data_second_read/diagnostic/contrast.py <bsdata> \
        docs/results/real_data_second_read/runs/bsdata/prnet10-seed0-3a85201e2c/eval-203a751b78.json \
        pv_bsdata_wide/proxy/bsdata          # <bsdata>: the BSData folder (MVTec layout)
"""
import glob
import json
import os
import sys

import cv2
import numpy as np

BINS = [(0, 130), (130, 500), (500, None)]


def contrast(image_path: str, mask_path: str):
    """(area, contrast, ring std) of one defect, or None when the mask or its ring is empty."""
    grey = cv2.imread(image_path, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0
    mask = (cv2.imread(mask_path, cv2.IMREAD_GRAYSCALE) > 0).astype(np.uint8)
    disk = lambda r: cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))  # noqa: E731
    ring = (cv2.dilate(mask, disk(6)) > 0) & ~(cv2.dilate(mask, disk(2)) > 0)
    if not mask.any() or not ring.any():
        return None
    inside = mask > 0
    return int(inside.sum()), abs(float(grey[inside].mean() - grey[ring].mean())), float(grey[ring].std())


def summary(name: str, rows: list) -> None:
    a = np.array(rows, dtype=np.float64)
    print(f"{name}: {len(a)} defects, area median {np.median(a[:, 0]):.0f} px")
    for lo, hi in BINS:
        sel = a[(a[:, 0] >= lo) & (a[:, 0] < (hi or np.inf))]
        if len(sel):
            q25, q50, q75 = np.quantile(sel[:, 1], [0.25, 0.5, 0.75])
            print(f"  {lo}–{hi or ''} px: {len(sel)}, contrast median {q50:.3f} (quartiles {q25:.3f}, {q75:.3f}), "
                  f"ring std median {np.median(sel[:, 2]):.3f}")


def defects_in(root: str, defect: str, names=None) -> list:
    images = sorted(glob.glob(os.path.join(root, "test", defect, "*")))
    rows = []
    for p in images:
        if names is not None and os.path.basename(p) not in names:
            continue
        stem = os.path.splitext(os.path.basename(p))[0]
        r = contrast(p, os.path.join(root, "ground_truth", defect, stem + "_mask.png"))
        if r is not None:
            rows.append(r)
    return rows


def main(data: str, evaluation: str, proxy: str) -> int:
    shots = {n.split("/")[-1] for n in json.load(open(evaluation))["real_anomalies"]}
    summary("test pits (all 167, at 1130x460)", defects_in(data, "pitting"))
    summary("the 10 real anomalies of the 10-shot runs", defects_in(data, "pitting", shots))
    summary("proxy tiny_real_pastes (at 256x640)", defects_in(proxy, "tiny_real_pastes"))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
