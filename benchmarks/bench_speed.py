"""Speed of the whole PRNet pipeline on one machine: synthesis, training step, backbone, inference, prototypes,
AUPRO. Prints one markdown table and optionally writes the figures as JSON.

    python benchmarks/bench_speed.py [--data ROOT --category C] [--dtd PATH] [--backbone tf_efficientnet_lite0]
        [--weights package|none|hub|PATH] [--size 256] [--batch 8] [--device auto|cpu|cuda] [--amp/--no-amp]
        [--widths "[64,128,256]"] [--steps 20 (CUDA) / 5 (CPU)] [--threads N] [--synth-samples 60] [--json OUT]

Without --data a small demo category (40 training images) is generated in a temporary folder; without --dtd
textures are procedural. What is measured:
1. synthesis: Perlin and extended samples through the real TrainDataset.__getitem__((epoch, index)), one thread
   (torch and OpenCV), i.e. per DataLoader worker: median ms and samples/s (1 / mean time);
2. training: whole steps (frozen backbone, prototype lookup, head, loss, backward, AdamW step) on one fixed batch
   of training samples already on the device (data loading excluded), after 3 warm-up steps (--steps timed:
   20 on CUDA, 5 on CPU by default, which keeps the default CPU run to about 2 minutes on 2 cores);
3. the frozen backbone's forward pass on the same batch (the floor of a step) and step time / forward time;
4. inference: predict_maps (forward, sigmoid, Gaussian smoothing, top-k score) at eval batch --batch;
5. prototypes: build_category_prototypes (reads the training images, extracts features, k-means), wall seconds;
6. AUPRO of 200 maps of 256x256 (prnet.metrics.aupro, best of 3) next to the plain sort-based reference (once).
On CUDA: cudnn.benchmark, channels_last, bf16 autocast (unless --no-amp), torch.cuda.synchronize around every
timed region. On CPU autocast is off, as in the trainer.

GPU example: python benchmarks/bench_speed.py --backbone wide_resnet50_2 --weights none --batch 32 --device cuda \
    --json speed_gpu.json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Optional

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from bench_metrics import best_time, make_data, reference_aupro  # noqa: E402
from bench_model import _time_once  # noqa: E402
from bench_synthesis import timeit  # noqa: E402
from prnet.config import Config, ConfigError, image_hw, validate  # noqa: E402
from prnet.datasets import TrainDataset, build_train_dataset, make_demo_category  # noqa: E402
from prnet.engine.evaluator import predict_maps  # noqa: E402
from prnet.losses import PRNetLoss  # noqa: E402
from prnet.metrics import aupro  # noqa: E402
from prnet.models.backbone import Backbone  # noqa: E402
from prnet.models.prnet import build_model, count_trainable  # noqa: E402
from prnet.engine.prototypes import build_category_prototypes  # noqa: E402
from prnet.utils import atomic_write, resolve_device, setup_logging  # noqa: E402

log = logging.getLogger("bench_speed")
WARMUP_STEPS = 3
DEMO_TRAIN, DEMO_TEST_GOOD, DEMO_TEST_BAD = 40, 2, 12


def environment(device: torch.device, use_amp: bool) -> dict:
    """Device name, threads, torch version and compute dtype."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or "unknown CPU"
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as fh:
                for line in fh:
                    if line.startswith("model name"):
                        name = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
    return {"device": str(device), "device_name": name, "cpu_count": os.cpu_count(),
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
    cfg.train.amp = use_amp
    validate(cfg)
    return cfg


def run(args: argparse.Namespace, workdir: str) -> dict:
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    use_amp = device.type == "cuda" and (args.amp is None or args.amp)
    if args.amp and device.type != "cuda":
        log.warning("--amp: bf16 autocast is used on CUDA only (as in the trainer); timing fp32 on %s", device)
    root = args.data or os.path.join(workdir, "data")
    cfg = make_config(args, root, use_amp, os.path.join(workdir, "prototypes"))
    if not args.data:
        t0 = time.perf_counter()
        make_demo_category(root, args.category, seed=0, size=args.size, n_train=DEMO_TRAIN,
                           n_test_good=DEMO_TEST_GOOD, n_test_bad=DEMO_TEST_BAD)
        log.info("demo category generated in %.1f s", time.perf_counter() - t0)
    h, w = image_hw(cfg)
    env = environment(device, use_amp)
    res: dict = {"environment": env, "settings": {
        "data": args.data or f"generated demo ({DEMO_TRAIN} train images)", "category": args.category,
        "dtd": args.dtd, "backbone": args.backbone, "weights": args.weights, "size": [h, w], "batch": args.batch,
        "head_widths": cfg.model.head_widths, "steps": args.steps, "warmup_steps": WARMUP_STEPS,
        "channels_last": cfg.train.channels_last}}

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
    model = build_model(cfg, bank, backbone=backbone).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr,
                                  weight_decay=cfg.train.weight_decay)
    criterion = PRNetLoss(cfg.loss)
    images, masks = fixed_batch(ds, args.batch, device, cfg.train.channels_last)
    res["settings"]["trainable_params_M"] = count_trainable(model) / 1e6

    def train_step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = model(images)
        loss, _ = criterion(logits, masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def backbone_forward() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            model.backbone(images)

    def inference() -> None:
        predict_maps(model, images, topk=cfg.eval.topk, sigma=cfg.eval.sigma, amp=cfg.train.amp)

    n_img = args.steps * args.batch
    log.info("training: %d steps of batch %d", args.steps, args.batch)
    model.train()
    t_train = timed_loop(train_step, args.steps, device)
    log.info("backbone forward: %d batches", args.steps)
    t_bb = timed_loop(backbone_forward, args.steps, device)
    log.info("inference: %d batches", args.steps)
    model.eval()
    t_inf = timed_loop(inference, args.steps, device)
    res["train"] = {"images_per_s": n_img / t_train, "ms_per_step": 1e3 * t_train / args.steps}
    res["backbone_forward"] = {"images_per_s": n_img / t_bb, "ms_per_batch": 1e3 * t_bb / args.steps}
    res["step_over_backbone"] = t_train / t_bb
    res["inference"] = {"images_per_s": n_img / t_inf, "ms_per_batch": 1e3 * t_inf / args.steps}
    if device.type == "cuda":
        res["cuda_max_memory_GiB"] = torch.cuda.max_memory_allocated(device) / 2 ** 30

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
    rows += [
        ("training step", f"{res['train']['images_per_s']:.1f}", "images/s",
         f"{res['train']['ms_per_step']:.1f} ms/step, batch {b}, fixed batch on device (data loading excluded)"),
        ("backbone forward", f"{res['backbone_forward']['images_per_s']:.1f}", "images/s",
         f"{res['backbone_forward']['ms_per_batch']:.1f} ms/batch, batch {b}"),
        ("step / backbone forward", f"{res['step_over_backbone']:.2f}", "x", "training step time / forward time"),
        ("inference (predict_maps)", f"{res['inference']['images_per_s']:.1f}", "images/s",
         f"{res['inference']['ms_per_batch']:.1f} ms/batch, batch {b}, forward + sigmoid + smoothing + top-k"),
        ("prototype building", f"{res['prototypes']['seconds']:.2f}", "s",
         f"{res['prototypes']['images']} images, K={res['prototypes']['k'][0]}, read + features + k-means"),
        ("AUPRO (prnet.metrics)", f"{res['aupro']['aupro_s']:.3f}", "s",
         f"{res['aupro']['maps']} maps {res['aupro']['size']}x{res['aupro']['size']}, best of "
         f"{res['aupro']['aupro_repeats']}"),
        ("AUPRO (sort reference)", f"{res['aupro']['reference_s']:.3f}", "s",
         f"once; {res['aupro']['speedup']:.1f}x slower, abs diff {res['aupro']['abs_diff']:.1e}"),
    ]
    h, w = s["size"]
    head = (f"{env['device_name']} ({env['device']}, {env['torch_threads']} torch threads, "
            f"{env['cpu_count']} CPUs), torch {env['torch']}, {env['dtype']}; {s['backbone']} "
            f"(weights {s['weights']}), head widths {s['head_widths']} ({s['trainable_params_M']:.2f} M trainable), "
            f"{h}x{w}, {s['steps']} timed steps after {s['warmup_steps']} warm-up; data: {s['data']}")
    lines = [head, "", "| measure | value | unit | notes |", "|---|---:|---|---|"]
    lines += [f"| {a} | {v} | {u} | {n} |" for a, v, u, n in rows]
    if "cuda_max_memory_GiB" in res:
        lines.append(f"\npeak CUDA memory: {res['cuda_max_memory_GiB']:.2f} GiB")
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
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.data and not args.category:
        p.error("--data needs --category")
    args.category = args.category or "demo"
    if args.steps is None:
        args.steps = 20 if resolve_device(args.device).type == "cuda" else 5
    if args.steps < 1 or args.batch < 1 or args.synth_samples < 1:
        p.error("--steps, --batch and --synth-samples must be >= 1")
    setup_logging()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    workdir = tempfile.mkdtemp(prefix="prnet-bench-speed-")
    try:
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
