"""The training loop for one category: data, model, optimiser, checkpoints, resume, evaluation, reports.

Nothing here selects anything on test data: the model reported is the one after the last epoch (with
train.average_last, the mean of its weights over the last steps: prnet.engine.averaging);
`train.eval_every` evaluations are logged for monitoring only.

Distributed (torchrun): every process trains on its shard of each epoch's seeded permutation with
`train.batch_size` images, so the global batch is `train.batch_size × world size`; gradients are averaged by
DistributedDataParallel; only rank 0 writes checkpoints, logs and reports; evaluation is split across ranks and
gathered, giving the same metrics as one process.
"""
from __future__ import annotations

import copy
import csv
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, default_collate
from tqdm import tqdm

from prnet import report
from prnet.config import Config, config_to_dict, dump_config, image_hw, with_added_keys
from prnet.datasets import EpochSampler, build_test_dataset, build_train_dataset, normal_train_set
from prnet.engine.averaging import WeightAverage
from prnet.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, set_rng_state
from prnet.engine.evaluator import run_inference
from prnet.engine.knn_calibration import calibrate_knn_score, held_out_map_residual_scores
from prnet.engine.prototypes import ensure_prototypes, make_backbone
from prnet.engine.second_read import calibrate_second_read, second_read_config, with_second_read
from prnet.losses import PRNetLoss
from prnet.metrics import compute_metrics, decision_metrics, decision_threshold
from prnet.models.backbone import Backbone
from prnet.models.prnet import build_model, needs_knn, needs_second_read
from prnet.models.prototypes import PrototypeBank
from prnet.provenance import code_changed, git_state, provenance
from prnet.utils import RunLock, atomic_write, remove_stale_temporaries

log = logging.getLogger(__name__)

