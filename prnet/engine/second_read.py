"""The head's second read of each image (eval.second_read, prnet.models.second_read): its size, its bank, its
statistics.

`resolve_second_read` turns `auto` into a size or `none` when a run starts, from the normal training images: a run's
checkpoint and config.yaml hold the size it was trained and calibrated with. `calibrate_second_read` makes the
model's SecondRead after training: the prototype bank at the read's size (prototypes.dir, built from the normal
training images with the run's seed and settings if it is not there yet, as the run's own bank is) and the mean and
standard deviation of log s_w over the same images, each read as an unseen normal image would be (its distance map
held out of its own cluster).
"""
from __future__ import annotations

import copy
import logging
import statistics
import time
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from prnet.config import Config, image_hw
from prnet.datasets import normal_train_set
from prnet.datasets.mvtec import load_rgb
from prnet.engine.evaluator import map_residual_scores, second_read_outputs
from prnet.engine.prototypes import ensure_prototypes
from prnet.models.knn_score import EPS
from prnet.models.prototypes import PrototypeBank
from prnet.models.second_read import SecondRead

log = logging.getLogger(__name__)

AUTO_MIN_ASPECT = 1.5  # auto reads a second time when the images' median long:short side ratio is at least this


def image_aspect(path: str) -> float:
    """Width / height of an image file, from its header where PIL reads one (else the decoded image)."""
    try:
        from PIL import Image
        with Image.open(path) as image:
            w, h = image.size
    except Exception:  # noqa: BLE001 - a format PIL does not read: decode it as the data loader does
        h, w = load_rgb(path).shape[:2]
    return w / h


def auto_size(hw: tuple[int, int], aspects: Sequence[float]) -> Union[list[int], str]:
    """eval.second_read=auto for a run at `hw` whose normal training images have these width / height ratios: `none`
    unless `hw` is square and their median is at least AUTO_MIN_ASPECT:1 either way; then the run's side as the short
    side and the long side from the median aspect, rounded to a multiple of 32."""
    h, w = hw
    if h != w or not aspects:
        return "none"
    aspect = statistics.median(aspects)
    if max(aspect, 1.0 / aspect) < AUTO_MIN_ASPECT:
        return "none"
    long_side = max(32, int(round(h * max(aspect, 1.0 / aspect) / 32.0)) * 32)
    return [h, long_side] if aspect > 1.0 else [long_side, h]


def resolve_second_read(cfg: Config, category: str) -> Union[list[int], str]:
    """cfg.eval.second_read with `auto` resolved for `category` (auto_size of its normal training images); `none`
    when the image score is not map_residual_knn (the score the second read is a part of) or with a patch memory
    (prototypes.patch_memory, which the second read does not have)."""
    value = cfg.eval.second_read
    if value != "auto":
        return value
    if cfg.eval.image_score != "map_residual_knn" or cfg.prototypes.patch_memory > 0:
        return "none"
    return auto_size(image_hw(cfg), [image_aspect(s.path) for s in normal_train_set(cfg, category).samples])


def with_second_read(cfg: Config, category: str) -> Config:
    """cfg itself if eval.second_read is not `auto`, else a copy with it resolved for `category`."""
    if cfg.eval.second_read != "auto":
        return cfg
    out = copy.deepcopy(cfg)
    out.eval.second_read = resolve_second_read(cfg, category)
    log.info("%s: eval.second_read auto -> %s", category, out.eval.second_read)
    return out


def second_read_config(cfg: Config) -> Config:
    """A copy of cfg that reads the images at the second read's size (its prototype file and datasets)."""
    if not isinstance(cfg.eval.second_read, list):
        raise ValueError(f"eval.second_read is {cfg.eval.second_read!r}, not a size")
    out = copy.deepcopy(cfg)
    out.data.image_size = list(cfg.eval.second_read)
    return out


@torch.no_grad()
def calibrate_second_read(model: torch.nn.Module, cfg: Config, category: str, device: torch.device,
                          bank: Optional[PrototypeBank] = None) -> np.ndarray:
    """Build model.second (replacing any) for cfg's eval.second_read (a size): its bank (`bank`, the caller's
    ensure_prototypes of second_read_config(cfg); None: loaded from or saved to prototypes.dir here) and the
    statistics of log s_w over the normal training images. Returns those images' eval.second_weight · z(log s_w),
    held out, in normal_train_set order (the part the second read adds to their fused scores)."""
    t0 = time.time()
    c2 = second_read_config(cfg)
    if bank is None:
        bank = ensure_prototypes(c2, category, device, backbone=model.backbone)
    bank = bank.to(device)
    dataset = normal_train_set(c2, category)
    names = [s.name for s in normal_train_set(cfg, category).samples]
    if [s.name for s in dataset.samples] != names or bank.num_sources != len(names):
        raise RuntimeError(f"second read of {category}: its bank holds other training images than the run")
    was_training = model.training
    model.eval()
    model.second = SecondRead(bank, size=tuple(cfg.eval.second_read)).to(device)
    loader = DataLoader(dataset, batch_size=cfg.eval.batch_size, shuffle=False, num_workers=0)
    use_amp = cfg.train.amp and device.type == "cuda"
    scores, start = [], 0
    for batch in tqdm(loader, desc="second read calibration", leave=False):
        x = batch["image"].to(device)
        if cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        source = torch.arange(start, start + x.shape[0], device=device)
        start += x.shape[0]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            outputs = second_read_outputs(model, x, source)
        scores.append(map_residual_scores(*outputs, cfg.eval.topk, cfg.eval.sigma).cpu())
    logs = np.log(torch.cat(scores).double().numpy() + EPS)
    model.second.stats.copy_(torch.tensor([logs.mean(), logs.std()]))
    model.second.settings.copy_(torch.tensor([float(cfg.eval.topk), float(cfg.eval.sigma)]))
    model.train(was_training)
    part = cfg.eval.second_weight * model.second.z(torch.cat(scores), cfg.eval.topk, cfg.eval.sigma)
    log.info("second read of %s at %s: log-score mean/std %s over %d training images (%.1f s)", category,
             cfg.eval.second_read, [round(float(v), 4) for v in model.second.stats], len(dataset), time.time() - t0)
    return part.numpy()


def attach_second_read(model: torch.nn.Module, cfg: Config, category: str, device: torch.device) -> bool:
    """Give a model loaded from a checkpoint the second read that cfg asks for (cfg resolved: with_second_read) if it
    has none made for that size, eval.topk and eval.sigma; take it away when cfg asks for none. Returns whether it
    made one."""
    from prnet.models.prnet import needs_second_read

    if not needs_second_read(cfg):
        model.second = None
        return False
    second = getattr(model, "second", None)
    if second is not None and second.is_calibrated and list(second.hw) == list(cfg.eval.second_read) and \
            second.made_for(cfg.eval.topk, cfg.eval.sigma):
        return False
    calibrate_second_read(model, cfg, category, device)
    return True
