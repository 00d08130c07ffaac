"""Readers of the field's other data sets in their published layouts, and of plain folders.

Each format is a function `(root, category, split, **options) -> list[Sample]` registered by name in READERS;
`read_split(format, ...)` calls it and checks the result (unique names, sorted by (defect, file)), and
`categories(format, root)` gives a format's category names. `scan_split(..., format=...)` and
`MVTEC(..., format=...)` dispatch here; `data.format` chooses the reader (mvtec.format_args).

| format | data.root holds | categories |
|:---|:---|:---|
| mvtec, mpdd | <category>/{train,test,ground_truth} | MVTec AD's 15; MPDD's 6 |
| visa | split_csv/1cls.csv and <category>/Data/... | candle ... pipe_fryum (12) |
| btad | 01/ 02/ 03/, each {train,test}/{ok,ko}, ground_truth/ko | 01, 02, 03 |
| ksdd2 | train/ and test/ with <id>.png, <id>_GT.png | one: ksdd2 |
| dagm | Class<k>/{Train,Test}/ with Label/Labels.txt | Class1 ... Class10 (those present) |
| loco | <category>/{train,test}/..., ground_truth/<type>/<stem>/*.png | MVTec LOCO AD's 5 |
| folder | <category>/<normal>, <abnormal>, [<mask>], [<test_normal>] | sub-folders of root holding <normal> |

The training split is the normal images only; the test split is the data set's own test images. Defective
images of a training split (KSDD2, DAGM) are not used (logged). Normal images have defect 'good', mask None.
"""
from __future__ import annotations

import csv
import logging
import os
from typing import Any, Callable, Optional

import numpy as np

from .mvtec import (MVTEC, DatasetError, Sample, _found, _list_images, _mask_index, is_image_file, load_mask,
                    scan_tree)

log = logging.getLogger(__name__)

Reader = Callable[..., list[Sample]]
READERS: dict[str, Reader] = {}
CATEGORIES: dict[str, list[str]] = {
    "mvtec": MVTEC.CLASSNAMES,
    # anomalib src/anomalib/data/datasets/image/visa.py CATEGORIES; the VisA README's object names
    "visa": ["candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1", "pcb2",
             "pcb3", "pcb4", "pipe_fryum"],
    "btad": ["01", "02", "03"],  # anomalib btech.py CATEGORIES
    "mpdd": ["bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes"],
    "ksdd2": ["ksdd2"],  # KolektorSDD2 is one set of images: one category, named ksdd2
    "dagm": [f"Class{k}" for k in range(1, 11)],  # DAGM 2007: Class1..Class6 development, Class7..Class10 more
    # anomalib src/anomalib/data/datasets/image/mvtec_loco.py CATEGORIES
    "loco": ["breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors"],
}


def register(name: str) -> Callable[[Reader], Reader]:
    def add(fn: Reader) -> Reader:
        READERS[name] = fn
        return fn
    return add


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise DatasetError(f"split must be 'train' or 'test', got {split!r}")


def _dir(path: str, what: str) -> str:
    """`path` if it is a folder, else a DatasetError naming it and what its parent holds."""
    if not os.path.isdir(path):
        parent = os.path.dirname(path.rstrip(os.sep)) or "."
        where = _found(parent) if os.path.isdir(parent) else "(no such folder either)"
        raise DatasetError(f"no folder {path} ({what}); {parent} holds: {where}")
    return path


def _images(directory: str) -> list[str]:
    """Sorted image file names in `directory` (others reported in a warning); none is an error."""
    files = _list_images(directory)
    if not files:
        raise DatasetError(f"no images in {directory}: found {_found(directory)}")
    return files


def read_split(format: str, root: str, category: str, split: str, **options: Any) -> list[Sample]:
    """The samples of `split` of `category` read by the format's reader, sorted by (defect, file name)."""
    reader = READERS.get(format)
    if reader is None:
        raise DatasetError(f"unknown data format {format!r}: expected one of {', '.join(sorted(READERS))}")
    _check_split(split)
    try:
        samples = reader(root, category, split, **options)
    except TypeError as e:
        raise DatasetError(f"data format {format!r}: {e}") from None
    seen: dict[str, str] = {}
    for s in samples:
        if s.name in seen:
            raise DatasetError(f"two images of the {split} split of {os.path.join(root, category)} are both named "
                               f"{s.name!r}: {seen[s.name]} and {s.path} (expected unique '<defect>/<file>')")
        seen[s.name] = s.path
    return sorted(samples, key=lambda s: (s.defect, s.name))


