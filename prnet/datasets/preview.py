"""Draw a grid of training samples (normal, Perlin, extended) with their mask outlines: what the model learns from.

    python -m prnet.datasets.preview [--config F] [key=value ...] --out preview.png [--category C] [--n 16]
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

import numpy as np

from ..config import ConfigError, load_config
from ..utils import atomic_write, setup_logging
from . import TrainDataset, build_train_dataset, ensure_data, resolve_classes
from .mvtec import DatasetError

log = logging.getLogger(__name__)


def pick_indices(ds: TrainDataset, n: int) -> list[int]:
    """Up to `n` indices spread evenly over the kinds present (normal, perlin, extended), in order."""
    ranges = [r for r in (range(0, ds.n_normal), range(ds.n_normal, ds.n_normal + ds.n_perlin),
                          range(ds.n_normal + ds.n_perlin, len(ds))) if len(r)]
    per = [n // len(ranges) + (i < n % len(ranges)) for i in range(len(ranges))]
    out: list[int] = []
    for r, k in zip(ranges, per):
        k = min(k, len(r))
        if k:
            out.extend(r[int(j)] for j in np.linspace(0, len(r) - 1, k).round().astype(int))
    return out


def draw_preview(ds: TrainDataset, indices: Sequence[int], out: str, title: str = "", epoch: int = 0) -> None:
    """Save a grid of the samples `indices` of `epoch` to `out` (PNG), each with its mask tinted and outlined."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, max(1, len(indices)))
    rows = (len(indices) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, idx in zip(axes.flat, indices):
        item = ds[(epoch, idx)]
        image = item["image"].permute(1, 2, 0).numpy()
        mask = item["mask"][0].numpy()
        ax.imshow(image)
        if mask.any():
            overlay = np.zeros(mask.shape + (4,), np.float32)
            overlay[..., 0] = 1.0
            overlay[..., 3] = 0.25 * mask
            ax.imshow(overlay)
            ax.contour(mask, levels=[0.5], colors="red", linewidths=0.8)
        ax.set_title(f"#{idx} {item['kind']} ({100 * mask.mean():.1f}% mask)", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Draw training samples (normal, perlin, extended) with mask outlines.")
    p.add_argument("--config", default=None, help="YAML config file")
    p.add_argument("--out", default="preview.png", help="output PNG")
    p.add_argument("--category", default=None, help="default: the first class of the config")
    p.add_argument("--n", type=int, default=16, help="number of samples drawn")
    p.add_argument("--epoch", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = p.parse_intermixed_args(argv)
    setup_logging()
    try:
        cfg = load_config(args.config, args.overrides)
        ensure_data(cfg)
        classes = resolve_classes(cfg)
        category = args.category or (classes[0] if classes else None)
        if category is None:
            raise ConfigError("config key 'data.classes' is empty and no --category given")
        ds = build_train_dataset(cfg, category)
        indices = pick_indices(ds, args.n)
        title = f"{category}: {ds.n_normal} normal, {ds.n_perlin} perlin, {ds.n_extended} extended per epoch"
        draw_preview(ds, indices, args.out, title, args.epoch)
    except (ConfigError, DatasetError, FileExistsError) as e:
        log.error("%s", e)
        return 2
    log.info("wrote %s (%d samples of %s)", args.out, len(indices), category)
    return 0


if __name__ == "__main__":
    sys.exit(main())