LOG_COLUMNS = ("epoch", "loss", "focal", "smooth_l1", "lr", "images_per_s", "seconds")


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, outputs in the way)."""


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def run_name(cfg: Config) -> str:
    """The default run folder name: backbone, image size, number of real anomalies."""
    h, w = image_hw(cfg)
    size = f"{h}" if h == w else f"{h}x{w}"
    return f"{cfg.model.backbone}_{size}_{cfg.data.num_anomalies}shot"


def output_root(cfg: Config) -> str:
    return cfg.output_dir or os.path.join("outputs", run_name(cfg))


def _worker_count(cfg: Config) -> int:
    if cfg.train.workers >= 0:
        return cfg.train.workers
    return min(8, os.cpu_count() or 1)


def collate_with_digest(samples: list) -> dict:
    """default_collate plus `digest`: the SHA-1 of the batch's images and masks (the epoch fingerprint is made of
    these). Computed where the batch is collated, i.e. in a loader worker when there are any, off the training loop."""
    batch = default_collate(samples)
    digest = hashlib.sha1()
    for key in ("image", "mask"):
        digest.update(np.ascontiguousarray(batch[key].numpy()))
    batch["digest"] = digest.digest()
    return batch


def make_train_loader(dataset, cfg: Config, ctx: DistContext, device: torch.device) -> tuple[DataLoader, EpochSampler]:
    sampler = EpochSampler(len(dataset), cfg.seed, rank=ctx.rank, world_size=ctx.world_size)
    workers = _worker_count(cfg)
    loader = DataLoader(
        dataset, batch_size=cfg.train.batch_size, sampler=sampler, drop_last=True, num_workers=workers,
        collate_fn=collate_with_digest,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None)
    if len(loader) == 0:
        raise TrainingError(
            f"train.batch_size={cfg.train.batch_size} (x{ctx.world_size} processes) is larger than the "
            f"{len(dataset)} training samples per epoch")
    return loader, sampler


def close_loader(loader: DataLoader) -> None:
    """Stop the persistent workers of `loader` now (DataLoader keeps its persistent iterator in `_iterator`). Left
    to the end of the process, as after an exception whose traceback still holds the loader, their shutdown hung
    on a CUDA machine (pin_memory) instead of exiting."""
    iterator = getattr(loader, "_iterator", None)
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    loader._iterator = None


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int):
    """Linear warm-up for `train.warmup_epochs`, then cosine decay to 1 % of the learning rate, per step."""
    total = max(1, cfg.train.epochs * steps_per_epoch)
    warmup = min(total - 1, cfg.train.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _truncate_log(path: str, last_epoch: int) -> None:
    """Keep only rows of epochs <= last_epoch (a resumed run repeats the epoch that was cut short)."""
    if not os.path.exists(path):
        return
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) <= last_epoch]

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def _gather_inference(model, dataset, cfg: Config, device, ctx: DistContext) -> Optional[dict]:
    """run_inference over the whole dataset, split across ranks; the full result on rank 0, None elsewhere."""
    if not ctx.enabled:
        return run_inference(model, dataset, cfg, device)
    indices = list(range(ctx.rank, len(dataset), ctx.world_size))
    part = run_inference(model, dataset, cfg, device, indices=indices, progress=ctx.is_main)
    parts: list = [None] * ctx.world_size
    dist.all_gather_object(parts, (indices, part))
    if not ctx.is_main:
        return None
    order = np.argsort(np.concatenate([np.asarray(i, dtype=np.int64) for i, _ in parts]), kind="stable")
    return {k: np.concatenate([p[k] for _, p in parts])[order] for k in part}


# --------------------------------------------------------------------------------------- resuming a run
# Keys that may differ between a checkpoint and the run that resumes it: they change neither the data, the model
# nor the optimisation already done (a longer schedule, other hardware, other evaluation and logging). Any other
# difference refuses the resume. A key ending in '.' stands for its whole section.
RESUMABLE_KEYS = ("train.epochs", "train.workers", "train.device", "train.amp", "train.compile", "train.resume",
                  "train.overwrite", "train.eval_every", "eval.", "output_dir", "data.cache_images",
                  "data.generate_demo", "prototypes.dir", "prototypes.batch_size")


def _flatten(values: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(stored: dict, requested: dict) -> list[str]:
    """'key: stored -> requested' for every key that differs and may not change on resume (RESUMABLE_KEYS). A key
    the stored config lacks because it was added later (config.ADDED_KEYS) counts with its earlier value."""
    a, b = _flatten(with_added_keys(stored)), _flatten(requested)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE_KEYS):
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            diffs.append(f"{key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}")
    return diffs


def check_outputs(cfg: Config, category: str, world_size: int = 1) -> None:
    """Refuse, before any heavy work, to overwrite an earlier run of `category` silently, or to resume a checkpoint
    made with other settings or another number of processes, `world_size` now (nothing in the run folder is touched
    here). A checkpoint that does not record its processes was written by one."""
    ckpt = os.path.join(output_root(cfg), category, "last.pt")
    if not os.path.exists(ckpt):
        return
    if not (cfg.train.resume or cfg.train.overwrite):
        raise TrainingError(
            f"{ckpt} already exists: add train.resume=true to continue that run, train.overwrite=true to start "
            f"over, or choose another output_dir=...")
    if cfg.train.resume:
        try:
            state = load_checkpoint(ckpt)
        except CheckpointError as e:
            raise TrainingError(f"cannot resume: {e}; train.overwrite=true starts over") from None
        stored = state["config"]
        diffs = config_differences(stored, config_to_dict(cfg))
        if int(state.get("world_size", 1)) != world_size:
            diffs.append(f"processes: {int(state.get('world_size', 1))} -> {world_size} (the global batch and the "
                         f"learning-rate schedule's steps per epoch depend on them)")
        if cfg.train.average_last > 0 and stored["train"]["epochs"] != cfg.train.epochs:
            diffs.append(f"train.epochs: {stored['train']['epochs']!r} -> {cfg.train.epochs!r} (train.average_last "
                         f"averages a share of the schedule, which then cannot change)")
        if diffs:
            raise TrainingError(
                f"cannot resume {ckpt}: it was trained with other settings ({'; '.join(diffs)}); use the same "
                f"settings (only {', '.join(RESUMABLE_KEYS)} may change), or train.overwrite=true to start over")


def lock_category(cfg: Config, category: str) -> RunLock:
    """Take `<run>/<category>/.lock` (LockedError if another live run holds it) and remove the temporary files a
    killed write left there."""
    out_dir = os.path.join(output_root(cfg), category)
    lock = RunLock(out_dir).acquire()
    removed = remove_stale_temporaries(out_dir)
    if removed:
        log.info("%s: removed %d unfinished temporary file(s) of an interrupted run: %s", category, len(removed),
                 ", ".join(removed))
    return lock


# ------------------------------------------------------------------------------------------ the steps
@dataclass
class RunState:
    """What one category's training needs between its steps."""
    model: torch.nn.Module
    train_model: torch.nn.Module  # DDP-wrapped and/or compiled view of `model` used for the training forward
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: DataLoader
    sampler: EpochSampler
    criterion: torch.nn.Module
    start_epoch: int = 0
    history: Optional[list] = None
    average: Optional[WeightAverage] = None  # train.average_last