def categories(format: str, root: str, **options: Any) -> list[str]:
    """The category names of `format`: the data set's own list (DAGM: the Class<k> folders present under
    root, when any), or for format folder the sub-folders of `root` that hold the normal folder."""
    if format == "folder":
        normal = options.get("normal") or "normal"
        if os.path.isabs(normal):
            raise DatasetError(f"format folder: data.folder.normal is an absolute path ({normal}), so no category "
                               f"under {root} can be told by it: name the category with data.classes=[<name>]")
        if not os.path.isdir(root):
            raise DatasetError(f"data root {root} does not exist (format folder: expected <root>/<category>/"
                               f"{normal})")
        found = sorted(n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n, normal)))
        if not found:
            raise DatasetError(f"no category under {root} holds a '{normal}' folder (format folder); {root} holds: "
                               f"{_found(root)}; set data.classes or data.folder.normal")
        return found
    if format not in CATEGORIES:
        raise DatasetError(f"unknown data format {format!r}: expected one of {', '.join(sorted(READERS))}")
    names = list(CATEGORIES[format])
    if format == "dagm" and os.path.isdir(root):
        present = [n for n in names if os.path.isdir(os.path.join(root, n))]
        return present or names
    return names


# ------------------------------------------------------------------------------------------ MVTec-like trees
@register("mvtec")
def read_mvtec(root: str, category: str, split: str) -> list[Sample]:
    """MVTec AD (prnet/datasets/mvtec.py's module docstring)."""
    return scan_tree(root, category, split)


@register("mpdd")
def read_mpdd(root: str, category: str, split: str) -> list[Sample]:
    """MPDD: the MVTec AD layout as published (<category>/train/good, test/<defect>, ground_truth/<defect>/
    <stem>_mask.png); anomalib's MPDD datamodule (src/anomalib/data/datamodules/image/mpdd.py) reads it with
    its MVTec AD reader too."""
    return scan_tree(root, category, split, kind="MPDD")


@register("btad")
def read_btad(root: str, category: str, split: str) -> list[Sample]:
    """BTAD (BeanTech): <root>/<01|02|03>/train/ok, test/{ok,ko}, ground_truth/ko/<stem>.png; images are bmp
    or png depending on the category, masks paired by stem whatever their extension (png preferred).
    Layout from anomalib src/anomalib/data/datasets/image/btech.py. Defect type of a ko image: 'ko'."""
    return scan_tree(root, category, split, good="ok", mask_index=lambda d: _mask_index(d, suffix=""),
                     mask_hint="<stem>.png", kind="BTAD")


def _loco_masks(gt_dir: str) -> dict[str, tuple[str, ...]]:
    """stem -> every mask image under <gt_dir>/<stem>/ (sorted)."""
    index: dict[str, tuple[str, ...]] = {}
    if not os.path.isdir(gt_dir):
        return index
    for stem in sorted(os.listdir(gt_dir)):
        d = os.path.join(gt_dir, stem)
        if os.path.isdir(d):
            files = [os.path.join(d, f) for f in sorted(os.listdir(d)) if is_image_file(f)]
            if files:
                index[stem] = tuple(files)
    return index


@register("loco")
def read_loco(root: str, category: str, split: str) -> list[Sample]:
    """MVTec LOCO AD: <category>/train/good, test/{good,logical_anomalies,structural_anomalies}/<stem>.png,
    ground_truth/<type>/<stem>/000.png, 001.png, ...: a defective image's mask is the union of every mask in
    its folder. The validation/ folder (normal images) is not used. Layout from anomalib
    src/anomalib/data/datasets/image/mvtec_loco.py and the data set's README."""
    return scan_tree(root, category, split, mask_index=_loco_masks, mask_hint="<stem>/000.png", kind="MVTec LOCO AD")


