"""Round 24's rules (docs/experiments.md), applied to the score files: the top-100 mean (zsum0.25, the runs'
stored eval.topk) against the top-25 mean (zsum0.25k25, the default since round 23), image AUROC, paired by seed;
Magnetic Tile proxy seeds 0-3 and BSData proxy seeds 0-1. Rule 2 reads round 23's files (the same runs and rules;
this round's files must agree with them on every group they share).

    python docs/results/round24/decide.py [decision.json]
"""
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
R23 = os.path.join(HERE, "..", "round23")
SEEDS = {"magnetic_tile": ("mt", ("", "-seed1", "-seed2", "-seed3")), "bsdata": ("bs", ("", "-seed1"))}


def load(folder: str, prefix: str) -> dict:
    """{proxy: [score file per seed]} of the files <prefix>_<mt|bs>_ratio25<seed>.json in `folder`."""
    return {p: [json.load(open(os.path.join(folder, f"{prefix}_{d}_ratio25{s}.json"))) for s in seeds]
            for p, (d, seeds) in SEEDS.items()}


NEW, OLD = load(HERE, "V"), load(R23, "U")
CAND, REF = "zsum0.25", "zsum0.25k25"  # the top-100 mean against the current default
TINY_REAL = "tiny_real_pastes"
HARM = ["all", "perlin_unseen_textures", "extended_unseen_defects", "swap_unseen_shapes", "extended_in_context",
        "small_unseen_spots", "real_defects"]

for proxy in NEW:  # this round's files repeat round 23's figures wherever they overlap
    for new, old in zip(NEW[proxy], OLD[proxy]):
        for rule in (CAND, REF, "prnet", "knn"):
            for g, v in old["image_auroc"][rule].items():
                if g in new["image_auroc"][rule] and new["image_auroc"][rule][g] != v:
                    sys.exit(f"{proxy}: {rule} {g} differs from round 23's file ({new['image_auroc'][rule][g]} vs {v})")


def mean_diff(files, group):
    return float(np.mean([f["image_auroc"][CAND][group] - f["image_auroc"][REF][group] for f in files]))


tiny = {p: mean_diff(NEW[p], TINY_REAL) for p in NEW}
average = float(np.mean(list(tiny.values())))
per_seed = {p: [f["image_auroc"][CAND][TINY_REAL] - f["image_auroc"][REF][TINY_REAL] for f in NEW[p]] for p in NEW}
rule1 = {"average gain on tiny_real_pastes >= +0.005": average >= 0.005,
         **{f"{p} not behind on tiny_real_pastes": g >= 0 for p, g in tiny.items()}}
harm = {p: {g: mean_diff(OLD[p], g) for g in HARM} for p in OLD}
rule2 = {f"{p} {g} >= -0.005": d >= -0.005 for p, row in harm.items() for g, d in row.items()}
rules = {"1": {k: bool(v) for k, v in rule1.items()}, "2": {k: bool(v) for k, v in rule2.items()}}
passes = all(rule1.values()) and all(rule2.values())
print(f"top-100 minus top-25 on {TINY_REAL}: " + ", ".join(
    f"{p} {g:+.4f} (per seed {' '.join(f'{x:+.4f}' for x in per_seed[p])})" for p, g in tiny.items())
      + f"; average {average:+.4f}")
for p, row in harm.items():
    print(f"  {p}: " + ", ".join(f"{g} {d:+.4f}" for g, d in row.items()))
for name, parts in rules.items():
    broken = [k for k, v in parts.items() if not v]
    print(f"  rule {name}: {'holds' if not broken else 'fails: ' + '; '.join(broken)}")
print(f"  verdict: {'eval.topk back to 100' if passes else 'nothing changes (eval.topk stays 25)'}")
if len(sys.argv) > 1:
    json.dump({"tiny_real_pastes": tiny, "per_seed": per_seed, "average": average, "harm": harm, "rules": rules,
               "passes": passes}, open(sys.argv[1], "w"), indent=2)
