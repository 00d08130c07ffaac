"""Round 42's rules 1-3 (docs/experiments.md), applied to the score files and runs: `area` (0 real anomalies, the
loss's defect pixels weighed by (1 / the defect's area)^0.5, loss.area_balance) against `ratio25here` (the defaults,
trained on the same machine), the Magnetic Tile proxy at seeds 0 and 1, paired by seed. The reference's seed 0 is
round 41's file and run; its seed 1 lies here.

Rules 1-2: proxy_rules.decide_with_time with RULES. Rule 3, the cost: the candidate's training minutes at most
1.1 times the reference's (the same machine; the weights change nothing else).

    PYTHONPATH=.:benchmarks python docs/results/round42/decide.py [--seeds 0] [--runs pv_magnetic_tile/runs] \
        [decision.json]

`proxy_rules.py` prints its own rule numbers: its "rule 1" rows are this round's rule 1 and the rule 2 limits on
"all", `real_defects` and the real images' types (given as --require), its "rule 2" is the rest of this round's
rule 2.
"""
import os
import sys

from proxy_rules import IMAGE_RULE, PIXEL_RULE, REAL_TYPES, decide_with_time, runs_option, seed_suffix, \
    seeds_option, training_minutes

HERE = os.path.dirname(os.path.abspath(__file__))
CANDIDATE, REFERENCE, MAX_RATIO, SEEDS = "area", "ratio25here", 1.1, (0, 1)
RULES = ("--rule", IMAGE_RULE, "--pixel-rule", PIXEL_RULE, "--gain", "0",
         "--require", "tiny_real_pastes:0.01", "--require", "tiny_unseen_spots:0",
         "--require", "all:-0.003", "--require", "real_defects:-0.003",
         *[a for t in REAL_TYPES if t != "break" for a in ("--require", f"pixel_auroc:{t}:-0.005")],
         "--harm", "0.005", "--pixel-harm", "0.003", "--pixel-subset-harm", "0.005", "--aupro-error-harm", "0.03")


def reference_file(seed: int) -> str:
    """The reference's score file at a seed: round 41's at seed 0 (the same machine), this round's otherwise."""
    folder = os.path.join(os.path.dirname(HERE), "round41") if seed == 0 else HERE
    return os.path.join(folder, f"Z_mt_{REFERENCE}{seed_suffix(seed)}.json")


if __name__ == "__main__":
    argv, seeds = seeds_option(sys.argv[1:], SEEDS)
    minutes = None
    argv, runs = runs_option(argv)
    if runs is not None:
        minutes = {name: training_minutes([os.path.join(runs, f"{name}{seed_suffix(s)}", "magnetic_tile")
                                           for s in seeds]) for name in (CANDIDATE, REFERENCE)}
    cand = [os.path.join(HERE, f"Z_mt_{CANDIDATE}{seed_suffix(s)}.json") for s in seeds]
    ref = [reference_file(s) for s in seeds]
    names = ([os.path.relpath(f, os.path.dirname(HERE)) for f in cand],
             [os.path.relpath(f, os.path.dirname(HERE)) for f in ref])
    sys.exit(decide_with_time(RULES, cand, ref, minutes=minutes, max_ratio=MAX_RATIO, names=names,
                              out=argv[0] if argv else None, extra={"seeds": list(seeds)}))
