"""Build the k-means prototype bank of every category: features of the normal training images, k-means per
scale, saved under prototypes.dir (a category whose matching file exists is skipped unless --force).

    python create_proto_feature_maps.py --config configs/demo.yaml [--force] [key=value ...]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from prnet.config import ConfigError, config_to_dict, dump_config, image_hw, load_config
from prnet.utils import resolve_device, setup_logging

log = logging.getLogger("create_proto_feature_maps")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="YAML config file")
    ap.add_argument("--force", action="store_true", help="rebuild existing or mismatching prototype files")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. data.classes=[bottle]")
    args = ap.parse_args(argv)
    setup_logging()

    from prnet.datasets import ensure_data
    from prnet.datasets.mvtec import MVTEC, DatasetError, format_args, resolve_classes
    try:
        cfg = load_config(args.config, args.overrides)
        ensure_data(cfg)
        classes = resolve_classes(cfg)
        for category in classes:  # check the data now, before any heavy work
            MVTEC(cfg.data.root, category, split="train", image_size=image_hw(cfg), **format_args(cfg))
        device = resolve_device(cfg.train.device)
    except (ConfigError, DatasetError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    import yaml

    from prnet.models.backbone import Backbone
    from prnet.models.prototypes import (PrototypeMismatchError, build_category_prototypes, check_training_images,
                                         expected_meta, load_prototypes, prototype_path)
    log.info("resolved config:\n%s", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    out_dir = os.path.dirname(prototype_path(cfg, classes[0]))
    os.makedirs(out_dir, exist_ok=True)
    dump_config(cfg, os.path.join(out_dir, "config.yaml"))

    backbone = None
    for category in classes:
        path = prototype_path(cfg, category)
        if os.path.isfile(path) and not args.force:
            try:
                check_training_images(load_prototypes(path, expected_meta(cfg, category)), cfg, category, path)
                log.info("%s: %s exists and matches; skipped (use --force to rebuild)", category, path)
                continue
            except (PrototypeMismatchError, RuntimeError) as e:
                print(f"error: {e} (rerun with --force to rebuild it)", file=sys.stderr)
                return 2
        if backbone is None:
            try:
                backbone = Backbone(cfg.model.backbone, cfg.model.backbone_weights, cfg.model.stages,
                                    cfg.model.bottleneck_stage).to(device)
            except (ValueError, RuntimeError, FileNotFoundError) as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
        t0 = time.perf_counter()
        bank = build_category_prototypes(cfg, category, device, backbone=backbone)
        log.info("%s: %d images, K=%s, %.1f s -> %s", category, bank.meta["num_images"], bank.meta["k"],
                 time.perf_counter() - t0, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
