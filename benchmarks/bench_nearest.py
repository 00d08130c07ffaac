"""Time nearest_distances (prnet.models.patch_memory) with and without held-out owners, and the held-out search
with the broadcast mask it used before (every query owner against every memory row's), in one process.

    python benchmarks/bench_nearest.py [--images 16] [--patches 1024] [--memory 20000] [--dim 152] [--owners 762]

Defaults: a batch of 16 Magnetic Tile-sized images (32×32 patches of 152 dims with lite0 at 256 px) against the
baseline's 20 000-row memory from 762 training images; random rows (the search does not depend on the values).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

import prnet.models.patch_memory as pm


def best_of(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--patches", type=int, default=1024)
    p.add_argument("--memory", type=int, default=20000)
    p.add_argument("--dim", type=int, default=152)
    p.add_argument("--owners", type=int, default=762)
    args = p.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    memory = torch.randn(args.memory, args.dim, generator=g)
    queries = torch.randn(args.images * args.patches, args.dim, generator=g)
    memory_owner = torch.randint(0, args.owners, (args.memory,), generator=g)
    query_owner = torch.arange(args.images).repeat_interleave(args.patches)
    memory_sq = (memory * memory).sum(1)
    plain = best_of(lambda: pm.nearest_distances(queries, memory, memory_sq))
    held = best_of(lambda: pm.nearest_distances(queries, memory, memory_sq, query_owner=query_owner,
                                                memory_owner=memory_owner))
    limit, pm.OWN_PAIRS_MAX_OWNERS = pm.OWN_PAIRS_MAX_OWNERS, 0
    try:
        broadcast = best_of(lambda: pm.nearest_distances(queries, memory, memory_sq, query_owner=query_owner,
                                                         memory_owner=memory_owner))
    finally:
        pm.OWN_PAIRS_MAX_OWNERS = limit
    print(f"{args.images} images × {args.patches} patches against {args.memory} × {args.dim} "
          f"({torch.get_num_threads()} threads), best of 3:")
    print(f"  without owners               {plain:.2f} s")
    print(f"  held out, own pairs masked   {held:.2f} s")
    print(f"  held out, broadcast mask     {broadcast:.2f} s (before)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