# ------------------------------------------------------------------------------------------------- VisA
@register("visa")
def read_visa(root: str, category: str, split: str) -> list[Sample]:
    """VisA: <root>/split_csv/1cls.csv with columns object, split, label, image, mask (label normal | anomaly;
    paths relative to root, e.g. candle/Data/Images/Anomaly/000.JPG and candle/Data/Masks/Anomaly/000.png).
    Masks hold class ids: any non-zero pixel is anomalous. Layout from the VisA README (amazon-science/spot-diff)
    and anomalib src/anomalib/data/datamodules/image/visa.py (apply_cls1_split). Defect type: 'anomaly'."""
    csv_path = os.path.join(root, "split_csv", "1cls.csv")
    if not os.path.isfile(csv_path):
        raise DatasetError(f"no split file {csv_path} (VisA: expected <root>/split_csv/1cls.csv); {root} holds: "
                           f"{_found(root) if os.path.isdir(root) else 'no such folder'}")
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    need = ("object", "split", "label", "image", "mask")
    if rows and any(k not in rows[0] for k in need):
        raise DatasetError(f"{csv_path}: expected the columns {', '.join(need)}, found {', '.join(rows[0])}")
    objects = sorted({r["object"] for r in rows})
    if category not in objects:
        raise DatasetError(f"no category '{category}' in {csv_path}: found {', '.join(objects) or 'nothing'}")
    samples = []
    n_skipped = 0
    for line, r in enumerate(rows, start=2):
        if r["object"] != category or r["split"] != split:
            continue
        label = r["label"].strip().lower()
        if label not in ("normal", "anomaly"):
            raise DatasetError(f"{csv_path} line {line}: label {r['label']!r}, expected normal or anomaly")
        if split == "train" and label == "anomaly":
            n_skipped += 1
            continue
        path = os.path.join(root, r["image"])
        if not os.path.isfile(path):
            raise DatasetError(f"{csv_path} line {line}: image file {path} does not exist")
        name = os.path.basename(path)
        if label == "normal":
            samples.append(Sample(path, None, 0, "good", f"good/{name}"))
            continue
        mask = os.path.join(root, r["mask"]) if r["mask"].strip() else ""
        if not mask or not os.path.isfile(mask):
            raise DatasetError(f"{csv_path} line {line}: mask file {mask or '(empty column)'} of {path} does not "
                               f"exist")
        samples.append(Sample(path, mask, 1, "anomaly", f"anomaly/{name}"))
    if n_skipped:
        log.warning("%s: training uses only the normal images; %d anomalous training rows of %s not used",
                    csv_path, n_skipped, category)
    if not samples:
        raise DatasetError(f"{csv_path}: no {split} rows for {category}")
    return samples


# -------------------------------------------------------------------------------------------- KolektorSDD2
@register("ksdd2")
def read_ksdd2(root: str, category: str, split: str) -> list[Sample]:
    """KolektorSDD2: <root>/{train,test}/<id>.png with its mask <id>_GT.png; an image is defective when its
    mask has a non-zero pixel, normal when the mask is empty. Training uses the normal training images only.
    Layout from the data set's page (vicos.si/resources/kolektorsdd2) and public loaders (e.g. load_ksdd2 of
    the few-shot anomaly detection code that reads '{name}.png' and '{name}_GT.png')."""
    if category != "ksdd2":
        raise DatasetError(f"KolektorSDD2 has one category, 'ksdd2' (its images are under {root}/train and "
                           f"{root}/test), got {category!r}")
    d = _dir(os.path.join(root, split), f"KolektorSDD2: expected <root>/{split}/<id>.png and <id>_GT.png")
    files = _images(d)
    masks = _mask_index(d, suffix="_GT")
    samples, unused = [], 0
    for f in files:
        stem = os.path.splitext(f)[0]
        if stem.endswith("_GT"):
            continue
        mask = masks.get(stem)
        if mask is None:
            raise DatasetError(f"no mask for {os.path.join(d, f)}: expected {d}/{stem}_GT.png")
        if load_mask(mask).any():
            if split == "train":
                unused += 1
                continue
            samples.append(Sample(os.path.join(d, f), mask, 1, "defect", f"defect/{f}"))
        else:
            samples.append(Sample(os.path.join(d, f), None, 0, "good", f"good/{f}"))
    if unused:
        log.info("%s: %d defective training images not used (training uses the normal ones)", d, unused)
    if not samples:
        raise DatasetError(f"no usable images in {d}: found {_found(d)}")
    return samples


# ---------------------------------------------------------------------------------------------- DAGM 2007
def _dagm_labels(path: str) -> list[tuple[int, str, str]]:
    """(label, image file, mask file or '') per row of a DAGM Labels.txt."""
    rows = []
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        lines = fh.read().splitlines()
    for n, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields or (n == 1 and len(fields) == 1):  # the first line holds one number (a header)
            continue
        if len(fields) < 5 or fields[1] not in ("0", "1"):
            raise DatasetError(f"{path} line {n}: expected 'id label image 0 mask' (label 0 or 1, tab-separated), "
                               f"got {line.strip()!r}")
        rows.append((int(fields[1]), fields[2], fields[4] if fields[1] == "1" else ""))
    return rows


