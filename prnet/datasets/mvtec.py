"""The MVTec-AD-layout reader (class MVTEC, CLASSNAMES), image/mask loading, and the seeded few-shot split.

Layout read by `MVTEC(root, category, split)`:

    <root>/<category>/train/good/*.<ext>
    <root>/<category>/test/<defect or good>/*.<ext>
    <root>/<category>/ground_truth/<defect>/<stem>_mask.<ext>

<ext> is any of png, jpg, jpeg, bmp, tif, tiff (any case). Grey, RGBA, palette and 16-bit images become RGB
float32 in [0, 1]. Bad input is a `DatasetError` that names the path and lists what was found; data is never
skipped silently (files that are not images are reported in a warning).
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
from typing import Any, Callable, Collection, NamedTuple, Optional, Sequence, Union

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SizeLike = Union[int, Sequence[int]]


class DatasetError(ValueError):
    """Bad or missing data; the message names the path and what was expected or found."""


MaskPath = Union[None, str, tuple[str, ...]]


class Sample(NamedTuple):
    """One image of a split. `name` is '<defect>/<filename>', unique within a split.

    `mask_path`: None for normal images (their mask is all zeros) and for defective images that have no mask
    (image-level label only: `has_mask` is False); a str, or a tuple of paths whose union is the mask.
    """
    path: str
    mask_path: MaskPath
    label: int  # 0 good, 1 defective
    defect: str  # 'good' for normal images
    name: str

    @property
    def has_mask(self) -> bool:
        """True when the pixel ground truth is known: a normal image, or a defective one with a mask file."""
        return self.label == 0 or self.mask_path is not None


def as_hw(size: SizeLike) -> tuple[int, int]:
    """An int or (h, w) as (h, w)."""
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def is_image_file(filename: str) -> bool:
    return os.path.splitext(filename)[1].lower() in IMAGE_EXTENSIONS


def _found(directory: str, limit: int = 20) -> str:
    """A short listing of `directory` for error messages."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return "(cannot list)"
    if not names:
        return "nothing (empty)"
    more = f", … ({len(names)} entries)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


_JPEG_WARNINGS = ("Corrupt JPEG data", "Premature end of JPEG file")  # libjpeg's messages for damaged data
_stderr_lock = threading.Lock()


def _imdecode_jpeg(data: np.ndarray, path: str) -> Optional[np.ndarray]:
    """cv2.imdecode of JPEG bytes, refusing damaged entropy-coded data: libjpeg then returns an image with a
    garbage lower part and only prints a warning on the C stderr, which is captured here (fd 2, under a lock)."""
    with _stderr_lock, tempfile.TemporaryFile() as capture:
        saved = os.dup(2)
        try:
            os.dup2(capture.fileno(), 2)
            image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        text = capture.read().decode("utf-8", "replace")
    damaged = [line for line in text.splitlines() if line.startswith(_JPEG_WARNINGS)]
    other = "".join(line + "\n" for line in text.splitlines() if line not in damaged)
    if other:
        os.write(2, other.encode())
    if damaged:
        raise DatasetError(f"corrupt image file {path}: {damaged[0]}")
    return image


def _decode(path: str) -> np.ndarray:
    """Decode an image file (any depth, channels in BGR(A) order for colour), turned upright by its EXIF orientation
    as a viewer shows it, or raise DatasetError (missing, empty, unreadable, truncated, or a JPEG with damaged
    data)."""
    if not os.path.isfile(path):
        raise DatasetError(f"image file {path} does not exist")
    data = np.fromfile(path, dtype=np.uint8)  # works with non-ASCII paths too
    if not data.size:
        raise DatasetError(f"cannot read image file {path}: the file is empty")
    if data[:2].tobytes() == b"\xff\xd8":  # JPEG
        image = _imdecode_jpeg(data, path)
    else:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        try:  # some TIFF/BMP variants OpenCV does not read; PIL also refuses truncated files
            from PIL import Image
            with Image.open(path) as pil:
                if pil.mode == "P":
                    pil = pil.convert("RGBA" if "transparency" in pil.info else "RGB")
                arr = np.asarray(pil)
            if arr.ndim == 3 and arr.shape[2] >= 3:  # PIL is RGB(A): make it BGR(A) like OpenCV
                arr = arr[..., [2, 1, 0] + list(range(3, arr.shape[2]))]
            image = np.ascontiguousarray(arr)
        except Exception as e:  # noqa: BLE001 - any decoder failure is an unreadable file
            raise DatasetError(f"cannot read image file {path}: {e}") from None
    return orient(image, exif_orientation(data))


