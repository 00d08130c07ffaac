"""Round 38's rules 1-3 (docs/experiments.md), applied to the runs and score files: `jit20` (0 real anomalies,
every training image's brightness and contrast jittered by up to 0.2: synthesis.jitter 0.2) against `ratio25` (the
defaults), the Magnetic Tile proxy, paired by seed; the reference's seeds 0-2 are round 34's score files, seed 3
round 37's. The rules were written for seeds 0-3; the round was stopped after seeds 0 and 1 (docs/experiments.md
says why), so `--seeds 0,1` applies them to the two seeds made.

The rules, the cost rule's minutes and the file names: benchmarks/proxy_rules.decide_against_round34 (rules 1 and
2: REAL_DEFECT_RULES, on the default image score zsum0.25k25 and the default map pq99).

    PYTHONPATH=.:benchmarks python docs/results/round38/decide.py [--seeds 0,1] [--runs pv_magnetic_tile/runs] \
        [decision.json]
"""
import os
import sys

from proxy_rules import decide_against_round34

if __name__ == "__main__":
    argv, seeds = sys.argv[1:], range(4)
    if "--seeds" in argv:
        i = argv.index("--seeds")
        seeds = [int(s) for s in argv[i + 1].split(",")]
        argv = argv[:i] + argv[i + 2:]
    sys.exit(decide_against_round34(argv, os.path.dirname(os.path.abspath(__file__)), "jit20", 1.1,
                                    seeds=seeds, later_seeds="round37"))
