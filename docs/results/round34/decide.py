"""Round 34's rules (docs/experiments.md), applied to the score files: `zfill` (0 real anomalies, their share of
each epoch filled with Perlin samples: synthesis.perlin_ratio 1.0) against `ratio25` (the defaults), the Magnetic
Tile proxy at seeds 0-2, paired by seed.

Rules 1 and 2 are benchmarks/proxy_rules.py's, on the default image score (zsum0.25k25) and the default map (pq99).
Rule 2's limits on the image AUROC of "all" and `real_defects` (0.003) are passed as `--require GROUP:-0.003`, so
proxy_rules prints them under rule 1. Rule 3 reads the training time of each run under `--runs` (the proxy's runs
folder: the sum of train_log.csv's epoch seconds); without it rule 3 is reported as not checked.

    PYTHONPATH=.:benchmarks python docs/results/round34/decide.py [--runs pv_magnetic_tile/runs] [decision.json]
"""
import os
import sys

from proxy_rules import REAL_DEFECT_RULES, decide_with_time, training_minutes

HERE = os.path.dirname(os.path.abspath(__file__))
CAND, REF = "zfill", "ratio25"
SEEDS = ("", "-seed1", "-seed2")


def main(argv):
    minutes = None
    if "--runs" in argv:
        i = argv.index("--runs")
        minutes = {v: training_minutes([os.path.join(argv[i + 1], f"{v}{s}", "magnetic_tile") for s in SEEDS])
                   for v in (CAND, REF)}
        argv = argv[:i] + argv[i + 2:]
    files = {v: [os.path.join(HERE, f"Z_mt_{v}{s}.json") for s in SEEDS] for v in (CAND, REF)}
    return decide_with_time(REAL_DEFECT_RULES, files[CAND], files[REF], minutes=minutes, max_ratio=1.4,
                            names=([os.path.basename(f) for f in files[CAND]],
                                   [os.path.basename(f) for f in files[REF]]),
                            out=argv[0] if argv else None)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