# EXIF orientation (tag 0x0112) -> the array operation that shows the image upright, as viewers and annotation tools
# do (PIL's ImageOps.exif_transpose): 2 mirrored, 3 turned 180°, 4 flipped, 5 transposed, 6 turned 90° clockwise,
# 7 transversed, 8 turned 90° counter-clockwise.
_ORIENT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1], 5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1), 7: lambda a: a.swapaxes(0, 1)[::-1, ::-1], 8: lambda a: np.rot90(a, 1),
}


def exif_orientation(data: Union[str, bytes, np.ndarray]) -> int:
    """The EXIF orientation of an encoded image file, its bytes or its path (1, upright, when it has none or it
    cannot be read)."""
    from io import BytesIO

    from PIL import Image
    try:
        source = data if isinstance(data, str) else BytesIO(data.tobytes() if isinstance(data, np.ndarray) else data)
        with Image.open(source) as pil:
            value = pil.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - no readable header: the decoder has accepted the file, so it is as stored
        return 1
    return int(value) if value in _ORIENT else 1


def orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """`image` (H×W[×C], as stored) turned upright for its EXIF `orientation`; contiguous."""
    return np.ascontiguousarray(_ORIENT[orientation](image)) if orientation in _ORIENT else image


def _to_unit_float(image: np.ndarray, what: str) -> np.ndarray:
    """Scale integer or float pixels to float32 [0, 1] by the dtype's range (`what` names the image in errors)."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    if image.dtype == bool:
        return image.astype(np.float32)
    if np.issubdtype(image.dtype, np.floating):
        return np.clip(image.astype(np.float32), 0.0, 1.0)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        return np.clip(image.astype(np.float32) / float(info.max), 0.0, 1.0)
    raise DatasetError(f"{what}: unsupported pixel type {image.dtype}")


def _resize(image: np.ndarray, hw: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize to (h, w): nearest for masks, area when shrinking, bilinear otherwise."""
    h, w = hw
    if image.shape[:2] == (h, w):
        return image
    if nearest:
        interp = cv2.INTER_NEAREST
    elif h <= image.shape[0] and w <= image.shape[1]:
        interp = cv2.INTER_AREA
    else:
        interp = cv2.INTER_LINEAR
    out = cv2.resize(image, (w, h), interpolation=interp)
    if image.ndim == 3 and out.ndim == 2:
        out = out[..., None]
    return out


def to_rgb(image: np.ndarray, hw: Optional[SizeLike] = None, what: str = "image array",
           bgr: bool = False) -> np.ndarray:
    """A decoded image array (H×W or H×W×C: grey, grey+alpha, colour, colour+alpha; uint8, uint16, bool, other
    integers or float in [0, 1]) as RGB float32 H×W×3 in [0, 1], resized to `hw` (int or (h, w)) unless
    None. Alpha is dropped. `bgr`: colour channels in OpenCV's B, G, R order; `what` names the image in errors."""
    image = _to_unit_float(np.asarray(image), what)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 2:  # grey + alpha
        image = np.repeat(image[..., :1], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] >= 3:
        image = image[..., 2::-1] if bgr else image[..., :3]
    else:
        raise DatasetError(f"{what}: unsupported shape {image.shape} (expected H×W or H×W×C)")
    image = np.ascontiguousarray(image, dtype=np.float32)
    if hw is not None:
        image = _resize(image, as_hw(hw))
    return np.clip(image, 0.0, 1.0)


def load_rgb(path: str, hw: Optional[SizeLike] = None) -> np.ndarray:
    """Read any image file as RGB float32 H×W×3 in [0, 1], resized to `hw` (int or (h, w)) unless None."""
    return to_rgb(_decode(path), hw, f"image file {path}", bgr=True)


def mask_values(path: str) -> np.ndarray:
    """A mask file's values as one H×W array: the largest colour channel, 0 where an alpha channel is transparent."""
    mask = _decode(path)
    if mask.ndim == 3:
        alpha = mask[..., -1] if mask.shape[2] in (2, 4) else None
        mask = mask[..., :3].max(axis=2) if mask.shape[2] >= 3 else mask[..., 0]
        if alpha is not None:
            mask = np.where(alpha > 0, mask, 0)
    return mask


