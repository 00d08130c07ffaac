"""Training-step cost of prototype banks, alternated in one process (this VM's speed drifts; alternating cancels it).

    python benchmarks/bench_banks.py --data pv_magnetic_tile/proxy --category magnetic_tile --dtd ../shared/data/dtd \
        --bank 0.1=pv_magnetic_tile/runs/zero/prototypes/tf_efficientnet_lite0_256x256/magnetic_tile.pt \
        --bank 0.25=pv_magnetic_tile/runs/ratio25/prototypes/tf_efficientnet_lite0_256x256/magnetic_tile.pt

One fixed batch of training samples (normal and synthetic, spread over the epoch), one model per bank (same seed,
same backbone), `--warmup` steps each, then `--rounds` rounds in which every bank runs `--steps` whole training
steps (forward with held-out residuals, loss, backward, AdamW). Prints each bank's K and its seconds per step per
round and the best; data loading is not included. lite0 (offline weights), head widths 32/64/128, batch 8, 256².
"""
from __future__ import annotations

import argparse
import time

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="data root holding the category (MVTec layout)")
    p.add_argument("--category", required=True)
    p.add_argument("--dtd", help="DTD folder for the synthetic samples")
    p.add_argument("--bank", action="append", required=True, metavar="NAME=FILE", help="a prototype file (repeat)")
    p.add_argument("--size", type=int, default=256, help="image size (the banks' own)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    from prnet.config import load_config
    from prnet.datasets import build_train_dataset
    from prnet.engine.prototypes import load_prototypes, make_backbone
    from prnet.losses import PRNetLoss
    from prnet.models.prnet import build_model

    torch.set_num_threads(args.threads)
    cfg = load_config(None, [f"data.root={args.data}", f"data.classes=[{args.category}]", "data.num_anomalies=0",
                             "data.few_shot=[]", f"data.image_size={args.size}", "model.backbone=tf_efficientnet_lite0",
                             "model.backbone_weights=package", "model.head_widths=[32,64,128]",
                             *([f"data.dtd_root={args.dtd}"] if args.dtd else [])])
    ds = build_train_dataset(cfg, args.category)
    items = [ds[int(i)] for i in torch.linspace(0, len(ds) - 1, args.batch).round().long()]
    x = torch.stack([it["image"] for it in items]).contiguous(memory_format=torch.channels_last)
    m = torch.stack([it["mask"] for it in items])
    source = torch.tensor([it["source"] for it in items])
    backbone = make_backbone(cfg)
    criterion = PRNetLoss(cfg.loss)
    runs = {}
    for text in args.bank:
        name, sep, path = text.partition("=")
        if not sep:
            raise SystemExit(f"--bank {text!r}: expected NAME=FILE")
        bank = load_prototypes(path)
        torch.manual_seed(0)
        model = build_model(cfg, bank, backbone=backbone).to(memory_format=torch.channels_last).train()
        optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-3)
        runs[name] = (model, optimizer, bank.meta["k"])

    def step(name: str) -> None:
        model, optimizer, _ = runs[name]
        loss, _ = criterion(model(x, source), m)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for name in runs:
        for _ in range(args.warmup):
            step(name)
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name in runs:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(name)
            times[name].append((time.perf_counter() - t0) / args.steps)
    for name, t in times.items():
        print(f"{name}: K {runs[name][2]}, s per step {' '.join(f'{v:.3f}' for v in t)}, best {min(t):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
