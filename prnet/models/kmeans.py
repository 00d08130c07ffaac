"""k-means for the prototype bank: k-means++ seeding, Lloyd iterations, inertia, and K per category."""
from __future__ import annotations

from typing import Optional

import torch

from prnet.utils import torch_generator


def _sq_dist_chunked(x: torch.Tensor, x_sq: torch.Tensor, centers: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """N×K squared distances via ||x||² − 2 x·c + ||c||², in row chunks (no N×K×D tensor)."""
    c_sq = (centers * centers).sum(1)
    out = torch.empty(x.shape[0], centers.shape[0], device=x.device, dtype=torch.float32)
    for s in range(0, x.shape[0], chunk):
        out[s:s + chunk] = x_sq[s:s + chunk, None] - 2.0 * (x[s:s + chunk] @ centers.t()) + c_sq[None]
    return out.clamp_min_(0.0)


def kmeans_pp(x: torch.Tensor, k: int, iters: int = 50, generator: Optional[torch.Generator] = None,
              seed: int = 0) -> torch.Tensor:
    """k-means++ initialisation, then Lloyd iterations; returns k×D float32 centers on x's device.

    Deterministic for a given generator/seed. Sampling draws from a CPU generator (`generator`, else one
    made from `seed`); distances are computed by matmul, so memory stays O(N·K + K·D) beyond x itself.
    """
    return kmeans(x, k, iters, generator, seed)[0]


def kmeans(x: torch.Tensor, k: int, iters: int = 50, generator: Optional[torch.Generator] = None,
           seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """kmeans_pp's centers and the cluster of each row of x, consistent: every non-empty center is exactly the
    mean of the rows assigned to it (what held-out residuals rely on)."""
    if x.dim() != 2:
        raise ValueError(f"kmeans_pp: expected N×D, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"kmeans_pp: k={k} must be between 1 and the number of points {n}")
    x = x if x.dtype == torch.float32 else x.float()
    gen = generator if generator is not None else torch_generator(seed)
    x_sq = (x * x).sum(1)
    idx = [int(torch.randint(n, (1,), generator=gen).item())]
    min_d = _sq_dist_chunked(x, x_sq, x[idx[0]][None])[:, 0]
    for _ in range(1, k):
        w = min_d.double().cpu()
        if float(w.sum()) <= 0:  # all remaining points coincide with a center: pick any unused one
            used = set(idx)
            nxt = next(i for i in range(n) if i not in used)
        else:
            nxt = int(torch.multinomial(w, 1, generator=gen).item())
        idx.append(nxt)
        min_d = torch.minimum(min_d, _sq_dist_chunked(x, x_sq, x[nxt][None])[:, 0])
    centers = x[torch.tensor(idx, device=x.device)].clone()
    prev: Optional[torch.Tensor] = None  # the assignment the current centers are the means of
    for _ in range(max(1, iters)):  # at least one update, so that centers are means of their clusters
        assign = _sq_dist_chunked(x, x_sq, centers).argmin(1)
        if prev is not None and torch.equal(assign, prev):
            break
        prev = assign
        onehot = torch.zeros(k, n, device=x.device, dtype=torch.float32)
        onehot[assign, torch.arange(n, device=x.device)] = 1.0
        counts = onehot.sum(1)
        sums = onehot @ x  # K×D, deterministic (no scatter-add)
        keep = counts > 0  # an empty cluster keeps its previous center
        centers[keep] = sums[keep] / counts[keep, None]
    assert prev is not None
    return centers, prev


def inertia(x: torch.Tensor, centers: torch.Tensor) -> float:
    """Sum of squared distances of each row of x to its nearest center."""
    x = x.float()
    return float(_sq_dist_chunked(x, (x * x).sum(1), centers.float()).min(1).values.double().sum())


def num_prototypes(n_images: int, ratio: float) -> int:
    """K = max(1, round(ratio · N)), never more than N."""
    return min(n_images, max(1, round(ratio * n_images)))