def mask_union(values: Sequence[np.ndarray], paths: Sequence[str]) -> np.ndarray:
    """uint8 H×W {0, 1}: where any of the mask files' `values` (mask_values of `paths`) is above 0."""
    binary = None
    for p, mask in zip(paths, values):
        if binary is not None and mask.shape != binary.shape:
            raise DatasetError(f"mask file {p}: size {mask.shape[1]}x{mask.shape[0]} differs from "
                               f"{paths[0]} ({binary.shape[1]}x{binary.shape[0]}); expected one size per image")
        binary = (mask > 0).astype(np.uint8) if binary is None else binary | (mask > 0).astype(np.uint8)
    return binary


def load_mask(path: Union[str, Sequence[str]], hw: Optional[SizeLike] = None) -> np.ndarray:
    """Read a mask file (or several: their union) as float32 H×W in {0, 1}, nearest-resized to `hw`.

    Any non-zero pixel is defective (class-id masks such as VisA's, 16-bit and RGB masks included), unless it is
    transparent: a mask with an alpha channel (an overlay exported on a transparent background) marks only where it
    is drawn."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths:
        raise DatasetError("load_mask: no mask file given")
    binary = mask_union([mask_values(p) for p in paths], paths)
    if hw is not None:
        binary = _resize(binary, as_hw(hw), nearest=True)
    return binary.astype(np.float32)


def _list_images(directory: str) -> list[str]:
    """Sorted image filenames in `directory`; other files are reported in a warning, never silently skipped."""
    names = sorted(os.listdir(directory))
    images = [n for n in names if is_image_file(n) and os.path.isfile(os.path.join(directory, n))]
    others = [n for n in names if n not in images and not n.startswith(".")]
    if others:
        log.warning("ignoring %d entries that are not image files in %s: %s", len(others), directory,
                    ", ".join(others[:10]))
    return images


def _mask_index(gt_dir: str, suffix: str = "_mask") -> dict[str, str]:
    """stem -> mask path for every '<stem><suffix>.<ext>' in `gt_dir` (png preferred when several)."""
    index: dict[str, str] = {}
    if not os.path.isdir(gt_dir):
        return index
    for name in sorted(os.listdir(gt_dir), key=lambda n: (os.path.splitext(n)[1].lower() != ".png", n)):
        stem, _ = os.path.splitext(name)
        if is_image_file(name) and stem.endswith(suffix) and os.path.isfile(os.path.join(gt_dir, name)):
            index.setdefault(stem[: len(stem) - len(suffix)], os.path.join(gt_dir, name))
    return index


def scan_split(root: str, category: str, split: str, format: str = "mvtec",
               format_options: Optional[dict] = None) -> list[Sample]:
    """The samples of one split of `category` in the layout `format` (mvtec: see the module docstring; the
    others: prnet/datasets/formats.py), sorted, with every check of the layout. `format_options`: the
    format's options (format_args(cfg) gives both from a config)."""
    if format != "mvtec" or format_options:
        from .formats import read_split  # imported here: formats builds on this module
        return read_split(format, root, category, split, **(format_options or {}))
    return scan_tree(root, category, split)


