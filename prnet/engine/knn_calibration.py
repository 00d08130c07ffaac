"""Make the nearest-neighbour part of eval.image_score=map_residual_knn after training (prnet.models.knn_score).

`calibrate_knn_score` builds the memory from the normal training images (patch_features and coreset_memory of
prnet.engine.prototypes: the baseline's features, patch cap, coreset size and seed) and computes the statistics that
put the two scores on one scale, over the same images, each scored as an unseen normal image would be:

- s_m: the released score map_residual, the head's map of the plain forward pass (as a test image gets it) times the
  square root of the image's held-out prototype distance map (its own image left out of its cluster);
- s_knn: the nearest-neighbour image score without the memory rows taken from the image itself.

From the same images it also makes the anomaly map eval.anomaly_map=head_knn's table and lift (KnnScore.lift): the
MAP_TABLE quantiles of the held-out distance map's pixels and the eval.knn_lift percentile of the head's map's
pixels, both over MAP_SAMPLE pixels per image drawn with a generator seeded by cfg.seed.

The same held-out scores, fused, are what eval.threshold=train_max takes the highest of (`calibrate_knn_score`
returns them; `held_out_map_residual_scores` gives s_m alone, for eval.image_score=map_residual): the training
images' own patches are part of the memory and their own features part of their prototypes, so scored as test
images are they would sit far below any unseen normal image. `attach_knn_score` does the same for a model loaded
from a checkpoint that lacks it, from the run's prototype file.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from prnet.config import Config
from prnet.engine.evaluator import gaussian_smooth, knn_distance_maps, residual_weighted_scores
from prnet.engine.prototypes import coreset_memory, patch_features, run_prototype_file
from prnet.models.knn_score import EPS, MAP_TABLE, KnnScore
from prnet.models.prototypes import PrototypeBank

log = logging.getLogger(__name__)

MAP_SAMPLE = 2048  # pixels per training image drawn for the head_knn map's table and lift


@torch.no_grad()
def _held_out_batches(model: torch.nn.Module, bank: PrototypeBank, loader: DataLoader, cfg: Config,
                      device: torch.device, desc: str):
    """Per batch of the normal training images (in `bank`'s build order): (features, their training-image indices,
    the head's smoothed map of the plain forward pass, the prototype distance map held out of each image's own
    cluster)."""
    start = 0
    use_amp = cfg.train.amp and device.type == "cuda"
    for batch in tqdm(loader, desc=desc, leave=False):
        x = batch["image"].to(device)
        if cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        n, hw = x.shape[0], (x.shape[-2], x.shape[-1])
        source = torch.arange(start, start + n, device=device)
        start += n
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            feats, residuals, bottleneck, patch = model.encode(x)
            logits = model.head(feats, residuals, bottleneck, hw, patch)
        p = gaussian_smooth(torch.sigmoid(logits.float()), cfg.eval.sigma)
        yield feats, source, p, model.bank.distance_map(bank(feats, source), hw)


@torch.no_grad()
def held_out_map_residual_scores(model: torch.nn.Module, bank: PrototypeBank, dataset, cfg: Config,
                                 device: torch.device) -> np.ndarray:
    """eval.image_score=map_residual's scores of the normal training images `dataset` (in `bank`'s build order; `bank`
    with their cluster assignments), each with its prototype distance map held out of its own cluster, as an unseen
    image's: what eval.threshold=train_max takes the highest of for that score."""
    if bank.num_sources != len(dataset):
        raise ValueError(f"held_out_map_residual_scores: a prototype bank of {bank.num_sources} training images, "
                         f"{len(dataset)} images given")
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=cfg.eval.batch_size, shuffle=False, num_workers=0)
    scores = [residual_weighted_scores(p, distance, cfg.eval.topk).cpu()
              for _, _, p, distance in _held_out_batches(model, bank, loader, cfg, device, "held-out scores")]
    model.train(was_training)
    return torch.cat(scores).numpy()


