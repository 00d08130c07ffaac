"""Train and evaluate PRNet on every category of `data.classes` (default: MVTEC.CLASSNAMES).

    python train.py --config configs/demo.yaml
    python train.py --config configs/default.yaml data.classes=[bottle] train.epochs=50
    torchrun --nproc_per_node=4 train.py --config configs/default.yaml      # DistributedDataParallel

Exit codes: 0 done, 1 training failed, 2 bad config or data (reported before any heavy work).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import yaml

from prnet.config import ConfigError, config_to_dict, dump_config, load_config

log = logging.getLogger("train")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config file (default: built-in defaults = configs/default.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=3 data.classes=[bottle]")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from prnet.utils import setup_logging

    args = parse_args(argv)
    setup_logging()
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from prnet.datasets import ensure_data, few_shot_samples
    from prnet.datasets.checks import check_evaluable, check_samples
    from prnet.datasets.mvtec import DatasetError, MVTEC, resolve_classes
    from prnet.engine.trainer import TrainingError, check_outputs, output_root, train_category

    ctx, device = _init_distributed(cfg.train.device)
    try:
        if ctx.is_main:
            ensure_data(cfg)
        if ctx.enabled:
            import torch.distributed as dist

            dist.barrier()
        classes = resolve_classes(cfg)
        for category in classes:  # no outputs in the way, every category readable and evaluable, every file decodes
            check_outputs(cfg, category)
            train_set = MVTEC(cfg.data.root, category, "train", cfg.data.image_size)
            test_set = MVTEC(cfg.data.root, category, "test", cfg.data.image_size)
            check_evaluable(test_set.samples, cfg.data.num_anomalies, cfg.eval.require_defective)
            few_shot_samples(cfg, category)  # the real anomalies for training are among the test samples
            check_samples(train_set.samples + test_set.samples, cfg.data.image_size)
    except (DatasetError, TrainingError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    out_root = output_root(cfg)
    if ctx.is_main:
        os.makedirs(out_root, exist_ok=True)
        log.info("resolved config:\n%s", yaml.safe_dump(config_to_dict(cfg), sort_keys=False).rstrip())
        dump_config(cfg, os.path.join(out_root, "config.yaml"))
        log.info("device %s, %d process(es), outputs in %s", device, ctx.world_size, out_root)

    from prnet import report

    rows = []
    try:
        for category in classes:
            results = train_category(cfg, category, device, ctx)
            if ctx.is_main:
                rows.append({"category": category, **results["metrics"]})
                table = report.write_results_tables(rows, out_root)
    except TrainingError as e:
        log.error("%s", e)
        return 1
    finally:
        if ctx.enabled:
            import torch.distributed as dist

            dist.destroy_process_group()
    if ctx.is_main:
        print(f"\nResults (last epoch, {out_root}/results.md):\n{table}")
    return 0


def _init_distributed(device_name: str):
    """One process (plain python) or torchrun's WORLD_SIZE processes: NCCL on GPUs, gloo on the CPU."""
    import torch

    from prnet.engine.trainer import DistContext
    from prnet.utils import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(), resolve_device(device_name)
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
    return DistContext(rank=rank, world_size=world), device


if __name__ == "__main__":
    sys.exit(main())
