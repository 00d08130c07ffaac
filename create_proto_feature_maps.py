"""Build the k-means prototype bank of every category: features of the normal training images, k-means per
scale, saved under prototypes.dir; where the image score reads the images a second time at another size
(eval.second_read), the bank at that size too. A file that exists and matches is skipped; a stale file (other data
or settings) is refused with the command that rebuilds it (--force).

    python create_proto_feature_maps.py --config configs/demo.yaml [--force] [key=value ...]
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time

from prnet.config import ConfigError, config_to_dict, dump_config, image_hw, load_config
from prnet.utils import resolve_device, setup_logging

log = logging.getLogger("create_proto_feature_maps")


def rebuild_command(argv: list[str]) -> str:
    """This script's command line with --force added (the command that rebuilds a stale file)."""
    args = list(argv) + ([] if "--force" in argv else ["--force"])
    return shlex.join(["python", "create_proto_feature_maps.py", *args])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="YAML config file")
    ap.add_argument("--force", action="store_true", help="rebuild existing or stale prototype files")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. data.classes=[bottle]")
    args = ap.parse_args(argv)
    setup_logging()

    from prnet.datasets import ensure_data, holdout_normal_names
    from prnet.datasets.checks import check_samples
    from prnet.datasets.mvtec import MVTEC, DatasetError, format_args, resolve_classes
    try:
        cfg = load_config(args.config, args.overrides)
        ensure_data(cfg)
        classes = resolve_classes(cfg)
        for category in classes:  # check the data now, before any heavy work
            holdout_normal_names(cfg, category)  # a share that leaves images on both sides
            check_samples(MVTEC(cfg.data.root, category, split="train", image_size=image_hw(cfg),
                                **format_args(cfg)).samples, image_hw(cfg))
        device = resolve_device(cfg.train.device)
    except (ConfigError, DatasetError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    import yaml

    from prnet.engine.prototypes import (PrototypeMismatchError, build_category_prototypes, load_matching,
                                         make_backbone, prototype_path)
    from prnet.engine.second_read import second_read_config, with_second_read
    jobs = []  # (config, category): the run's bank, then the second read's where it has one
    for category in classes:
        jobs.append((cfg, category))
        resolved = with_second_read(cfg, category)
        if isinstance(resolved.eval.second_read, list) and resolved.eval.image_score == "map_residual_knn":
            jobs.append((second_read_config(resolved), category))
    todo = []
    for job_cfg, category in jobs:  # a stale file is refused before anything is built
        path = prototype_path(job_cfg, category)
        if os.path.isfile(path) and not args.force:
            try:
                load_matching(job_cfg, category)
                log.info("%s: %s exists and matches; skipped (use --force to rebuild)", category, path)
                continue
            except (PrototypeMismatchError, RuntimeError) as e:
                print(f"error: {e}; rebuild it with: {rebuild_command(argv)}", file=sys.stderr)
                return 2
        todo.append((job_cfg, category))
    log.info("resolved config:\n%s", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    out_dir = os.path.dirname(prototype_path(cfg, classes[0]))
    os.makedirs(out_dir, exist_ok=True)
    dump_config(cfg, os.path.join(out_dir, "config.yaml"))

    backbone = None
    for job_cfg, category in todo:
        if backbone is None:
            try:
                backbone = make_backbone(cfg).to(device)
            except (ValueError, RuntimeError, FileNotFoundError) as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
        t0 = time.perf_counter()
        bank = build_category_prototypes(job_cfg, category, device, backbone=backbone)
        log.info("%s: %d images, K=%s, %.1f s -> %s", category, bank.meta["num_images"], bank.meta["k"],
                 time.perf_counter() - t0, prototype_path(job_cfg, category))
    return 0


if __name__ == "__main__":
    sys.exit(main())
