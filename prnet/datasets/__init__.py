"""Datasets: the training set (normal + Perlin + extended anomalies), the test set, few-shot split, demo data.

    ensure_data(cfg)                         # writes the demo category if asked and missing
    train = build_train_dataset(cfg, "bottle")
    test = build_test_dataset(cfg, "bottle")  # test split minus the few-shot anomalies (test.excluded)

Training indices: [0, N) the N normal training images (no augmentation), then round(perlin_ratio·N) Perlin
samples (the last round(swap_fraction·that) of them region swaps, kind 'swap', the round(scratch_fraction·that)
before those thin curves, kind 'scratch', and the round(structure_fraction·that) before those structural anomalies,
kind 'structure', the round(shade_fraction·that) before those photometric anomalies, kind 'shade', and the
round(spot_fraction·that) before those small spots, kind 'spot'), then
round(extended_ratio·N)
extended samples (only with real anomalies). With synthesis.jitter > 0 every sample's whole image then gets its
brightness and contrast changed (synthesis.jitter_image), drawn from a stream of its own. Sample `index` of epoch
`epoch` depends only on (cfg.seed, epoch, index), whatever the DataLoader workers.

Epochs: `train.set_epoch(e)` sets the epoch read in `__getitem__` (fine when the trainer makes a fresh
DataLoader iterator per epoch without persistent workers). With persistent workers each worker holds its
own copy of the dataset, so also `train[(epoch, index)]` works: use a sampler that yields (epoch, index)
tuples, e.g. `EpochSampler`, whose `set_epoch` runs in the main process.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..config import Config, SynthesisConfig, image_hw
from ..utils import numpy_rng
from .demo import make_demo_category
from .mvtec import (MVTEC, DatasetError, Sample, format_args, load_mask, load_rgb, resolve_classes,
                    scan_split, select_few_shot)
from .synthesis import (estimate_foreground, extended_anomaly, is_greyscale, jitter_image, perlin_anomaly,
                        scratch_anomaly, shade_anomaly, spot_anomaly, structure_anomaly, swap_anomaly)
from .textures import TextureSource

log = logging.getLogger(__name__)

JITTER_STREAM = 0x717E  # the last key of a sample's jitter generator, numpy_rng(seed, epoch, index, JITTER_STREAM)

__all__ = ["MVTEC", "DatasetError", "Sample", "TrainDataset", "EpochSampler", "TextureSource", "build_train_dataset",
           "build_test_dataset", "few_shot_names", "few_shot_samples", "ensure_data", "load_rgb", "load_mask",
           "resolve_classes", "select_few_shot", "make_demo_category", "greyscale_category", "format_args",
           "holdout_normal_names", "normal_train_set"]

class _NormalPool:
    """rng -> a random normal training image (RGB uint8); the procedural texture fallback uses it."""

    def __init__(self, normal: MVTEC) -> None:
        self.normal = normal

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        return self.normal.image_uint8(int(rng.integers(0, len(self.normal))))


class TrainDataset(Dataset):
    """Normal training images, Perlin anomalies (some of them thin curves or region swaps) and extended (real
    cut-and-paste) anomalies.

    Items: image 3×H×W float32 [0,1], mask 1×H×W float32 {0,1}, label (0 normal, 1 synthetic), kind
    ('normal' | 'perlin' | 'spot' | 'shade' | 'structure' | 'scratch' | 'swap' | 'extended'), source (the index of the
    normal training image it was made from); with `with_clean`, also clean: that normal image, 3×H×W, unchanged
    (for exact held-out residuals, prototypes.held_out_exact).
    `n_swap` of the `n_perlin` Perlin samples (the last ones) are region swaps (synthesis.swap_anomaly: a large
    region from another normal training image), the `n_scratch` before them thin curves (synthesis.scratch_anomaly:
    scratches and cracks filled with a texture), the `n_structure` before them structural anomalies
    (synthesis.structure_anomaly: the mask filled with the image's own blocks, rearranged), the `n_shade` before
    them photometric anomalies (synthesis.shade_anomaly: the image's own level or texture changed under the mask),
    the `n_spot` before them small spots (synthesis.spot_anomaly: one small blob filled with a texture).
    Index with an int (epoch from `set_epoch`) or a tuple (epoch, index). `grey_textures`: Perlin textures are
    turned grey (for a greyscale category, synthesis.texture_colour).
    """

    def __init__(self, normal: MVTEC, textures: TextureSource, *, seed: int, synthesis: SynthesisConfig,
                 n_perlin: int, n_swap: int = 0, anomalies: Sequence[tuple[str, np.ndarray, np.ndarray]] = (),
                 n_extended: int = 0, grey_textures: bool = False, real_anomalies: Optional[Sequence[str]] = None,
                 n_scratch: int = 0, n_structure: int = 0, n_shade: int = 0, n_spot: int = 0,
                 with_clean: bool = False) -> None:
        self.normal = normal
        self.textures = textures
        self.seed = int(seed)
        self.synthesis = synthesis  # beta_max, perlin_scale_max, foreground, swap_area, swap_beta_max, ...
        self.n_normal = len(normal)
        self.n_perlin = int(n_perlin)
        self.n_swap = min(int(n_swap), self.n_perlin) if len(normal) > 1 else 0  # swaps need a second image
        self.n_scratch = min(int(n_scratch), self.n_perlin - self.n_swap)
        self.n_structure = min(int(n_structure), self.n_perlin - self.n_swap - self.n_scratch)
        self.n_shade = min(int(n_shade), self.n_perlin - self.n_swap - self.n_scratch - self.n_structure)
        self.n_spot = min(int(n_spot), self.n_perlin - self.n_swap - self.n_scratch - self.n_structure - self.n_shade)
        self.anomalies = list(anomalies)  # (name, RGB uint8 H×W×3, uint8 {0,1} H×W) at the training size
        self.n_extended = int(n_extended) if self.anomalies else 0
        self.grey_textures = bool(grey_textures)
        # the real anomalies drawn for training (and removed from evaluation), with those whose mask was empty
        self.real_anomalies: list[str] = list(real_anomalies if real_anomalies is not None
                                              else [name for name, _, _ in self.anomalies])
        self.with_clean = bool(with_clean)
        self.epoch = 0
        self._fg: dict[int, np.ndarray] = {}

    def set_epoch(self, epoch: int) -> None:
        """Epoch used by int indices (a fresh DataLoader iterator per epoch sees it)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n_normal + self.n_perlin + self.n_extended

    def kind(self, index: int) -> str:
        if index < self.n_normal:
            return "normal"
        end = self.n_normal + self.n_perlin
        if index >= end:
            return "extended"
        # the Perlin segment from its end: swaps, thin curves, structural, photometric, small spots; DTD blobs first
        for name, n in (("swap", self.n_swap), ("scratch", self.n_scratch), ("structure", self.n_structure),
                        ("shade", self.n_shade), ("spot", self.n_spot)):
            end -= n
            if index >= end:
                return name
        return "perlin"

    def _foreground(self, i: int, image: np.ndarray) -> Optional[np.ndarray]:
        if not self.synthesis.foreground:
            return None
        if i not in self._fg:
            self._fg[i] = estimate_foreground(image)
        return self._fg[i]

    def __getitem__(self, item: Union[int, tuple[int, int]]) -> dict[str, Any]:
        epoch, index = (int(item[0]), int(item[1])) if isinstance(item, (tuple, list)) else (self.epoch, int(item))
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a training set of {len(self)}")
        rng = numpy_rng(self.seed, epoch, index)
        kind = self.kind(index)
        if kind == "normal":
            base = index
            image = normal = self.normal.image(index)
            mask = np.zeros(image.shape[:2], np.float32)
        else:
            base = int(rng.integers(0, self.n_normal))
            normal = self.normal.image(base)
            if kind == "perlin":
                image, mask = perlin_anomaly(normal, self.textures, rng, self.synthesis.beta_max,
                                             self.synthesis.perlin_scale_max,
                                             self._foreground(base, normal), grey=self.grey_textures)
            elif kind == "spot":
                image, mask = spot_anomaly(normal, self.textures, rng, self.synthesis.beta_max,
                                           self._foreground(base, normal), grey=self.grey_textures)
            elif kind == "shade":
                image, mask = shade_anomaly(normal, rng, self.synthesis.perlin_scale_max,
                                            self._foreground(base, normal))
            elif kind == "structure":
                image, mask = structure_anomaly(normal, rng, self.synthesis.beta_max, self.synthesis.perlin_scale_max,
                                                self._foreground(base, normal))
            elif kind == "scratch":
                image, mask = scratch_anomaly(normal, self.textures, rng, self.synthesis.beta_max,
                                              self._foreground(base, normal), grey=self.grey_textures)
            elif kind == "swap":
                other = int(rng.integers(0, self.n_normal - 1))
                other += other >= base  # any normal training image but the base one
                image, mask = swap_anomaly(normal, self.normal.image(other), rng, self.synthesis.swap_beta_max,
                                           tuple(self.synthesis.swap_area), self._foreground(base, normal))
            else:
                _, a_img, a_mask = self.anomalies[int(rng.integers(0, len(self.anomalies)))]
                image, mask = extended_anomaly(normal, a_img.astype(np.float32) / 255.0, a_mask, rng,
                                               match_context=self.synthesis.extended_match_context,
                                               scale=tuple(self.synthesis.extended_scale))
        if self.synthesis.jitter > 0:  # its own random stream: every other draw of the sample stays as without it
            image = jitter_image(image, numpy_rng(self.seed, epoch, index, JITTER_STREAM), self.synthesis.jitter)
        item = {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)),
                "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None],
                "label": int(kind != "normal"), "kind": kind, "source": base}
        if self.with_clean:  # the normal training image the sample was made from, unchanged (not jittered)
            item["clean"] = torch.from_numpy(np.ascontiguousarray(normal.transpose(2, 0, 1), dtype=np.float32))
        return item