def prepare_prototypes(cfg: Config, category: str, device: torch.device, ctx: DistContext,
                       backbone: Optional[Backbone] = None) -> tuple[PrototypeBank, Backbone]:
    """The category's prototype bank (loaded, or built by rank 0 while the other ranks wait) and the backbone that
    serves both the bank and the model (its weights are loaded once)."""
    if ctx.enabled and not ctx.is_main:
        dist.barrier()
    if backbone is None:
        backbone = make_backbone(cfg)
    bank = ensure_prototypes(cfg, category, device, backbone=backbone)
    if ctx.enabled and ctx.is_main:
        dist.barrier()
    return bank, backbone


def build_run(cfg: Config, bank: PrototypeBank, backbone: Backbone, train_set, device: torch.device,
              ctx: DistContext) -> RunState:
    """A fresh model, optimiser, schedule, loader and loss (seeded)."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, bank, backbone=backbone).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    loader, sampler = make_train_loader(train_set, cfg, ctx, device)
    scheduler = make_scheduler(optimizer, cfg, len(loader))
    train_model = model
    if ctx.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    if cfg.train.compile:
        train_model = torch.compile(train_model)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    average = None
    if cfg.train.average_last > 0:
        average = WeightAverage(model, cfg.train.average_last, cfg.train.epochs * len(loader))
    return RunState(model, train_model, optimizer, scheduler, loader, sampler, PRNetLoss(cfg.loss), 0, [], average)


def start_or_resume(cfg: Config, category: str, run: RunState, bank: PrototypeBank, device: torch.device,
                    ctx: DistContext) -> None:
    """Clear the outputs of an earlier run (train.overwrite), or restore the state of `last.pt` (train.resume;
    check_outputs has compared its config already); then write the run's config.yaml."""
    out_dir = os.path.join(output_root(cfg), category)
    ckpt_path = os.path.join(out_dir, "last.pt")
    if ctx.is_main and os.path.exists(out_dir) and cfg.train.overwrite and not cfg.train.resume:
        for name in ("last.pt", "train_log.csv", "results.json"):
            if os.path.exists(os.path.join(out_dir, name)):
                os.remove(os.path.join(out_dir, name))
    if cfg.train.resume and os.path.exists(ckpt_path):
        state = load_checkpoint(ckpt_path, map_location=device)
        stale = prototype_differences(state.get("prototype_meta") or {}, bank.meta)
        if stale:
            raise TrainingError(f"cannot resume {ckpt_path}: its prototypes were built from other data or settings "
                                f"({'; '.join(stale)}); train.overwrite=true starts over")
        mine = run.model.state_dict()
        moved = [k for k in state["model"] if k.startswith("bank.proto_")
                 and not torch.equal(state["model"][k].cpu(), mine[k].cpu())]
        if moved:  # a rebuilt file: its k-means may have split the images otherwise (held-out residuals follow it)
            raise TrainingError(f"cannot resume {ckpt_path}: the prototype file now in use ({', '.join(moved)}) is "
                                f"not the one it was trained with; train.overwrite=true starts over")
        run.model.load_state_dict(state["model"])
        if state["epoch"] < cfg.train.epochs:  # training goes on: what was made after its last epoch fits no more
            for made in (run.model.knn, run.model.second):
                if made is not None:
                    made.forget()  # the checkpoints of the epochs to come carry none, until it is made again
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        set_rng_state({k: v.cpu() if torch.is_tensor(v) else v for k, v in state["rng"].items()})
        if run.average is not None:
            if state.get("average") is None:
                raise TrainingError(f"cannot resume {ckpt_path}: it holds no weight average (train.average_last); "
                                    f"train.overwrite=true starts over")
            try:
                run.average.load_state_dict(state["average"])
            except ValueError as e:
                raise TrainingError(f"cannot resume {ckpt_path}: {e}; train.overwrite=true starts over") from None
        run.start_epoch, run.history = state["epoch"], state["history"]
        log.info("%s: resumed from %s after epoch %d", category, ckpt_path, run.start_epoch)
        if ctx.is_main:
            _truncate_log(os.path.join(out_dir, "train_log.csv"), run.start_epoch)
    elif cfg.train.resume:
        log.info("%s: train.resume=true but no %s yet: starting from scratch", category, ckpt_path)
    if ctx.is_main:
        os.makedirs(out_dir, exist_ok=True)
        dump_config(cfg, os.path.join(out_dir, "config.yaml"))


