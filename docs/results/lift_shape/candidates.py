"""Score anomaly-map candidates that change how the nearest-neighbour distance lifts the head's map, on the maps
dump_maps.py wrote (validation data only), and write their pixel AUROC per proxy group and AUPRO.

    PYTHONPATH=.:benchmarks python docs/results/lift_shape/candidates.py seed0=mt_s0.npz seed3=mt_s3.npz \
        --out candidates.json

p: the head's map; d: the distance; F: d's distribution function over the normal training pixels (score_fusion's,
a seeded sample of 1e6); G: the same for p; q: the 99th percentile of p over every normal training pixel.
"""
import argparse
import json

import numpy as np
import torch

from prnet.engine.evaluator import gaussian_smooth
from prnet.metrics import aupro, pixel_auroc
from score_fusion import distribution_function, score_groups


def candidates(z: dict) -> dict:
    p, d = z["p_test"], z["k_test"]
    q = np.float32(np.quantile(z["p_train"], 0.99))
    f, g = distribution_function(d, z["k_train"]), distribution_function(p, z["p_train"])
    return {
        "head": p, "knn": d,
        "pq99": p + q * f,  # the default map (head_knn), up to the library's sampled q
        "gate": p + q * f * g,  # lifted where the head agrees
        "minrank": p + q * np.minimum(f, g),
        "beyond0.5": p + q * np.clip((f - 0.5) / 0.5, 0, 1),  # no lift below the distance's normal median
        "beyond0.9": p + q * np.clip((f - 0.9) / 0.1, 0, 1),
        "pow4": p + q * f ** 4,  # the lift shrunk within the normal range
        "half": p + 0.5 * q * f,
        "pq95": p + np.float32(np.quantile(z["p_train"], 0.95)) * f,
        "ranksum": g + f,
        "pq99s1": gaussian_smooth(torch.from_numpy(p[:, None]), 1.0)[:, 0].numpy() + q * f,
    }


def scored(z: dict) -> dict:
    masks, defects = z["masks"], z["defects"]
    groups = score_groups(defects, True)
    normal = defects == "good"
    real = groups["real_defects"] & ~normal
    out = {}
    for name, m in candidates(z).items():
        q99 = np.quantile(m[normal], 0.99)
        row = out[name] = {"real_normal_pixels_above_normal_q99": float((m[real][masks[real] == 0] > q99).mean())}
        for group, sel in groups.items():
            row[group] = {"pixel_auroc": pixel_auroc(m[sel], masks[sel])}
            if group in ("all", "real_defects"):
                row[group]["aupro"] = aupro(m[sel], masks[sel])
        print(name, json.dumps({g: row[g] for g in ("all", "real_defects")}), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dumps", nargs="+", help="name=file.npz")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    result = {}
    for item in args.dumps:
        name, path = item.split("=", 1)
        result[name] = scored(dict(np.load(path)))
    json.dump(result, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
