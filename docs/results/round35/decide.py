"""Round 35's rules (docs/experiments.md), applied to the score files: `shade_add` (0 real anomalies, photometric
anomalies added to the Perlin samples: synthesis.perlin_ratio 0.625, scratch_fraction 0.2, shade_fraction 0.2)
against `ratio25` (the defaults; round 34's score files of the same runs), the Magnetic Tile proxy at seeds 0-2,
paired by seed.

Rules 1 and 2 are benchmarks/proxy_rules.py's, on the default image score (zsum0.25k25) and the default map (pq99),
with round 34's limits. Rule 2's limits on the image AUROC of "all" and `real_defects` (0.003) are passed as
`--require GROUP:-0.003`, so proxy_rules prints them under rule 1. Rule 3 reads the candidate's training time
under `--runs` (the proxy's runs folder: the sum of train_log.csv's epoch seconds) against the reference's minutes
recorded in round 34's decision.json; without `--runs` rule 3 is reported as not checked.

    PYTHONPATH=.:benchmarks python docs/results/round35/decide.py [--runs pv_magnetic_tile/runs] [decision.json]
"""
import os
import sys

from proxy_rules import decide_against_round34


if __name__ == "__main__":
    sys.exit(decide_against_round34(sys.argv[1:], os.path.dirname(os.path.abspath(__file__)), "shade_add", 1.3))
