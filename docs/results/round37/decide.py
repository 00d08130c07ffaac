"""Round 37's rules 1-3 (docs/experiments.md), applied to the score files: `swa50` (0 real anomalies, the head's
weights averaged over the last half of the steps: train.average_last 0.5) against `ratio25` (the defaults), the
Magnetic Tile proxy at seeds 0-5, paired by seed; the reference's seeds 0-2 are round 34's score files, seeds 3-5
this folder's.

The rules, the cost rule's minutes and the file names: benchmarks/proxy_rules.decide_against_round34 (rules 1 and
2: REAL_DEFECT_RULES, on the default image score zsum0.25k25 and the default map pq99).

    PYTHONPATH=.:benchmarks python docs/results/round37/decide.py [--runs pv_magnetic_tile/runs] [decision.json]
"""
import os
import sys

from proxy_rules import decide_against_round34


if __name__ == "__main__":
    sys.exit(decide_against_round34(sys.argv[1:], os.path.dirname(os.path.abspath(__file__)), "swa50", 1.1,
                                    seeds=range(6)))
