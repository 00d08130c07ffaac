"""Round 21's rules (docs/experiments.md), applied to the score files: pq99 and pq999 against the head's map (prnet)
of the same runs; Magnetic Tile proxy seeds 0-3, BSData proxy seeds 0 and 1.

    python docs/results/round21/decide.py [decision.json]
"""
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MT = [json.load(open(os.path.join(HERE, f"T_mt_ratio25{s}.json"))) for s in ("", "-seed1", "-seed2", "-seed3")]
BS = [json.load(open(os.path.join(HERE, f"T_bs_ratio25{s}.json"))) for s in ("", "-seed1")]
SUBSETS = ["perlin_unseen_textures", "extended_unseen_defects", "swap_unseen_shapes", "extended_in_context",
           "small_unseen_spots"]


def per_seed(files, name, group, key):
    return np.array([f["pixel_by_group"][name][group][key] for f in files])


def diff(files, cand, group, key):
    return per_seed(files, cand, group, key) - per_seed(files, "prnet", group, key)


def no_harm(files, cand):
    """Rule 3 on one proxy: {part: holds}."""
    out = {"pixel_auroc all within 0.003": diff(files, cand, "all", "pixel_auroc").mean() >= -0.003,
           "aupro all within 0.003": diff(files, cand, "all", "aupro").mean() >= -0.003}
    err_c = 1 - per_seed(files, cand, "all", "aupro").mean()
    err_r = 1 - per_seed(files, "prnet", "all", "aupro").mean()
    out["aupro error on all at most +3 %"] = err_c <= 1.03 * err_r
    for g in SUBSETS:
        out[f"pixel_auroc {g} within 0.005"] = diff(files, cand, g, "pixel_auroc").mean() >= -0.005
    return {k: bool(v) for k, v in out.items()}


decision = {}
for cand in ("pq99", "pq999"):
    gain = diff(MT, cand, "real_defects", "pixel_auroc")
    aupro = diff(MT, cand, "real_defects", "aupro")
    rules = {"1": {"real_defects pixel AUROC mean >= +0.01": bool(gain.mean() >= 0.01),
                   "above the head's map at every seed": bool((gain > 0).all()),
                   "real_defects AUPRO mean >= -0.005": bool(aupro.mean() >= -0.005)},
             "2": {"BSData real_defects pixel AUROC >= -0.002":
                   bool(diff(BS, cand, "real_defects", "pixel_auroc").mean() >= -0.002),
                   "BSData real_defects AUPRO >= -0.005": bool(diff(BS, cand, "real_defects", "aupro").mean() >= -0.005)},
             "3": {"Magnetic Tile": no_harm(MT, cand), "BSData": no_harm(BS, cand)}}
    passes = all(rules["1"].values()) and all(rules["2"].values()) and all(
        all(v.values()) for v in rules["3"].values())
    decision[cand] = {"real_defects_pixel_auroc_per_seed": gain.tolist(), "real_defects_aupro_per_seed": aupro.tolist(),
                      "rules": rules, "passes": passes}
    print(f"{cand}: real_defects pixel AUROC per seed {' '.join(f'{x:+.4f}' for x in gain)} (mean {gain.mean():+.4f}); "
          f"AUPRO {' '.join(f'{x:+.4f}' for x in aupro)} (mean {aupro.mean():+.4f})")
    for rule, parts in rules.items():
        flat = parts if rule != "3" else {f"{p}: {k}": v for p, d in parts.items() for k, v in d.items()}
        broken = [k for k, v in flat.items() if not v]
        print(f"  rule {rule}: {'holds' if not broken else 'fails: ' + '; '.join(broken)}")
    print(f"  verdict: {'passes' if passes else 'fails'}")
if len(sys.argv) > 1:
    json.dump(decision, open(sys.argv[1], "w"), indent=2)
