"""Diagnostic (docs/experiments.md, "why the second read did not carry over to BSData's test set"): one BSData test
run's image-score parts, image by image, against the pit's mask area. Reads the run's score_fusion.py --per-image
file (first read s_m, top-25 of map0.5; s_knn) and second_read.py's file (s_mw, the second read at 256x640), z-scores
each part on the held-out normal training images as the library does, and prints the image AUROC of each part and
of the one- and two-read scores per pit-size bin (each bin's pits against every normal test image), then the
highest-scored normal test images and how many pits each outranks. <bsdata>: the BSData folder (MVTec layout).

    python docs/results/real_data_second_read/diagnostic/by_pit_size.py P_test.json S_test.json <bsdata>
"""
import json
import sys

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

BINS = [(0, 130), (130, 500), (500, None)]  # pit area in pixels of the 1130x460 shot


def zscore(test, train):
    lt, lr = np.log(np.asarray(test) + 1e-12), np.log(np.asarray(train) + 1e-12)
    return (lt - lr.mean()) / lr.std()


def main(parts_file: str, second_file: str, data_root: str) -> int:
    parts, second = json.load(open(parts_file)), json.load(open(second_file))
    names = [im["name"] for im in parts["images"]]
    labels = np.array([im["label"] for im in parts["images"]])
    raw = parts["raw_parts"]
    z_m = zscore(raw["test"]["s_m_k25"], raw["train"]["s_m_k25"])
    z_k = zscore(raw["test"]["s_knn"], raw["train"]["s_knn"])
    z_w = zscore(second["s_mw"]["test"], second["s_mw"]["train"])
    area = np.array([(np.array(Image.open(f"{data_root}/ground_truth/{n.rsplit('.', 1)[0]}_mask.png")) > 0).sum()
                     if y else 0 for n, y in zip(names, labels)])
    rules = {"one read": z_m + 0.25 * z_k, "two reads (default)": z_m + z_w + 0.25 * z_k,
             "first read s_m": z_m, "second read s_mw": z_w, "s_knn": z_k}
    print("| score | all | " + " | ".join(f"pits {a}–{b or ''} px" for a, b in BINS) + " |")
    print("|:---|" + "---:|" * (len(BINS) + 1))
    for name, s in rules.items():
        row = [roc_auc_score(labels, s)]
        for a, b in BINS:
            sel = (labels == 0) | ((area >= a) & (area < (b or np.inf)))
            row.append(roc_auc_score(labels[sel], s[sel]))
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    print("pits per bin:", [int(((area >= a) & (area < (b or np.inf)) & (labels == 1)).sum()) for a, b in BINS])
    for name in ("one read", "two reads (default)"):
        s, normal = rules[name], np.where(labels == 0)[0]
        top = normal[np.argsort(-s[normal])[:5]]
        print(f"{name}: the five highest normal test images outrank",
              [int((s[labels == 1] < s[i]).sum()) for i in top], "of", int(labels.sum()), "pits")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
