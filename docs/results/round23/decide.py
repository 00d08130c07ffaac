"""Round 23's rules (docs/experiments.md), applied to the score files: zsum0.25k10 and zsum0.25k25 against the
released zsum0.25 of the same runs (image AUROC), Magnetic Tile proxy seeds 0-3 and BSData proxy seeds 0-1.

    python docs/results/round23/decide.py [decision.json]
"""
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RUNS = {"magnetic_tile": [f"U_mt_ratio25{s}.json" for s in ("", "-seed1", "-seed2", "-seed3")],
        "bsdata": [f"U_bs_ratio25{s}.json" for s in ("", "-seed1")]}
FILES = {proxy: [json.load(open(os.path.join(HERE, f))) for f in names] for proxy, names in RUNS.items()}
REFERENCE, CANDIDATES = "zsum0.25", ("zsum0.25k10", "zsum0.25k25")
TINY = "tiny_unseen_spots"
HARM = ["all", "perlin_unseen_textures", "extended_unseen_defects", "swap_unseen_shapes", "extended_in_context",
        "small_unseen_spots", "real_defects"]


def mean_diff(proxy: str, rule: str, group: str) -> float:
    """The candidate minus the reference, image AUROC on `group`, mean over the proxy's seeds (paired)."""
    return float(np.mean([f["image_auroc"][rule][group] - f["image_auroc"][REFERENCE][group] for f in FILES[proxy]]))


decision = {}
for rule in CANDIDATES:
    tiny = {proxy: mean_diff(proxy, rule, TINY) for proxy in FILES}
    average = float(np.mean(list(tiny.values())))
    rule1 = {"average of the proxies' tiny gains >= +0.005": average >= 0.005,
             **{f"{proxy} tiny gain >= 0": g >= 0 for proxy, g in tiny.items()}}
    harm = {proxy: {g: mean_diff(proxy, rule, g) for g in HARM} for proxy in FILES}
    rule2 = {f"{proxy} {g} >= -0.005": d >= -0.005 for proxy, row in harm.items() for g, d in row.items()}
    passes = all(rule1.values()) and all(rule2.values())
    decision[rule] = {"tiny": tiny, "tiny_average": average, "harm": harm, "passes": passes,
                      "rules": {"1": {k: bool(v) for k, v in rule1.items()},
                                "2": {k: bool(v) for k, v in rule2.items()}}}
    print(f"{rule}: tiny {' '.join(f'{p} {g:+.4f}' for p, g in tiny.items())} (average {average:+.4f})")
    for proxy, row in harm.items():
        print(f"  {proxy}: " + ", ".join(f"{g} {d:+.4f}" for g, d in row.items()))
    for name, parts in decision[rule]["rules"].items():
        broken = [k for k, v in parts.items() if not v]
        print(f"  rule {name}: {'holds' if not broken else 'fails: ' + '; '.join(broken)}")
    print(f"  verdict: {'passes' if passes else 'fails'}")
passing = [r for r in CANDIDATES if decision[r]["passes"]]
if len(passing) == 2:  # rule 3: the larger tiny average; within 0.002, k = 25
    a10, a25 = decision["zsum0.25k10"]["tiny_average"], decision["zsum0.25k25"]["tiny_average"]
    chosen = "zsum0.25k10" if a10 > a25 + 0.002 else "zsum0.25k25"
else:
    chosen = passing[0] if passing else None
print(f"chosen: {chosen or 'none (nothing changes)'}")
if len(sys.argv) > 1:
    json.dump({"candidates": decision, "chosen": chosen}, open(sys.argv[1], "w"), indent=2)
