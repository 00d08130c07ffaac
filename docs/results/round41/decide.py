"""Round 41's rules 1-3 (docs/experiments.md), applied to the runs and score files: `exact` (0 real anomalies, the
synthetic samples' held-out residuals made with their clean source image, prototypes.held_out_exact) against
`ratio25` (the defaults), the Magnetic Tile proxy at seeds 0-2, paired by seed; the reference is round 34's score
files and recorded training minutes.

Rules 1-3: benchmarks/proxy_rules.decide_against_round34 with RULES (the cost rule at 1.3 times, rule 3).

    PYTHONPATH=.:benchmarks python docs/results/round41/decide.py [--seeds 0,1] [--runs pv_magnetic_tile/runs] \
        [decision.json]

`proxy_rules.py` prints its own rule numbers: its "rule 1" rows are this round's rule 1 and the rule 2 limits on
"all", `real_defects` and the real images' types (given as --require), its "rule 2" is the rest of this round's
rule 2.
"""
import os
import sys

from proxy_rules import IMAGE_RULE, PIXEL_RULE, REAL_TYPES, decide_against_round34, seeds_option

HERE = os.path.dirname(os.path.abspath(__file__))
CANDIDATE, MAX_RATIO, SEEDS = "exact", 1.3, (0, 1, 2)
RULES = ("--rule", IMAGE_RULE, "--pixel-rule", PIXEL_RULE, "--gain", "0",
         "--require", "faint_real_pastes:0.005", "--require", "tiny_real_pastes:0",
         "--require", "all:-0.003", "--require", "real_defects:-0.003",
         *[a for t in REAL_TYPES if t != "break" for a in ("--require", f"pixel_auroc:{t}:-0.005")],
         "--harm", "0.005", "--pixel-harm", "0.003", "--pixel-subset-harm", "0.005", "--aupro-error-harm", "0.03")

if __name__ == "__main__":
    argv, seeds = seeds_option(sys.argv[1:], SEEDS)
    sys.exit(decide_against_round34(argv, HERE, CANDIDATE, MAX_RATIO, seeds=seeds, rules=RULES))
