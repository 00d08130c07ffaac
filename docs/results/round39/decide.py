"""Round 39's rules (docs/experiments.md), applied to the score files: the map pqmax (max of the head's map and the
nearest-neighbour distance put on the head's scale) against the default map pq99 on the same runs, `ratio25` (the
defaults, 0 real anomalies) at seeds 0 and 3-7 of the Magnetic Tile proxy, the runs whose checkpoints were there.
Each run is scored once with both maps (W_mt_ratio25[-seedN].json in this folder), so the pairs share everything
but the map.

The rules were written for the six runs; the round was stopped after seeds 0 and 3 (docs/experiments.md says why),
so `--seeds 0,3` applies them to the two runs scored.

Rule 0: each new file's pq99 figures (pixel AUROC and AUPRO per group) and the default image score's image AUROC
equal those of the run's committed score file (round 34's, 37's or by_type's folder); else the round stops.
Rules 1-3: benchmarks/proxy_rules.main with RULES, and the count of runs whose real_defects pixel AUROC rises.

    PYTHONPATH=.:benchmarks python docs/results/round39/decide.py [--seeds 0,3] [decision.json]
"""
import json
import os
import sys

from proxy_rules import IMAGE_RULE, REAL_TYPES, by_type, main, seed_suffix, seeds_option

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = (0, 3, 4, 5, 6, 7)
COMMITTED = {0: "round34", 3: "round37", 4: "round37", 5: "round37", 6: "by_type", 7: "by_type"}
CANDIDATE, REFERENCE = "pqmax", "pq99"
RULES = ["--rule", IMAGE_RULE, "--pixel-rule", REFERENCE, "--candidate-pixel-rule", CANDIDATE, "--gain", "0",
         "--require", "pixel_auroc:real_defects:0.005", "--require", "aupro:real_defects:0",
         *[a for t in REAL_TYPES if t != "break" for a in ("--require", f"pixel_auroc:{t}:-0.005")],
         "--harm", "0.005", "--pixel-harm", "0.003", "--pixel-subset-harm", "0.005", "--aupro-error-harm", "0.03"]
LEAST_RUNS_UP = 4  # rule 1: real_defects pixel AUROC up at no fewer of the six runs


def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def reproduces(new: dict, old: dict) -> bool:
    """Rule 0: the same pq99 figures per group and the same default image score's image AUROC per group."""
    same_map = all(abs(new["pixel_by_group"][REFERENCE][g][k] - v) <= 1e-9
                   for g, row in old["pixel_by_group"][REFERENCE].items() for k, v in row.items())
    same_score = all(abs(new["image_auroc"][IMAGE_RULE][g] - v) <= 1e-9
                     for g, v in old["image_auroc"][IMAGE_RULE].items())
    return same_map and same_score


if __name__ == "__main__":
    argv, seeds = seeds_option(sys.argv[1:], SEEDS)
    out = argv[0] if argv else None
    files = [os.path.join(HERE, f"W_mt_ratio25{seed_suffix(s)}.json") for s in seeds]
    committed = [os.path.join(HERE, "..", COMMITTED[s], f"Z_mt_ratio25{seed_suffix(s)}.json") for s in seeds]
    rule0 = {str(s): reproduces(load(f), load(c)) for s, f, c in zip(seeds, files, committed)}
    print(f"rule 0, pq99 and the image score as committed, per seed: {rule0}")
    if not all(rule0.values()):
        print("verdict: the round stops (rule 0 fails)")
        sys.exit(1)
    types = by_type(files, files, REFERENCE, CANDIDATE)
    for t in REAL_TYPES:
        print(f"pixel AUROC of the real {t} images, {CANDIDATE} - {REFERENCE} per seed: "
              + " / ".join(f"{d:+.4f}" for d in types[t]["diff"]) + f" (mean {types[t]['mean']:+.4f})")
    rc = main(["--candidate", *files, "--reference", *files, *RULES] + (["--out", out] if out else []))
    if rc == 2:
        sys.exit(2)
    pixel = [load(f)["pixel_by_group"] for f in files]
    gains = [g[CANDIDATE]["real_defects"]["pixel_auroc"] - g[REFERENCE]["real_defects"]["pixel_auroc"] for g in pixel]
    up = sum(g > 0 for g in gains)
    least = LEAST_RUNS_UP * len(seeds) / len(SEEDS)  # four of six, or the same share of the runs scored
    print(f"rule 1, real_defects pixel AUROC up at {up} of {len(gains)} runs (at least {least:g}): "
          f"{'holds' if up >= least else 'fails'}")
    passes = rc == 0 and up >= least
    print(f"verdict (rules 0-3): {'passes' if passes else 'fails'}")
    if out:
        result = load(out)
        names = [os.path.basename(f) for f in files]  # one file per run holds both maps
        result.update(candidate_files=names, reference_files=names, rule_0_reproduces=rule0, by_type=types,
                      seeds=list(seeds), real_defects_gain_per_run=gains, runs_up=up,
                      verdict="passes" if passes else "fails")
        with open(out, "w") as f:
            json.dump(result, f, indent=1)
