"""Round 20's rules (docs/experiments.md), applied to the score files: grey25 against ratio25, seeds 0-3 paired.

    python docs/results/round20/decide.py [decision.json]
"""
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
R18, R19 = os.path.join(HERE, "..", "round18"), os.path.join(HERE, "..", "round19")
cand = [os.path.join(R19, "G_mt_grey25.json"), os.path.join(R19, "G_mt_grey25-seed1.json"),
        os.path.join(HERE, "G_mt_grey25-seed2.json"), os.path.join(HERE, "G_mt_grey25-seed3.json")]
ref = [os.path.join(R18, "Q_mt_ratio25.json"), os.path.join(R18, "Q_mt_ratio25-seed1.json"),
       os.path.join(R18, "Q_mt_ratio25-seed2.json"), os.path.join(HERE, "G_mt_ratio25-seed3.json")]
grey = {}
for folder in (R19, HERE):
    for r in json.load(open(os.path.join(folder, "proxy_grey_perlin.json")))["rows"]:
        grey[r["variant"]] = r
cv = ["grey25", "grey25-seed1", "grey25-seed2", "grey25-seed3"]
rv = ["ratio25", "ratio25-seed1", "ratio25-seed2", "ratio25-seed3"]
C = [json.load(open(f)) for f in cand]
R = [json.load(open(f)) for f in ref]
JUDGED = ["extended_unseen_defects", "extended_in_context", "swap_unseen_shapes"]
def img(d, g): return d["image_auroc"]["zsum0.25"][g]
def pix(d, g, k): return d["pixel_by_group"]["prnet"][g][k]
out, fails = {"figures": {}, "rules": {}}, []
def fig(name, c, r):
    c, r = np.array(c), np.array(r)
    out["figures"][name] = {"candidate": c.tolist(), "reference": r.tolist(), "diff": (c - r).tolist(),
                            "mean_diff": float((c - r).mean())}
    print(f"{name:<42} {' / '.join(f'{x:.4f}' for x in c)}  |  {' / '.join(f'{x:.4f}' for x in r)}  "
          f"mean diff {float((c - r).mean()):+.4f}  per seed {' '.join(f'{x:+.4f}' for x in c - r)}")
    return c - r
d = fig("pixel_auroc:real_defects", [pix(x, "real_defects", "pixel_auroc") for x in C], [pix(x, "real_defects", "pixel_auroc") for x in R])
r1 = {"mean >= +0.01": bool(d.mean() >= 0.01), "seeds 2,3 mean > 0": bool(d[2:].mean() > 0),
      "no seed below -0.02": bool(d.min() >= -0.02)}
d = fig("aupro:real_defects", [pix(x, "real_defects", "aupro") for x in C], [pix(x, "real_defects", "aupro") for x in R])
r1["aupro mean >= -0.005"] = bool(d.mean() >= -0.005)
r2 = {}
for g in ["real_defects"] + JUDGED:
    d = fig(f"image_auroc:{g}", [img(x, g) for x in C], [img(x, g) for x in R])
    r2[f"image_auroc:{g} within 0.005"] = bool(d.mean() >= -0.005)
for g in JUDGED:
    d = fig(f"pixel_auroc:{g}", [pix(x, g, "pixel_auroc") for x in C], [pix(x, g, "pixel_auroc") for x in R])
    r2[f"pixel_auroc:{g} within 0.005"] = bool(d.mean() >= -0.005)
for k in ("image_auroc", "pixel_auroc", "aupro"):
    d = fig(f"grey_perlin:{k}", [grey[v][k] for v in cv], [grey[v][k] for v in rv])
    r2[f"grey_perlin:{k} within 0.005"] = bool(d.mean() >= -0.005)
print("-- reported, not judged")
for g in ("all", "perlin_unseen_textures", "small_unseen_spots"):
    fig(f"image_auroc:{g}", [img(x, g) for x in C], [img(x, g) for x in R])
    fig(f"pixel_auroc:{g}", [pix(x, g, "pixel_auroc") for x in C], [pix(x, g, "pixel_auroc") for x in R])
    fig(f"aupro:{g}", [pix(x, g, "aupro") for x in C], [pix(x, g, "aupro") for x in R])
out["rules"] = {"rule 1": r1, "rule 2": r2}
out["verdict"] = "passes" if all(r1.values()) and all(r2.values()) else "fails"
print(json.dumps(out["rules"], indent=1)); print("verdict:", out["verdict"])
if len(sys.argv) > 1:
    json.dump(out, open(sys.argv[1], "w"), indent=1)
