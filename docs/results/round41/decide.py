"""Round 41's rules 1-3 (docs/experiments.md), applied to the runs and score files: `exact` (0 real anomalies, the
synthetic samples' held-out residuals made with their clean source image, prototypes.held_out_exact) against
`ratio25` (the defaults), the Magnetic Tile proxy at seeds 0-2, paired by seed; the reference is round 34's score
files.

Rules 1-2: benchmarks/proxy_rules.decide_against_round34 with RULES. Rule 3, the cost, as amended before any
result (docs/experiments.md): the candidate runs' training throughput (train_log.csv's images per second, mean over
epochs 2-10) at least 1/1.3 of the throughput of `ratio25t`, the reference's settings run on the same machine
(its epoch 2; epoch 1 also fills the image cache).

    PYTHONPATH=.:benchmarks python docs/results/round41/decide.py [--seeds 0,1] [--runs pv_magnetic_tile/runs] \
        [decision.json]

`proxy_rules.py` prints its own rule numbers: its "rule 1" rows are this round's rule 1 and the rule 2 limits on
"all", `real_defects` and the real images' types (given as --require), its "rule 2" is the rest of this round's
rule 2.
"""
import csv
import json
import os
import sys

from proxy_rules import IMAGE_RULE, PIXEL_RULE, REAL_TYPES, decide_against_round34, runs_option, seed_suffix, \
    seeds_option

HERE = os.path.dirname(os.path.abspath(__file__))
CANDIDATE, MAX_RATIO, SEEDS, SAME_MACHINE_REFERENCE = "exact", 1.3, (0, 1, 2), "ratio25t"
RULES = ("--rule", IMAGE_RULE, "--pixel-rule", PIXEL_RULE, "--gain", "0",
         "--require", "faint_real_pastes:0.005", "--require", "tiny_real_pastes:0",
         "--require", "all:-0.003", "--require", "real_defects:-0.003",
         *[a for t in REAL_TYPES if t != "break" for a in ("--require", f"pixel_auroc:{t}:-0.005")],
         "--harm", "0.005", "--pixel-harm", "0.003", "--pixel-subset-harm", "0.005", "--aupro-error-harm", "0.03")


def throughput(run_dir: str, first: int = 2, last: int = 10) -> float:
    """Mean images per second of a run's epochs first..last (train_log.csv; those it has)."""
    with open(os.path.join(run_dir, "magnetic_tile", "train_log.csv")) as f:
        rates = [float(r["images_per_s"]) for r in csv.DictReader(f) if first <= int(r["epoch"]) <= last]
    if not rates:
        raise SystemExit(f"{run_dir}: no epoch {first}-{last} in its train_log.csv")
    return sum(rates) / len(rates)


if __name__ == "__main__":
    argv, seeds = seeds_option(sys.argv[1:], SEEDS)
    cost = None
    argv, runs = runs_option(argv)
    if runs is not None:
        cand = [throughput(os.path.join(runs, f"{CANDIDATE}{seed_suffix(s)}")) for s in seeds]
        ref = throughput(os.path.join(runs, SAME_MACHINE_REFERENCE), 2, 2)
        ratio = ref / (sum(cand) / len(cand))
        cost = {"images_per_s": {CANDIDATE: cand, SAME_MACHINE_REFERENCE: ref}, "time_ratio": ratio,
                "max_ratio": MAX_RATIO, "holds": ratio <= MAX_RATIO}
        print(f"rule 3, cost: images/s {', '.join(f'{c:.2f}' for c in cand)} against {ref:.2f} on the same machine: "
              f"{ratio:.2f} times the time (at most {MAX_RATIO}): {'holds' if cost['holds'] else 'fails'}")
    rc = decide_against_round34(argv, HERE, CANDIDATE, MAX_RATIO, seeds=seeds, rules=RULES,
                                extra=None if cost is None else {"cost_same_machine": cost})
    if rc == 2:
        sys.exit(2)
    if cost is not None and argv and not cost["holds"]:
        with open(argv[0]) as f:
            result = json.load(f)
        result["verdict"] = "fails"
        with open(argv[0], "w") as f:
            json.dump(result, f, indent=1)
    if cost is not None and not cost["holds"]:
        print("verdict (rules 1-3): fails (rule 3)")
