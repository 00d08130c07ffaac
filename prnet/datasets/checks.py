"""Checks of the data a run will read, done once before any heavy work.

`check_samples` decodes every image and mask (corrupt, truncated, zero-byte and non-image files are a
DatasetError naming the file), refuses a mask whose size differs from its image's, two images with the same stem
in one folder, and masks that are all empty; it warns once about the empty masks of a defect folder, and once
about masks with many grey levels (JPEG or anti-aliased), whose every non-zero pixel counts as defective, and
about images whose mask has another EXIF orientation.
`check_evaluable` refuses a test split that leaves no defective image to evaluate.
"""
from __future__ import annotations

import logging
import os
from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

from prnet.datasets.mvtec import (DatasetError, Sample, SizeLike, _decode, _resize, as_hw, exif_orientation,
                                  mask_union, mask_values)

log = logging.getLogger(__name__)

PROGRESS_MIN_FILES = 200  # a progress bar for sets at least this large
GREY_LEVELS = 8  # a mask with this many distinct non-zero values or more is lossy or anti-aliased, not a label map


def _split_dir(samples: Sequence[Sample]) -> str:
    """<root>/<category>/<split> of samples laid out as <split>/<defect>/<file>."""
    return os.path.dirname(os.path.dirname(samples[0].path)) if samples else "(no images)"


def check_evaluable(test_samples: Sequence[Sample], num_anomalies: int, require_defective: bool = True) -> None:
    """Refuse a test split whose defective images all go to training (data.num_anomalies of them) or that has
    none, unless `require_defective` is False (a training-only run: a warning)."""
    n = sum(s.label == 1 for s in test_samples)
    where = _split_dir(test_samples)
    if n == 0:
        if require_defective:
            raise DatasetError(f"no defective images in {where}: image and pixel metrics cannot be computed "
                               f"(set eval.require_defective=false for a training-only run)")
        log.warning("no defective images in %s: training only, no metrics (eval.require_defective=false)", where)
    elif n < num_anomalies + 1:
        raise DatasetError(f"{n} defective images found in {where}, data.num_anomalies={num_anomalies}: "
                           f"nothing left to evaluate")


def _duplicate_stems(samples: Sequence[Sample]) -> None:
    seen: dict[tuple[str, str], str] = {}
    for s in samples:
        folder, name = os.path.split(s.path)
        key = (folder, os.path.splitext(name)[0])
        if key in seen:
            raise DatasetError(f"{seen[key]} and {s.path} share the stem '{key[1]}' (and its mask): "
                               f"keep one of them")
        seen[key] = s.path


def check_samples(samples: Sequence[Sample], image_size: SizeLike, progress: Optional[bool] = None) -> None:
    """Decode every image and mask of `samples` once; raise DatasetError (one line naming the file) on the first
    problem. `image_size`: the run's size, at which a mask must still mark at least one pixel. `progress`: show a
    bar (default: for PROGRESS_MIN_FILES samples or more)."""
    _duplicate_stems(samples)
    hw = as_hw(image_size)
    empty: list[str] = []
    grey: list[str] = []
    turned: list[str] = []  # an image and its mask with different EXIF orientations
    with_mask = 0
    show = len(samples) >= PROGRESS_MIN_FILES if progress is None else progress
    for s in tqdm(samples, desc="checking images", unit="img", disable=not show, leave=False):
        h, w = _decode(s.path).shape[:2]  # decoding is the check; no float conversion needed
        if s.mask_path is None:
            continue
        with_mask += 1
        paths = [s.mask_path] if isinstance(s.mask_path, str) else list(s.mask_path)
        values = [mask_values(p) for p in paths]  # each file decoded once: the grey levels and the mask
        mask = mask_union(values, paths)
        turn, other_turn = exif_orientation(s.path), False
        for p, v in zip(paths, values):
            if len(np.unique(v[v > 0])) >= GREY_LEVELS:
                grey.append(p)
            mask_turn = exif_orientation(p)
            if mask_turn != turn:
                turned.append(f"{s.path} ({turn}) with {p} ({mask_turn})")
                other_turn = True
        if mask.shape[:2] != (h, w):
            why = (f"; the image carries EXIF orientation {turn} and is read upright, as viewers show it: a mask "
                   f"drawn on its stored pixels does not fit it" if turn != 1 and other_turn else "")
            raise DatasetError(f"mask {s.mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {s.path} is "
                               f"{w}x{h} (width x height): expected the same size{why}")
        if not mask.any() or not _resize(mask, hw, nearest=True).any():
            empty.append(s.mask_path)
    if with_mask and len(empty) == with_mask:
        where = _split_dir([s for s in samples if s.mask_path is not None])
        raise DatasetError(f"every mask of the {with_mask} defective images in {where} is empty "
                           f"at {hw[1]}x{hw[0]} (e.g. {empty[0]}): pixel metrics cannot be computed")
    if turned:
        more = f", … ({len(turned)} in all)" if len(turned) > 10 else ""
        log.warning("%d defective images and their masks carry different EXIF orientations: both are read upright, "
                    "as viewers show them, which fits masks drawn in a viewer or an annotation tool; a mask made "
                    "from an image's stored pixels is then misaligned with it (look at the run's examples.png): "
                    "%s%s", len(turned), ", ".join(turned[:10]), more)
    if grey:
        more = f", … ({len(grey)} in all)" if len(grey) > 10 else ""
        log.warning("%d mask files have %d or more grey levels (JPEG compression or anti-aliased edges): every "
                    "pixel above 0 counts as defective, so each defect takes its fringe with it; masks with only 0 "
                    "and one value (e.g. PNG, 0 and 255) are exact: %s%s", len(grey), GREY_LEVELS,
                    ", ".join(grey[:10]), more)
    if empty:
        more = f", … ({len(empty)} in all)" if len(empty) > 10 else ""
        log.warning("%d masks of defective images are empty at %dx%d (an empty file, or a defect that falls "
                    "between the pixels the resize keeps): those images count as defective for the image metrics, "
                    "and all their pixels as defect-free for the pixel metrics; a larger data.image_size keeps a "
                    "small defect: %s%s", len(empty), hw[1], hw[0], ", ".join(empty[:10]), more)
