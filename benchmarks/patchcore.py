"""A PatchCore-style baseline (Roth et al., CVPR 2022) on the same frozen backbone as PRNet.

    python benchmarks/patchcore.py --data ../shared/data --category magnetic_tile --size 256 --out pc.json

Features: backbone stages 2 and 3 (timm feature indices; strides 8 and 16 for tf_efficientnet_lite0), each
averaged over its 3×3 neighbourhood (zero padding counted at the borders), stage 3 upsampled bilinearly to
stage 2's size, concatenated: one C2+C3 feature per stride-8 patch. Memory: the patch features of the training
images, subsampled to `coreset_ratio` of them. Anomaly map: each test patch's L2 distance to its nearest memory
feature, upsampled bilinearly to the image size and smoothed with a Gaussian (σ = `sigma`); image score: the
map's maximum.

Subsampling (`sampler`): "greedy" (the default) is PatchCore's k-center greedy coreset, computed on a seeded
random projection of the features to `proj_dim` (128) dimensions; "random" draws a seeded uniform subset.
Greedy is exact but runs in batched passes (see `prnet.models.patch_memory.greedy_coreset`); its cost grows with N·M (200k → 20k
candidates took 25 s on 2 shared CPU cores; one centre per pass would take about 20 min). Before either
sampler the patches are subsampled uniformly at random to at most `max_patches` (default 200 000; None: no
cap), and the memory holds round(coreset_ratio × the candidates left): 762 images at 256 px give 780k patches
→ 200k candidates → a memory of 20k. Pass max_patches=None (e.g. on a GPU) for PatchCore's exact setting.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from prnet.models.backbone import Backbone
from prnet.models.patch_memory import greedy_coreset, nearest_distances, patch_embedding, random_subset
from prnet.utils import atomic_write, resolve_device, setup_logging

log = logging.getLogger(__name__)

Batch = Union[torch.Tensor, dict, Sequence[Any]]
SAMPLERS = ("greedy", "random")


def batch_images(batch: Batch) -> torch.Tensor:
    """The N×3×H×W images of a batch: a tensor, a dict with key 'image', or a tuple/list starting with them."""
    if isinstance(batch, torch.Tensor):
        images = batch
    elif isinstance(batch, dict):
        if "image" not in batch:
            raise KeyError(f"batch dict has no key 'image' (keys: {', '.join(map(str, batch))})")
        images = batch["image"]
    elif isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        images = batch[0]
    else:
        raise TypeError(f"expected a N×3×H×W tensor, a dict with 'image' or an (images, ...) tuple; "
                        f"got {type(batch)}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be N×3×H×W in [0, 1], got shape {tuple(images.shape)}")
    return images


def gaussian_blur(maps: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian smoothing of N×H×W maps (kernel radius round(truncate·σ), mirrored borders)."""
    if sigma <= 0:
        return maps
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=maps.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = maps[:, None].float()
    h, w = x.shape[-2:]
    mode_w = "reflect" if radius < w else "replicate"
    mode_h = "reflect" if radius < h else "replicate"
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode=mode_w), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode=mode_h), k.view(1, 1, -1, 1))
    return x[:, 0]