@register("dagm")
def read_dagm(root: str, category: str, split: str) -> list[Sample]:
    """DAGM 2007: <root>/Class<k>/{Train,Test}/<nnnn>.PNG with Label/Labels.txt (a first line with one number,
    then 'id<TAB>label<TAB>image<TAB>0<TAB>mask', label 1 = defective, mask e.g. 0002_label.PNG under Label/).
    The masks are weakly labelled ellipses around the defect. Training uses the normal Train images. Layout from
    the data set's distribution as read by public DAGM tools (Labels.txt columns [id, defect, file, ?, mask])."""
    cat_dir = _dir(os.path.join(root, category), "DAGM 2007: expected <root>/Class<k>")
    split_dir = _dir(os.path.join(cat_dir, split.capitalize()), "DAGM 2007: expected Class<k>/Train and Test")
    labels = os.path.join(split_dir, "Label", "Labels.txt")
    if not os.path.isfile(labels):
        raise DatasetError(f"no label file {labels} (DAGM 2007: expected <split>/Label/Labels.txt)")
    samples, unused, listed = [], 0, set()
    for label, image, mask in _dagm_labels(labels):
        path = os.path.join(split_dir, image)
        listed.add(image)
        if not os.path.isfile(path):
            raise DatasetError(f"{labels} lists {image}, but {path} does not exist")
        if label == 0:
            samples.append(Sample(path, None, 0, "good", f"good/{image}"))
        elif split == "train":
            unused += 1
        else:
            mask_path = os.path.join(split_dir, "Label", mask)
            if not os.path.isfile(mask_path):
                raise DatasetError(f"{labels} gives the mask {mask} for {image}, but {mask_path} does not exist")
            samples.append(Sample(path, mask_path, 1, "defect", f"defect/{image}"))
    unlisted = [f for f in _list_images(split_dir) if f not in listed]
    if unlisted:
        log.warning("%s: %d images are not in %s and not used: %s", split_dir, len(unlisted), labels,
                    ", ".join(unlisted[:10]))
    if unused:
        log.info("%s: %d defective training images not used (training uses the normal ones)", split_dir, unused)
    if not samples:
        raise DatasetError(f"{labels}: no usable {split} images")
    return samples


# ------------------------------------------------------------------------------------------- plain folders
def _folder_masks(mask_dir: str, images: list[str], image_dir: str) -> dict[str, str]:
    """image file -> its mask in `mask_dir`, paired by stem: '<stem>.<ext>' or '<stem>_mask.<ext>'."""
    plain, suffixed = _mask_index(mask_dir, suffix=""), _mask_index(mask_dir, suffix="_mask")
    pairs, missing = {}, []
    for f in images:
        stem = os.path.splitext(f)[0]
        a, b = plain.get(stem), suffixed.get(stem)
        if a and b:
            raise DatasetError(f"two masks for {os.path.join(image_dir, f)}: {a} and {b}; expected one")
        if a or b:
            pairs[f] = a or b
        else:
            missing.append(f)
    if missing:
        raise DatasetError(f"no mask in {mask_dir} for {len(missing)} of the {len(images)} images of {image_dir} "
                           f"(e.g. {', '.join(missing[:5])}; expected <stem>.png or <stem>_mask.png): give every "
                           f"defective image a mask, or no mask folder (image metrics only)")
    used = set(pairs.values())
    extra = sorted(n for n in os.listdir(mask_dir) if is_image_file(n) and os.path.join(mask_dir, n) not in used)
    if extra:
        log.warning("%s: %d masks match no image of %s: %s", mask_dir, len(extra), image_dir, ", ".join(extra[:10]))
    return pairs


def _held_out(files: list[str], fraction: float, seed: int) -> set[str]:
    """The seeded share of `files` held out for testing: round(fraction·n), at least 1 and at most n−1."""
    n = len(files)
    k = min(max(int(round(fraction * n)), 1), n - 1) if fraction > 0 and n > 1 else 0
    order = np.random.default_rng(int(seed) & 0xFFFFFFFF).permutation(n)
    return {sorted(files)[i] for i in order[:k]}


