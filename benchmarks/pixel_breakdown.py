"""Where a run's pooled pixel AUROC is lost: against the normal images' pixels, or against the normal regions of
the defective images. Reads a test split after its decisions; nothing is chosen on it.

    python benchmarks/pixel_breakdown.py --checkpoint RUN/<category>/last.pt [--test-as SIBLING.pt] [--out F.json]

For the head's map, the run's released anomaly map when that is another (eval.anomaly_map, e.g. head_knn, with the
checkpoint's own table and lift: what the evaluation scores) and the baseline's map (real_data.py's PatchCore-style
nearest-neighbour distance on the run's backbone, its memory made from the run's normal training images) it reports:

- pooled: the pixel AUROC as the evaluation computes it (every defect pixel against every normal pixel);
- vs_normal_images: the defect pixels against the pixels of the normal test images only;
- vs_defect_backgrounds: the defect pixels against the normal pixels of the defective images only;
- background_above_q99: the share of the defective images' normal pixels above the 99th percentile of the normal
  images' pixels (1 % if both kinds of normal pixel looked alike to the map);
- above_q99_median_distance, above_q99_beyond_24px: for those pixels of the defective images' normal regions, the
  median distance (in pixels of the evaluated image) to the nearest defect pixel of the same image, and the share
  farther than 24 px: a halo around the defects stays near them, a surface raised over the whole image does not;
  above_q99_per_image_median: the median over the defective images of each one's share of such pixels;
- per defect type: vs_normal_images, background_above_q99, the two distance figures and its number of defect pixels.

A pooled figure far below vs_normal_images says the map scores the surroundings of defects (or the defective
images as a whole) above normal images: there the pooled pixel AUROC measures that, more than the defects.
`--test-as` scores the test images of another run's evaluation (a 0-shot run on its 10-shot sibling's test set, as
real_data.py scores it).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

import numpy as np

from prnet.metrics import image_auroc


def _auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(pos > neg) + P(pos == neg) / 2, exact, for two sets of pixel values."""
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    return float(image_auroc(np.concatenate([pos, neg]),
                             np.concatenate([np.ones(pos.size, bool), np.zeros(neg.size, bool)])))


def _distance_to_defect(masks: np.ndarray) -> np.ndarray:
    """N×H×W float: each pixel's Euclidean distance to the nearest defect pixel of its image (inf without one)."""
    from scipy.ndimage import distance_transform_edt

    return np.stack([distance_transform_edt(~m) if m.any() else np.full(m.shape, np.inf) for m in masks])


def _where_above(maps: np.ndarray, masks: np.ndarray, dist: np.ndarray, q99: float) -> dict:
    """The distance figures of the normal pixels above q99 in defective images `maps` with their `masks`."""
    above = (maps > q99) & ~masks
    d = dist[above]
    shares = above.reshape(len(maps), -1).sum(1) / np.maximum(1, (~masks).reshape(len(maps), -1).sum(1))
    out = {"above_q99_per_image_median": float(np.median(shares))}
    if d.size == 0:
        return {"above_q99_median_distance": float("nan"), "above_q99_beyond_24px": float("nan"), **out}
    return {"above_q99_median_distance": float(np.median(d)), "above_q99_beyond_24px": float((d > 24).mean()), **out}


def breakdown(maps: np.ndarray, masks: np.ndarray, defects: Sequence[str]) -> dict:
    """The figures of the module docstring for N×H×W `maps` and {0,1} `masks`; `defects`: each image's type,
    "good" for normal images."""
    defects = np.asarray(defects)
    masks = masks.astype(bool)
    normal = defects == "good"
    if not normal.any() or normal.all():
        raise ValueError("breakdown: needs normal and defective images")
    defect_pixels = maps[masks]
    good = maps[normal].ravel()
    background = maps[~normal][~masks[~normal]]
    q99 = float(np.quantile(good, 0.99))
    dist = _distance_to_defect(masks[~normal])
    out = {"pooled": _auroc(defect_pixels, np.concatenate([good, background])),
           "vs_normal_images": _auroc(defect_pixels, good),
           "vs_defect_backgrounds": _auroc(defect_pixels, background),
           "background_above_q99": float((background > q99).mean()) if background.size else float("nan"),
           **_where_above(maps[~normal], masks[~normal], dist, q99), "per_type": {}}
    for t in sorted(set(defects[~normal].tolist())):
        sel = defects == t
        out["per_type"][t] = {"vs_normal_images": _auroc(maps[sel][masks[sel]], good),
                              "background_above_q99": float((maps[sel][~masks[sel]] > q99).mean()),
                              **_where_above(maps[sel], masks[sel], dist[sel[~normal]], q99),
                              "defect_pixels": int(masks[sel].sum())}
    return out


