"""Score proxy-validation runs on grey Perlin anomalies: the proxy's Perlin validation images again, with the
same draws (mask, texture, ops, opacity) but each texture turned into its grey luminance.

    python benchmarks/proxy_grey_perlin.py --out val_mt --variant loo grey

For a greyscale category (Magnetic Tile, MVTec grid/screw/zipper) the proxy's own Perlin subset is coloured,
which no real defect of such a category is; this set asks how well each run finds grey synthetic anomalies. It is
written once under <out>/proxy_grey/<category> (the held-out normal images linked, the anomalies as PNG) from the
proxy that `proxy_validation.py` built under <out>/proxy, and the runs' checkpoints <out>/runs/<variant> are
scored without training. Prints one line per run and writes <out>/proxy_grey_perlin.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from proxy_validation import PERLIN, _link, _save_mask, _save_rgb

GREY = "perlin_grey_unseen_textures"


def build_grey_perlin(out: str, seed: int = 0, size: int = 256) -> tuple[str, str]:
    """Write <out>/proxy_grey/<category> from the proxy under <out>/proxy; returns (root, category)."""
    from prnet.datasets import TextureSource, load_rgb
    from prnet.datasets.synthesis import perlin_anomaly
    from prnet.utils import numpy_rng

    proxy_root = os.path.join(os.path.abspath(out), "proxy")
    info_path = os.path.join(proxy_root, "proxy.json")
    if not os.path.exists(info_path):
        raise SystemExit(f"{info_path} does not exist: run benchmarks/proxy_validation.py with --out {out} first")
    category = json.load(open(info_path))["category"]
    root = os.path.join(os.path.abspath(out), "proxy_grey")
    cat = os.path.join(root, category)
    done = os.path.join(root, "done.json")
    if os.path.exists(done):
        return root, category
    good = os.path.join(proxy_root, category, "test", "good")
    held = sorted(os.listdir(good))  # build_proxy numbers the held-out images k = 0.. in this order
    n_perlin = len(os.listdir(os.path.join(proxy_root, category, "test", PERLIN)))
    if n_perlin != len(held):
        raise SystemExit(f"{proxy_root}: {len(held)} held-out normal images but {n_perlin} Perlin images")
    textures = TextureSource(os.path.join(proxy_root, "dtd_val"))
    for k, name in enumerate(held):
        src = os.path.realpath(os.path.join(good, name))
        _link(src, os.path.join(cat, "test", "good", name))
        image, mask = perlin_anomaly(load_rgb(src, (size, size)), textures, numpy_rng(seed, 0xBE41, k),
                                     grey=True)  # as build_proxy draws them
        _save_rgb(os.path.join(cat, "test", GREY, f"{k:04d}.png"), image)
        _save_mask(os.path.join(cat, "ground_truth", GREY, f"{k:04d}_mask.png"), mask)
    _link(src, os.path.join(cat, "train", "good", name))  # the layout wants a train split; nothing trains on it
    with open(done, "w", encoding="utf-8") as fh:
        json.dump({"category": category, "images": len(held), "seed": seed, "size": size}, fh)
    return root, category


def score(out: str, variant: str, root: str, category: str, device: torch.device) -> dict:
    """The five metrics of run `variant` on the grey Perlin set (σ 0, top-100 image score)."""
    from prnet.datasets import MVTEC
    from prnet.engine.checkpoint import model_from_checkpoint
    from prnet.engine.evaluator import image_scores, run_inference
    from prnet.metrics import compute_metrics

    path = os.path.join(os.path.abspath(out), "runs", variant, category, "last.pt")
    if not os.path.exists(path):
        raise SystemExit(f"{path} does not exist: train the variant with proxy_validation.py first")
    model, cfg, _ = model_from_checkpoint(path, device)
    cfg.eval.sigma = 0.0
    test = MVTEC(root, category, "test", cfg.data.image_size)
    raw = run_inference(model, test, cfg, device, progress=False)
    scores = image_scores(torch.from_numpy(raw["maps"])[:, None], 100).numpy()
    metrics = compute_metrics(scores, raw["labels"], raw["maps"], raw["masks"])
    return {"variant": variant, **{k: float(v) for k, v in metrics.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the --out folder of proxy_validation.py")
    p.add_argument("--variant", nargs="+", required=True, help="names of runs under <out>/runs")
    p.add_argument("--seed", type=int, default=0, help="proxy_validation.py's --seed")
    p.add_argument("--size", type=int, default=256, help="proxy_validation.py's --size")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    from prnet.utils import atomic_write, resolve_device, setup_logging

    setup_logging()
    root, category = build_grey_perlin(args.out, args.seed, args.size)
    device = resolve_device(args.device)
    rows = []
    for v in args.variant:
        rows.append(score(args.out, v, root, category, device))
        r = rows[-1]
        print(f"{v}: image AUROC {r['image_auroc']:.3f}  image AP {r['image_ap']:.3f}  pixel AUROC "
              f"{r['pixel_auroc']:.3f}  pixel AP {r['pixel_ap']:.3f}  AUPRO {r['aupro']:.3f}", flush=True)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"set": os.path.join(root, category), "rows": rows}, fh, indent=2)

    atomic_write(os.path.join(args.out, "proxy_grey_perlin.json"), write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