def scan_tree(root: str, category: str, split: str, good: str = "good",
              mask_index: Callable[[str], dict[str, Any]] = _mask_index, mask_hint: str = "<stem>_mask.png",
              kind: str = "MVTec AD") -> list[Sample]:
    """An MVTec-like tree: <root>/<category>/{train,test}/<defect or `good`>/<image>, the masks of
    test/<defect>/<stem>.<ext> found by `mask_index(<root>/<category>/ground_truth/<defect>)` (stem -> path or
    tuple of paths). Normal images get defect 'good' whatever `good` is named on disk."""
    if split not in ("train", "test"):
        raise DatasetError(f"split must be 'train' or 'test', got {split!r}")
    if not os.path.isdir(root):
        raise DatasetError(f"data root {root} does not exist (expected the {kind} layout: "
                           f"<root>/<category>/train, test, ground_truth)")
    cat_dir = os.path.join(root, category)
    if not os.path.isdir(cat_dir):
        found = sorted(n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n)) and not n.startswith("."))
        raise DatasetError(f"no category '{category}' under {root}: found {', '.join(found) or 'nothing'}")
    split_dir = os.path.join(cat_dir, split)
    if not os.path.isdir(split_dir):
        raise DatasetError(f"no '{split}' folder in {cat_dir}: found {_found(cat_dir)}")
    subdirs = sorted(n for n in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, n)))
    loose = sorted(n for n in os.listdir(split_dir) if n not in subdirs and not n.startswith("."))
    if loose:
        log.warning("ignoring %d files directly in %s (images belong in <defect>/ folders): %s", len(loose),
                    split_dir, ", ".join(loose[:10]))
    if split == "train":
        if good not in subdirs:
            raise DatasetError(f"no '{good}' folder in {split_dir}: found {_found(split_dir)}")
        if len(subdirs) > 1:
            log.warning("training uses only %s/%s; ignoring %s", split_dir, good,
                        ", ".join(d for d in subdirs if d != good))
        subdirs = [good]
    elif not subdirs:
        raise DatasetError(f"no defect folders in {split_dir}: found {_found(split_dir)}")
    samples: list[Sample] = []
    for defect in subdirs:
        d = os.path.join(split_dir, defect)
        files = _list_images(d)
        if not files:
            raise DatasetError(f"no images in {d}: found {_found(d)} (expected {', '.join(IMAGE_EXTENSIONS)})")
        normal = defect == good
        masks = {} if normal else mask_index(os.path.join(cat_dir, "ground_truth", defect))
        for f in files:
            stem = os.path.splitext(f)[0]
            mask_path = None
            if not normal:
                mask_path = masks.get(stem)
                if mask_path is None:
                    gt_dir = os.path.join(cat_dir, "ground_truth", defect)
                    where = _found(gt_dir) if os.path.isdir(gt_dir) else "no such folder"
                    hint = mask_hint.replace("<stem>", stem)
                    raise DatasetError(f"no mask for {os.path.join(d, f)}: expected {gt_dir}/{hint} "
                                       f"(or another image extension); {gt_dir} holds: {where}")
            name = "good" if normal else defect
            samples.append(Sample(os.path.join(d, f), mask_path, int(not normal), name, f"{name}/{f}"))
    return samples


class MVTEC(Dataset):
    """One split of one category in the MVTec AD layout; items are dicts image, mask, label, path, defect.

    `eight_bit`: `image` gives the resized image rounded to 8 bits (the training images'), with or without `cache`,
    which only keeps those 8-bit images in memory; otherwise `image` is the resize's float32 (test images,
    prototypes, nearest-neighbour memory)."""

    CLASSNAMES = ['bottle', 'cable', 'capsule', 'carpet', 'grid', 'hazelnut', 'leather', 'metal_nut', 'pill',
                  'screw', 'tile', 'toothbrush', 'transistor', 'wood', 'zipper']

    def __init__(self, root: str, category: str, split: str = "train", image_size: SizeLike = 256,
                 exclude: Collection[str] = (), cache: bool = False, format: str = "mvtec",
                 format_options: Optional[dict] = None, eight_bit: bool = False) -> None:
        self.root, self.category, self.split, self.format = root, category, split, format
        self.hw = as_hw(image_size)
        samples = scan_split(root, category, split, format, format_options)
        names = {s.name for s in samples}
        exclude = set(exclude)
        unknown = sorted(exclude - names)
        if unknown:
            raise DatasetError(f"cannot exclude {', '.join(unknown)}: not in {os.path.join(root, category, split)}")
        self.samples: list[Sample] = [s for s in samples if s.name not in exclude]
        self.excluded: list[str] = sorted(exclude)
        if not self.samples:
            raise DatasetError(f"no images left in {os.path.join(root, category, split)} after excluding "
                               f"{len(exclude)}")
        self.cache, self.eight_bit = cache, eight_bit or cache
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def image_uint8(self, index: int) -> np.ndarray:
        """The resized RGB image as uint8 H×W×3 (kept in memory when cache=True)."""
        cached = self._cache.get(index)
        if cached is not None:
            return cached
        image = (load_rgb(self.samples[index].path, self.hw) * 255.0 + 0.5).astype(np.uint8)
        if self.cache:
            self._cache[index] = image
        return image

    def image(self, index: int) -> np.ndarray:
        """The resized RGB image as float32 H×W×3 in [0, 1] (rounded to 8 bits when `eight_bit`)."""
        if self.eight_bit:
            return self.image_uint8(index).astype(np.float32) / 255.0
        return load_rgb(self.samples[index].path, self.hw)

    def mask(self, index: int) -> np.ndarray:
        """The resized mask as float32 H×W in {0, 1} (zeros for good images)."""
        s = self.samples[index]
        if s.mask_path is None:
            return np.zeros(self.hw, np.float32)
        return load_mask(s.mask_path, self.hw)

    def preload(self) -> None:
        """Decode every image into the cache now (so DataLoader workers share it instead of each decoding)."""
        if self.cache:
            for i in range(len(self)):
                self.image_uint8(i)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.samples[index]
        image = torch.from_numpy(np.ascontiguousarray(self.image(index).transpose(2, 0, 1)))
        mask = torch.from_numpy(self.mask(index))[None]
        return {"image": image, "mask": mask, "label": s.label, "path": s.path, "defect": s.defect}


