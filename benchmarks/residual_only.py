"""How well the prototype residual alone finds and outlines defects, without the trained head (issue: does the head
lose what the residual already gives?).

    python benchmarks/residual_only.py --data ../shared/data --category bsdata --size 256 --out res_bs.json

The category's prototypes are built (or loaded) exactly as training does (`engine.prototypes.ensure_prototypes`,
PRNet's default `prototypes.*` settings, the lite0 offline backbone by default). For every test image the residual
of each scale (the nearest prototype map per image, as in PRNet) is summed over its channels, i.e. the squared
distance to the prototype per feature position, upsampled bilinearly to the image size and divided by that scale's
mean over the normal training images; the scales are averaged, smoothed with a Gaussian (σ = `--sigma`, as the
PatchCore-style baseline) and the image score is the map's maximum. Every test image is scored (no few-shot draw).
Prints the five metrics and writes them as JSON with `--out`. `--topk K` scores an image by the mean of its K highest
map pixels instead (PRNet's form, `eval.topk`); `--groups` adds image AUROC, pixel AUROC and AUPRO per defect type
(each type against the normal test images), and on a proxy_validation.py category its "all" (normals, Perlin and
pasted defects) as the proxy defines it.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from prnet.config import image_hw, load_config
from prnet.datasets import build_test_dataset, normal_train_set
from prnet.engine.evaluator import gaussian_smooth
from prnet.engine.prototypes import ensure_prototypes, make_backbone
from prnet.metrics import compute_metrics
from prnet.utils import atomic_write, resolve_device, setup_logging
from real_data import parse_size

log = logging.getLogger("residual_only")


@torch.no_grad()
def scale_distances(bank, feats, hw: tuple[int, int], source=None) -> list[np.ndarray]:
    """Per scale, the N×H×W squared distance of each feature to its nearest prototype (the residual summed over
    channels), upsampled bilinearly to `hw`; `source`: held-out residuals for training images (PrototypeBank)."""
    return [d[:, 0].cpu().numpy() for d in bank.distances(bank(feats, source), hw)]


@torch.no_grad()
def residual_maps(backbone, bank, loader, hw: tuple[int, int], device: torch.device) -> list[np.ndarray]:
    """Per scale, the N×H×W squared distance of each image's features to its nearest prototype, at the image size."""
    per_scale: list[list[np.ndarray]] = [[] for _ in range(bank.num_scales)]
    for batch in loader:
        feats, _ = backbone(batch["image"].to(device))
        for i, d in enumerate(scale_distances(bank, feats, hw)):
            per_scale[i].append(d)
    return [np.concatenate(s) for s in per_scale]


def image_scores(maps: np.ndarray, topk: int) -> np.ndarray:
    """Each map's maximum (topk 0) or the mean of its `topk` highest pixels."""
    flat = maps.reshape(len(maps), -1)
    if topk <= 0:
        return flat.max(1)
    return torch.from_numpy(flat).topk(min(topk, flat.shape[1]), dim=1).values.mean(1).numpy()


def group_selections(defects: np.ndarray) -> dict:
    """{group: boolean selection}: each defect type with the normal images; "all" as proxy_validation.py scores it
    when the category is a proxy (it has its Perlin and pasted-defect folders), else every image."""
    from proxy_validation import EXTENDED, PERLIN

    groups = {"all": np.ones(len(defects), bool)}
    if PERLIN in defects and EXTENDED in defects:
        groups["all"] = np.isin(defects, ["good", PERLIN, EXTENDED])
    for d in sorted(set(defects) - {"good"}):
        groups[d] = (defects == "good") | (defects == d)
    return groups


def evaluate(cfg, category: str, device: torch.device, sigma: float, batch: int, topk: int = 0,
             groups: bool = False) -> dict:
    backbone = make_backbone(cfg).to(device)
    bank = ensure_prototypes(cfg, category, device, backbone=backbone).to(device)
    hw = image_hw(cfg)
    normal = DataLoader(normal_train_set(cfg, category), batch_size=batch)
    test_set = build_test_dataset(cfg, category)
    scale = [m.mean() for m in residual_maps(backbone, bank, normal, hw, device)]  # each scale's normal level
    maps = np.mean([m / s for m, s in zip(residual_maps(backbone, bank, DataLoader(test_set, batch_size=batch),
                                                        hw, device), scale)], axis=0)
    maps = gaussian_smooth(torch.from_numpy(maps)[:, None].float(), sigma)[:, 0].numpy()
    labels = np.array([s.label for s in test_set.samples])
    masks = np.stack([test_set.mask(i) for i in range(len(test_set))]).astype(np.uint8)
    scores = image_scores(maps, topk)
    metrics = compute_metrics(scores, labels, maps, masks)
    result = {"category": category, "test_images": len(test_set), "sigma": sigma, "topk": topk,
              "metrics": {k: float(v) for k, v in metrics.items()}}
    if groups:
        defects = np.array([s.defect for s in test_set.samples])
        result["groups"] = {}
        for g, sel in group_selections(defects).items():
            if labels[sel].min() == labels[sel].max():
                continue  # one class only (e.g. a type with no normal images to compare with)
            met = compute_metrics(scores[sel], labels[sel], maps[sel], masks[sel])
            result["groups"][g] = {k: float(met[k]) for k in ("image_auroc", "pixel_auroc", "aupro") if k in met}
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the data set's root (data.root)")
    p.add_argument("--category", required=True)
    p.add_argument("--size", type=parse_size, default=256, help="256 or H,W (multiples of 32)")
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--weights", default="package")
    p.add_argument("--sigma", type=float, default=4.0)
    p.add_argument("--prototypes", default="prototypes", help="prototypes.dir (files are reused when they match)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more config overrides")
    p.add_argument("--topk", type=int, default=0, help="image score: mean of the K highest pixels (0: the maximum)")
    p.add_argument("--groups", action="store_true", help="also the metrics per defect type (and a proxy's 'all')")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    setup_logging()
    cfg = load_config(None, [f"data.root={args.data}", f"data.classes=[{args.category}]",
                             f"data.image_size={json.dumps(args.size)}", "data.num_anomalies=0",
                             f"model.backbone={args.backbone}",
                             f"model.backbone_weights={args.weights}", f"prototypes.dir={args.prototypes}",
                             "train.workers=0", *args.set])
    result = evaluate(cfg, args.category, resolve_device(args.device), args.sigma, args.batch, args.topk, args.groups)
    print(" ".join(f"{k} {v:.3f}" for k, v in result["metrics"].items()))
    for g, met in result.get("groups", {}).items():
        print(f"  {g:<24} " + " ".join(f"{k} {v:.4f}" for k, v in met.items()))
    if args.out:
        atomic_write(args.out, lambda tmp: json.dump(result, open(tmp, "w", encoding="utf-8"), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
