"""Score new images with a trained checkpoint.

    python predict.py --checkpoint outputs/demo/demo/last.pt --input path/to/images --output predictions/
    python predict.py --checkpoint last.pt --input 'line3/*.png' --output out/ --threshold 0.4

For each image: an image score and a PNG with the image, the heat map and an overlay with the predicted region
outlined; plus `scores.csv` (path, score, anomalous). Images of any size and mode are converted to RGB and resized
to the training size. The default threshold is the one stored in the checkpoint at training time: the highest
image score of the category's normal training images (no test labels involved).

Exit codes: 0 all images scored, 1 some images could not be read (reported, the rest still processed),
2 bad arguments, checkpoint or empty input.
"""
from __future__ import annotations

import argparse
import csv
import glob
import logging
import os
import sys

import numpy as np
import torch
from tqdm import tqdm

log = logging.getLogger("predict")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def collect_inputs(spec: str) -> list[str]:
    """A file, a folder (its image files, recursively), or a glob pattern → sorted file list."""
    if os.path.isfile(spec):
        return [spec]
    if os.path.isdir(spec):
        files = [os.path.join(d, f) for d, _, names in os.walk(spec) for f in names
                 if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not files:
            raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {spec}")
        return sorted(files)
    files = sorted(f for f in glob.glob(spec, recursive=True) if os.path.isfile(f))
    if not files:
        raise ValueError(f"{spec} is neither a file, a folder, nor a glob pattern that matches files")
    return files


def output_name(path: str, root: str) -> str:
    """A unique PNG name per input: its path relative to the input root, '/' replaced by '__'."""
    rel = os.path.relpath(path, root) if root else os.path.basename(path)
    stem = os.path.splitext(rel)[0].replace(os.sep, "__").replace("..", "up")
    return stem + ".png"


def main(argv=None) -> int:
    from prnet.utils import resolve_device, setup_logging

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="last.pt written by train.py")
    p.add_argument("--input", required=True, help="an image file, a folder, or a glob pattern (quote it)")
    p.add_argument("--output", required=True, help="folder for the PNGs and scores.csv")
    p.add_argument("--threshold", type=float, help="decision threshold on the image score (default: checkpoint's)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda, ...")
    args = p.parse_args(argv)
    setup_logging()

    from prnet import report
    from prnet.datasets.mvtec import load_rgb
    from prnet.engine.checkpoint import CheckpointError, model_from_checkpoint
    from prnet.engine.evaluator import predict_maps
    from prnet.utils import atomic_write

    try:
        files = collect_inputs(args.input)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    device = resolve_device(args.device)
    try:
        model, cfg, state = model_from_checkpoint(args.checkpoint, device)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    threshold = args.threshold if args.threshold is not None else state.get("threshold")
    if threshold is None:
        print(f"error: {args.checkpoint} stores no decision threshold (training did not finish): pass --threshold",
              file=sys.stderr)
        return 2
    from prnet.config import image_hw

    hw = image_hw(cfg)
    root = args.input if os.path.isdir(args.input) else ""
    os.makedirs(args.output, exist_ok=True)
    log.info("%d image(s), threshold %.4f, device %s", len(files), threshold, device)

    rows, failed = [], []
    for start in tqdm(range(0, len(files), args.batch_size), desc="predict"):
        chunk, images = [], []
        for path in files[start:start + args.batch_size]:
            try:
                images.append(load_rgb(path, hw))
                chunk.append(path)
            except Exception as e:  # report and go on with the others
                log.error("cannot read %s: %s", path, e)
                failed.append(path)
        if not chunk:
            continue
        batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous().to(device)
        maps, scores = predict_maps(model, batch, cfg)
        maps, scores = maps[:, 0].cpu().numpy(), scores.cpu().numpy()
        for path, image, amap, score in zip(chunk, images, maps, scores):
            anomalous = bool(score >= threshold)
            report.save_prediction_figure(
                os.path.join(args.output, output_name(path, root)), image, amap, threshold, float(score),
                f"{os.path.basename(path)}: {'ANOMALOUS' if anomalous else 'normal'}")
            rows.append({"path": path, "score": f"{score:.6f}", "anomalous": "yes" if anomalous else "no"})

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=["path", "score", "anomalous"])
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(os.path.join(args.output, "scores.csv"), write_csv)
    n_bad = sum(r["anomalous"] == "yes" for r in rows)
    log.info("%d scored (%d anomalous), %d unreadable; results in %s", len(rows), n_bad, len(failed), args.output)
    if failed:
        print(f"error: {len(failed)} file(s) could not be read: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