class EpochSampler(Sampler):
    """Yields (epoch, index) pairs: a permutation seeded by (seed, epoch) (or the identity if not `shuffle`),
    this rank's shard of it.

    The epoch travels with each index, so dataset workers (persistent or not) draw the same sample for the same
    (seed, epoch, index) whatever their number; call set_epoch(e) in the main process each epoch. Every rank
    gets the same count (the permutation is cut to a multiple of the world size), so DDP ranks step together.
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.seed, self.shuffle = int(n), int(seed), shuffle
        self.rank, self.world_size, self.epoch = rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n // self.world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = numpy_rng(self.seed, self.epoch, 0x5EED).permutation(self.n) if self.shuffle else np.arange(self.n)
        order = order[: len(self) * self.world_size][self.rank::self.world_size]
        return iter([(self.epoch, int(i)) for i in order])


def few_shot_samples(cfg: Config, category: str) -> list[Sample]:
    """The real anomalies of `category` used for training (and removed from evaluation): the one split rule,
    select_few_shot(test samples, data.num_anomalies, data.split_seed), or the names listed in data.few_shot.
    Only defective images with a mask are candidates: without any (image-level labels only) the run uses
    synthetic anomalies only, and every test image is evaluated."""
    if cfg.data.num_anomalies == 0:
        return []
    samples = scan_split(cfg.data.root, category, "test", **format_args(cfg))
    unmasked = sum(1 for s in samples if not s.has_mask)
    samples = [s for s in samples if s.has_mask]
    if unmasked and not any(s.label == 1 for s in samples):
        log.info("%s: the %d defective test images have no masks: training uses synthetic anomalies only "
                 "(data.num_anomalies=%d not used)", category, unmasked, cfg.data.num_anomalies)
        if cfg.data.few_shot is not None:
            raise DatasetError(f"data.few_shot names {', '.join(cfg.data.few_shot)}, but the defective test images "
                               f"of {os.path.join(cfg.data.root, category)} have no masks (expected masks to train on)")
        return []
    if cfg.data.few_shot is None:
        return select_few_shot(samples, cfg.data.num_anomalies, cfg.data.split_seed)
    defective = {s.name: s for s in samples if s.label == 1}
    missing = [n for n in cfg.data.few_shot if n not in defective]
    if missing:
        raise DatasetError(f"data.few_shot names {', '.join(missing)}, not defective images with masks of "
                           f"{os.path.join(cfg.data.root, category, 'test')} (expected '<defect>/<file>')")
    return [defective[n] for n in cfg.data.few_shot]


def few_shot_names(cfg: Config, category: str) -> list[str]:
    """Names ('<defect>/<file>') of the few-shot real anomalies, in the order drawn."""
    return [s.name for s in few_shot_samples(cfg, category)]


def holdout_normal_names(cfg: Config, category: str) -> list[str]:
    """The normal training images held out of training and prototypes to set the decision threshold
    (data.holdout_normal: a share of them, drawn with data.split_seed); [] when the share is 0."""
    share = cfg.data.holdout_normal
    if share <= 0:
        return []
    names = sorted(s.name for s in scan_split(cfg.data.root, category, "train", **format_args(cfg)))
    n = int(round(share * len(names)))
    if not 1 <= n < len(names):
        raise DatasetError(f"data.holdout_normal={share} holds out {n} of the {len(names)} normal training images "
                           f"of {category}: expected at least 1 held out and 1 left for training")
    order = numpy_rng(cfg.data.split_seed, 0x401D).permutation(len(names))
    return sorted(names[i] for i in order[:n])


def normal_train_set(cfg: Config, category: str, cache: bool = False, held_out: bool = False,
                     eight_bit: bool = False) -> MVTEC:
    """The normal images the model and its prototypes learn from (the training split minus the held-out ones),
    or, with `held_out`, only the held-out ones (data.holdout_normal); `cache`, `eight_bit`: as MVTEC's."""
    hold = holdout_normal_names(cfg, category)
    exclude: list[str] = hold
    if held_out:
        if not hold:
            raise DatasetError(f"no held-out normal images for {category}: set data.holdout_normal > 0")
        keep = set(hold)
        exclude = [s.name for s in scan_split(cfg.data.root, category, "train", **format_args(cfg))
                   if s.name not in keep]
    return MVTEC(cfg.data.root, category, "train", image_hw(cfg), exclude=exclude, cache=cache, eight_bit=eight_bit,
                 **format_args(cfg))


