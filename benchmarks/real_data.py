"""Real-data benchmark: PRNet (10 and 0 real anomalies) next to a PatchCore-style baseline, on one category.

    python benchmarks/real_data.py --data ../shared/data/magnetic_tile --dtd ../shared/data/dtd --out bench_mt

`--data` is a category folder in the MVTec AD layout (train/good, test/<defect>, ground_truth/<defect>).
Every method uses the same backbone (tf_efficientnet_lite0, offline ImageNet weights), the same image size (256)
and is evaluated with prnet.metrics on the same test images: the test split minus the 10 real anomalies that
the 10-shot PRNet trains on (so no method is scored on an image any method was trained on). Seeded. Prints one
table and writes <out>/real_data.json.

`--rescore` evaluates the checkpoints of an earlier run in the same --out again, without training, with the
evaluation settings given now (`--set eval.sigma=4`): <out>/real_data_rescore.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import torch


log = logging.getLogger("real_data")

COLUMNS = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro")


def prnet_overrides(args, shots: int) -> list[str]:
    root, category = os.path.split(os.path.abspath(args.data.rstrip("/")))
    return [
        f"data.root={root}", f"data.classes=[{category}]", f"data.image_size={args.size}",
        f"data.dtd_root={args.dtd}" if args.dtd else "data.dtd_root=null", f"data.num_anomalies={shots}",
        f"output_dir={os.path.join(args.out, f'prnet_{shots}shot')}",
        f"prototypes.dir={os.path.join(args.out, 'prototypes')}",
        "model.backbone=tf_efficientnet_lite0", "model.backbone_weights=package",
        f"model.head_widths={args.widths}", f"train.epochs={args.epochs}", f"train.batch_size={args.batch}",
        f"train.lr={args.lr}", f"train.workers={args.workers}", "train.device=cpu", f"seed={args.seed}",
        "train.overwrite=true", *args.set,
    ]


def run_prnet(args, shots: int, common_test) -> dict:
    """Train with train.py's code path, then score the last epoch on the common test set."""
    import train as train_script
    from prnet.config import load_config
    from prnet.engine.checkpoint import model_from_checkpoint
    from prnet.engine.evaluator import evaluate

    overrides = prnet_overrides(args, shots)
    cfg = load_config(None, overrides)
    category = cfg.data.classes[0]
    method = f"PRNet, {shots} real anomalies"
    ckpt = os.path.join(cfg.output_dir, category, "last.pt")
    if args.rescore:  # evaluate the checkpoint of an earlier run with today's eval settings; no training
        if not os.path.exists(ckpt):
            raise SystemExit(f"--rescore: no checkpoint {ckpt} (run without --rescore first)")
        train_min = previous_rows(args.out).get(method, {}).get("train_min", float("nan"))
    else:
        t0 = time.time()
        if train_script.main(overrides) != 0:
            raise SystemExit(f"PRNet {shots}-shot training failed")
        train_min = (time.time() - t0) / 60.0
    model, trained_cfg, _ = model_from_checkpoint(ckpt, torch.device("cpu"))
    trained_cfg.eval = cfg.eval  # the evaluation settings asked for now (the same as in training, unless rescoring)
    cfg = trained_cfg
    t1 = time.time()
    metrics, raw = evaluate(model, common_test, cfg, torch.device("cpu"))
    test_ms = 1000.0 * (time.time() - t1) / len(common_test)
    results = json.load(open(os.path.join(cfg.output_dir, category, "results.json")))
    return {"method": method, **metrics, "eval_sigma": cfg.eval.sigma, "eval_topk": cfg.eval.topk,
            "train_min": train_min, "test_ms_per_image": test_ms,
            "train_minutes_includes": "prototypes + training + its own evaluation",
            "real_anomalies": results["real_anomalies_used_for_training"],
            "per_defect": per_defect(raw["scores"], raw["labels"], raw["maps"], raw["masks"], common_test)}


def per_defect(scores, labels, maps, masks, test) -> dict:
    """Metrics of each defect type against all normal test images: {defect: {image_auroc, pixel_auroc, ...}}."""
    import numpy as np

    from prnet.metrics import compute_metrics

    defects = np.array([s.defect for s in test.samples])
    out = {}
    for d in sorted(set(defects) - {"good"}):
        sel = (defects == "good") | (defects == d)
        m = compute_metrics(np.asarray(scores)[sel], np.asarray(labels)[sel], np.asarray(maps)[sel],
                            np.asarray(masks)[sel])
        out[d] = {"images": int((defects == d).sum()), **{k: float(v) for k, v in m.items()}}
    return out


def previous_rows(out: str) -> dict:
    """method -> row of an earlier <out>/real_data.json ({} if none)."""
    path = os.path.join(out, "real_data.json")
    return {r["method"]: r for r in json.load(open(path))["rows"]} if os.path.exists(path) else {}


