"""Score new images with a trained checkpoint.

    python predict.py --checkpoint outputs/demo/demo/last.pt --input path/to/images --output predictions/
    python predict.py --checkpoint last.pt --input 'line3/*.png' --output out/ --threshold 0.4
    python predict.py --checkpoint last.pt --input a.png b.jpg more/ --output out/

For each image: an image score and a PNG with the image, the heat map (at the image's own resolution) and an
overlay; plus `scores.csv` (path, score, anomalous, figure). The overlay outlines the region where the map reaches
the decision threshold only when the threshold is on the map's scale (eval.image_score=map, the top-k mean of the
map, with eval.anomaly_map=head); the other image scores are not map values, so no region is drawn. Images of any size
and mode are converted to RGB and scored at the training size. The default threshold is the one stored in the
checkpoint at training time (for the rule `train_max`: the highest image score of the category's normal
training images; no test labels involved).

Picture names: the input's path relative to a root, with `.png` appended (`good/000.jpg` -> `good/000.jpg.png`),
in the same sub-folders under --output. The root is the folder when --input is one folder, else the deepest
folder holding every input file (a glob or several files). Distinct inputs never share a picture.

Exit codes: 0 all images scored, 1 some images could not be read (listed on stderr, the rest still processed),
2 bad arguments, checkpoint or empty input.
"""
from __future__ import annotations

import argparse
import csv
import glob
import logging
import os
import sys

from tqdm import tqdm

from prnet.datasets.mvtec import IMAGE_EXTENSIONS, is_image_file

log = logging.getLogger("predict")


def _walk_images(folder: str, skip: str | None = None) -> list[str]:
    """The image files below `folder`, as a recursive glob finds them: linked folders followed (each real folder
    once), hidden ones (.ipynb_checkpoints, .git) left out, and so is the folder `skip` (the output)."""
    files, seen = [], set()
    for d, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(d)
        if real in seen or (skip and real == skip):
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(n for n in dirs if not n.startswith("."))
        files += [os.path.join(d, f) for f in names if is_image_file(f) and not f.startswith(".")]
    return files


def collect_inputs(spec: str, skip: str | None = None) -> list[str]:
    """A file, a folder (its image files, recursively) or a glob pattern → sorted file list; `skip`: a folder (real
    path) whose files a folder or a pattern leaves out."""
    if os.path.isfile(spec):
        return [spec]
    if os.path.isdir(spec):
        files = _walk_images(spec, skip)
        if not files:
            raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {spec}")
        return sorted(files)
    files = sorted(f for f in glob.glob(spec, recursive=True) if os.path.isfile(f)
                   and not (skip and os.path.realpath(f).startswith(skip.rstrip(os.sep) + os.sep)))
    if not files:
        raise ValueError(f"{spec} is neither a file, a folder, nor a glob pattern that matches files")
    return files


def collect_all(specs: list[str], output: str | None = None) -> tuple[list[str], str]:
    """Every file of every spec, each once, in order (a folder's walk leaves out the `output` folder, should it lie
    inside: its pictures are no inputs); and the root their picture names are relative to."""
    files, seen = [], set()
    skip = os.path.realpath(output) if output else None
    for spec in specs:
        for f in collect_inputs(spec, skip):
            key = os.path.realpath(f)
            if key not in seen:
                seen.add(key)
                files.append(f)
    if len(specs) == 1 and os.path.isdir(specs[0]):
        return files, os.path.abspath(specs[0])
    return files, os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])


def figure_names(files: list[str], root: str) -> list[str]:
    """One picture name per file, relative to the output folder: the file's path below `root` plus '.png'.

    Names are unique even where the file system ignores case ('A.png' and 'a.png' get '~2' on the second)."""
    names, taken = [], set()
    for f in files:
        rel = os.path.relpath(os.path.abspath(f), root).replace(os.sep, "/")
        name, k = rel + ".png", 1
        while name.casefold() in taken:
            k += 1
            name = f"{rel}~{k}.png"
        taken.add(name.casefold())
        names.append(name)
    return names


def main(argv=None) -> int:
    from prnet.utils import setup_logging

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="last.pt written by train.py")
    p.add_argument("--input", required=True, nargs="+",
                   help="image files, folders, or glob patterns (quote them)")
    p.add_argument("--output", required=True, help="folder for the PNGs and scores.csv")
    p.add_argument("--threshold", type=float, help="decision threshold on the image score (default: checkpoint's)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda, ...")
    args = p.parse_args(argv)
    setup_logging()
    if args.batch_size < 1:
        print(f"error: --batch-size: expected a positive integer, got {args.batch_size}", file=sys.stderr)
        return 2

    from prnet import report
    from prnet.engine.checkpoint import CheckpointError
    from prnet.inference import load_detector, read_image
    from prnet.utils import atomic_write

    try:
        files, root = collect_all(args.input, args.output)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        detector = load_detector(args.checkpoint, args.device, threshold=args.threshold)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    threshold = detector.threshold
    if threshold is None:
        print(f"error: {args.checkpoint} stores no decision threshold (training did not finish): pass --threshold",
              file=sys.stderr)
        return 2
    names = figure_names(files, root)
    os.makedirs(args.output, exist_ok=True)
    outline = report.region_threshold(detector.image_score, detector.anomaly_map, threshold)
    log.info("%d image(s), threshold %.4f (%s), device %s", len(files), threshold, detector.threshold_rule,
             detector.device)

    rows, failed = [], []
    for start in tqdm(range(0, len(files), args.batch_size), desc="predict"):
        chunk, images = [], []
        for path, name in zip(files[start:start + args.batch_size], names[start:start + args.batch_size]):
            try:
                images.append(read_image(path))
                chunk.append((path, name))
            except Exception as e:  # report and go on with the others
                log.error("cannot read %s: %s", path, e)
                failed.append(path)
        if not chunk:
            continue
        for (path, name), image, r in zip(chunk, images, detector.predict(images)):
            report.save_prediction_figure(
                os.path.join(args.output, *name.split("/")), image, r.anomaly_map, outline, r.score,
                f"{os.path.basename(path)}: {'ANOMALOUS' if r.anomalous else 'normal'}")
            rows.append({"path": path, "score": f"{r.score:.6f}", "anomalous": "yes" if r.anomalous else "no",
                         "figure": name})

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=["path", "score", "anomalous", "figure"])
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
