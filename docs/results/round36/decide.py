"""Round 36's rules (docs/experiments.md), applied to the score files: `zhalf` (0 real anomalies, half the Perlin
samples per epoch: synthesis.perlin_ratio 0.25) against `ratio25` (the defaults; round 34's score files of the same
runs), the Magnetic Tile proxy at seeds 0-2, paired by seed.

The rules, the cost rule's minutes and the file names: benchmarks/proxy_rules.decide_against_round34 (rules 1 and
2: REAL_DEFECT_RULES, on the default image score zsum0.25k25 and the default map pq99).

    PYTHONPATH=.:benchmarks python docs/results/round36/decide.py [--runs pv_magnetic_tile/runs] [decision.json]
"""
import os
import sys

from proxy_rules import decide_against_round34


if __name__ == "__main__":
    sys.exit(decide_against_round34(sys.argv[1:], os.path.dirname(os.path.abspath(__file__)), "zhalf", 1.0))
