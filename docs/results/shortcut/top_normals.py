"""Diagnostic (docs/experiments.md, "what image AUROC rewards on the two shared data sets"): the normal test images
that a trained run scores highest, and what lies under its map's peak there.

For one real_data.py run it scores every test image (prnet.load_detector: the run's stored settings and image
score, as in evaluation; the run's few-shot anomalies left out as results.json lists them), and for the N
highest-scoring normal images prints the score, how many defective images score below it, and the peak of the
anomaly map (at the image's own size) with the grey-level contrast there: |mean of a 9×9 window at the peak − mean
of the ring 6–12 pixels around it| (grey levels in [0, 1]; contrast.py's measure for the defects). The same is
printed for the median normal image as a reference. With --crops DIR it also writes, per listed image, a picture of
the image around the peak next to the map there (for looking; these are crops of the data set, keep them out of
the repository).

    PYTHONPATH=.:benchmarks python docs/results/shortcut/top_normals.py --run RUN --data DATA/<category> \
        [--top 8] [--crops DIR] [--out F.json]

RUN: a real_data.py run folder (holding <category>/last.pt and <category>/results.json).
"""
import argparse
import json
import os
import sys

import numpy as np
from PIL import Image

import prnet
from prnet.datasets.mvtec import load_rgb, scan_split

WINDOW, RING = 4, (6, 12)  # half-width of the peak window; inner and outer half-width of the ring around it


def peak_contrast(grey: np.ndarray, y: int, x: int) -> float:
    """|mean of the (2·WINDOW+1)² window at (y, x) − mean of the square ring RING around it|."""
    h, w = grey.shape
    ys, xs = np.mgrid[0:h, 0:w]
    d = np.maximum(np.abs(ys - y), np.abs(xs - x))
    inner, ring = grey[d <= WINDOW], grey[(d >= RING[0]) & (d <= RING[1])]
    return float(abs(inner.mean() - ring.mean()))


def crop_picture(rgb: np.ndarray, amap: np.ndarray, y: int, x: int, half: int = 48) -> Image.Image:
    """The image around (y, x) and the anomaly map there (grey levels, 0..1), side by side, enlarged 4×."""
    h, w = amap.shape
    y0, x0 = min(max(y - half, 0), max(h - 2 * half, 0)), min(max(x - half, 0), max(w - 2 * half, 0))
    img = (rgb[y0:y0 + 2 * half, x0:x0 + 2 * half] * 255).astype(np.uint8)
    m = (np.repeat(amap[y0:y0 + 2 * half, x0:x0 + 2 * half, None], 3, 2) * 255).astype(np.uint8)
    both = Image.fromarray(np.concatenate([img, m], 1))
    return both.resize((both.width * 4, both.height * 4), Image.NEAREST)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--data", required=True, help="the data set's category folder (MVTec layout)")
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--crops")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    root, category = os.path.split(os.path.normpath(args.data))
    results = json.load(open(os.path.join(args.run, category, "results.json")))
    seen = {os.path.splitext(n)[0] for n in results["real_anomalies_used_for_training"]}
    samples = [s for s in scan_split(root, category, "test") if os.path.splitext(s.name)[0] not in seen]
    if not any(s.label == 0 for s in samples) or not any(s.label == 1 for s in samples):
        sys.exit(f"{args.data}: the test split needs normal and defective images")
    detector = prnet.load_detector(os.path.join(args.run, category, "last.pt"), device="cpu")
    preds = detector.predict([s.path for s in samples], batch_size=16)
    defect_scores = np.array([p.score for p, s in zip(preds, samples) if s.label == 1])
    normals = sorted([(p, s) for p, s in zip(preds, samples) if s.label == 0], key=lambda t: -t[0].score)
    listed = normals[:args.top] + [normals[len(normals) // 2]]
    if args.crops:
        os.makedirs(args.crops, exist_ok=True)
    rows = []
    for i, (p, s) in enumerate(listed):
        rgb = load_rgb(s.path)
        y, x = np.unravel_index(int(np.argmax(p.anomaly_map)), p.anomaly_map.shape)
        row = {"name": s.name, "rank": i + 1 if i < args.top else len(normals) // 2 + 1, "score": p.score,
               "defects_below": int((defect_scores < p.score).sum()), "peak_yx": [int(y), int(x)],
               "peak_value": float(p.anomaly_map[y, x]), "peak_contrast": peak_contrast(rgb.mean(2), y, x)}
        rows.append(row)
        print(f"normal #{row['rank']:>3} {s.name}: score {p.score:.3f}, {row['defects_below']} of "
              f"{len(defect_scores)} defective images below, map peak {row['peak_value']:.3f} at (y {y}, x {x}), "
              f"contrast there {row['peak_contrast']:.3f}")
        if args.crops:
            crop_picture(rgb, p.anomaly_map, y, x).save(os.path.join(args.crops, f"{row['rank']:03d}.png"))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"run": args.run, "data": args.data, "defective": len(defect_scores),
                       "normal": len(normals), "listed": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