class SecondSize(Dataset):
    """A dataset whose items also hold 'image2': the same image file read at another size `hw` (the second read of
    the image score, eval.second_read), resized from the file as 'image' is. `dataset`: an MVTEC (or any dataset with
    `samples` holding each item's `path`, in item order)."""

    def __init__(self, dataset: Dataset, hw: SizeLike) -> None:
        self.dataset, self.hw = dataset, as_hw(hw)
        self.samples = dataset.samples

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index])
        image = load_rgb(self.samples[index].path, self.hw)
        item["image2"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return item


def format_args(cfg: Any) -> dict[str, Any]:
    """{'format': cfg.data.format, 'format_options': ...}: the keyword arguments of scan_split and MVTEC that
    read a config's data the way the config says (the folder format's options come from data.folder)."""
    fmt = getattr(cfg.data, "format", "mvtec")
    options: dict[str, Any] = {}
    if fmt == "folder":
        f = cfg.data.folder
        options = {"normal": f.normal, "abnormal": f.abnormal, "mask": f.mask, "test_normal": f.test_normal,
                   "test_fraction": f.test_fraction, "seed": cfg.data.split_seed}
    return {"format": fmt, "format_options": options}


def resolve_classes(cfg: Any) -> list[str]:
    """cfg.data.classes; else MVTEC.CLASSNAMES for format mvtec (read now, so edits of the class attribute take
    effect), or the format's own category names (formats.categories)."""
    classes = cfg.data.classes
    if classes is not None:
        return list(classes)
    args = format_args(cfg)
    if args["format"] == "mvtec":
        return list(MVTEC.CLASSNAMES)
    from .formats import categories
    return categories(args["format"], cfg.data.root, **args["format_options"])


def select_few_shot(samples: Sequence[Sample], num: int, seed: int) -> list[Sample]:
    """`num` defective samples drawn with `seed`, round-robin over defect types sorted by name.

    Each type's samples (sorted by name) are shuffled with one seeded generator, types in name order; then one
    sample is taken from each type in turn until `num` are taken. num=0: [] (unsupervised). DatasetError when fewer
    than num + 1 defective samples exist (none would be left to evaluate); none at all: [] with a warning.
    """
    if num < 0:
        raise ValueError(f"number of few-shot anomalies must be >= 0, got {num}")
    if num == 0:
        return []
    from prnet.datasets.checks import check_evaluable  # imported here: checks imports this module
    check_evaluable(samples, num, require_defective=False)
    by_type: dict[str, list[Sample]] = {}
    for s in samples:
        if s.label == 1:
            by_type.setdefault(s.defect, []).append(s)
    rng = np.random.default_rng(int(seed) & 0xFFFFFFFF)
    queues = []
    for defect in sorted(by_type):
        items = sorted(by_type[defect], key=lambda s: s.name)
        queues.append([items[i] for i in rng.permutation(len(items))])
    chosen: list[Sample] = []
    depth = 0
    while len(chosen) < num and any(depth < len(q) for q in queues):
        for q in queues:
            if depth < len(q) and len(chosen) < num:
                chosen.append(q[depth])
        depth += 1
    return chosen
