"""Round 37's rules 0-3 (docs/experiments.md), applied to the runs and score files: `swa50` (0 real anomalies, the
head's weights averaged over the last half of the steps: train.average_last 0.5) against `ratio25` (the defaults),
the Magnetic Tile proxy at seeds 0-5, paired by seed; the reference's seeds 0-2 are round 34's score files, seeds
3-5 this folder's.

Rule 0 (with --runs): the candidate's epoch fingerprints equal the reference's at each seed whose reference run is
there (benchmarks/proxy_rules.same_trajectory); if any differs the round stops there. Rules 1-3, the cost rule's
minutes and the file names: benchmarks/proxy_rules.decide_against_round34 (rules 1 and 2: REAL_DEFECT_RULES, on the
default image score zsum0.25k25 and the default map pq99).

    PYTHONPATH=.:benchmarks python docs/results/round37/decide.py [--runs pv_magnetic_tile/runs] [decision.json]
"""
import os
import sys

from proxy_rules import decide_against_round34, same_trajectory

SEEDS = range(6)

if __name__ == "__main__":
    argv = sys.argv[1:]
    rule0 = None
    if "--runs" in argv:
        rule0 = same_trajectory(argv[argv.index("--runs") + 1], "swa50", "ratio25", SEEDS)
        print(f"rule 0, the same trajectory per seed (None: no reference run here): {rule0}")
        if False in rule0.values():
            print("verdict: the round stops (rule 0 fails)")
            sys.exit(1)
    sys.exit(decide_against_round34(argv, os.path.dirname(os.path.abspath(__file__)), "swa50", 1.1, seeds=SEEDS,
                                    extra=None if rule0 is None else {"rule_0_same_trajectory": rule0}))