def prototype_differences(stored: dict, current: dict) -> list[str]:
    """Fields of two prototype metadata dicts that differ (the build date aside)."""
    keys = sorted((set(stored) | set(current)) - {"date"})
    return [f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in keys if stored.get(k) != current.get(k)]


def train_step(cfg: Config, run: RunState, batch: dict, device: torch.device) -> tuple[torch.Tensor, dict]:
    """One optimisation step on a loader batch: forward (bf16 autocast on CUDA when train.amp), loss, backward,
    optimiser and schedule. Returns the loss and its terms, detached, on `device` (no host synchronisation)."""
    images = batch["image"].to(device, non_blocking=True)
    masks = batch["mask"].to(device, non_blocking=True)
    if cfg.train.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    source = batch["source"] if cfg.prototypes.leave_one_out else None  # on the CPU: checked there
    clean = None
    if source is not None and "clean" in batch:  # prototypes.held_out_exact: the synthetic samples' clean images
        rows = torch.nonzero(batch["label"] == 1).reshape(-1)  # on the CPU: no host synchronisation
        clean_images = batch["clean"][rows].to(device, non_blocking=True)
        if cfg.train.channels_last:
            clean_images = clean_images.contiguous(memory_format=torch.channels_last)
        clean = (rows, clean_images)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.amp and device.type == "cuda"):
        logits = run.train_model(images, source, clean=clean)
    loss, terms = run.criterion(logits, masks)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    run.scheduler.step()
    if run.average is not None:
        run.average.update(run.model, run.scheduler.last_epoch)  # last_epoch: the steps done so far
    return loss.detach(), {k: v.detach() for k, v in terms.items()}


def train_one_epoch(cfg: Config, run: RunState, train_set, epoch: int, device: torch.device, ctx: DistContext,
                    category: str) -> dict:
    """One pass over the epoch's seeded samples; returns the log row (mean losses, lr, images/s, seconds)."""
    train_set.set_epoch(epoch)
    run.sampler.set_epoch(epoch)
    run.model.train()
    t_epoch = time.time()
    sums = torch.zeros(3, device=device)
    pending: list[torch.Tensor] = []
    n_images = 0
    steps = len(run.loader)
    bar = tqdm(run.loader, desc=f"{category} epoch {epoch + 1}/{cfg.train.epochs}", leave=False,
               disable=not ctx.is_main)
    batches = hashlib.sha1()  # fingerprint of this process's training inputs, in order (the batches' digests)
    for step, batch in enumerate(bar):
        batches.update(batch["digest"])
        loss, terms = train_step(cfg, run, batch, device)
        n_images += len(batch["image"])
        pending.append(torch.stack([loss, terms["focal"], terms["smooth_l1"]]))
        # one host sync per few steps: check finiteness and refresh the progress bar
        if device.type != "cuda" or len(pending) >= 20 or step == steps - 1:
            _check_finite(pending, epoch, step - len(pending) + 1, category)
            sums += torch.stack(pending).sum(0)
            pending = []
            bar.set_postfix(loss=f"{sums[0].item() / (step + 1):.4f}",
                            img_s=f"{n_images / (time.time() - t_epoch):.1f}")
    if ctx.enabled:
        dist.all_reduce(sums)
        sums /= ctx.world_size
        _broadcast_head_buffers(run.model)
    seconds = time.time() - t_epoch
    mean = (sums / steps).tolist()
    row = {"epoch": epoch + 1, "loss": mean[0], "focal": mean[1], "smooth_l1": mean[2],
           "lr": run.optimizer.param_groups[0]["lr"], "images_per_s": n_images * ctx.world_size / seconds,
           "seconds": seconds, "batches_sha1": batches.hexdigest()[:16],
           "weights_sha256": weights_fingerprint(run.model)}
    log.info("%s epoch %d/%d: loss %.4f (focal %.4f, smooth-L1 %.4f), %.1f images/s", category, epoch + 1,
             cfg.train.epochs, mean[0], mean[1], mean[2], row["images_per_s"])
    return row


