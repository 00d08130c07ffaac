"""Round 25's rules (docs/experiments.md), applied to the score files: BSData's proxy at 256x640 (the candidate,
`wide25`, files W_bs_wide25<seed>.json here) against the same settings at 256x256 (the reference, `ratio25`),
paired by seed 0 and 1. Image figures are those of zsum0.25k25 (today's default score), pixel figures those of the
head's map (`prnet`) on "all". The reference's figures come from round 24's files (V_bs_ratio25<seed>.json: the
same checkpoints, proxy images and scorer, every group this round needs). Training times are the runs' own records
(prototypes + training, results.json), given as arguments because the runs are not part of the repository.

    python docs/results/round25/decide.py --cand-s 1207.0 1226.4 --ref-s 507.6 510.5 [--out decision.json]
"""
import argparse
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
R24 = os.path.join(HERE, "..", "round24")
SEEDS = ("", "-seed1")
SCORE = "zsum0.25k25"
GAIN = "tiny_real_pastes"
HARM = ["all", "perlin_unseen_textures", "extended_unseen_defects", "extended_in_context", "small_unseen_spots",
        "swap_unseen_shapes", "real_defects"]
PIXEL = ("pixel_auroc", "aupro")


def load(folder: str, name: str) -> list:
    """The score files <name><seed>.json in `folder`, seed 0 first."""
    return [json.load(open(os.path.join(folder, f"{name}{s}.json"))) for s in SEEDS]


def decide(cand: list, ref: list, cost: float) -> dict:
    """The rules on the candidate's and the reference's score files (seed 0 first) and the cost ratio."""
    for c, r in zip(cand, ref):
        assert c["test_images"] == r["test_images"], "the two proxies must hold the same number of images"

    def image(files, group):
        return [f["image_auroc"][SCORE][group] for f in files]

    def pixel(files, metric):
        return [f["metrics"]["prnet"][metric] for f in files]

    diff = {g: float(np.mean(np.subtract(image(cand, g), image(ref, g)))) for g in [GAIN] + HARM}
    per_seed = {g: [float(x) for x in np.subtract(image(cand, g), image(ref, g))] for g in [GAIN] + HARM}
    pix = {m: float(np.mean(np.subtract(pixel(cand, m), pixel(ref, m)))) for m in PIXEL}
    rules = {
        "1": {f"{GAIN} >= +0.02": diff[GAIN] >= 0.02},
        "2": {**{f"{g} >= -0.005": diff[g] >= -0.005 for g in HARM},
              **{f"all {m} >= -0.003": pix[m] >= -0.003 for m in PIXEL}},
        "3": {"training time <= 3x": cost <= 3.0},
    }
    passes = all(v for part in rules.values() for v in part.values())
    return {"image_auroc_diff": diff, "per_seed": per_seed, "pixel_diff": pix, "cost_ratio": cost,
            "rules": {k: {n: bool(v) for n, v in p.items()} for k, p in rules.items()}, "passes": passes}


def report(d: dict) -> None:
    print(f"candidate - reference, {SCORE} image AUROC, mean of seeds 0 and 1 (per seed):")
    for g, x in d["image_auroc_diff"].items():
        print(f"  {g:26s} {x:+.4f}  ({' '.join(f'{y:+.4f}' for y in d['per_seed'][g])})")
    print("  head's map on all: " + ", ".join(f"{m} {x:+.4f}" for m, x in d["pixel_diff"].items()))
    print(f"  training time: {d['cost_ratio']:.2f} times the reference's")
    for name, parts in d["rules"].items():
        broken = [k for k, v in parts.items() if not v]
        print(f"  rule {name}: {'holds' if not broken else 'fails: ' + '; '.join(broken)}")
    print(f"  verdict: {'BSData test runs at 256x640' if d['passes'] else 'nothing changes (BSData stays at 256x256)'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cand-s", type=float, nargs=2, required=True, help="candidate's seconds, seeds 0 and 1")
    ap.add_argument("--ref-s", type=float, nargs=2, required=True, help="reference's seconds, seeds 0 and 1")
    ap.add_argument("--out", help="write the decision here as JSON")
    args = ap.parse_args()
    d = decide(load(HERE, "W_bs_wide25"), load(R24, "V_bs_ratio25"), float(np.mean(args.cand_s) / np.mean(args.ref_s)))
    report(d)
    if args.out:
        json.dump(d, open(args.out, "w"), indent=2)


if __name__ == "__main__":
    main()
