"""Round 29 (docs/experiments.md): the run's head, trained at 256x256, reads each image a second time at another
size (256x640, BSData's aspect) with a prototype bank built at that size from the same normal training images (the
run's seed and settings); s_mw is that read's map0.5 top-k mean (p · r^0.5, as s_m), each training image held out
for its statistics as for s_m. Fused with the run's own parts from its score_fusion --per-image file (s_m_k25,
s_knn; the test images checked to be the same, in the same order):

    zsum0.25k25     z(log s_m) + 0.25 · z(log s_knn)                        (today's default image score)
    zsum0.25k25w<a> z(log s_m) + a · z(log s_mw) + 0.25 · z(log s_knn)      (a in WEIGHTS)
    mw              s_mw alone

    PYTHONPATH=.:benchmarks python docs/results/round29/second_read.py --checkpoint <run>/bsdata/last.pt \
        --parts P_bs_<run>.json --prototypes protos_w --out S_bs_<run>.json

Image AUROC per group as score_fusion.py --subsets scores them; also the time of each part.
"""
import argparse
import copy
import json
import sys
import time

import numpy as np
import torch

from prnet.datasets import build_test_dataset, normal_train_set
from prnet.engine.checkpoint import model_from_checkpoint
from prnet.engine.prototypes import ensure_prototypes
from prnet.metrics import image_auroc
from score_fusion import maps_of, score_groups, topk_mean, zscores

WEIGHTS = (0.25, 0.5, 1.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--parts", required=True, help="the run's score_fusion.py --per-image file")
    ap.add_argument("--size", default="256,640", help="H,W of the second read")
    ap.add_argument("--topk", type=int, default=25)
    ap.add_argument("--prototypes", required=True, help="prototypes.dir for the bank at the second size")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    dev = torch.device("cpu")
    t0 = time.perf_counter()
    model, cfg, _ = model_from_checkpoint(args.checkpoint, dev)
    category = cfg.data.classes[0]
    cw = copy.deepcopy(cfg)
    cw.data.image_size = [int(v) for v in args.size.split(",")]
    cw.prototypes.dir = args.prototypes
    model.bank = ensure_prototypes(cw, category, dev).to(dev)  # built once per seed and settings, then loaded
    t1 = time.perf_counter()
    train, test = normal_train_set(cw, category), build_test_dataset(cw, category)
    parts = json.load(open(args.parts))
    if [s.name for s in test.samples] != [im["name"] for im in parts["images"]]:
        sys.exit(f"{args.parts}: not the same test images as {args.checkpoint} read at {args.size}")
    kw = dict(sigma=cfg.eval.sigma, batch=16, device=dev)
    p_tr, r_tr, _ = maps_of(model, train, leave_one_out=True, desc="train normals", **kw)
    p_te, r_te, _ = maps_of(model, test, leave_one_out=False, desc="test", **kw)
    scale = [r.mean() for r in r_tr]  # each scale's residual divided by its mean over the training images
    r_tr = np.mean([r / s for r, s in zip(r_tr, scale)], axis=0)
    r_te = np.mean([r / s for r, s in zip(r_te, scale)], axis=0)
    mw = (topk_mean(p_te * np.sqrt(r_te), args.topk), topk_mean(p_tr * np.sqrt(r_tr), args.topk))
    t2 = time.perf_counter()
    raw = {k: (np.array(parts["raw_parts"]["test"][k]), np.array(parts["raw_parts"]["train"][k]))
           for k in ("s_m_k25", "s_knn")}
    z_m, z_k, z_w = zscores(*raw["s_m_k25"]), zscores(*raw["s_knn"]), zscores(*mw)
    rules = {"zsum0.25k25": z_m + 0.25 * z_k, "mw": mw[0]}
    for a in WEIGHTS:
        rules[f"zsum0.25k25w{a:g}"] = z_m + a * z_w + 0.25 * z_k
    check = np.array([im["scores"]["zsum0.25k25"] for im in parts["images"]])
    if not np.allclose(rules["zsum0.25k25"], check, atol=1e-4):  # the parts give the run's own score back
        sys.exit(f"{args.parts}: its raw parts do not give its zsum0.25k25 back")
    labels = np.array([im["label"] for im in parts["images"]])
    defects = np.array([im["defect"] for im in parts["images"]])
    groups = score_groups(defects, True)
    result = {"checkpoint": args.checkpoint, "parts": args.parts, "size": args.size, "topk": args.topk,
              "seconds": {"bank": t1 - t0, "second_read": t2 - t1},
              "image_auroc": {n: {g: float(image_auroc(s[sel], labels[sel])) for g, sel in groups.items()}
                              for n, s in rules.items()},
              "s_mw": {"test": mw[0].tolist(), "train": mw[1].tolist()}}
    for n, row in result["image_auroc"].items():
        print(f"{n:18s} " + " ".join(f"{g[:12]} {v:.4f}" for g, v in row.items()))
    json.dump(result, open(args.out, "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
