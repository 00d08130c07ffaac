"""Round 27's rules (docs/experiments.md): the real defects pasted at U(0.35, 1.25) of their size (`fs_small`)
against the default U(0.75, 1.25) (`fs`), both proxies with their 5 training shots, seeds 0 and 1, paired by seed.
Image figures of zsum0.25k25 (the default score), pixel figures of the head's map `prnet` on "all"; training times
from the runs' own records, read from proxy_validation.json files given as arguments (not part of the repository).
A rule broken on the proxies scored so far decides the round; passing needs both.

    python docs/results/round27/decide.py --timings pv_bsdata/proxy_validation.json \
        pv_magnetic_tile/proxy_validation.json [--out decision.json]
"""
import argparse
import importlib.util
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
PROXIES = {"bsdata": "bs", "magnetic_tile": "mt"}
# round 25's score, groups and file loader: the same rules' vocabulary
_spec = importlib.util.spec_from_file_location("round25_decide", os.path.join(HERE, "..", "round25", "decide.py"))
r25 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(r25)
SCORE, GAIN, HARM, PIXEL = r25.SCORE, r25.GAIN, r25.HARM, r25.PIXEL


def load(short: str, variant: str) -> list:
    """The score files Y_<short>_<variant><seed>.json here, seed 0 first."""
    return r25.load(HERE, f"Y_{short}_{variant}")


def train_minutes(paths: list) -> dict:
    """{variant: [minutes, seed 0 first], ...} summed over the proxies, from proxy_validation.json's rows."""
    out: dict = {}
    for path in paths:
        for row in json.load(open(path))["rows"]:
            if row["variant"] in ("fs", "fs_small"):
                out.setdefault(row["variant"], []).append(float(row["train_minutes"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--timings", nargs="+", required=True, help="the proxies' proxy_validation.json files")
    ap.add_argument("--out", help="write the decision here as JSON")
    args = ap.parse_args()
    diff, pixel, per_seed = {}, {}, {}
    present = {p: s for p, s in PROXIES.items() if os.path.exists(os.path.join(HERE, f"Y_{s}_fs_small.json"))}
    for proxy, short in present.items():
        cand, ref = load(short, "fs_small"), load(short, "fs")
        image = {g: np.subtract([f["image_auroc"][SCORE][g] for f in cand], [f["image_auroc"][SCORE][g] for f in ref])
                 for g in [GAIN] + HARM}
        diff[proxy] = {g: float(v.mean()) for g, v in image.items()}
        per_seed[proxy] = {g: [float(x) for x in v] for g, v in image.items()}
        pixel[proxy] = {m: float(np.mean(np.subtract([f["metrics"]["prnet"][m] for f in cand],
                                                     [f["metrics"]["prnet"][m] for f in ref]))) for m in PIXEL}
    minutes = train_minutes(args.timings)
    cost = float(np.sum(minutes["fs_small"]) / np.sum(minutes["fs"]))
    complete = len(present) == len(PROXIES)
    average = float(np.mean([diff[p][GAIN] for p in present]))
    rules = {
        "1": {**({f"{GAIN} mean of the proxies >= +0.02": average >= 0.02} if complete else {}),
              **{f"{p} {GAIN} not behind": diff[p][GAIN] >= 0 for p in present}},
        "2": {**{f"{p} {g} >= -0.005": diff[p][g] >= -0.005 for p in present for g in HARM},
              **{f"{p} all {m} >= -0.003": pixel[p][m] >= -0.003 for p in present for m in PIXEL}},
        "3": {"training time <= 1.1x": cost <= 1.1},
    }
    # a rule broken on the proxies scored so far decides the round; passing needs both proxies
    broken_any = not all(v for part in rules.values() for v in part.values())
    passes = complete and not broken_any
    for p in present:
        print(f"{p}: fs_small - fs, {SCORE} image AUROC, mean of seeds 0 and 1 (per seed):")
        for g, x in diff[p].items():
            print(f"  {g:26s} {x:+.4f}  ({' '.join(f'{y:+.4f}' for y in per_seed[p][g])})")
        print("  head's map on all: " + ", ".join(f"{m} {x:+.4f}" for m, x in pixel[p].items()))
    print(f"{GAIN}, mean of {', '.join(present)}: {average:+.4f}; training time {cost:.2f} times the reference's"
          + ("" if complete else f" (not scored: {', '.join(set(PROXIES) - set(present))})"))
    for name, parts in rules.items():
        broken = [k for k, v in parts.items() if not v]
        print(f"  rule {name}: {'holds' if not broken else 'fails: ' + '; '.join(broken)}")
    verdict = ("synthesis.extended_scale defaults to [0.35, 1.25]" if passes else "the default stays"
               if broken_any else "undecided: the other proxy's runs are missing")
    print(f"  verdict: {verdict}")
    if args.out:
        json.dump({"image_auroc_diff": diff, "per_seed": per_seed, "pixel_diff": pixel, "average_gain": average,
                   "train_minutes": minutes, "cost_ratio": cost, "proxies_scored": list(present),
                   "rules": {k: {n: bool(v) for n, v in part.items()} for k, part in rules.items()},
                   "passes": passes, "verdict": verdict}, open(args.out, "w"), indent=2)


if __name__ == "__main__":
    main()