def run_patchcore(args, common_test) -> dict:
    from torch.utils.data import DataLoader

    from patchcore import PatchCore
    from prnet.datasets.mvtec import MVTEC
    from prnet.metrics import compute_metrics

    root, category = os.path.split(os.path.abspath(args.data.rstrip("/")))
    train = MVTEC(root, category, "train", args.size)
    t0 = time.time()
    model = PatchCore("tf_efficientnet_lite0", "package", sigma=4.0, seed=args.seed)
    model.fit(DataLoader(train, batch_size=16, num_workers=0))
    train_min = (time.time() - t0) / 60.0
    t1 = time.time()
    maps, scores, labels, masks = [], [], [], []
    for batch in DataLoader(common_test, batch_size=16, num_workers=0):
        m, s = model.predict(batch["image"])
        maps.append(m)
        scores.append(s)
        labels.append(batch["label"].numpy())
        masks.append(batch["mask"][:, 0].numpy())
    test_ms = 1000.0 * (time.time() - t1) / len(common_test)
    import numpy as np

    scores, labels, maps, masks = (np.concatenate(x) for x in (scores, labels, maps, masks))
    metrics = compute_metrics(scores, labels, maps, masks)
    return {"method": "PatchCore-style baseline", **{k: float(v) for k, v in metrics.items()},
            "train_min": train_min, "test_ms_per_image": test_ms,
            "per_defect": per_defect(scores, labels, maps, masks, common_test),
            "baseline": "stages 2-3, 3x3 avg, greedy coreset 10 % of 200k randomly drawn patches, sigma 4, max"}


def markdown(rows: list[dict]) -> str:
    head = "| method | image AUROC | image AP | pixel AUROC | pixel AP | AUPRO | train min | test ms/image |"
    lines = [head, "|:---|" + "---:|" * 7]
    for r in rows:
        vals = " | ".join(f"{r[k]:.3f}" for k in COLUMNS)
        lines.append(f"| {r['method']} | {vals} | {r['train_min']:.1f} | {r['test_ms_per_image']:.0f} |")
    return "\n".join(lines)


def markdown_per_defect(rows: list[dict]) -> str:
    """Image AUROC / pixel AUROC of each defect type (against all normal test images), one row per method."""
    defects = sorted({d for r in rows for d in r.get("per_defect", {})})
    counts = {d: r["per_defect"][d]["images"] for r in rows for d in r.get("per_defect", {})}
    lines = ["| method | " + " | ".join(f"{d} ({counts[d]})" for d in defects) + " |",
             "|:---|" + "---:|" * len(defects)]
    for r in rows:
        pd = r.get("per_defect", {})
        cells = [f"{pd[d]['image_auroc']:.3f} / {pd[d]['pixel_auroc']:.3f}" if d in pd else "" for d in defects]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="category folder in the MVTec AD layout")
    p.add_argument("--dtd", help="DTD folder (textures); none: procedural fallback")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--widths", default="[32, 64, 128]")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default="prnet10,prnet0,patchcore", help="comma-separated subset to run")
    p.add_argument("--set", nargs="*", default=[], help="extra key=value overrides for the PRNet runs")
    p.add_argument("--rescore", action="store_true",
                   help="no PRNet training: evaluate the checkpoints already in --out with the eval settings given "
                        "now (e.g. --set eval.sigma=4)")
    args = p.parse_args(argv)

    from prnet.config import load_config
    from prnet.datasets import build_test_dataset
    from prnet.utils import atomic_write, setup_logging

    setup_logging()
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    # the common test set: the test split minus the 10-shot run's real anomalies
    common_test = build_test_dataset(load_config(None, prnet_overrides(args, 10)), os.path.basename(
        os.path.abspath(args.data.rstrip("/"))))
    log.info("common test set: %d images (%d excluded: %s)", len(common_test), len(common_test.excluded),
             ", ".join(common_test.excluded))
    rows = []
    t0 = time.time()
    for method in args.methods.split(","):
        if method == "prnet10":
            rows.append(run_prnet(args, 10, common_test))
        elif method == "prnet0":
            rows.append(run_prnet(args, 0, common_test))
        elif method == "patchcore":
            rows.append(run_patchcore(args, common_test))
        else:
            raise SystemExit(f"unknown method {method!r} (prnet10, prnet0, patchcore)")
        log.info("%s done after %.1f min", rows[-1]["method"], (time.time() - t0) / 60)
    table = markdown(rows) + "\n\nPer defect type, image AUROC / pixel AUROC (each type against every normal test " \
        "image; test images per type in brackets):\n\n" + markdown_per_defect(rows)
    summary = {"data": os.path.abspath(args.data), "dtd": args.dtd, "size": args.size, "epochs": args.epochs,
               "batch": args.batch, "lr": args.lr, "head_widths": args.widths, "seed": args.seed,
               "rescore": args.rescore, "common_test_images": len(common_test), "excluded": list(common_test.excluded),
               "total_minutes": (time.time() - t0) / 60.0, "threads": torch.get_num_threads(), "rows": rows,
               "table": table}

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=2)

    atomic_write(os.path.join(args.out, "real_data_rescore.json" if args.rescore else "real_data.json"), write)
    print(f"\n{table}\n\n(total {summary['total_minutes']:.1f} min; {len(common_test)} test images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