def build_test_dataset(cfg: Config, category: str) -> MVTEC:
    """The test split without the few-shot anomalies; `.excluded` lists their names."""
    return MVTEC(cfg.data.root, category, "test", image_hw(cfg), exclude=few_shot_names(cfg, category),
                 **format_args(cfg))


def greyscale_category(normal: MVTEC, max_images: int = 64) -> bool:
    """True when every one of up to `max_images` evenly spaced normal training images is greyscale
    (synthesis.is_greyscale); stops at the first colour image."""
    n = len(normal)
    for i in np.unique(np.linspace(0, n - 1, num=min(n, max_images)).round().astype(int)):
        if not is_greyscale(normal.image_uint8(int(i))):
            return False
    return True


def build_train_dataset(cfg: Config, category: str, normal_hw_cache: bool = True) -> TrainDataset:
    """The training set of `category` (see the module docstring). Its images are the resized images rounded to 8 bits,
    kept in memory when `normal_hw_cache` and cfg.data.cache_images are both true (the cache changes no pixel)."""
    hw = image_hw(cfg)
    cache = bool(normal_hw_cache and cfg.data.cache_images)
    normal = normal_train_set(cfg, category, cache=cache, eight_bit=True)
    normal.preload()  # no-op without cache; with it, workers share the decoded images
    shots = few_shot_samples(cfg, category)
    anomalies = []
    for s in shots:
        mask = load_mask(s.mask_path, hw) if s.mask_path else np.zeros(hw, np.float32)
        if not mask.any():
            log.warning("real anomaly %s has an empty mask at %dx%d: not used for extended anomalies (still "
                        "excluded from evaluation)", s.path, hw[0], hw[1])
            continue
        image = (load_rgb(s.path, hw) * 255.0 + 0.5).astype(np.uint8)
        anomalies.append((s.name, image, mask.astype(np.uint8)))
    n = len(normal)
    n_perlin = int(round(cfg.synthesis.perlin_ratio * n))
    n_extended = int(round(cfg.synthesis.extended_ratio * n)) if anomalies else 0
    if cfg.data.num_anomalies > 0 and not shots:
        log.warning("data.num_anomalies=%d but %s has no defective test images with masks: no extended anomalies",
                    cfg.data.num_anomalies, os.path.join(cfg.data.root, category, "test"))
    textures = TextureSource(cfg.data.dtd_root, normal_images=_NormalPool(normal))
    colour = cfg.synthesis.texture_colour
    grey = colour == "grey" or (colour == "auto" and greyscale_category(normal))
    ds = TrainDataset(normal, textures, seed=cfg.seed, synthesis=cfg.synthesis, n_perlin=n_perlin,
                      n_swap=int(round(cfg.synthesis.swap_fraction * n_perlin)), anomalies=anomalies,
                      n_extended=n_extended, grey_textures=grey, real_anomalies=[s.name for s in shots],
                      n_scratch=int(round(cfg.synthesis.scratch_fraction * n_perlin)),
                      n_structure=int(round(cfg.synthesis.structure_fraction * n_perlin)),
                      n_shade=int(round(cfg.synthesis.shade_fraction * n_perlin)),
                      n_spot=int(round(cfg.synthesis.spot_fraction * n_perlin)),
                      with_clean=cfg.prototypes.leave_one_out and cfg.prototypes.held_out_exact)
    in_context = cfg.synthesis.extended_match_context and ds.n_extended
    log.info("%s: %d normal + %d perlin (%d of them region swaps, %d thin curves, %d structural, %d photometric, %d "
             "small spots) + %d extended training samples per epoch%s%s; Perlin textures %s%s; real anomalies: %s",
             category, n, ds.n_perlin, ds.n_swap, ds.n_scratch, ds.n_structure, ds.n_shade, ds.n_spot, ds.n_extended,
             " (pasted at the level of their new surroundings)" if in_context else "",
             f", each image's brightness and contrast jittered by up to {cfg.synthesis.jitter:g}"
             if cfg.synthesis.jitter > 0 else "",
             "grey" if grey else "in colour", " (greyscale category)" if colour == "auto" and grey else "",
             ", ".join(ds.real_anomalies) or "none")
    return ds


def ensure_data(cfg: Config) -> list[str]:
    """If data.generate_demo, write the procedural demo data for every class missing under data.root (named as
    the class). Returns the folders written."""
    written: list[str] = []
    if not cfg.data.generate_demo:
        return written
    if cfg.data.format != "mvtec":
        log.info("data.generate_demo: the demo is written in the mvtec layout only; data.format is %s: nothing "
                 "written", cfg.data.format)
        return written
    size = max(image_hw(cfg))
    for category in resolve_classes(cfg):
        if not os.path.isdir(os.path.join(cfg.data.root, category)):
            log.info("generating the demo category %s under %s", category, cfg.data.root)
            written.append(make_demo_category(cfg.data.root, category, seed=0, size=size))
    return written
