"""Round 22's rules (docs/experiments.md), applied to the score files: pq99 against the head's map (prnet) of the same
runs, Magnetic Tile proxy seeds 0-5 (seeds 0-3: round 21's files, 4 and 5: this round's).

    python docs/results/round22/decide.py [decision.json]
"""
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
R21 = os.path.join(HERE, "..", "round21")
FILES = [os.path.join(R21, f"T_mt_ratio25{s}.json") for s in ("", "-seed1", "-seed2", "-seed3")] + \
        [os.path.join(HERE, f"T_mt_ratio25-seed{s}.json") for s in (4, 5)]
MT = [json.load(open(f)) for f in FILES]
SUBSETS = ["perlin_unseen_textures", "extended_unseen_defects", "swap_unseen_shapes", "extended_in_context",
           "small_unseen_spots"]
CAND = "pq99"


def per_seed(name, group, key):
    return np.array([f["pixel_by_group"][name][group][key] for f in MT])


def diff(group, key):
    return per_seed(CAND, group, key) - per_seed("prnet", group, key)


gain, aupro = diff("real_defects", "pixel_auroc"), diff("real_defects", "aupro")
rule1 = {"six-seed mean >= +0.01": gain.mean() >= 0.01, "seeds 4, 5 mean >= +0.005": gain[4:].mean() >= 0.005,
         "no seed below -0.01": gain.min() >= -0.01, "AUPRO six-seed mean >= -0.005": aupro.mean() >= -0.005,
         "AUPRO no seed below -0.03": aupro.min() >= -0.03}
err_c, err_r = 1 - per_seed(CAND, "all", "aupro").mean(), 1 - per_seed("prnet", "all", "aupro").mean()
rule2 = {"pixel AUROC all within 0.003": diff("all", "pixel_auroc").mean() >= -0.003,
         "AUPRO all within 0.003": diff("all", "aupro").mean() >= -0.003,
         "AUPRO error on all at most +3 %": err_c <= 1.03 * err_r}
for g in SUBSETS:
    rule2[f"pixel AUROC {g} within 0.005"] = diff(g, "pixel_auroc").mean() >= -0.005
rules = {"1": {k: bool(v) for k, v in rule1.items()}, "2": {k: bool(v) for k, v in rule2.items()}}
passes = all(all(r.values()) for r in rules.values())
print(f"{CAND}: real_defects pixel AUROC per seed {' '.join(f'{x:+.4f}' for x in gain)} (mean {gain.mean():+.4f}, "
      f"seeds 4-5 {gain[4:].mean():+.4f}); AUPRO {' '.join(f'{x:+.4f}' for x in aupro)} (mean {aupro.mean():+.4f})")
print(f"  'all' AUPRO {diff('all', 'aupro').mean():+.4f}, error {err_c:.4f} against {err_r:.4f}; "
      f"swaps pixel AUROC {diff('swap_unseen_shapes', 'pixel_auroc').mean():+.4f}")
for rule, parts in rules.items():
    broken = [k for k, v in parts.items() if not v]
    print(f"  rule {rule}: {'holds' if not broken else 'fails: ' + '; '.join(broken)}")
print(f"  verdict: {'passes' if passes else 'fails'}")
if len(sys.argv) > 1:
    json.dump({"real_defects_pixel_auroc_per_seed": gain.tolist(), "real_defects_aupro_per_seed": aupro.tolist(),
               "rules": rules, "passes": passes}, open(sys.argv[1], "w"), indent=2)
