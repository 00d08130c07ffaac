"""Train and evaluate PRNet on every category of `data.classes` (default: MVTEC.CLASSNAMES).

    python train.py --config configs/demo.yaml
    python train.py --config configs/default.yaml data.classes=[bottle] train.epochs=50
    torchrun --nproc_per_node=4 train.py --config configs/default.yaml      # DistributedDataParallel

Exit codes: 0 done, 1 training failed, 2 bad config or data (reported before any heavy work).
"""
from __future__ import annotations

import argparse
import json
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

    ctx, device = _init_distributed(cfg.train.device)
    locks: list = []
    try:
        return _run(cfg, ctx, device, locks)
    finally:
        for lock in locks:
            lock.release()
        if ctx.enabled:
            import torch.distributed as dist

            dist.destroy_process_group()


def _run(cfg, ctx, device, locks: list) -> int:
    """Check everything cheap first (data, outputs, locks, backbone), then train each category."""
    from prnet.datasets import ensure_data, few_shot_samples, holdout_normal_names
    from prnet.datasets.checks import check_evaluable, check_samples
    from prnet.datasets.mvtec import DatasetError, MVTEC, format_args, resolve_classes
    from prnet.engine.prototypes import make_backbone
    from prnet.engine.trainer import TrainingError, check_outputs, lock_category, output_root, train_category
    from prnet.utils import LockedError

    try:
        if ctx.is_main:
            ensure_data(cfg)
        if ctx.enabled:
            import torch.distributed as dist

            dist.barrier()
        classes = resolve_classes(cfg)
        for category in classes:  # no outputs in the way, every category readable and evaluable, every file decodes
            check_outputs(cfg, category, ctx.world_size)
            train_set = MVTEC(cfg.data.root, category, "train", cfg.data.image_size, **format_args(cfg))
            test_set = MVTEC(cfg.data.root, category, "test", cfg.data.image_size, **format_args(cfg))
            check_evaluable(test_set.samples, cfg.data.num_anomalies, cfg.eval.require_defective)
            few_shot_samples(cfg, category)  # the real anomalies for training are among the test samples
            holdout_normal_names(cfg, category)  # a share that leaves images on both sides
            check_samples(train_set.samples + test_set.samples, cfg.data.image_size)
        backbone = make_backbone(cfg)
        if ctx.is_main:  # one run per category folder at a time
            locks.extend(lock_category(cfg, category) for category in classes)
    except (DatasetError, TrainingError, ConfigError, LockedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, OSError) as e:  # the backbone: unknown name, unusable weights file
        print(f"error: model.backbone={cfg.model.backbone} model.backbone_weights={cfg.model.backbone_weights}: "
              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
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
            results = train_category(cfg, category, device, ctx, backbone=backbone)
            if ctx.is_main:
                rows.append(table_row(category, results))
                table = report.write_results_tables(rows + other_rows(cfg, out_root, classes), out_root,
                                                    report.TABLE_KEYS)
    except TrainingError as e:
        log.error("%s", e)
        return 1
    if ctx.is_main:
        print(f"\nResults (last epoch, {out_root}/results.md):\n{table}")
    return 0


def table_row(category: str, results: dict) -> dict:
    """A category's row of the results tables; a metric the test set cannot define (e.g. pixel metrics without
    masks) is None: n/a in the table."""
    from prnet import report

    values = {**results["metrics"], **results["operating_point"]}
    return {"category": category, **{k: values.get(k) for k in report.TABLE_KEYS}}


def other_rows(cfg, out_root: str, classes: list[str]) -> list[dict]:
    """The rows of the run folder's other categories, trained by another call (e.g. one process per category and
    GPU) with the same settings, so that the tables and their mean cover the whole folder; a category trained with
    other settings is left out, with a warning."""
    from prnet.engine.trainer import config_differences

    rows = []
    for category in sorted(os.listdir(out_root)):
        path = os.path.join(out_root, category, "results.json")
        if category in classes or not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as fh:
                results = json.load(fh)
            diffs = [d for d in config_differences(results["config"], config_to_dict(cfg))
                     if not d.startswith("data.classes:")]
        except (OSError, ValueError, KeyError) as e:
            log.warning("%s: not read for the results tables (%s)", path, e)
            continue
        if diffs:
            log.warning("%s was trained with other settings (its -> this call's: %s): left out of the results "
                        "tables", path, "; ".join(diffs))
            continue
        rows.append(table_row(category, results))
    return rows


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
