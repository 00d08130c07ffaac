"""Convert the Magnetic Tile Defect data set into the MVTec AD layout (one category).

    python benchmarks/prepare_magnetic_tile.py SRC OUT [--force]

SRC is a checkout of github.com/abin24/Magnetic-tile-defect-datasets. (folders MT_Free, MT_Blowhole, MT_Break,
MT_Crack, MT_Fray, MT_Uneven, each with Imgs/<stem>.jpg and a same-stem <stem>.png mask, either next to the jpg
in Imgs/ or one level up in MT_<Name>/). OUT becomes the category folder itself:

    OUT/train/good/*.jpg               round(0.8 * N) of the N normal images (MT_Free)
    OUT/test/good/*.jpg                the other normal images
    OUT/test/<name>/*.jpg              every image of MT_<Name>, <name> in lower case
    OUT/ground_truth/<name>/<stem>_mask.png   its mask, grey, > 127 -> 255, else 0

Split: the names of MT_Free/Imgs/*.jpg, sorted, shuffled with random.Random(0).shuffle; the first round(0.8 * N)
go to train. Images are copied byte for byte. This is the conversion of the benchmark copy of the data, so
`--data OUT` can replace it.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

FREE = "MT_Free"
DEFECTS = ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven")
TRAIN_FRACTION = 0.8
SEED = 0
OWNED = ("train", "test", "ground_truth")  # the sub-folders of OUT this script writes (and --force replaces)


class PrepareError(Exception):
    """The source tree or the output folder is not what the conversion expects."""


def _images(folder: Path) -> list[Path]:
    """The jpgs of <folder>/Imgs, sorted by name; an error if there is no Imgs folder or no jpg."""
    imgs = folder / "Imgs"
    if not imgs.is_dir():
        raise PrepareError(f"no folder {imgs} (expected {folder.name}/Imgs/<stem>.jpg)")
    files = sorted(imgs.glob("*.jpg"), key=lambda p: p.name)
    if not files:
        raise PrepareError(f"no *.jpg in {imgs}")
    return files


def find_mask(jpg: Path) -> Path:
    """The mask of MT_<Name>/Imgs/<stem>.jpg: <stem>.png next to it, else MT_<Name>/<stem>.png."""
    for cand in (jpg.with_suffix(".png"), jpg.parent.parent / f"{jpg.stem}.png"):
        if cand.is_file():
            return cand
    raise PrepareError(f"no mask for {jpg}: expected {jpg.with_suffix('.png')} or "
                       f"{jpg.parent.parent / (jpg.stem + '.png')}")


def split_normal(names: list[str]) -> tuple[list[str], list[str]]:
    """(train, test) names: sorted, shuffled with random.Random(0), the first round(0.8 * N) for training."""
    order = sorted(names)
    random.Random(SEED).shuffle(order)
    n_train = round(TRAIN_FRACTION * len(order))
    return order[:n_train], order[n_train:]


def binarise_mask(src: Path) -> np.ndarray:
    """The mask read as grey (uint8): pixels > 127 become 255, the rest 0."""
    with Image.open(src) as im:
        grey = np.asarray(im.convert("L"))
    return np.where(grey > 127, 255, 0).astype(np.uint8)


def _tmp_path(dst: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    return Path(tmp)


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = _tmp_path(dst)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _save_png_atomic(arr: np.ndarray, dst: Path) -> None:
    tmp = _tmp_path(dst)
    try:
        Image.fromarray(arr).save(tmp, format="PNG")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def check_source(src: Path) -> None:
    """Raise PrepareError naming what SRC lacks."""
    if not src.is_dir():
        raise PrepareError(f"source folder {src} does not exist")
    missing = [name for name in (FREE, *DEFECTS) if not (src / name).is_dir()]
    if missing:
        found = sorted(p.name for p in src.iterdir() if p.is_dir())
        raise PrepareError(f"{src} lacks {', '.join(missing)} (expected {FREE}, {', '.join(DEFECTS)}; "
                           f"found: {', '.join(found) or 'no folders'})")


def prepare(src: Path, out: Path, force: bool = False, progress: bool = True) -> dict[str, int]:
    """Convert SRC into OUT (MVTec layout, see the module docstring); return the image count per split folder."""
    src, out = Path(src), Path(out)
    check_source(src)
    if out.exists() and not out.is_dir():
        raise PrepareError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise PrepareError(f"output folder {out} is not empty: choose another, or pass --force to replace its "
                               f"{', '.join(OWNED)} folders")
        for name in OWNED:
            if (out / name).is_dir():
                shutil.rmtree(out / name)

    # plan every file first, so a missing mask stops the run before anything is written
    free = {p.name: p for p in _images(src / FREE)}
    train, test = split_normal(list(free))
    jobs: list[tuple[str, Path, Path]] = []  # (kind, source, destination)
    jobs += [("copy", free[n], out / "train" / "good" / n) for n in train]
    jobs += [("copy", free[n], out / "test" / "good" / n) for n in test]
    counts = {"train/good": len(train), "test/good": len(test)}
    for folder in DEFECTS:
        name = folder[len("MT_"):].lower()
        jpgs = _images(src / folder)
        for jpg in jpgs:
            jobs.append(("copy", jpg, out / "test" / name / jpg.name))
            jobs.append(("mask", find_mask(jpg), out / "ground_truth" / name / f"{jpg.stem}_mask.png"))
        counts[f"test/{name}"] = len(jpgs)

    for d in sorted({dst.parent for _, _, dst in jobs}):
        d.mkdir(parents=True, exist_ok=True)
    for kind, s, dst in tqdm(jobs, desc="magnetic_tile", unit="file", disable=not progress):
        if kind == "copy":
            _copy_atomic(s, dst)
        else:
            _save_png_atomic(binarise_mask(s), dst)
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path, help="checkout of abin24/Magnetic-tile-defect-datasets. (MT_* folders)")
    ap.add_argument("out", type=Path, help="output category folder (gets train/, test/, ground_truth/)")
    ap.add_argument("--force", action="store_true", help="replace train/, test/, ground_truth/ in a non-empty OUT")
    args = ap.parse_args(argv)
    try:
        counts = prepare(args.src, args.out, force=args.force)
    except PrepareError as e:
        print(f"prepare_magnetic_tile: error: {e}", file=sys.stderr)
        return 1
    defective = sum(v for k, v in counts.items() if k.startswith("test/") and k != "test/good")
    print(f"wrote {args.out}")
    for key, n in counts.items():
        print(f"  {key:<14} {n:5d}")
    print(f"  train {counts['train/good']} normal; test {counts['test/good']} normal + {defective} defective")
    return 0


if __name__ == "__main__":
    sys.exit(main())