def _no_overlap(base: str, normal: str, abnormal: Optional[str], test_normal: Optional[str]) -> None:
    """Refuse folders of the folder format that hold one another or are one folder (the same images would count
    as normal and defective, or train and test), e.g. test_normal=test/ok inside abnormal=test."""
    roles = [("data.folder.normal", normal), ("data.folder.abnormal", abnormal),
             ("data.folder.test_normal", test_normal)]
    real = [(key, os.path.realpath(os.path.join(base, f))) for key, f in roles if f]
    for i, (a, pa) in enumerate(real):
        for b, pb in real[i + 1:]:
            if pa == pb or pa.startswith(pb.rstrip(os.sep) + os.sep) or pb.startswith(pa.rstrip(os.sep) + os.sep):
                raise DatasetError(f"format folder: {a} ({pa}) and {b} ({pb}) overlap: the same images would be "
                                   f"read twice, as normal and defective or for training and testing; expected "
                                   f"separate folders")


@register("folder")
def read_folder(root: str, category: str, split: str, normal: str = "normal", abnormal: Optional[str] = "abnormal",
                mask: Optional[str] = None, test_normal: Optional[str] = None, test_fraction: float = 0.2,
                seed: int = 0) -> list[Sample]:
    """Plain folders under <root>/<category> (a folder given as an absolute path is used as is):

        <normal>/*              normal images
        <abnormal>/*            defective images (defect type 'abnormal'), or <abnormal>/<type>/* per type
        <mask>/*                optional: masks paired by stem (<stem>.<ext> or <stem>_mask.<ext>), in the same
                                <type>/ sub-folders as the images; with it every defective image needs one
        <test_normal>/*         optional: the normal test images

    Without test_normal, a seeded share `test_fraction` of the normal folder (round(fraction·n), at least one;
    `seed` is data.split_seed) is held out for testing and the rest trains. Without a mask folder the defective
    images have image-level labels only (mask_path None). No abnormal folder: a normal-only test set.
    Modelled on anomalib's Folder data set (src/anomalib/data/datasets/image/folder.py), written anew.
    """
    base = os.path.join(root, category)
    normal_dir = _dir(os.path.join(base, normal), "format folder: data.folder.normal")
    _no_overlap(base, normal, abnormal, test_normal)
    normals = _images(normal_dir)
    held = set() if test_normal else _held_out(normals, test_fraction, seed)
    if split == "train":
        return [Sample(os.path.join(normal_dir, f), None, 0, "good", f"good/{f}") for f in normals if f not in held]
    samples = [Sample(os.path.join(normal_dir, f), None, 0, "good", f"good/{f}") for f in normals if f in held]
    if test_normal:
        d = _dir(os.path.join(base, test_normal), "format folder: data.folder.test_normal")
        samples += [Sample(os.path.join(d, f), None, 0, "good", f"good/{f}") for f in _images(d)]
    if abnormal is None:
        return samples
    abnormal_dir = _dir(os.path.join(base, abnormal), "format folder: data.folder.abnormal")
    mask_dir = _dir(os.path.join(base, mask), "format folder: data.folder.mask") if mask else None
    types = sorted(n for n in os.listdir(abnormal_dir) if os.path.isdir(os.path.join(abnormal_dir, n))
                   and not n.startswith("."))  # hidden: a tool's folder (.ipynb_checkpoints), not a defect type
    loose = [n for n in os.listdir(abnormal_dir) if is_image_file(n) and os.path.isfile(os.path.join(abnormal_dir, n))]
    groups = [("abnormal", "")] if loose else []
    groups += [(t, t) for t in types]
    if not groups:
        raise DatasetError(f"no images in {abnormal_dir} nor in sub-folders of it: found {_found(abnormal_dir)}")
    for defect, sub in groups:
        if defect == "good":
            raise DatasetError(f"{os.path.join(abnormal_dir, sub)}: a defect type cannot be named 'good' (expected "
                               f"another folder name)")
        d = os.path.normpath(os.path.join(abnormal_dir, sub))
        files = _images(d)
        masks = {}
        if mask_dir:
            masks = _folder_masks(_dir(os.path.normpath(os.path.join(mask_dir, sub)), "format folder: masks of " + d),
                                  files, d)
        samples += [Sample(os.path.join(d, f), masks.get(f), 1, defect, f"{defect}/{f}") for f in files]
    return samples
