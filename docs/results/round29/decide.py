"""Round 29's rules (docs/experiments.md): the default image score plus the head's second read at 256x640
(`zsum0.25k25w0.5`) against the default (`zsum0.25k25`), on the same runs: the BSData proxy built at 256x640, models
trained at 256x256 with 0 real anomalies (`z256`, seeds 1 and 2) and with 5 (`fs256`, seeds 0 and 1). `z256` seed 0
was looked at before the rules (the diagnostic that chose the weight) and is reported, not judged. The score files
S_bs_<run>.json here hold both rules of every run.

    python docs/results/round29/decide.py [--round 29|30|31|32] [--out decision.json]
"""
import argparse
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
GAIN = "tiny_real_pastes"
HARM = ["all", "perlin_unseen_textures", "extended_unseen_defects", "extended_in_context", "small_unseen_spots",
        "tiny_unseen_spots", "swap_unseen_shapes", "real_defects"]
REFERENCE, CANDIDATE = "zsum0.25k25", "zsum0.25k25w0.5"
JUDGED = {"0 real anomalies": ["z256-seed1", "z256-seed2"], "5 real anomalies": ["fs256", "fs256-seed1"]}
# round 30 (docs/experiments.md): round 29's rules on these runs, round 29's judged runs pooled with one more seed each
JUDGED_30 = {"0 real anomalies": ["z256-seed1", "z256-seed2", "z256-seed3"],
             "5 real anomalies": ["fs256", "fs256-seed1", "fs256-seed2"]}
# round 31 (docs/experiments.md): the weight 1 on runs made after its rules, seeds not used before
JUDGED_31 = {"0 real anomalies": ["z256-seed4", "z256-seed5"], "5 real anomalies": ["fs256-seed3", "fs256-seed4"]}
CANDIDATE_31 = "zsum0.25k25w1"
LOOKED_AT = ["z256"]
# round 32 (docs/experiments.md): round 31's runs scored again with the proxy's faint_real_pastes (S32_bs_<run>.json)
FAINT = "faint_real_pastes"


def differences(run: str, candidate: str = CANDIDATE, prefix: str = "S", groups=(GAIN, *HARM)) -> dict:
    f = json.load(open(os.path.join(HERE, f"{prefix}_bs_{run}.json")))
    return {g: f["image_auroc"][candidate][g] - f["image_auroc"][REFERENCE][g] for g in groups}


def report(judged: dict, candidate: str, per_run: dict, diff: dict) -> None:
    """Print each setting's mean difference per group, with each run's."""
    for s, runs in judged.items():
        print(f"{s}: {candidate} - {REFERENCE}, image AUROC, mean of {' and '.join(runs)} (each):")
        for g, x in diff[s].items():
            print(f"  {g:26s} {x:+.4f}  ({' '.join(f'{per_run[r][g]:+.4f}' for r in runs)})")


def round_32(out) -> None:
    """Rule 1 of round 32: the default (CANDIDATE_31) against one read on FAINT, mean of the two runs per setting;
    behind by more than 0.005 in either setting withdraws the second read's default."""
    groups = (FAINT, GAIN, *HARM)
    per_run = {r: differences(r, CANDIDATE_31, "S32", groups) for runs in JUDGED_31.values() for r in runs}
    diff = {s: {g: float(np.mean([per_run[r][g] for r in runs])) for g in groups} for s, runs in JUDGED_31.items()}
    rule = {f"{s}: {FAINT} >= -0.005": diff[s][FAINT] >= -0.005 for s in JUDGED_31}
    keeps = all(rule.values())
    print("round 32")
    report(JUDGED_31, CANDIDATE_31, per_run, diff)
    broken = [k for k, v in rule.items() if not v]
    print(f"  rule 1: {'holds' if keeps else 'fails: ' + '; '.join(broken)}")
    verdict = "nothing changes" if keeps else "eval.second_read defaults to none again"
    print(f"  verdict: {verdict}")
    if out:
        json.dump({"round": 32, "image_auroc_diff": diff, "per_run": per_run, "rules": {"1": rule},
                   "keeps": keeps, "verdict": verdict}, open(out, "w"), indent=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="write the decision here as JSON")
    ap.add_argument("--round", type=int, choices=(29, 30, 31, 32), default=29,
                    help="30: the pooled re-test; 31: the weight 1 on new seeds; 32: round 31's runs on faint pastes")
    args = ap.parse_args()
    if args.round == 32:
        return round_32(args.out)
    judged = {29: JUDGED, 30: JUDGED_30, 31: JUDGED_31}[args.round]
    candidate = CANDIDATE_31 if args.round == 31 else CANDIDATE
    per_run = {r: differences(r, candidate) for runs in judged.values() for r in runs}
    diff = {s: {g: float(np.mean([per_run[r][g] for r in runs])) for g in [GAIN] + HARM} for s, runs in judged.items()}
    rules = {"1": {f"{s}: {GAIN} >= +0.02": diff[s][GAIN] >= 0.02 for s in judged},
             "2": {f"{s}: {g} >= -0.005": diff[s][g] >= -0.005 for s in judged for g in HARM}}
    passes = all(v for part in rules.values() for v in part.values())
    print(f"round {args.round}")
    report(judged, candidate, per_run, diff)
    looked = {r: differences(r, candidate) for r in LOOKED_AT} if args.round != 31 else {}
    for r, d in looked.items():
        print(f"not judged, looked at before the rules: {r}: " + ", ".join(f"{g} {x:+.4f}" for g, x in d.items()))
    for name, part in rules.items():
        broken = [k for k, v in part.items() if not v]
        print(f"  rule {name}: {'holds' if not broken else 'fails: ' + '; '.join(broken)}")
    verdict = "eval.second_read defaults to auto (weight as judged)" if passes else "nothing changes"
    print(f"  verdict: {verdict}")
    if args.out:
        json.dump({"round": args.round, "image_auroc_diff": diff, "per_run": per_run, "looked_at": looked,
                   "rules": {k: {n: bool(v) for n, v in part.items()} for k, part in rules.items()},
                   "passes": passes, "verdict": verdict}, open(args.out, "w"), indent=2)


if __name__ == "__main__":
    main()
