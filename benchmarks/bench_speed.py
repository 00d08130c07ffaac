"""Speed of the whole PRNet pipeline on one machine: synthesis, training step, end-to-end training epoch, backbone,
inference, prototypes, AUPRO, peak memory and time to the first step. Prints one markdown table and optionally
writes the figures as JSON.

    python benchmarks/bench_speed.py [--data ROOT --category C] [--dtd PATH] [--backbone tf_efficientnet_lite0]
        [--weights package|none|hub|PATH] [--size 256] [--batch 8] [--device auto|cpu|cuda] [--amp/--no-amp]
        [--widths "[64,128,256]"] [--steps 20 (CUDA) / 5 (CPU)] [--threads N] [--synth-samples 60]
        [--train-images 40] [--workers N] [--channels-last/--no-channels-last] [--compile] [--fused-adamw]
        [--image-score map|map_residual|map_residual_knn] [--old] [--json OUT]

Without --data a small demo category (--train-images training images) is generated in a temporary folder;
without --dtd textures are procedural. What is measured:
1. synthesis: Perlin and extended samples through the real TrainDataset.__getitem__((epoch, index)), one thread
   (torch and OpenCV), i.e. per DataLoader worker: median ms and samples/s (1 / mean time);
2. time to first step: from the model on the device to the end of its first training step (torch.compile's
   compilation included with --compile);
3. training: whole steps (frozen backbone, prototype lookup, head, loss, backward, AdamW step) on one fixed batch
   of training samples already on the device (data loading excluded), after 3 warm-up steps (--steps timed:
   20 on CUDA, 5 on CPU by default);
4. the frozen backbone's forward pass on the same batch (the floor of a step) and step time / forward time;
5. end to end: one whole training epoch (epoch 1) through a real DataLoader (the trainer's settings: EpochSampler,
   --workers workers, persistent, prefetch 4, pinned memory on CUDA) with synthesis, after 3 warm-up steps of
   epoch 0; images/s and its ratio to the fixed-batch step;
6. inference: predict_maps (forward, sigmoid, Gaussian smoothing, image score) at eval batch --batch, with
   --image-score (default: the config's); for map_residual_knn also its calibration (knn_calibration: memory and
   statistics from the training images, as after training; here on the untrained head), wall seconds;
7. prototypes: build_category_prototypes (reads the training images, extracts features, k-means), wall seconds;
8. AUPRO of 200 maps of 256x256 (prnet.metrics.aupro, best of 3) next to the plain sort-based reference (once);
9. peak memory: torch.cuda.max_memory_allocated on CUDA, the peak RSS of this process on the CPU.
On CUDA: cudnn.benchmark, bf16 autocast (unless --no-amp), torch.cuda.synchronize around every timed region.
On CPU autocast is off, as in the trainer. --old runs everything with the previous synthesis and attention code
(benchmarks/legacy.py), so before and after are one flag apart. --compile (torch.compile of the model for the
training steps) and --fused-adamw (CUDA) are off unless asked; channels_last follows train.channels_last.

GPU example: python benchmarks/bench_speed.py --backbone wide_resnet50_2 --weights none --batch 32 --device cuda \
    --train-images 240 --workers 16 --json speed_gpu.json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Optional

import cv2
import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

from bench_metrics import best_time, make_data, reference_aupro
from bench_model import _time_once
from bench_synthesis import timeit
from legacy import old_paths
from prnet.config import Config, ConfigError, image_hw, validate
from prnet.datasets import EpochSampler, TrainDataset, build_train_dataset, make_demo_category, normal_train_set
from prnet.engine.evaluator import IMAGE_SCORES, predict_maps
from prnet.engine.knn_calibration import calibrate_knn_score
from prnet.losses import PRNetLoss
from prnet.metrics import aupro
from prnet.models.backbone import Backbone
from prnet.models.prnet import build_model, count_trainable
from prnet.engine.prototypes import build_category_prototypes
from prnet.provenance import device_name
from prnet.utils import atomic_write, resolve_device, setup_logging

log = logging.getLogger("bench_speed")
WARMUP_STEPS = 3
DEMO_TEST_GOOD, DEMO_TEST_BAD = 2, 12


def environment(device: torch.device, use_amp: bool) -> dict:
    """Device name, threads, torch version and compute dtype."""
    return {"device": str(device), "device_name": device_name(device), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "dtype": "bf16 autocast" if use_amp else "fp32"}


def timed_loop(fn: Callable[[], Any], steps: int, device: torch.device) -> float:
    """Seconds for `steps` calls of fn after WARMUP_STEPS untimed ones, the device synchronised around them."""
    for _ in range(WARMUP_STEPS):
        fn()
    return _time_once(lambda: [fn() for _ in range(steps)], device)


def bench_synthesis(ds: TrainDataset, n: int) -> dict:
    """Median ms and samples/s of Perlin and extended samples via ds[(epoch, index)], one thread."""
    torch_threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    out: dict = {}
    try:
        ranges = {"perlin": range(ds.n_normal, ds.n_normal + ds.n_perlin),
                  "extended": range(ds.n_normal + ds.n_perlin, len(ds))}
        for kind, indices in ranges.items():
            if len(indices) == 0:
                out[kind] = None
                continue
            epochs = -(-(n + 5) // len(indices))
            pairs = [(e, i) for e in range(epochs) for i in indices]
            warm, timed = pairs[:5], pairs[5:5 + n]  # warm-up fills the texture cache
            for p in warm:
                ds[p]
            wall, cpu = timeit(lambda j: ds[timed[j]], len(timed))
            out[kind] = {"samples": len(timed), "median_ms": float(np.median(wall)) * 1e3,
                         "cpu_median_ms": float(np.median(cpu)) * 1e3, "samples_per_s": 1.0 / float(np.mean(wall))}
    finally:
        torch.set_num_threads(torch_threads)
        cv2.setNumThreads(cv2_threads)
    return out


def fixed_batch(ds: TrainDataset, batch: int, device: torch.device, channels_last: bool
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` training samples (epoch 0 of the seeded order, all kinds mixed) stacked on the device."""
    order = np.random.default_rng(0).permutation(len(ds))
    items = [ds[(k // len(ds), int(order[k % len(ds)]))] for k in range(batch)]
    images = torch.stack([it["image"] for it in items]).to(device)
    masks = torch.stack([it["mask"] for it in items]).to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, masks


def bench_epoch(ds: TrainDataset, batch: int, workers: int, seed: int, device: torch.device,
                step: Callable[[torch.Tensor, torch.Tensor], None], channels_last: bool) -> dict:
    """One whole training epoch (epoch 1) through a DataLoader set up as the trainer's, after WARMUP_STEPS steps
    of epoch 0 (workers started, caches filled): images/s of the timed epoch, data loading included."""
    sampler = EpochSampler(len(ds), seed)
    loader = DataLoader(ds, batch_size=batch, sampler=sampler, drop_last=True, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                        prefetch_factor=4 if workers > 0 else None)
    if len(loader) == 0:
        raise SystemExit(f"--batch {batch} is larger than the {len(ds)} training samples per epoch: use more "
                         f"--train-images")

    def run_step(b: dict) -> int:
        images = b["image"].to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        step(images, b["mask"].to(device, non_blocking=True))
        return int(images.shape[0])

    for k, b in enumerate(loader):
        run_step(b)
        if k + 1 >= WARMUP_STEPS:
            break
    sampler.set_epoch(1)
    n = 0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for b in loader:
        n += run_step(b)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    del loader  # stops the persistent workers
    return {"images_per_s": n / seconds, "seconds": seconds, "images": n, "steps": n // batch, "workers": workers}


def bench_prototypes(cfg: Config, category: str, device: torch.device, backbone: Backbone):
    """(bank, wall seconds) of build_category_prototypes, after one untimed backbone call (device start-up)."""
    h, w = image_hw(cfg)
    with torch.no_grad():
        backbone(torch.zeros(cfg.prototypes.batch_size, 3, h, w, device=device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    bank = build_category_prototypes(cfg, category, device, backbone=backbone)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return bank, time.perf_counter() - t0


def bench_aupro(n: int = 200, size: int = 256, repeats: int = 3) -> dict:
    _, _, maps, masks = make_data(n, size, 0)
    t_fast, fast = best_time(lambda: aupro(maps, masks), repeats)
    t_ref, ref = best_time(lambda: reference_aupro(maps, masks), 1)
    return {"maps": n, "size": size, "aupro_s": t_fast, "aupro_repeats": repeats, "reference_s": t_ref,
            "speedup": t_ref / t_fast, "aupro": fast, "reference_aupro": ref, "abs_diff": abs(fast - ref)}


def parse_widths(text: Optional[str]) -> Optional[list[int]]:
    if text is None:
        return None
    value = yaml.safe_load(text)
    if not (isinstance(value, list) and value and all(isinstance(v, int) and v > 0 for v in value)):
        raise SystemExit(f"--widths: expected a list of positive integers like \"[64,128,256]\", got {text!r}")
    return value


def make_config(args: argparse.Namespace, root: str, use_amp: bool, proto_dir: str) -> Config:
    cfg = Config()
    cfg.data.root = root
    cfg.data.classes = [args.category]
    cfg.data.image_size = args.size
    cfg.data.dtd_root = args.dtd
    cfg.model.backbone = args.backbone
    cfg.model.backbone_weights = args.weights
    widths = parse_widths(args.widths)
    if widths is not None:
        cfg.model.head_widths = widths
    cfg.prototypes.dir = proto_dir
    cfg.train.batch_size = args.batch
    cfg.eval.batch_size = args.batch
    if args.image_score is not None:
        cfg.eval.image_score = args.image_score
    cfg.train.amp = use_amp
    if args.channels_last is not None:
        cfg.train.channels_last = args.channels_last
    validate(cfg)
    return cfg


def run(args: argparse.Namespace, workdir: str) -> dict:
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    use_amp = device.type == "cuda" and (args.amp is None or args.amp)
    if args.amp and device.type != "cuda":
        log.warning("--amp: bf16 autocast is used on CUDA only (as in the trainer); timing fp32 on %s", device)
    if args.fused_adamw and device.type != "cuda":
        raise SystemExit("--fused-adamw: the fused AdamW runs on CUDA only")
    root = args.data or os.path.join(workdir, "data")
    cfg = make_config(args, root, use_amp, os.path.join(workdir, "prototypes"))
    if not args.data:
        t0 = time.perf_counter()
        make_demo_category(root, args.category, seed=0, size=args.size, n_train=args.train_images,
                           n_test_good=DEMO_TEST_GOOD, n_test_bad=DEMO_TEST_BAD)
        log.info("demo category generated in %.1f s", time.perf_counter() - t0)
    h, w = image_hw(cfg)
    env = environment(device, use_amp)
    res: dict = {"environment": env, "settings": {
        "data": args.data or f"generated demo ({args.train_images} train images)", "category": args.category,
        "dtd": args.dtd, "backbone": args.backbone, "weights": args.weights, "size": [h, w], "batch": args.batch,
        "head_widths": cfg.model.head_widths, "steps": args.steps, "warmup_steps": WARMUP_STEPS,
        "channels_last": cfg.train.channels_last, "compile": args.compile, "fused_adamw": args.fused_adamw,
        "image_score": cfg.eval.image_score,
        "code": "previous (--old)" if args.old else "current"}}

    ds = build_train_dataset(cfg, args.category)
    log.info("synthesis: %d samples per kind, one thread", args.synth_samples)
    res["synthesis"] = bench_synthesis(ds, args.synth_samples)

    backbone = Backbone(cfg.model.backbone, cfg.model.backbone_weights, cfg.model.stages,
                        cfg.model.bottleneck_stage).to(device)
    log.info("prototypes: building the bank of %s", args.category)
    bank, t_proto = bench_prototypes(cfg, args.category, device, backbone)
    res["prototypes"] = {"seconds": t_proto, "images": int(bank.meta["num_images"]), "k": bank.meta["k"],
                         "batch": cfg.prototypes.batch_size}

    torch.manual_seed(cfg.seed)
    t_model = time.perf_counter()
    model = build_model(cfg, bank, backbone=backbone).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr,
                                  weight_decay=cfg.train.weight_decay, **({"fused": True} if args.fused_adamw else {}))
    train_model = torch.compile(model) if args.compile else model
    criterion = PRNetLoss(cfg.loss)
    images, masks = fixed_batch(ds, args.batch, device, cfg.train.channels_last)
    res["settings"]["trainable_params_M"] = count_trainable(model) / 1e6

    def step(x: torch.Tensor, m: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = train_model(x)
        loss, _ = criterion(logits, m)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def train_step() -> None:
        step(images, masks)

    def backbone_forward() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            model.backbone(images)

    def inference() -> None:
        predict_maps(model, images, topk=cfg.eval.topk, sigma=cfg.eval.sigma, amp=cfg.train.amp,
                     image_score=cfg.eval.image_score, knn_weight=cfg.eval.knn_weight)

    if cfg.eval.image_score == "map_residual_knn":
        log.info("nearest-neighbour score: memory and statistics of the training images")
        t_knn = _time_once(lambda: calibrate_knn_score(model, bank, normal_train_set(cfg, args.category), cfg,
                                                       device), device)
        res["knn_calibration"] = {"seconds": t_knn, "images": int(bank.meta["num_images"]),
                                  "memory": int(model.knn.memory.memory.shape[0])}
    n_img = args.steps * args.batch
    model.train()
    res["time_to_first_step_s"] = time.perf_counter() - t_model + _time_once(train_step, device)
    log.info("training: %d steps of batch %d", args.steps, args.batch)
    t_train = timed_loop(train_step, args.steps, device)
    log.info("backbone forward: %d batches", args.steps)
    t_bb = timed_loop(backbone_forward, args.steps, device)
    log.info("end to end: one epoch through a DataLoader with %d workers", args.workers)
    model.train()
    res["epoch"] = bench_epoch(ds, args.batch, args.workers, cfg.seed, device, step, cfg.train.channels_last)
    log.info("inference: %d batches", args.steps)
    model.eval()
    t_inf = timed_loop(inference, args.steps, device)
    res["train"] = {"images_per_s": n_img / t_train, "ms_per_step": 1e3 * t_train / args.steps}
    res["backbone_forward"] = {"images_per_s": n_img / t_bb, "ms_per_batch": 1e3 * t_bb / args.steps}
    res["step_over_backbone"] = t_train / t_bb
    res["epoch_over_step"] = res["epoch"]["images_per_s"] / res["train"]["images_per_s"]
    res["inference"] = {"images_per_s": n_img / t_inf, "ms_per_batch": 1e3 * t_inf / args.steps}
    if device.type == "cuda":
        res["peak_memory_GiB"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
        res["peak_memory_kind"] = "torch.cuda.max_memory_allocated"
    else:
        res["peak_memory_GiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux
        res["peak_memory_kind"] = "peak RSS of the main process"

    log.info("AUPRO: 200 maps of 256x256")
    res["aupro"] = bench_aupro()
    return res


def table(res: dict) -> str:
    """The results as one markdown table."""
    s, env = res["settings"], res["environment"]
    b = s["batch"]
    rows = []
    for kind in ("perlin", "extended"):
        r = res["synthesis"][kind]
        if r is None:
            rows.append((f"synthesis: {kind} sample", "n/a", "", "no real anomalies in the category"))
        else:
            rows.append((f"synthesis: {kind} sample", f"{r['samples_per_s']:.1f}", "samples/s per worker",
                         f"median {r['median_ms']:.2f} ms, {r['samples']} samples, 1 thread"))
    e = res["epoch"]
    rows += [
        ("time to first step", f"{res['time_to_first_step_s']:.2f}", "s",
         "model on the device to the end of its first training step" + (", compilation included"
                                                                         if s["compile"] else "")),
        ("training step", f"{res['train']['images_per_s']:.1f}", "images/s",
         f"{res['train']['ms_per_step']:.1f} ms/step, batch {b}, fixed batch on device (data loading excluded)"),
        ("backbone forward", f"{res['backbone_forward']['images_per_s']:.1f}", "images/s",
         f"{res['backbone_forward']['ms_per_batch']:.1f} ms/batch, batch {b}"),
        ("step / backbone forward", f"{res['step_over_backbone']:.2f}", "x", "training step time / forward time"),
        ("training, end to end", f"{e['images_per_s']:.1f}", "images/s",
         f"one epoch of {e['images']} images ({e['steps']} steps) via DataLoader, {e['workers']} workers, synthesis "
         f"included"),
        ("end to end / step", f"{res['epoch_over_step']:.2f}", "x", "epoch images/s / fixed-batch step images/s"),
        ("inference (predict_maps)", f"{res['inference']['images_per_s']:.1f}", "images/s",
         f"{res['inference']['ms_per_batch']:.1f} ms/batch, batch {b}, forward + sigmoid + smoothing + image score "
         f"{s.get('image_score', 'map_residual')}"),
        ("prototype building", f"{res['prototypes']['seconds']:.2f}", "s",
         f"{res['prototypes']['images']} images, K={res['prototypes']['k'][0]}, read + features + k-means"),
        *([("nearest-neighbour calibration", f"{res['knn_calibration']['seconds']:.2f}", "s",
            f"{res['knn_calibration']['images']} images, memory {res['knn_calibration']['memory']}, read + features "
            f"+ coreset + statistics")] if "knn_calibration" in res else []),
        ("AUPRO (prnet.metrics)", f"{res['aupro']['aupro_s']:.3f}", "s",
         f"{res['aupro']['maps']} maps {res['aupro']['size']}x{res['aupro']['size']}, best of "
         f"{res['aupro']['aupro_repeats']}"),
        ("AUPRO (sort reference)", f"{res['aupro']['reference_s']:.3f}", "s",
         f"once; {res['aupro']['speedup']:.1f}x slower, abs diff {res['aupro']['abs_diff']:.1e}"),
    ]
    rows.append(("peak memory", f"{res['peak_memory_GiB']:.2f}", "GiB", res["peak_memory_kind"]))
    h, w = s["size"]
    head = (f"{s['code']} code; {env['device_name']} ({env['device']}, {env['torch_threads']} torch threads, "
            f"{env['cpu_count']} CPUs), torch {env['torch']}, {env['dtype']}; {s['backbone']} "
            f"(weights {s['weights']}), head widths {s['head_widths']} ({s['trainable_params_M']:.2f} M trainable), "
            f"{h}x{w}, {s['steps']} timed steps after {s['warmup_steps']} warm-up; channels_last "
            f"{s['channels_last']}, compile {s['compile']}, fused AdamW {s['fused_adamw']}; data: {s['data']}")
    lines = [head, "", "| measure | value | unit | notes |", "|---|---:|---|---|"]
    lines += [f"| {a} | {v} | {u} | {n} |" for a, v, u, n in rows]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="MVTec-layout root (default: generate the demo category)")
    p.add_argument("--category", default=None, help="category under --data (default: demo)")
    p.add_argument("--dtd", default=None, help="DTD root (default: procedural textures)")
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--weights", default="package", help="package | none | hub | path to a state dict")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=8, help="training and evaluation batch")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast on CUDA (default: on for CUDA; CPU always fp32)")
    p.add_argument("--widths", default=None, help='head widths, e.g. "[64,128,256]" (default: config default)')
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps/batches per measurement (default: 20 on CUDA, 5 on CPU)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    p.add_argument("--synth-samples", type=int, default=60, help="synthetic samples timed per kind")
    p.add_argument("--train-images", type=int, default=40, help="training images of the generated demo category")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers of the end-to-end epoch (default: min(8, CPUs), as the trainer)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last model and batches (default: train.channels_last)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model for the training steps")
    p.add_argument("--fused-adamw", action="store_true", help="fused AdamW (CUDA only)")
    p.add_argument("--image-score", choices=IMAGE_SCORES, default=None,
                   help="eval.image_score of the inference timing (default: the config's)")
    p.add_argument("--old", action="store_true",
                   help="the previous synthesis and attention code (benchmarks/legacy.py), for before/after")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.data and not args.category:
        p.error("--data needs --category")
    args.category = args.category or "demo"
    if args.steps is None:
        args.steps = 20 if resolve_device(args.device).type == "cuda" else 5
    if args.workers is None:
        args.workers = min(8, os.cpu_count() or 1)
    if args.steps < 1 or args.batch < 1 or args.synth_samples < 1 or args.train_images < 2 or args.workers < 0:
        p.error("--steps, --batch and --synth-samples must be >= 1, --train-images >= 2, --workers >= 0")
    setup_logging()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    workdir = tempfile.mkdtemp(prefix="prnet-bench-speed-")
    try:
        with old_paths(args.old):
            res = run(args, workdir)
    except ConfigError as e:
        p.error(str(e))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(table(res))
    if args.json:
        def write(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(res, fh, indent=2)
        atomic_write(args.json, write)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