def monitor(cfg: Config, run: RunState, test_set, epoch: int, device: torch.device, ctx: DistContext,
            category: str) -> dict:
    """train.eval_every: test metrics for the log only (nothing is selected on them). The nearest-neighbour memory
    and the second read are made after the last epoch, so these scores are map_residual's (map_residual_knn without
    them) and the map is the head's."""
    cfg = copy.deepcopy(cfg)
    if cfg.eval.image_score == "map_residual_knn":
        cfg.eval.image_score = "map_residual"
    cfg.eval.anomaly_map, cfg.eval.second_read = "head", "none"
    out = _gather_inference(run.model, test_set, cfg, device, ctx)
    if not ctx.is_main:
        return {}
    m = compute_metrics(out["scores"], out["labels"], out["maps"], out["masks"])
    log.info("%s epoch %d (monitoring only, nothing is selected on it; image score %s, the head's map): %s",
             category, epoch + 1, cfg.eval.image_score, ", ".join(f"{k} {v:.3f}" for k, v in m.items()))
    return {f"monitor_{k}": float(v) for k, v in m.items()}


def evaluate_and_report(cfg: Config, category: str, run: RunState, bank: PrototypeBank, train_set, test_set,
                        timings: dict, device: torch.device, ctx: DistContext, code_at_start: Optional[dict] = None
                        ) -> dict:
    """The decision threshold, the test metrics of the last epoch (none with eval.score_test=false), the final
    checkpoint, results.json and the figures. Returns the results (an empty dict on ranks other than 0).
    `code_at_start`: the git_state() taken when the run (or its resumed part) began; results.json says so when the
    code changed since."""
    out_dir = os.path.join(output_root(cfg), category)
    fingerprints = _rank_fingerprints(run.model, ctx)  # a collective: every rank takes part
    knn_train = None  # the training images' held-out fused scores (map_residual_knn)
    if needs_knn(cfg):  # every rank makes the same (deterministic, seeded)
        held_out_scores = calibrate_knn_score(run.model, bank, normal_train_set(cfg, category), cfg, device)
        if cfg.eval.image_score == "map_residual_knn":  # not when made for the anomaly map (head_knn) only
            knn_train = held_out_scores
    if needs_second_read(cfg):  # its bank built by rank 0 while the others wait, then made by every rank
        if ctx.enabled and not ctx.is_main:
            dist.barrier()
        second_bank = ensure_prototypes(second_read_config(cfg), category, device, backbone=run.model.backbone)
        if ctx.enabled and ctx.is_main:
            dist.barrier()
        knn_train = knn_train + calibrate_second_read(run.model, cfg, category, device, second_bank)
    held_out = cfg.eval.threshold == "holdout_fpr"
    threshold_set = normal_train_set(cfg, category, held_out=held_out)  # normal images only, never test labels
    if knn_train is not None and not held_out:
        # train_max with map_residual_knn: each training image scored as an unseen one (knn_calibration)
        normal_scores = knn_train
    elif cfg.eval.image_score == "map_residual" and not held_out:
        # train_max with map_residual: the distance factor held out too (in-sample it is ~((n-1)/n)² of an unseen
        # image's, and 0 for a cluster of one)
        normal_scores = held_out_map_residual_scores(run.model, bank, threshold_set, cfg, device)
    else:
        normal_out = _gather_inference(run.model, threshold_set, cfg, device, ctx)
        normal_scores = None if normal_out is None else normal_out["scores"]
    out = None  # eval.score_test=false: the test split is not scored
    if cfg.eval.score_test:
        t_eval = time.time()
        out = _gather_inference(run.model, test_set, cfg, device, ctx)
        timings["eval_s"] = time.time() - t_eval
    if not ctx.is_main:
        return {}
    threshold = decision_threshold(normal_scores, cfg.eval.threshold, cfg.eval.target_fpr)
    save_checkpoint(os.path.join(out_dir, "last.pt"), model=run.model, epoch=cfg.train.epochs, cfg=cfg,
                    prototype_meta=bank.meta, optimizer=run.optimizer, scheduler=run.scheduler, threshold=threshold,
                    threshold_rule=cfg.eval.threshold, history=run.history, average=_average_state(run),
                    world_size=ctx.world_size)
    metrics, at_threshold = {}, {}
    if out is not None:
        metrics = {k: float(v) for k, v in
                   compute_metrics(out["scores"], out["labels"], out["maps"], out["masks"]).items()}
        at_threshold = decision_metrics(out["scores"], out["labels"], threshold)
        timings["test_ms_per_image"] = 1000.0 * timings["eval_s"] / max(1, len(test_set))
    h, w = image_hw(cfg)
    origin = provenance(device)  # git_commit, git_modified, git_diff_sha1, versions, device, device_name, ...
    if code_at_start is not None and code_changed(code_at_start, origin):
        log.warning("%s: the code changed while this run was using it (%s at the start, %s now): its results may "
                    "come from neither version; train it again", category, code_at_start,
                    {k: origin[k] for k in code_at_start})
        origin.update(code_changed_during_run=True, code_at_start=code_at_start)
    results = {
        "category": category,
        "metrics": metrics,
        "evaluation_resolution": [h, w],
        "second_read": cfg.eval.second_read,
        "epochs": cfg.train.epochs,
        "real_anomalies_used_for_training": list(train_set.real_anomalies),
        "excluded_from_evaluation": list(test_set.excluded),
        "scored_on_test": out is not None,
        "test_images": None if out is None else {"normal": int((out["labels"] == 0).sum()),
                                                 "defective": int((out["labels"] == 1).sum())},
        "decision_threshold": threshold,
        "operating_point": {"rule": cfg.eval.threshold, "threshold": threshold,
                            "normal_images_used": len(threshold_set), "held_out_of_training": held_out,
                            **({"target_fpr": cfg.eval.target_fpr} if held_out else {}), **at_threshold},
        "config": config_to_dict(cfg),
        "timings": timings,
        "provenance": origin,
        "world_size": ctx.world_size,
        "weight_average": None if run.average is None else {"steps_averaged": run.average.count,
                                                             "total_steps": run.average.total_steps},
        "weights_fingerprints": fingerprints,
        # per epoch: where two trainings of the same config first part, in their inputs or in their arithmetic
        "epoch_fingerprints": [{k: row.get(k) for k in ("epoch", "batches_sha1", "weights_sha256")}
                               for row in run.history],
    }

    def write_json(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)

    atomic_write(os.path.join(out_dir, "results.json"), write_json)
    log_path = os.path.join(out_dir, "train_log.csv")
    report.plot_loss(log_path, os.path.join(out_dir, "loss.png"))
    if out is None:
        log.info("%s: trained, threshold %.4f (%s); the test split was not scored (eval.score_test=false)",
                 category, threshold, cfg.eval.threshold)
        return results
    if cfg.eval.examples > 0:  # 0: no figure
        report.examples_grid(os.path.join(out_dir, "examples.png"), _ImageSource(test_set), out["masks"], out["maps"],
                             out["scores"], out["labels"], n=cfg.eval.examples,
                             threshold=report.region_threshold(cfg.eval.image_score, cfg.eval.anomaly_map, threshold))
    log.info("%s: %s; at threshold %.4f (%s): %s", category, ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()),
             threshold, cfg.eval.threshold, ", ".join(f"{k} {v:.3f}" for k, v in at_threshold.items()))
    return results


