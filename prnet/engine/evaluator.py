"""Anomaly maps → image scores → metrics.

The model gives logits at the input resolution (`data.image_size`); maps are the sigmoid of the logits at that
resolution ("evaluation resolution"), optionally smoothed with a Gaussian (`eval.sigma`). The image score
(`eval.image_score`) is the mean of the top-k (`eval.topk`) pixels of the map (`map`) or of the map times the square
root of the prototype distance map (`map_residual`, PrototypeBank.distance_map), or that score combined with the
nearest-neighbour distance to the normal training patches (`map_residual_knn`: z(log s_m) + eval.knn_weight ·
z(log s_knn), prnet.models.knn_score). The anomaly map (`eval.anomaly_map`) is the smoothed head map (`head`) or
that map lifted by the nearest-neighbour distance within the head's normal range (`head_knn`, KnnScore.lift); the
image score is computed from the head's map either way. With eval.second_read a size, map_residual_knn also adds
the head's second read of each image at that size: + eval.second_weight · z(log s_w) (prnet.models.second_read; the
images at that size come with the batch, SecondSize). Pixel metrics are computed on the anomaly maps, every pixel.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from prnet.config import Config
from prnet.datasets.mvtec import SecondSize
from prnet.metrics import compute_metrics
from prnet.models.knn_score import KNN_SIGMA
from prnet.models.prnet import needs_second_read

log = logging.getLogger(__name__)


def gaussian_smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of N×1×H×W maps (reflect padding, kernel radius 4σ). sigma <= 0: unchanged."""
    if sigma <= 0:
        return maps
    radius = max(1, int(4.0 * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=maps.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(maps.dtype)
    h, w = maps.shape[-2:]
    # reflect padding needs pad < size; fall back to replicate on tiny maps
    mode = "reflect" if radius < min(h, w) else "replicate"
    out = F.pad(maps, (radius, radius, 0, 0), mode=mode)
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))
    out = F.pad(out, (0, 0, radius, radius), mode=mode)
    return F.conv2d(out, kernel.view(1, 1, -1, 1))


def image_scores(maps: torch.Tensor, topk: int) -> torch.Tensor:
    """Mean of the top-k pixels of each N×1×H×W map → N scores."""
    flat = maps.flatten(1)
    k = max(1, min(topk, flat.shape[1]))
    return flat.topk(k, dim=1).values.mean(dim=1)


