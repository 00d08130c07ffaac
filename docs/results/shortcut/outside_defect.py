"""Diagnostic (docs/experiments.md, "what image AUROC rewards on the two shared data sets"): how well each image
score separates a test run's defective images from its normal ones when the defect itself is hidden from the score.

For one trained run (its checkpoint, test split minus its few-shot draw, normal training images) it computes the
maps behind the image scores at the run's size: the head's map p, the prototype residual r (as
benchmarks/score_fusion.py: per scale over its mean on the held-out training images, scales averaged), map0.5's
m = p * r^0.5, and the PatchCore-style baseline's map (benchmarks/patchcore.py, sigma 4, fitted on the run's normal
training images). Each is scored as its image score is (s_m and s_r: top-k mean, eval.topk; the baseline: the
map's maximum) and also with the defect masked out: the ground-truth mask, resized to the run's size and dilated
by D pixels, excluded from the top-k / maximum (normal images are unchanged, so hiding can only lower a defective
image's score). A score that still ranks defective images above normal ones without their defect ranks them by
something else in the image (on BSData the pitted shots are late ones, the normal shots early ones).
Also scored: each map's mean over the image outside the dilated mask (a global, defect-blind statistic). The
helpers and the dilations are benchmarks/shortcut_check.py's, which checks a data set with the baseline alone.

    PYTHONPATH=.:benchmarks python docs/results/shortcut/outside_defect.py \
        --checkpoint RUN/bsdata/last.pt --data <bsdata parent> [--dilate none,16,48] [--out F.json]

Prints image AUROC per score and dilation, for every defective image and per pit-size bin (pixels of the original
shot, as by_pit_size.py), each bin against every normal test image. The table of docs/experiments.md, from the
files of several runs:

    python docs/results/shortcut/outside_defect.py --table O_*.json
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from sklearn.metrics import roc_auc_score

from prnet.datasets import build_test_dataset, load_mask, normal_train_set
from prnet.engine.checkpoint import model_from_checkpoint
from prnet.utils import resolve_device
from score_fusion import knn_scores, run_maps, topk_mean, use_run_bank, zscores
from shortcut_check import dilated, hidden_topk, outside_mean

BINS = [(0, 130), (130, 500), (500, None)]  # pit area in pixels of the original shot (by_pit_size.py's bins)


TABLE = ["one read: z(s_m) + 0.25 z(s_knn)", "s_m (top-k of map0.5)", "s_r (top-k of the residual)",
         "s_knn (the baseline)"]  # each: as scored -> hidden by 48 px
BLIND = ["mean of r outside", "mean of p outside"]  # defect-blind, 48 px


def table(files: list[str]) -> None:
    """One row per run file: each TABLE score as scored and with the pits hidden by 48 px, then the BLIND statistics,
    for every pit and (in brackets) for the pits under 130 px."""
    print("| run | " + " | ".join(f"{n}: as scored → hidden 48 px" for n in TABLE) + " | "
          + " | ".join(f"{n}, 48 px" for n in BLIND) + " |")
    print("|:---|" + "---:|" * (len(TABLE) + len(BLIND)))
    for f in files:
        a = json.load(open(f))["auroc"]
        cells = [f"{a['dilate none'][n]['all']:.3f} → {a['dilate 48'][n]['all']:.3f} "
                 f"({a['dilate none'][n]['0-130']:.3f} → {a['dilate 48'][n]['0-130']:.3f})" for n in TABLE]
        cells += [f"{a['dilate 48'][n]['all']:.3f} ({a['dilate 48'][n]['0-130']:.3f})" for n in BLIND]
        print(f"| {f} | " + " | ".join(cells) + " |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--table", nargs="+", metavar="FILE", help="print the table of these files' results and stop")
    ap.add_argument("--checkpoint")
    ap.add_argument("--data", help="data.root to read instead of the checkpoint's")
    ap.add_argument("--dilate", default="none,16,48",
                    help="mask dilations in pixels at the run's size; none: nothing hidden (the scores as they are)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.table:
        table(args.table)
        return 0
    if not args.checkpoint:
        ap.error("--checkpoint is required (or --table)")
    device = resolve_device("cpu")
    model, cfg, _ = model_from_checkpoint(args.checkpoint, device)
    if args.data:
        cfg.data.root = args.data
    category, k = cfg.data.classes[0], cfg.eval.topk
    test, train = build_test_dataset(cfg, category), normal_train_set(cfg, category)
    use_run_bank(model, cfg, category, args.checkpoint, device)
    p_train, r_train, p_test, r_test, _ = run_maps(model, train, test, sigma=cfg.eval.sigma, batch=args.batch,
                                                   device=device)
    m_train, m_test = p_train * np.sqrt(r_train), p_test * np.sqrt(r_test)
    knn_test, knn_train, d_test, _ = knn_scores(cfg, train, test, device, args.batch, train_maps=False)
    tm_train = topk_mean(m_train, k)

    labels = np.array([s.label for s in test.samples])
    masks = np.stack([test.mask(i) for i in range(len(test))]) > 0.5
    area = np.array([load_mask(s.mask_path).sum() if s.mask_path else 0 for s in test.samples])
    result = {"checkpoint": args.checkpoint, "category": category, "topk": k, "normal": int((labels == 0).sum()),
              "defective": int(labels.sum()), "bins": {}, "auroc": {}}
    bins = {"all": labels == 1}
    for a, b in BINS:
        bins[f"{a}-{b or ''}"] = (labels == 1) & (area >= a) & (area < (b or np.inf))
    result["bins"] = {name: int(sel.sum()) for name, sel in bins.items()}
    for d in args.dilate.split(","):
        if d == "none":
            hide = np.zeros_like(masks)
        else:
            hide = dilated(masks, int(d))
        s_m, s_r, s_knn = hidden_topk(m_test, hide, k), hidden_topk(r_test, hide, k), hidden_topk(d_test, hide, 1)
        scores = {"s_m (top-k of map0.5)": s_m, "s_r (top-k of the residual)": s_r, "s_knn (the baseline)": s_knn,
                  "one read: z(s_m) + 0.25 z(s_knn)": zscores(s_m, tm_train) + 0.25 * zscores(s_knn, knn_train),
                  "mean of r outside": outside_mean(r_test, hide), "mean of the baseline's map outside":
                  outside_mean(d_test, hide), "mean of p outside": outside_mean(p_test, hide)}
        if d == "none":
            assert np.allclose(s_knn, knn_test, rtol=1e-5), "the baseline's score is its map's maximum"
        row = result["auroc"][f"dilate {d}"] = {}
        for name, s in scores.items():
            row[name] = {b: float(roc_auc_score(labels[(labels == 0) | sel], s[(labels == 0) | sel]))
                         for b, sel in bins.items()}
    print(f"{category}: {result['normal']} normal, defective per bin {result['bins']}")
    for dil, row in result["auroc"].items():
        print(f"defect hidden, {dil} px | " + " | ".join(bins))
        for name, v in row.items():
            print(f"  {name:<40} " + " ".join(f"{x:.3f}" for x in v.values()))
    if args.out:
        json.dump(result, open(args.out, "w"), indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
