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
import csv
import json
import os
import sys

import numpy as np

from proxy_rules import main as proxy_rules

HERE = os.path.dirname(os.path.abspath(__file__))
ROUND34 = os.path.join(os.path.dirname(HERE), "round34")
CAND, REF = "shade_add", "ratio25"
SEEDS = ("", "-seed1", "-seed2")
RULES_1_2 = ["--rule", "zsum0.25k25", "--pixel-rule", "pq99", "--gain", "0",
             "--require", "pixel_auroc:real_defects:0.005", "--require", "aupro:real_defects:0",
             "--require", "all:-0.003", "--require", "real_defects:-0.003",
             "--harm", "0.005", "--pixel-harm", "0.003", "--pixel-subset-harm", "0.005", "--aupro-error-harm", "0.03"]
MAX_TIME_RATIO = 1.3


def train_minutes(runs, variant):
    """Training minutes of the variant's runs at seeds 0-2 (their epochs' seconds summed)."""
    return [sum(float(row["seconds"]) for row in csv.DictReader(open(
        os.path.join(runs, f"{variant}{s}", "magnetic_tile", "train_log.csv")))) / 60 for s in SEEDS]


def main(argv):
    times = None
    if "--runs" in argv:
        i = argv.index("--runs")
        times = {CAND: train_minutes(argv[i + 1], CAND),
                 REF: json.load(open(os.path.join(ROUND34, "decision.json")))["training_minutes"][REF]}
        argv = argv[:i] + argv[i + 2:]
    files = {CAND: [os.path.join(HERE, f"Z_mt_{CAND}{s}.json") for s in SEEDS],
             REF: [os.path.join(ROUND34, f"Z_mt_{REF}{s}.json") for s in SEEDS]}
    out = argv[0] if argv else None
    rc = proxy_rules(["--candidate", *files[CAND], "--reference", *files[REF], *RULES_1_2]
                     + (["--out", out] if out else []))
    if rc == 2:
        return 2
    rule3 = None
    if times is not None:
        ratio = np.mean(times[CAND]) / np.mean(times[REF])
        rule3 = bool(ratio <= MAX_TIME_RATIO)
        print("training minutes, seeds 0-2: " + "; ".join(f"{v} {' / '.join(f'{m:.1f}' for m in t)}"
                                                          for v, t in times.items()))
        print(f"rule 3 (training time at most {MAX_TIME_RATIO}x the reference's): {ratio:.2f}x, "
              f"{'holds' if rule3 else 'fails'}")
    verdict = "fails" if rc == 1 or rule3 is False else "passes" if rule3 else "open (rule 3 not checked)"
    print(f"verdict, Magnetic Tile proxy (rules 1-3): {verdict}")
    if out:
        result = json.load(open(out))
        result.update(candidate_files=[os.path.basename(f) for f in files[CAND]],  # no machine path in the record
                      reference_files=[f"../round34/{os.path.basename(f)}" for f in files[REF]],
                      training_minutes=times, rule_3_holds=rule3, verdict=verdict)
        json.dump(result, open(out, "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
