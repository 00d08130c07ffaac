"""Size and speed of PRNet: trainable parameters, frozen-backbone forward time, and the time of one whole
training step (forward, backward, AdamW step), per image; prints a table and optionally writes JSON.

    python benchmarks/bench_model.py --backbone wide_resnet50_2 tf_efficientnet_lite0 --size 256 --batch 4
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch


from prnet.config import Config  # noqa: E402
from prnet.losses import PRNetLoss  # noqa: E402
from prnet.models.backbone import Backbone  # noqa: E402
from prnet.models.prnet import build_model, count_trainable  # noqa: E402
from prnet.models.prototypes import PrototypeBank  # noqa: E402
from prnet.utils import resolve_device, setup_logging  # noqa: E402


def _time_once(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _timeit_pair(fa, fb, repeats: int, device: torch.device) -> tuple[float, float, float]:
    """Minimum times of fa() and fb(), measured interleaved (a shared CPU slows both alike), after a
    warm-up; also the smallest ratio fb/fa of one adjacent pair."""
    fa(), fb()
    ta, tb, ratio = float("inf"), float("inf"), float("inf")
    for _ in range(repeats):
        a = _time_once(fa, device)
        b = _time_once(fb, device)
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
    ap.add_argument("--json", default=None, help="write the rows to this JSON file")
    args = ap.parse_args(argv)
    setup_logging()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    default = Config().model
    widths = args.widths or default.head_widths
    blocks = args.attn_blocks if args.attn_blocks is not None else default.attn_blocks
    device = resolve_device(args.device)
    rows = [bench(b, args.size, args.batch, widths, blocks, args.weights, args.repeats, device)
            for b in args.backbone]
    print(f"device {device}, threads {torch.get_num_threads()}, {args.size}px, batch {args.batch}, "
          f"min of {args.repeats}")
    print(f"{'backbone':24s} {'widths':16s} {'blk':>3s} {'params M':>9s} {'bb fwd ms/img':>14s} "
          f"{'step ms/img':>12s} {'step/bb':>8s} {'pair':>6s}")
    for r in rows:
        print(f"{r['backbone']:24s} {str(r['widths']):16s} {r['attn_blocks']:3d} {r['trainable_params_M']:9.2f} "
              f"{r['backbone_fwd_ms_per_img']:14.1f} {r['train_step_ms_per_img']:12.1f} {r['ratio']:8.2f} {r['best_pair_ratio']:6.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
