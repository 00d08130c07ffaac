"""Round 40's rules 1-3 (docs/experiments.md), applied to the runs and score files: `spot_add` (0 real anomalies,
small spots added to the Perlin samples) against `ratio25` (the defaults), the Magnetic Tile proxy at seeds 0-2,
paired by seed; the reference is round 34's score files and recorded training minutes.

Rules 1-3: benchmarks/proxy_rules.decide_against_round34 with RULES (the cost rule at 1.3 times, rule 3), then rule
1's count: the tiny real pastes' image AUROC above the reference at every seed.

    PYTHONPATH=.:benchmarks python docs/results/round40/decide.py [--seeds 0] [--runs pv_magnetic_tile/runs] \
        [decision.json]

The rules were written for seeds 0-2; the round was stopped after seed 0 (docs/experiments.md says why), so
`--seeds 0` applies them to the one seed made. `proxy_rules.py` prints its own rule numbers: its "rule 1" rows
include this round's rule 2 limits on "all" and `real_defects` (given as --require), its "rule 2" is the rest of
this round's rule 2.
"""
import json
import os
import sys

from proxy_rules import (IMAGE_RULE, PIXEL_RULE, REAL_TYPES, decide_against_round34, figures, seed_suffix,
                         seeds_option)

HERE = os.path.dirname(os.path.abspath(__file__))
CANDIDATE, MAX_RATIO, SEEDS = "spot_add", 1.3, (0, 1, 2)
RULES = ("--rule", IMAGE_RULE, "--pixel-rule", PIXEL_RULE, "--gain", "0",
         "--require", "tiny_real_pastes:0.01", "--require", "faint_real_pastes:0",
         "--require", "all:-0.003", "--require", "real_defects:-0.003",
         *[a for t in REAL_TYPES if t != "break" for a in ("--require", f"pixel_auroc:{t}:-0.005")],
         "--harm", "0.005", "--pixel-harm", "0.003", "--pixel-subset-harm", "0.005", "--aupro-error-harm", "0.03")

if __name__ == "__main__":
    argv, seeds = seeds_option(sys.argv[1:], SEEDS)
    rc = decide_against_round34(argv, HERE, CANDIDATE, MAX_RATIO, seeds=seeds, rules=RULES)
    if rc == 2:
        sys.exit(2)
    pairs = [(os.path.join(HERE, f"Z_mt_{CANDIDATE}{seed_suffix(s)}.json"),
              os.path.join(HERE, "..", "round34", f"Z_mt_ratio25{seed_suffix(s)}.json")) for s in seeds]
    up = [figures(c, IMAGE_RULE, ["tiny_real_pastes"])["tiny_real_pastes"]
          > figures(r, IMAGE_RULE, ["tiny_real_pastes"])["tiny_real_pastes"] for c, r in pairs]
    print(f"rule 1, tiny real pastes' image AUROC above the reference per seed: {up}: "
          f"{'holds' if all(up) else 'fails'}")
    out = [a for i, a in enumerate(argv) if a != "--runs" and (i == 0 or argv[i - 1] != "--runs")]
    if out:  # the decision file: rule 1's count joins the verdict
        with open(out[0]) as f:
            result = json.load(f)
        result["tiny_real_pastes_up_per_seed"] = up
        if not all(up):
            result["verdict"] = "fails"
        with open(out[0], "w") as f:
            json.dump(result, f, indent=1)
    print("verdict (rules 1-3): fails" if not all(up) else "verdict (rules 1-3): as decide_against_round34's above")
