"""Speed of synthetic anomalies on one core: Perlin (mask + texture + blend) and extended (cut, augment, paste,
pasted at the level of the new surroundings as by default).

    python benchmarks/bench_synthesis.py [--dtd /path/to/dtd] [--data ROOT --category C] [--size 256] [--n 300]
                                         [--old] [--json out.json]

Without --data the normal and defective images are procedural demo images; without --dtd textures are
procedural. Prints median wall and CPU ms per sample and samples per second per DataLoader worker (1 / mean wall
time). --old also times the previous implementation (benchmarks/legacy.py), sample for sample interleaved with
the current one in the same process, and prints the speed-up (old time / new time).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import cv2
import numpy as np
import torch

from legacy import old_paths
from prnet.datasets import synthesis
from prnet.datasets.demo import add_defect, demo_surface
from prnet.datasets.mvtec import MVTEC, load_mask, load_rgb, select_few_shot
from prnet.datasets.textures import TextureSource
from prnet.utils import numpy_rng, setup_logging


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


def figures(wall: np.ndarray, cpu: np.ndarray) -> dict:
    """Median and p90 wall ms, median CPU ms, samples/s (1 / mean wall time) of per-sample times."""
    return {"median_ms": float(np.median(wall)) * 1e3, "p90_ms": float(np.quantile(wall, 0.9)) * 1e3,
            "cpu_median_ms": float(np.median(cpu)) * 1e3, "samples_per_s": 1.0 / float(np.mean(wall))}


def interleaved(fn, n: int, old: bool) -> dict:
    """Figures of fn(i) for i < n with the current code ('new') and, if `old`, with the previous code ('old'),
    one sample of each in turn, which one first alternating (both see the same load on a shared machine, and the
    same share of texture cache misses), and the speed-up old / new."""
    times = {"new": ([], []), "old": ([], [])}
    for i in range(n):
        for name in (("new", "old")[::1 - 2 * (i % 2)] if old else ("new",)):
            with old_paths(name == "old"):
                w, c = timeit(lambda _: fn(i), 1)
            times[name][0].append(w[0])
            times[name][1].append(c[0])
    out = {name: figures(np.array(w), np.array(c)) for name, (w, c) in times.items() if w}
    if old:
        out["speedup"] = out["new"]["samples_per_s"] / out["old"]["samples_per_s"]
        out["speedup_cpu_median"] = out["old"]["cpu_median_ms"] / out["new"]["cpu_median_ms"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtd", default=None, help="DTD root (default: procedural textures)")
    p.add_argument("--data", default=None, help="MVTec-layout root (default: procedural demo images)")
    p.add_argument("--category", default="bottle")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--n", type=int, default=300, help="samples timed per kind")
    p.add_argument("--old", action="store_true", help="also time the previous implementation (benchmarks/legacy.py)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    setup_logging()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    normals, defects = images(args)
    textures = TextureSource(args.dtd)
    warm = min(50, args.n)

    def perlin(i: int) -> None:
        synthesis.perlin_anomaly(normals[i % len(normals)], textures, numpy_rng(0, 0, i))

    def extended(i: int) -> None:
        img, m = defects[i % len(defects)]
        synthesis.extended_anomaly(normals[i % len(normals)], img, m, numpy_rng(0, 1, i), match_context=True)

    results = {"size": args.size, "dtd": args.dtd, "data": args.data, "threads": 1}
    print(f"{'kind':<10}{'code':<6}{'median ms':>10}{'p90 ms':>10}{'cpu ms':>10}{'samples/s/worker':>18}")
    for name, fn in (("perlin", perlin), ("extended", extended)):
        if name == "extended" and not defects:
            continue
        interleaved(fn, warm, args.old)  # fills the texture cache, warms up torch
        r = interleaved(lambda i: fn(i + warm), args.n, args.old)
        results[name] = r
        for code in ("old", "new"):
            if code in r:
                f = r[code]
                print(f"{name:<10}{code:<6}{f['median_ms']:>10.2f}{f['p90_ms']:>10.2f}{f['cpu_median_ms']:>10.2f}"
                      f"{f['samples_per_s']:>18.1f}")
        if args.old:
            print(f"{name:<10}speed-up new/old: {r['speedup']:.2f}x samples/s, {r['speedup_cpu_median']:.2f}x "
                  f"median CPU time")
    if args.json:
        with open(args.json + ".tmp", "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
        os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