def train_category(cfg: Config, category: str, device: torch.device, ctx: DistContext = DistContext(),
                   backbone: Optional[Backbone] = None) -> dict:
    """Train one category for `train.epochs`, evaluate the last epoch, write the reports. Returns results.

    The caller has run check_outputs and holds the category's lock (lock_category). eval.second_read=auto is
    resolved here, for this category (the checkpoint and config.yaml hold the size or none)."""
    cfg = with_second_read(cfg, category)
    timings: dict = {}
    code_at_start = git_state()
    t0 = time.time()
    bank, backbone = prepare_prototypes(cfg, category, device, ctx, backbone)
    timings["prototypes_s"] = time.time() - t0
    train_set = build_train_dataset(cfg, category)
    test_set = build_test_dataset(cfg, category)
    log.info("%s: %d training samples per epoch (%d real anomalies for training: %s), %d test images",
             category, len(train_set), len(train_set.real_anomalies), ", ".join(train_set.real_anomalies) or "none",
             len(test_set))
    run = build_run(cfg, bank, backbone, train_set, device, ctx)
    try:
        start_or_resume(cfg, category, run, bank, device, ctx)
        log_path = os.path.join(output_root(cfg), category, "train_log.csv")
        t_train = time.time()
        for epoch in range(run.start_epoch, cfg.train.epochs):
            row = train_one_epoch(cfg, run, train_set, epoch, device, ctx, category)
            run.history.append(row)
            if cfg.train.eval_every and (epoch + 1) % cfg.train.eval_every == 0 and epoch + 1 < cfg.train.epochs:
                run.history[-1].update(monitor(cfg, run, test_set, epoch, device, ctx, category))
            if ctx.is_main:
                report.append_csv_row(log_path, {k: row[k] for k in LOG_COLUMNS})
                save_checkpoint(os.path.join(output_root(cfg), category, "last.pt"), model=run.model,
                                epoch=epoch + 1, cfg=cfg, prototype_meta=bank.meta, optimizer=run.optimizer,
                                scheduler=run.scheduler, history=run.history, average=_average_state(run),
                                world_size=ctx.world_size)
        timings["train_s"] = time.time() - t_train
        if run.average is not None:
            use_average(run, ctx, category)
        return evaluate_and_report(cfg, category, run, bank, train_set, test_set, timings, device, ctx,
                                   code_at_start)
    finally:
        close_loader(run.loader)  # also when training or evaluation fails: the process must be able to exit


