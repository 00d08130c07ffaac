"""After round 28's verdict (no decision): other weights of the distances, scored from the per-image files
P_bs_<run>.json here (score_fusion.py --per-image: each image's raw parts, z from the held-out training images).
Rule: z(log s_m) + a · z(log s_knn) + b · z(log s_knns), s_knn read at 256x256, s_knns at 256x640; printed as the
mean difference from the default zsum0.25k25 (a = 0.25, b = 0) over seeds 0 and 1, per setting and group.

    PYTHONPATH=.:benchmarks python docs/results/round28/weights.py
"""
import json
import os

import numpy as np

from prnet.metrics import image_auroc
from score_fusion import score_groups, zscores

HERE = os.path.dirname(os.path.abspath(__file__))
GROUPS = ["tiny_real_pastes", "all", "perlin_unseen_textures", "extended_unseen_defects", "extended_in_context",
          "small_unseen_spots", "tiny_unseen_spots", "swap_unseen_shapes", "real_defects"]
WEIGHTS = [(0.0, 0.25), (0.0, 0.5), (0.0, 0.75), (0.0, 1.0), (0.25, 0.25), (0.25, 0.5), (0.125, 0.375)]


def main() -> None:
    for setting in ("z256", "fs256"):
        diffs = {w: {g: [] for g in GROUPS} for w in WEIGHTS}
        for run in (setting, setting + "-seed1"):
            f = json.load(open(os.path.join(HERE, f"P_bs_{run}.json")))
            images, parts = f["images"], f["raw_parts"]
            labels = np.array([x["label"] for x in images])
            groups = score_groups(np.array([x["defect"] for x in images]), True)
            z = {n: zscores(np.array(parts["test"][n]), np.array(parts["train"][n]))
                 for n in ("s_m_k25", "s_knn", "s_knns")}
            ref = np.array([x["scores"]["zsum0.25k25"] for x in images])
            assert np.allclose(ref, z["s_m_k25"] + 0.25 * z["s_knn"], atol=1e-4), "the parts must give the default"
            for a, b in WEIGHTS:
                s = z["s_m_k25"] + a * z["s_knn"] + b * z["s_knns"]
                for g in GROUPS:
                    sel = groups[g]
                    diffs[(a, b)][g].append(image_auroc(s[sel], labels[sel]) - image_auroc(ref[sel], labels[sel]))
        print(f"{setting}: a, b | mean difference from zsum0.25k25 on {', '.join(GROUPS)}")
        for w in WEIGHTS:
            print(f"  {w[0]:<5g} {w[1]:<5g} | " + " ".join(f"{np.mean(diffs[w][g]):+.4f}" for g in GROUPS)
                  + f" | swaps, worse seed {min(diffs[w]['swap_unseen_shapes']):+.4f}")


if __name__ == "__main__":
    main()
