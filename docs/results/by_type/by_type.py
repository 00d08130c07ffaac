"""The Magnetic Tile proxy's ten real defect images by defect type, from the committed score files of the training
rounds 34-38 and 40: each type's pixel AUROC of the default map (pq99) in the reference runs (`ratio25`: seeds 0-5
of rounds 34 and 37, seeds 6 and 7 in this folder, made after round 38 with the same command), and each round's
candidate minus the reference of the same seed, per type and over three summaries of the real images: the pooled
`real_defects` figure the rounds were judged on, the mean over the five types, and the mean over the four types
other than `break`. A reading of recorded figures only; nothing is chosen on it (docs/experiments.md).

    PYTHONPATH=.:benchmarks python docs/results/by_type/by_type.py [by_type.json]
"""
import json
import os
import sys

import numpy as np

from proxy_rules import IMAGE_RULE, PIXEL_RULE, REAL_TYPES as TYPES, figures, seed_suffix

RESULTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = {s: ("round34" if s < 3 else "round37" if s < 6 else "by_type", "ratio25") for s in range(8)}
CANDIDATES = {"zfill": ("round34", range(3)), "shade_add": ("round35", range(3)), "zhalf": ("round36", range(3)),
              "swa50": ("round37", range(6)), "jit20": ("round38", range(2)), "spot_add": ("round40", range(1))}


def groups(folder: str, variant: str, seed: int) -> dict:
    """{type or real_defects: pixel AUROC of the default map} in one committed score file."""
    path = os.path.join(RESULTS, folder, f"Z_mt_{variant}{seed_suffix(seed)}.json")
    got = figures(path, IMAGE_RULE, (), PIXEL_RULE, (*TYPES, "real_defects"))
    return {k: got[f"pixel_auroc:{k}"] for k in (*TYPES, "real_defects")}


def main(argv) -> int:
    reference = {s: groups(*REFERENCE[s], s) for s in REFERENCE}
    out = {"reference": {t: [reference[s][t] for s in REFERENCE] for t in (*TYPES, "real_defects")}, "rounds": {}}
    print(f"reference ratio25, pixel AUROC at seeds {','.join(map(str, REFERENCE))}:")
    for t, v in out["reference"].items():
        print(f"  {t:13s} " + " / ".join(f"{x:.3f}" for x in v))
    for variant, (folder, seeds) in CANDIDATES.items():
        diff = {s: {k: groups(folder, variant, s)[k] - reference[s][k] for k in (*TYPES, "real_defects")}
                for s in seeds}
        entry = {"seeds": list(seeds), "by_type": {t: [diff[s][t] for s in seeds] for t in (*TYPES, "real_defects")},
                 "pooled": float(np.mean([diff[s]["real_defects"] for s in seeds])),
                 "type_mean": float(np.mean([np.mean([diff[s][t] for t in TYPES]) for s in seeds])),
                 "without_break": [float(np.mean([diff[s][t] for t in TYPES if t != "break"])) for s in seeds]}
        out["rounds"][f"{variant} ({folder})"] = entry
        print(f"{variant} ({folder}) - ratio25, seeds {','.join(map(str, seeds))}: pooled {entry['pooled']:+.4f}, "
              f"mean of the types {entry['type_mean']:+.4f}, four types without break "
              f"{np.mean(entry['without_break']):+.4f} (up at {sum(x > 0 for x in entry['without_break'])} of "
              f"{len(seeds)} seeds); break " + " / ".join(f"{x:+.3f}" for x in entry["by_type"]["break"]))
    if argv:
        with open(argv[0], "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