class PatchCore:
    """PatchCore-style baseline: coreset memory of normal patch features, nearest-neighbour anomaly maps.

    sampler "greedy" (default): k-center greedy coreset on a `proj_dim` random projection; "random": uniform
    subset. Patches are first capped at `max_patches` by a seeded uniform draw (None: no cap); the memory holds
    round(coreset_ratio × candidates). Same seed, same memory, same maps.
    """

    def __init__(self, backbone_name: str = "tf_efficientnet_lite0", weights: str = "package",
                 stages: Sequence[int] = (2, 3), coreset_ratio: float = 0.1, sampler: str = "greedy",
                 sigma: float = 4.0, seed: int = 0, device: Union[str, torch.device] = "cpu",
                 proj_dim: Optional[int] = 128, max_patches: Optional[int] = 200_000, batch_size: int = 16,
                 progress: bool = True) -> None:
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        if not 0.0 < coreset_ratio <= 1.0:
            raise ValueError(f"coreset_ratio must be in (0, 1], got {coreset_ratio}")
        if len(stages) < 1:
            raise ValueError("stages: need at least one backbone stage")
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.backbone = Backbone(backbone_name, weights, stages=stages, bottleneck_stage=max(stages)).to(self.device)
        self.stages = tuple(int(s) for s in stages)
        self.coreset_ratio, self.sampler, self.sigma, self.seed = float(coreset_ratio), sampler, float(sigma), seed
        self.proj_dim, self.max_patches, self.batch_size, self.progress = proj_dim, max_patches, batch_size, progress
        self.memory: Optional[torch.Tensor] = None
        self.memory_sq: Optional[torch.Tensor] = None
        self.memory_owner: Optional[torch.Tensor] = None  # per memory row, the index of its image in fit order
        self.num_patches_seen = 0

    @property
    def feature_dim(self) -> int:
        return int(sum(self.backbone.channels))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features N×C×h×w (C = sum of the stages' channels, at the first stage's stride)."""
        feats, _ = self.backbone(images.to(self.device, torch.float32))
        return patch_embedding(feats)

    @torch.no_grad()
    def fit(self, batches: Iterable[Batch]) -> "PatchCore":
        """Build the memory from the patch features of every image in `batches` (tensors or dicts with 'image')."""
        t0 = time.perf_counter()
        collected, owners, images = [], [], 0
        for batch in tqdm(batches, desc="patchcore features", unit="batch", disable=not self.progress):
            f = self.embed(batch_images(batch))
            collected.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]))
            owners.append(torch.arange(images, images + f.shape[0]).repeat_interleave(f.shape[2] * f.shape[3]))
            images += f.shape[0]
        if not collected:
            raise ValueError("PatchCore.fit: the training batches are empty")
        feats, owner = torch.cat(collected), torch.cat(owners).to(self.device)
        del collected
        n = self.num_patches_seen = feats.shape[0]
        if self.max_patches is not None and n > self.max_patches:
            keep = random_subset(n, self.max_patches, self.seed).to(feats.device)
            feats, owner = feats[keep], owner[keep]
            log.info("patchcore: %d patches capped to %d by a uniform draw", n, feats.shape[0])
        count = max(1, int(round(self.coreset_ratio * feats.shape[0])))
        t1 = time.perf_counter()
        if self.sampler == "greedy":
            idx = greedy_coreset(feats, count, self.proj_dim, self.seed, progress=self.progress)
        else:
            idx = random_subset(feats.shape[0], count, self.seed).to(feats.device)
        self.memory = feats[idx].contiguous()
        self.memory_sq = (self.memory * self.memory).sum(1)
        self.memory_owner = owner[idx]
        log.info("patchcore: memory %d × %d (%s of %d candidates, %d patches); features %.1f s, sampler %.1f s",
                 self.memory.shape[0], self.memory.shape[1], self.sampler, feats.shape[0], n, t1 - t0,
                 time.perf_counter() - t1)
        return self

    @torch.no_grad()
    def predict(self, images: Batch, held_out: Optional[Sequence[int]] = None) -> tuple[np.ndarray, np.ndarray]:
        """Anomaly maps (N×H×W float32, at the input size) and image scores (N, the maps' maxima).

        `held_out`: the images are training images, these their indices in fit order; each is scored without the
        memory rows taken from itself (the score of an unseen normal image, up to the memory's size)."""
        if self.memory is None:
            raise RuntimeError("PatchCore.predict before fit: no memory")
        images = batch_images(images)
        if held_out is not None and len(held_out) != images.shape[0]:
            raise ValueError(f"held_out: {len(held_out)} indices for {images.shape[0]} images")
        h, w = images.shape[-2:]
        maps = []
        for i in range(0, images.shape[0], self.batch_size):
            f = self.embed(images[i:i + self.batch_size])
            n, c, fh, fw = f.shape
            own = {}
            if held_out is not None:
                ids = torch.as_tensor(list(held_out[i:i + n]), device=self.device)
                own = dict(query_owner=ids.repeat_interleave(fh * fw), memory_owner=self.memory_owner)
            d = nearest_distances(f.permute(0, 2, 3, 1).reshape(-1, c), self.memory, self.memory_sq, **own)
            m = F.interpolate(d.view(n, 1, fh, fw), size=(h, w), mode="bilinear", align_corners=False)[:, 0]
            maps.append(gaussian_blur(m, self.sigma).cpu())
        out = torch.cat(maps).numpy().astype(np.float32)
        return out, out.reshape(out.shape[0], -1).max(axis=1)


def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Fit on <data>/<category>/train/good, predict the test split, return AUROCs and timings."""
    from sklearn.metrics import roc_auc_score
    from torch.utils.data import DataLoader

    from prnet.datasets.mvtec import MVTEC

    device = resolve_device(args.device)
    train = MVTEC(args.data, args.category, "train", args.size)
    test = MVTEC(args.data, args.category, "test", args.size)
    model = PatchCore(args.backbone, args.weights, tuple(args.stages), args.ratio, args.sampler, args.sigma,
                      args.seed, device, max_patches=None if args.max_patches <= 0 else args.max_patches,
                      batch_size=args.batch)
    loader = lambda ds: DataLoader(ds, batch_size=args.batch, shuffle=False, num_workers=args.workers)  # noqa: E731
    t0 = time.perf_counter()
    model.fit(loader(train))
    fit_s = time.perf_counter() - t0
    maps, scores, masks, labels = [], [], [], []
    t0 = time.perf_counter()
    for batch in tqdm(loader(test), desc="patchcore test", unit="batch"):
        m, s = model.predict(batch)
        maps.append(m)
        scores.append(s)
        masks.append(batch["mask"][:, 0].numpy() > 0.5), labels.append(batch["label"].numpy())
    test_s = time.perf_counter() - t0
    maps_a, masks_a = np.concatenate(maps), np.concatenate(masks)
    labels_a, scores_a = np.concatenate(labels), np.concatenate(scores)
    return {
        "category": args.category, "backbone": args.backbone, "weights": args.weights, "image_size": args.size,
        "stages": list(args.stages), "sampler": args.sampler, "coreset_ratio": args.ratio,
        "max_patches": args.max_patches, "sigma": args.sigma, "seed": args.seed, "device": str(device),
        "train_images": len(train), "test_images": len(test), "patches": model.num_patches_seen,
        "memory": int(model.memory.shape[0]),
        "image_auroc": float(roc_auc_score(labels_a, scores_a)),
        "pixel_auroc": float(roc_auc_score(masks_a.ravel(), maps_a.ravel())),
        "fit_s": fit_s, "test_ms_per_image": 1000.0 * test_s / len(test), "torch_threads": torch.get_num_threads(),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="MVTec-layout root (holds <category>/train, test, ground_truth)")
    p.add_argument("--category", required=True)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--weights", default="package")
    p.add_argument("--stages", type=int, nargs="+", default=[2, 3])
    p.add_argument("--ratio", type=float, default=0.1)
    p.add_argument("--sampler", choices=SAMPLERS, default="greedy")
    p.add_argument("--max-patches", type=int, default=200_000, help="cap before sampling; <= 0: no cap")
    p.add_argument("--sigma", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    setup_logging()
    result = _evaluate(args)
    for k in ("image_auroc", "pixel_auroc", "fit_s", "test_ms_per_image", "memory", "patches"):
        print(f"{k:>18}: {result[k]:.4f}" if isinstance(result[k], float) else f"{k:>18}: {result[k]}")
    if args.out:
        def write(tmp: str) -> None:
            with open(tmp, "w") as fh:
                json.dump(result, fh, indent=2)
                fh.write("\n")
        atomic_write(args.out, write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