def _average_state(run: RunState) -> Optional[dict]:
    return None if run.average is None else run.average.state_dict()


def use_average(run: RunState, ctx: DistContext, category: str) -> None:
    """Replace the model's weights by their average over the last steps (train.average_last). Under DDP every rank
    takes rank 0's average: the parameters agree across ranks, the BatchNorm statistics only at epoch ends."""
    if ctx.enabled:
        for t in run.average.mean.values():
            dist.broadcast(t, src=0)
    run.average.apply_to(run.model)
    log.info("%s: the weights are their mean over the last %d of %d steps (train.average_last)", category,
             run.average.count, run.average.total_steps)


class _ImageSource:
    """Lazy HxWx3 image access by index, so the examples grid loads only the images it shows."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.dataset[int(i)]["image"].permute(1, 2, 0).numpy()


def _head_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    """Buffers that training changes (the head's BatchNorm statistics), not the frozen backbone's, the bank's or the
    nearest-neighbour score's (made after training)."""
    return [b for name, b in model.named_buffers()
            if not name.startswith(("backbone.", "bank.", "knn.", "second.")) and b.dtype.is_floating_point]


def _broadcast_head_buffers(model: torch.nn.Module) -> None:
    """DDP averages gradients, not BatchNorm statistics: give every rank rank 0's, once per epoch, so that the
    checkpoint and every rank's share of the evaluation use the same model."""
    for b in _head_buffers(model):
        dist.broadcast(b, src=0)


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the trainable parameters and the head's buffers: equal fingerprints, equal models."""
    digest = hashlib.sha256()
    tensors = [p for p in model.parameters() if p.requires_grad] + _head_buffers(model)
    for t in tensors:
        digest.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _rank_fingerprints(model: torch.nn.Module, ctx: DistContext) -> list[str]:
    """Every rank's weights fingerprint; an error if DDP ranks ended with different weights."""
    mine = weights_fingerprint(model)
    if not ctx.enabled:
        return [mine]
    fingerprints: list = [None] * ctx.world_size
    dist.all_gather_object(fingerprints, mine)
    if len(set(fingerprints)) != 1:
        raise TrainingError(f"distributed ranks ended with different weights: {fingerprints}")
    return fingerprints


def _check_finite(pending: list[torch.Tensor], epoch: int, first_step: int, category: str) -> None:
    losses = torch.stack(pending)[:, 0]
    finite = torch.isfinite(losses)
    if not bool(finite.all()):
        bad = first_step + int((~finite).nonzero()[0, 0])
        raise TrainingError(
            f"{category}: non-finite loss at epoch {epoch + 1}, step {bad + 1}; the last good checkpoint "
            f"(end of epoch {epoch}) is kept. Lower train.lr or check the data.")

