"""Round 28's rules (docs/experiments.md): the default image score with its distance term read at 256x640
(`zsum0.25k25s`) against the default (`zsum0.25k25`), on the same runs: the BSData proxy built at 256x640, models
trained at 256x256 with 0 real anomalies (`z256`) and with 5 (`fs256`), seeds 0 and 1, paired by seed. The score
files Z_bs_<run>.json here hold both rules of every run.

    python docs/results/round28/decide.py [--out decision.json]
"""
import argparse
import importlib.util
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
# round 25's groups and file loader: the same rules' vocabulary
_spec = importlib.util.spec_from_file_location("round25_decide", os.path.join(HERE, "..", "round25", "decide.py"))
r25 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(r25)
GAIN = r25.GAIN
HARM = r25.HARM[:5] + ["tiny_unseen_spots"] + r25.HARM[5:]  # round 25's groups and the tiny texture spots
REFERENCE, CANDIDATE = "zsum0.25k25", "zsum0.25k25s"
SETTINGS = {"z256": "0 real anomalies", "fs256": "5 real anomalies"}


def differences(files: list) -> dict:
    """{group: [candidate - reference, seed 0 first]} on one setting's score files."""
    return {g: [f["image_auroc"][CANDIDATE][g] - f["image_auroc"][REFERENCE][g] for f in files] for g in [GAIN] + HARM}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="write the decision here as JSON")
    args = ap.parse_args()
    per_seed = {s: differences(r25.load(HERE, f"Z_bs_{s}")) for s in SETTINGS}
    diff = {s: {g: float(np.mean(v)) for g, v in d.items()} for s, d in per_seed.items()}
    rules = {
        "1": {f"{s} {GAIN} >= +0.02": diff[s][GAIN] >= 0.02 for s in SETTINGS},
        "2": {f"{s} {g} >= -0.005": diff[s][g] >= -0.005 for s in SETTINGS for g in HARM},
    }
    passes = all(v for part in rules.values() for v in part.values())
    for s, label in SETTINGS.items():
        print(f"{s} ({label}): {CANDIDATE} - {REFERENCE} image AUROC, mean of seeds 0 and 1 (per seed):")
        for g, x in diff[s].items():
            print(f"  {g:26s} {x:+.4f}  ({' '.join(f'{y:+.4f}' for y in per_seed[s][g])})")
    for name, parts in rules.items():
        broken = [k for k, v in parts.items() if not v]
        print(f"  rule {name}: {'holds' if not broken else 'fails: ' + '; '.join(broken)}")
    verdict = "eval.knn_size (default auto) enters the library" if passes else "nothing changes"
    print(f"  verdict: {verdict}")
    if args.out:
        json.dump({"image_auroc_diff": diff, "per_seed": per_seed,
                   "rules": {k: {n: bool(v) for n, v in part.items()} for k, part in rules.items()},
                   "passes": passes, "verdict": verdict}, open(args.out, "w"), indent=2)


if __name__ == "__main__":
    main()
