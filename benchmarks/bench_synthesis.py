"""Speed of synthetic anomalies on one core: Perlin (mask + texture + blend) and extended (cut, augment, paste).

    python benchmarks/bench_synthesis.py [--dtd /path/to/dtd] [--data ROOT --category C] [--size 256] [--n 300]
                                         [--json out.json]

Without --data the normal and defective images are procedural demo images; without --dtd textures are
procedural. Prints median wall and CPU ms per sample and samples per second per DataLoader worker (1 / mean wall time).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from prnet.datasets.demo import add_defect, demo_surface  # noqa: E402
from prnet.datasets.mvtec import MVTEC, load_mask, load_rgb, select_few_shot  # noqa: E402
from prnet.datasets.synthesis import extended_anomaly, perlin_anomaly  # noqa: E402
from prnet.datasets.textures import TextureSource  # noqa: E402
from prnet.utils import numpy_rng, setup_logging  # noqa: E402


def images(args: argparse.Namespace) -> tuple[list[np.ndarray], list[tuple[np.ndarray, np.ndarray]]]:
    """(normal images, [(defect image, mask)]) at --size."""
    hw = (args.size, args.size)
    if args.data:
        train = MVTEC(args.data, args.category, "train", hw)
        normals = [train.image(i) for i in range(min(len(train), 32))]
        test = MVTEC(args.data, args.category, "test", hw)
        shots = select_few_shot(test.samples, 10, 0)
        defects = [(load_rgb(s.path, hw), load_mask(s.mask_path, hw)) for s in shots]
        defects = [d for d in defects if d[1].any()]
    else:
        normals = [demo_surface(numpy_rng(0, i), args.size) for i in range(32)]
        defects = []
        for i in range(6):
            rng = numpy_rng(1, i)
            img, m = add_defect(demo_surface(rng, args.size), ("hole", "scratch", "stain")[i % 3], rng)
            defects.append((img, m.astype(np.float32)))
    return normals, defects


def timeit(fn, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(wall seconds, CPU seconds of this process) per call; CPU time is robust to other load on the machine."""
    wall, cpu = [], []
    for i in range(n):
        t, c = time.perf_counter(), time.process_time()
        fn(i)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return np.array(wall), np.array(cpu)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtd", default=None, help="DTD root (default: procedural textures)")
    p.add_argument("--data", default=None, help="MVTec-layout root (default: procedural demo images)")
    p.add_argument("--category", default="bottle")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--n", type=int, default=300, help="samples timed per kind")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    setup_logging()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    normals, defects = images(args)
    textures = TextureSource(args.dtd)
    warm = min(50, args.n)

    def perlin(i: int) -> None:
        rng = numpy_rng(0, 0, i)
        perlin_anomaly(normals[i % len(normals)], textures, rng)

    def extended(i: int) -> None:
        rng = numpy_rng(0, 1, i)
        img, m = defects[i % len(defects)]
        extended_anomaly(normals[i % len(normals)], img, m, rng)

    results = {"size": args.size, "dtd": args.dtd, "data": args.data, "threads": 1}
    print(f"{'kind':<10}{'median ms':>10}{'p90 ms':>10}{'cpu ms':>10}{'samples/s/worker':>18}")
    for name, fn in (("perlin", perlin), ("extended", extended)):
        if name == "extended" and not defects:
            continue
        timeit(fn, warm)  # fills the texture cache, warms up torch
        t, c = timeit(lambda i: fn(i + warm), args.n)
        med, p90 = float(np.median(t)) * 1e3, float(np.quantile(t, 0.9)) * 1e3
        cpu = float(np.median(c)) * 1e3
        rate = 1.0 / float(np.mean(t))
        results[name] = {"median_ms": med, "p90_ms": p90, "cpu_median_ms": cpu, "samples_per_s": rate}
        print(f"{name:<10}{med:>10.2f}{p90:>10.2f}{cpu:>10.2f}{rate:>18.1f}")
    if args.json:
        with open(args.json + ".tmp", "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
        os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