def knn_distance_maps(raw: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """KnnScore's N×1×h×w raw distance maps upsampled bilinearly to `hw` and smoothed with σ = KNN_SIGMA (the
    baseline's anomaly map)."""
    up = F.interpolate(raw.float(), size=hw, mode="bilinear", align_corners=False)
    return gaussian_smooth(up, KNN_SIGMA)


IMAGE_SCORES = ("map", "map_residual", "map_residual_knn")
ANOMALY_MAPS = ("head", "head_knn")


def second_read_outputs(model: torch.nn.Module, images: torch.Tensor, source: Optional[torch.Tensor] = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, prototype distance map) of the head's second read of `images`, already at the read's size, with the
    second read's bank (prnet.models.second_read). `source`: the normal training image each input is, for its
    distance map held out of its own cluster (calibration); the head reads the plain residuals, as a test image's."""
    bank = model.second.bank
    feats, residuals, bottleneck, _ = model.encode(images, bank=bank)
    hw = (images.shape[-2], images.shape[-1])
    logits = model.head(feats, residuals, bottleneck, hw)
    device_type = images.device.type
    autocast_on = device_type in ("cuda", "cpu") and torch.is_autocast_enabled(device_type)
    with torch.autocast(device_type, enabled=False) if autocast_on else contextlib.nullcontext():
        if source is not None:
            residuals = bank(feats, source)
        distance = bank.distance_map(residuals, hw)
    return logits, distance


def residual_weighted_scores(maps: torch.Tensor, distance: torch.Tensor, topk: int) -> torch.Tensor:
    """map_residual's image scores of smoothed maps: the top-k mean of the map times the square root of the
    prototype distance map."""
    return image_scores(maps * distance.float().clamp_min(0).sqrt(), topk)


def map_residual_scores(logits: torch.Tensor, distance: torch.Tensor, topk: int, sigma: float) -> torch.Tensor:
    """residual_weighted_scores of the head's logits, smoothed with σ = `sigma`."""
    return residual_weighted_scores(gaussian_smooth(torch.sigmoid(logits.float()), sigma), distance, topk)


def _outputs(model: torch.nn.Module, images: torch.Tensor, image_score: str, anomaly_map: str,
             second_images: Optional[torch.Tensor] = None, second_weight: Optional[float] = None):
    """(logits, distance map or None, raw nearest-neighbour map or None, the second read's (logits, distance map)
    or None) of the model for `image_score`, `anomaly_map` and the second read (`second_weight` not None)."""
    if image_score not in IMAGE_SCORES:
        raise ValueError(f"image_score: expected one of {', '.join(IMAGE_SCORES)}, got {image_score!r}")
    if anomaly_map not in ANOMALY_MAPS:
        raise ValueError(f"anomaly_map: expected one of {', '.join(ANOMALY_MAPS)}, got {anomaly_map!r}")
    second = None
    if second_weight is not None:
        if image_score != "map_residual_knn":
            raise ValueError(f"the second read is a part of image_score map_residual_knn, not of {image_score}")
        if getattr(model, "second", None) is None:
            raise ValueError("the second read (eval.second_read) was asked of a model without one: set "
                             "eval.second_read=none")
        if second_images is None:
            raise ValueError(f"the second read needs each image at its size {model.second.hw} too (second_images)")
        second = second_read_outputs(model, second_images)
    if image_score == "map_residual_knn" or anomaly_map == "head_knn":
        logits, distance, knn = model(images, with_distance=True, with_knn=True)
        return logits, None if image_score == "map" else distance, knn, second
    if image_score == "map":
        return model(images), None, None, None
    return (*model(images, with_distance=True), None, None)


def _maps_scores(model: torch.nn.Module, logits: torch.Tensor, distance: Optional[torch.Tensor],
                 knn: Optional[torch.Tensor], second: Optional[tuple[torch.Tensor, torch.Tensor]], topk: int,
                 sigma: float, image_score: str, knn_weight: Optional[float], anomaly_map: str, knn_lift: float,
                 second_weight: Optional[float]) -> tuple[torch.Tensor, torch.Tensor]:
    maps = gaussian_smooth(torch.sigmoid(logits.float()), sigma)
    # the baseline's distance map, made once: its maximum is s_knn, and head_knn lifts the map with it
    d = None if knn is None else knn_distance_maps(knn, (maps.shape[-2], maps.shape[-1]))
    if image_score == "map":
        scores = image_scores(maps, topk)
    else:
        scores = residual_weighted_scores(maps, distance, topk)
    if image_score == "map_residual_knn":
        if knn_weight is None:
            raise ValueError("image_score map_residual_knn: give knn_weight (eval.knn_weight)")
        scores = model.knn.fuse(scores, d.flatten(1).amax(dim=1), knn_weight, topk, sigma)
        if second is not None:
            scores = scores + second_weight * model.second.z(map_residual_scores(*second, topk, sigma), topk, sigma)
    if anomaly_map == "head_knn":  # the image score above is the head's either way
        maps = model.knn.lift(maps, d, knn_lift, sigma)
    return maps, scores


def maps_and_scores(model: torch.nn.Module, images: torch.Tensor, *, topk: int, sigma: float,
                    image_score: str, knn_weight: Optional[float] = None, anomaly_map: str = "head",
                    knn_lift: float = 0.99, second_images: Optional[torch.Tensor] = None,
                    second_weight: Optional[float] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Smoothed maps and image scores (module docstring): the scoring path of evaluation, prediction and the ONNX
    graph. `model`: a PRNet, or a module with the same call."""
    return _maps_scores(model, *_outputs(model, images, image_score, anomaly_map, second_images, second_weight),
                        topk, sigma, image_score, knn_weight, anomaly_map, knn_lift, second_weight)


@torch.no_grad()
def predict_maps(model: torch.nn.Module, images: torch.Tensor, *, topk: int, sigma: float,
                 image_score: str, knn_weight: Optional[float] = None, anomaly_map: str = "head",
                 knn_lift: float = 0.99, amp: bool = False, second_images: Optional[torch.Tensor] = None,
                 second_weight: Optional[float] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Anomaly maps (N×1×H×W, float32 in [0,1]) and image scores for a batch of [0,1] images.

    topk, sigma, image_score, knn_weight, anomaly_map, knn_lift: the eval.* keys of the same names; amp: train.amp
    (bf16 autocast for the model, used on CUDA only; smoothing and scoring run in float32); second_weight:
    eval.second_weight when the score includes the second read (None: it does not), second_images: then the same
    images at the second read's size."""
    device = images.device
    use_amp = amp and device.type == "cuda"
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
        outputs = _outputs(model, images, image_score, anomaly_map, second_images, second_weight)
    return _maps_scores(model, *outputs, topk, sigma, image_score, knn_weight, anomaly_map, knn_lift, second_weight)


def second_weight_of(cfg: Config) -> Optional[float]:
    """eval.second_weight when cfg's image score includes the second read, else None. `auto` must be resolved
    first (prnet.engine.second_read.with_second_read; a run's checkpoint holds the resolved value): ValueError."""
    if cfg.eval.second_read == "auto" and cfg.eval.image_score == "map_residual_knn":
        raise ValueError("eval.second_read=auto is resolved for a category when its run starts: score with the "
                         "checkpoint's config, or resolve it first (prnet.engine.second_read.with_second_read)")
    return float(cfg.eval.second_weight) if needs_second_read(cfg) else None


@torch.no_grad()
def run_inference(model: torch.nn.Module, dataset: Dataset, cfg: Config, device: torch.device,
                  indices: Optional[list[int]] = None, progress: bool = True) -> dict:
    """Maps, scores, labels and masks of `dataset` (or of `indices` of it), as numpy arrays, in dataset order."""
    was_training = model.training
    model.eval()
    second_weight = second_weight_of(cfg)
    if second_weight is not None:
        dataset = SecondSize(dataset, cfg.eval.second_read)
    subset = dataset if indices is None else Subset(dataset, indices)
    loader = DataLoader(subset, batch_size=cfg.eval.batch_size, shuffle=False, num_workers=0)
    maps, scores, labels, masks = [], [], [], []
    for batch in tqdm(loader, desc="evaluate", leave=False, disable=not progress):
        images = batch["image"].to(device, non_blocking=True)
        if cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        m, s = predict_maps(model, images, topk=cfg.eval.topk, sigma=cfg.eval.sigma, amp=cfg.train.amp,
                            image_score=cfg.eval.image_score, knn_weight=cfg.eval.knn_weight,
                            anomaly_map=cfg.eval.anomaly_map, knn_lift=cfg.eval.knn_lift,
                            second_images=second_batch(batch, device, cfg), second_weight=second_weight)
        maps.append(m[:, 0].cpu().numpy())
        scores.append(s.cpu().numpy())
        labels.append(batch["label"].numpy())
        masks.append(batch["mask"][:, 0].numpy().astype(np.uint8))
    model.train(was_training)
    if not maps:
        raise ValueError("evaluation set is empty")
    return {
        "maps": np.concatenate(maps),
        "scores": np.concatenate(scores),
        "labels": np.concatenate(labels).astype(np.int64),
        "masks": np.concatenate(masks),
    }


def second_batch(batch: dict, device: torch.device, cfg: Config) -> Optional[torch.Tensor]:
    """A batch's images at the second read's size (SecondSize's 'image2'), on `device`; None without them."""
    if "image2" not in batch:
        return None
    images = batch["image2"].to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if cfg.train.channels_last else images


def evaluate(model: torch.nn.Module, dataset: Dataset, cfg: Config, device: torch.device,
             progress: bool = True) -> tuple[dict, dict]:
    """(the five metrics, the raw arrays of run_inference)."""
    out = run_inference(model, dataset, cfg, device, progress=progress)
    metrics = compute_metrics(out["scores"], out["labels"], out["maps"], out["masks"])
    return {k: float(v) for k, v in metrics.items()}, out
