"""Round 33's rules (docs/experiments.md), applied to the score files: pq99rank (the default anomaly map, pq99,
weighed by the image's rank among the normal training images) against pq99 of the same runs; Magnetic Tile proxy
`ratio25` seeds 0-2 (0 real anomalies), BSData wide proxy `z256` seeds 0 and 1 (0 real anomalies) and `fs256` seeds
0 and 1 (5 real anomalies). A setting whose score files are missing is reported as not scored (the BSData runs
were not scored once the Magnetic Tile proxy had failed rule 2: the verdict could no longer change).

    python docs/results/round33/decide.py [decision.json]
"""
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CAND, REF = "pq99rank", "pq99"
RUNS = {"Magnetic Tile, 0 real anomalies": [f"F_mt_ratio25{s}.json" for s in ("", "-seed1", "-seed2")],
        "BSData, 0 real anomalies": [f"F_bs_z256{s}.json" for s in ("", "-seed1")],
        "BSData, 5 real anomalies": [f"F_bs_fs256{s}.json" for s in ("", "-seed1")]}
SUBSETS = ["perlin_unseen_textures", "extended_unseen_defects", "swap_unseen_shapes", "extended_in_context",
           "small_unseen_spots", "tiny_unseen_spots", "tiny_real_pastes", "faint_real_pastes"]


def load(names):
    """The setting's score files, or None when they are not all there."""
    paths = [os.path.join(HERE, n) for n in names]
    return [json.load(open(p)) for p in paths] if all(os.path.exists(p) for p in paths) else None


def diff(files, group, key):
    """The candidate minus the reference, per run."""
    return np.array([f["pixel_by_group"][CAND][group][key] - f["pixel_by_group"][REF][group][key] for f in files])


def no_harm(files, real_defects_too):
    """Rule 2 on one setting (means over its runs): {part: holds}."""
    out = {"pixel_auroc all within 0.003": diff(files, "all", "pixel_auroc").mean() >= -0.003,
           "aupro all within 0.003": diff(files, "all", "aupro").mean() >= -0.003}
    err_c = np.mean([1 - f["pixel_by_group"][CAND]["all"]["aupro"] for f in files])
    err_r = np.mean([1 - f["pixel_by_group"][REF]["all"]["aupro"] for f in files])
    out["aupro error on all at most +3 %"] = err_c <= 1.03 * err_r
    for g in SUBSETS:
        if g in files[0]["pixel_by_group"][REF]:
            out[f"pixel_auroc {g} within 0.005"] = diff(files, g, "pixel_auroc").mean() >= -0.005
    if real_defects_too:
        out["real_defects pixel_auroc within 0.002"] = diff(files, "real_defects", "pixel_auroc").mean() >= -0.002
        out["real_defects aupro within 0.005"] = diff(files, "real_defects", "aupro").mean() >= -0.005
    return {k: bool(v) for k, v in out.items()}


def main():
    loaded = {name: load(files) for name, files in RUNS.items()}
    sets = {name: files for name, files in loaded.items() if files is not None}
    mt = sets["Magnetic Tile, 0 real anomalies"]
    gain, aupro = diff(mt, "real_defects", "pixel_auroc"), diff(mt, "real_defects", "aupro")
    rules = {"1": {"real_defects pixel AUROC mean >= +0.003": bool(gain.mean() >= 0.003),
                   "no seed below -0.002": bool((gain >= -0.002).all()),
                   "real_defects AUPRO mean >= -0.005": bool(aupro.mean() >= -0.005)},
             "2": {name: no_harm(files, real_defects_too=name.startswith("BSData")) for name, files in sets.items()}}
    missing = [name for name, files in loaded.items() if files is None]
    failed = not all(rules["1"].values()) or not all(all(v.values()) for v in rules["2"].values())
    passes = not failed and not missing  # a pass needs every setting; a failure needs only one
    figures = {name: {g: {k: diff(files, g, k).tolist() for k in ("pixel_auroc", "aupro")}
                      for g in files[0]["pixel_by_group"][REF]} for name, files in sets.items()}
    print(f"{CAND} - {REF}: Magnetic Tile real_defects pixel AUROC per seed "
          f"{' '.join(f'{x:+.4f}' for x in gain)} (mean {gain.mean():+.4f}); AUPRO "
          f"{' '.join(f'{x:+.4f}' for x in aupro)} (mean {aupro.mean():+.4f})")
    for name, rows in figures.items():
        for g in ("all", "real_defects"):
            print(f"  {name}, {g}: pixel AUROC {np.mean(rows[g]['pixel_auroc']):+.4f}, "
                  f"AUPRO {np.mean(rows[g]['aupro']):+.4f}")
    for rule, parts in rules.items():
        flat = parts if rule == "1" else {f"{p}: {k}": v for p, d in parts.items() for k, v in d.items()}
        broken = [k for k, v in flat.items() if not v]
        print(f"rule {rule}: {'holds' if not broken else 'fails: ' + '; '.join(broken)}")
    for name in missing:
        print(f"not scored: {name}")
    print(f"verdict: {'passes' if passes else 'fails' if failed else 'open (settings not scored)'}")
    if len(sys.argv) > 1:
        json.dump({"rules": rules, "passes": passes, "not_scored": missing, "differences_per_run": figures},
                  open(sys.argv[1], "w"), indent=2)


if __name__ == "__main__":
    main()