@torch.no_grad()
def calibrate_knn_score(model: torch.nn.Module, bank: PrototypeBank, dataset, cfg: Config,
                        device: torch.device) -> np.ndarray:
    """Build model.knn (replacing any) from `dataset`, the normal training images in `bank`'s build order; `bank`:
    the model's prototypes with those images' cluster assignments. Returns the images' held-out fused scores
    (eval.knn_weight), in dataset order."""
    if bank.num_sources != len(dataset):
        raise ValueError(f"calibrate_knn_score: a prototype bank of {bank.num_sources} training images, "
                         f"{len(dataset)} images given")
    t0 = time.time()
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=cfg.eval.batch_size, shuffle=False, num_workers=0)
    feats_all, owner, _ = patch_features(model.backbone, loader, device, cfg.eval.batch_size)
    memory = coreset_memory(feats_all, owner, None, seed=cfg.seed)
    del feats_all, owner
    knn = KnnScore(memory).to(device)
    s_m, s_knn = [], []
    p_px, d_px, gen = [], [], torch.Generator().manual_seed(int(cfg.seed))
    for feats, source, p, distance in _held_out_batches(model, bank, loader, cfg, device, "knn calibration"):
        n, hw = p.shape[0], (p.shape[-2], p.shape[-1])
        s_m.append(residual_weighted_scores(p, distance, cfg.eval.topk).cpu())
        d = knn_distance_maps(knn(feats, source), hw)
        s_knn.append(d.flatten(1).amax(dim=1).cpu())
        pick = torch.randint(hw[0] * hw[1], (n, MAP_SAMPLE), generator=gen).to(p.device)
        p_px.append(p.flatten(1).gather(1, pick).cpu())  # only the sampled pixels leave the device
        d_px.append(d.flatten(1).gather(1, pick).cpu())
    logs = [np.log(torch.cat(s).double().numpy() + EPS) for s in (s_m, s_knn)]
    knn.stats.copy_(torch.tensor([logs[0].mean(), logs[0].std(), logs[1].mean(), logs[1].std()]))
    knn.settings.copy_(torch.tensor([float(cfg.eval.topk), float(cfg.eval.sigma)]))
    d_all = torch.cat(d_px).double().numpy().ravel()
    knn.map_table.copy_(torch.from_numpy(np.quantile(d_all, (np.arange(MAP_TABLE) + 0.5) / MAP_TABLE)))
    q = float(np.quantile(torch.cat(p_px).double().numpy(), cfg.eval.knn_lift))
    knn.map_lift.copy_(torch.tensor([q, float(cfg.eval.knn_lift), float(cfg.eval.sigma)]))
    model.knn = knn
    model.train(was_training)
    held_out = knn.fuse(torch.cat(s_m), torch.cat(s_knn), cfg.eval.knn_weight, cfg.eval.topk, cfg.eval.sigma)
    log.info("nearest-neighbour score: memory %d × %d from %d training images; log-score mean/std %s; head_knn "
             "lift %.4g (percentile %g of the head's map) (%.1f s)", memory.memory.shape[0], memory.memory.shape[1],
             len(dataset), [round(float(v), 4) for v in knn.stats], q, cfg.eval.knn_lift, time.time() - t0)
    return held_out.numpy()


def attach_knn_score(model: torch.nn.Module, cfg: Config, category: str, device: torch.device) -> bool:
    """Give a model loaded from a checkpoint its nearest-neighbour score if it has none calibrated for cfg's
    eval.topk and eval.sigma, or (eval.anomaly_map=head_knn) no map table for its eval.knn_lift and eval.sigma (a run
    trained with other evaluation settings or before the table existed): from the run's prototype file
    (run_prototype_file) and the current normal training images. Returns whether it made one."""
    knn = getattr(model, "knn", None)
    if knn is not None and knn.is_calibrated and knn.made_for(cfg.eval.topk, cfg.eval.sigma) and (
            cfg.eval.anomaly_map != "head_knn" or knn.map_made_for(cfg.eval.knn_lift, cfg.eval.sigma)):
        return False
    stored, dataset = run_prototype_file(model, cfg, category)
    calibrate_knn_score(model, stored.to(device), dataset, cfg, device)
    return True