def released_maps(model, cfg, dataset, device, batch: int) -> np.ndarray:
    """N×H×W: the anomaly maps the evaluation scores (eval.anomaly_map with the run's eval settings)."""
    from torch.utils.data import DataLoader

    from prnet.engine.evaluator import predict_maps

    out = []
    for b in DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=0):
        maps, _ = predict_maps(model, b["image"].to(device), topk=cfg.eval.topk, sigma=cfg.eval.sigma,
                               image_score="map", anomaly_map=cfg.eval.anomaly_map, knn_lift=cfg.eval.knn_lift)
        out.append(maps[:, 0].cpu().numpy())
    return np.concatenate(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from prnet.datasets import build_test_dataset, normal_train_set
    from prnet.engine.checkpoint import load_checkpoint, model_from_checkpoint
    from prnet.utils import atomic_write, resolve_device, setup_logging
    from score_fusion import knn_scores, maps_of

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--test-as", metavar="CHECKPOINT", help="take the test images of this run's evaluation")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--no-knn", dest="knn", action="store_false", help="the head's map only")
    p.add_argument("--out")
    args = p.parse_args(argv)
    setup_logging()
    device = resolve_device(args.device)
    model, cfg, _ = model_from_checkpoint(args.checkpoint, device)
    category = cfg.data.classes[0]
    test_cfg = load_checkpoint(args.test_as)["config_obj"] if args.test_as else cfg
    if test_cfg.data.classes[0] != category:
        raise SystemExit(f"--test-as {args.test_as}: another category than {args.checkpoint}")
    test = build_test_dataset(test_cfg, category)
    head, _, _ = maps_of(model, test, sigma=cfg.eval.sigma, batch=args.batch, device=device, leave_one_out=False,
                         desc="test")
    maps = {"head": head}
    if cfg.eval.anomaly_map != "head":
        maps[cfg.eval.anomaly_map] = released_maps(model, cfg, test, device, args.batch)
    if args.knn:
        maps["knn"] = knn_scores(cfg, normal_train_set(cfg, category), test, device, args.batch)[2]
    masks = np.stack([test.mask(i) for i in range(len(test))])
    defects = [s.defect for s in test.samples]
    result = {"checkpoint": args.checkpoint, "category": category, "test_images": len(test),
              "maps": {name: breakdown(m, masks, defects) for name, m in maps.items()}}
    for name, r in result["maps"].items():
        print(f"{name:<8} pooled {r['pooled']:.4f}  vs normal images {r['vs_normal_images']:.4f}  vs defect "
              f"backgrounds {r['vs_defect_backgrounds']:.4f}  backgrounds above the normal q99 "
              f"{r['background_above_q99']:.3f} (median distance to the defect "
              f"{r['above_q99_median_distance']:.0f} px, beyond 24 px {r['above_q99_beyond_24px']:.2f})")
        for t, row in r["per_type"].items():
            print(f"         {t:<12} vs normal images {row['vs_normal_images']:.4f}  backgrounds above q99 "
                  f"{row['background_above_q99']:.3f} (distance {row['above_q99_median_distance']:.0f} px)  "
                  f"({row['defect_pixels']} defect pixels)")
    if args.out:
        atomic_write(args.out, lambda tmp: json.dump(result, open(tmp, "w", encoding="utf-8"), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
