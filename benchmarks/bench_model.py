"""Size and speed of PRNet: trainable parameters, frozen-backbone forward time, and the time of one whole
training step (forward, backward, AdamW step), per image; prints a table and optionally writes JSON.

    python benchmarks/bench_model.py --backbone wide_resnet50_2 tf_efficientnet_lite0 --size 256 --batch 4
    python benchmarks/bench_model.py --attention --widths 64 128 256 --size 256 --batch 8

--attention times only the multi-size attention blocks (forward + backward, the head's maps at strides 4, 8, 16
of --size) with the current forward and the previous one (benchmarks/legacy.py), interleaved in one process, and
prints the ratio old / new per scale and in total.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from legacy import old_paths
from prnet.config import Config
from prnet.losses import PRNetLoss
from prnet.models.attention import MultiSizeSelfAttention
from prnet.models.backbone import Backbone
from prnet.models.prnet import build_model, count_trainable
from prnet.models.prototypes import PrototypeBank
from prnet.utils import atomic_write, resolve_device, setup_logging


def _time_once(fn, device: torch.device, clock=time.perf_counter) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = clock()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return clock() - t0


def _timeit_pair(fa, fb, repeats: int, device: torch.device, clock=time.perf_counter) -> tuple[float, float, float]:
    """Minimum times of fa() and fb(), measured interleaved (a shared CPU slows both alike), after a
    warm-up; also the smallest ratio fb/fa of one adjacent pair. `clock`: wall time by default."""
    fa(), fb()
    ta, tb, ratio = float("inf"), float("inf"), float("inf")
    for _ in range(repeats):
        a = _time_once(fa, device, clock)
        b = _time_once(fb, device, clock)
        ta, tb, ratio = min(ta, a), min(tb, b), min(ratio, b / a)
    return ta, tb, ratio


def bench(backbone: str, size: int, batch: int, widths: list[int], blocks: int, weights: str, repeats: int,
          device: torch.device) -> dict:
    cfg = Config()
    cfg.model.backbone, cfg.model.backbone_weights = backbone, weights
    cfg.model.head_widths, cfg.model.attn_blocks = widths, blocks
    bb = Backbone(backbone, weights, cfg.model.stages, cfg.model.bottleneck_stage).to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size, generator=g).to(device)
    mask = (torch.rand(batch, 1, size, size, generator=g) > 0.9).float().to(device)
    feats, _ = bb(x)
    k = 8  # prototype count barely matters for speed; random prototypes of the right shape
    bank = PrototypeBank([torch.randn(k, *f.shape[1:], generator=g) for f in feats])
    model = build_model(cfg, bank, backbone=bb).to(device).train()
    loss_fn = PRNetLoss(cfg.loss)
    opt = torch.optim.AdamW(model.head_parameters(), lr=1e-4)

    def backbone_fwd() -> None:
        bb(x)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        total, _ = loss_fn(model(x), mask)
        total.backward()
        opt.step()

    t_bb, t_step, pair_ratio = _timeit_pair(backbone_fwd, step, repeats, device)
    return {"backbone": backbone, "size": size, "batch": batch, "widths": widths, "attn_blocks": blocks,
            "trainable_params_M": count_trainable(model) / 1e6, "backbone_fwd_ms_per_img": 1e3 * t_bb / batch,
            "train_step_ms_per_img": 1e3 * t_step / batch, "ratio": t_step / t_bb,
            "best_pair_ratio": pair_ratio}


def bench_attention(widths: list[int], size: int, batch: int, divisors: list[int], repeats: int,
                    device: torch.device, strides: tuple[int, ...] = (4, 8, 16)) -> list[dict]:
    """Forward + backward of one attention block per scale (width w on a size/stride map), previous forward vs
    current, same weights and input: min times over `repeats` interleaved pairs and the max output difference.
    On the CPU the time is this process's CPU time (other load on a shared machine does not count)."""
    rows = []
    g = torch.Generator().manual_seed(0)
    for w, stride in zip(widths, strides):
        side = size // stride
        att = MultiSizeSelfAttention(w, divisors).to(device).train()
        x = torch.randn(batch, w, side, side, generator=g).to(device).requires_grad_(True)

        def step(old: bool) -> torch.Tensor:
            with old_paths(old):
                y = att(x)
            y.square().mean().backward()
            return y.detach()

        diff = float((step(True) - step(False)).abs().max())
        clock = time.process_time if device.type == "cpu" else time.perf_counter
        t_old, t_new, _ = _timeit_pair(lambda: step(True), lambda: step(False), repeats, device, clock)
        rows.append({"width": w, "map": side, "batch": batch, "old_ms": 1e3 * t_old, "new_ms": 1e3 * t_new,
                     "ratio": t_old / t_new, "max_abs_diff": diff})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", nargs="+", default=["wide_resnet50_2", "tf_efficientnet_lite0"])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--widths", type=int, nargs="+", default=None, help="head widths (default: config default)")
    ap.add_argument("--attn-blocks", type=int, default=None)
    ap.add_argument("--weights", default="none", help="backbone weights (none is fine for timing)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--attention", action="store_true",
                    help="time the attention blocks only, previous vs current forward")
    ap.add_argument("--json", default=None, help="write the rows to this JSON file")
    args = ap.parse_args(argv)
    setup_logging()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    default = Config().model
    widths = args.widths or default.head_widths
    blocks = args.attn_blocks if args.attn_blocks is not None else default.attn_blocks
    device = resolve_device(args.device)
    if args.attention:
        rows = bench_attention(widths, args.size, args.batch, default.attn_patch_divisors, args.repeats, device)
        print(f"attention blocks, forward + backward: device {device}, threads {torch.get_num_threads()}, "
              f"{args.size}px, batch {args.batch}, min of {args.repeats} interleaved"
              f"{' (process CPU time)' if device.type == 'cpu' else ''}")
        print(f"{'width':>6s} {'map':>5s} {'old ms':>9s} {'new ms':>9s} {'old/new':>8s} {'max diff':>9s}")
        for r in rows:
            print(f"{r['width']:6d} {r['map']:5d} {r['old_ms']:9.1f} {r['new_ms']:9.1f} {r['ratio']:8.2f} "
                  f"{r['max_abs_diff']:9.1e}")
        t_old, t_new = sum(r["old_ms"] for r in rows), sum(r["new_ms"] for r in rows)
        print(f"{'all':>6s} {'':5s} {t_old:9.1f} {t_new:9.1f} {t_old / t_new:8.2f}")
    else:
        rows = [bench(b, args.size, args.batch, widths, blocks, args.weights, args.repeats, device)
                for b in args.backbone]
        _print_rows(rows, device, args)
    if args.json:
        def write(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(rows, fh, indent=2)
        atomic_write(args.json, write)
    return 0


def _print_rows(rows: list[dict], device: torch.device, args: argparse.Namespace) -> None:
    print(f"device {device}, threads {torch.get_num_threads()}, {args.size}px, batch {args.batch}, "
          f"min of {args.repeats}")
    print(f"{'backbone':24s} {'widths':16s} {'blk':>3s} {'params M':>9s} {'bb fwd ms/img':>14s} "
          f"{'step ms/img':>12s} {'step/bb':>8s} {'pair':>6s}")
    for r in rows:
        print(f"{r['backbone']:24s} {str(r['widths']):16s} {r['attn_blocks']:3d} {r['trainable_params_M']:9.2f} "
              f"{r['backbone_fwd_ms_per_img']:14.1f} {r['train_step_ms_per_img']:12.1f} {r['ratio']:8.2f} "
              f"{r['best_pair_ratio']:6.2f}")


if __name__ == "__main__":
    sys.exit(main())
