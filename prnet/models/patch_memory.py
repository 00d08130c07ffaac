"""Patch memory: normal patch features, a coreset of them, and each input patch's distance to the nearest.

The PatchCore idea (Roth et al., CVPR 2022) as a part of the library: `patch_embedding` turns backbone feature maps
into one feature per patch (each map averaged over its 3×3 neighbourhood, the coarser maps upsampled bilinearly to
the finest one's size, concatenated); `greedy_coreset` picks a k-center greedy subset of the normal training
patches; `nearest_distances` gives each query patch its L2 distance to the nearest memory patch. The baseline of
benchmarks/patchcore.py is built from these, and so is `PatchMemory`, an optional input of PRNet's head
(`prototypes.patch_memory`): per patch, the distance to the nearest normal training patch anywhere in any image,
where a prototype residual compares the whole map with one prototype map.

Held-out distances for training images: a memory row remembers the training image it came from (`source`); a
sample made from training image i is matched without the rows of image i, as an unseen normal image would be
(the prototype bank's held-out residuals, for the memory). The distances are divided by `mean`, the mean held-out
distance of the normal training images, so a normal patch is at about 1.
"""
from __future__ import annotations

import contextlib
import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from prnet.utils import torch_generator

MAX_CANDIDATES = 200_000  # patches drawn uniformly before the greedy coreset (its cost grows with N·count)

def random_projection(dim_in: int, dim_out: int, seed: int) -> torch.Tensor:
    """A seeded dim_in×dim_out Gaussian matrix scaled by 1/sqrt(dim_out) (distances roughly preserved)."""
    g = torch_generator(seed, 1)
    return torch.randn(dim_in, dim_out, generator=g) / math.sqrt(dim_out)


def random_subset(n: int, count: int, seed: int) -> torch.Tensor:
    """`count` distinct indices of range(n), drawn uniformly with `seed`, in increasing order."""
    if not 0 < count <= n:
        raise ValueError(f"cannot draw {count} of {n} items (need 0 < count <= n)")
    return torch.randperm(n, generator=torch_generator(seed, 2))[:count].sort().values


def greedy_coreset(features: torch.Tensor, count: int, proj_dim: Optional[int] = 128, seed: int = 0,
                   pool: int = 512, chunk: int = 65536, progress: bool = True) -> torch.Tensor:
    """Indices of `count` distinct rows of `features` (N×D) chosen by k-center greedy, in the order chosen.

    k-center greedy: start at one seeded random row, then repeatedly add the row farthest (L2) from the rows
    chosen so far. Runs on a seeded random projection to `proj_dim` dimensions when D is larger (None: on the
    features themselves). Exact, but in passes: each pass takes the `pool` rows farthest from the chosen set,
    runs the greedy among them (their pairwise distances only) while the best of them stays strictly farther
    than every row outside the pool (those distances only shrink, so no outside row could be chosen yet), then
    lowers every row's distance with all the new centres in one matrix product, `chunk` rows at a time. Same
    picks as the one-centre-per-pass loop up to float rounding, O(N·count) flops in all but far fewer passes
    over memory; never an N×N or N×count matrix.
    """
    n = features.shape[0]
    if not 0 < count <= n:
        raise ValueError(f"greedy coreset: cannot choose {count} of {n} features (need 0 < count <= n)")
    device = features.device
    if proj_dim is not None and features.shape[1] > proj_dim:
        proj = random_projection(features.shape[1], proj_dim, seed).to(device, torch.float32)
        x = torch.cat([features[i:i + chunk].float() @ proj for i in range(0, n, chunk)])
    else:
        x = features.float().contiguous()
    sq = (x * x).sum(1)
    min_d = torch.full((n,), float("inf"), device=device)  # squared distance to the chosen set; -1 once chosen
    chosen: list[torch.Tensor] = []
    new = torch.randint(n, (1,), generator=torch_generator(seed, 3)).to(device)
    done = 0
    bar = tqdm(total=count, desc="greedy coreset", unit="pt", disable=not progress, mininterval=2.0)
    while True:
        chosen.append(new)
        done += new.numel()
        bar.update(new.numel())
        centres, centres_sq = x[new], sq[new]
        rows = max(1, min(chunk, (1 << 23) // new.numel()))  # at most 8M distances at once
        for i in range(0, n, rows):  # lower every distance with the new centres
            d = torch.addmm(centres_sq[None], x[i:i + rows], centres.t(), beta=1.0, alpha=-2.0)
            d = (d.min(dim=1).values + sq[i:i + rows]).clamp_min_(0.0)
            torch.minimum(min_d[i:i + rows], d, out=min_d[i:i + rows])
        min_d[new] = -1.0
        if done >= count:
            break
        take = min(pool, n)
        top_d, top = torch.topk(min_d, min(take + 1, n))
        outside = float(top_d[take]) if take < n else -math.inf  # the farthest row outside the pool
        top_d, top = top_d[:take], top[:take]
        px = x[top]
        pair = (sq[top][:, None] + sq[top][None] - 2.0 * (px @ px.t())).clamp_min_(0.0)
        vals = top_d.clone()
        picks = []
        while len(picks) < count - done:
            best = int(vals.argmax())
            v = float(vals[best])
            if picks and not (v > outside and v >= 0.0):  # the first is the global farthest: always taken
                break
            picks.append(best)
            torch.minimum(vals, pair[best], out=vals)
            vals[best] = -1.0
        new = top[torch.tensor(picks, device=device)]
    bar.close()
    return torch.cat(chosen)[:count]


def nearest_distances(queries: torch.Tensor, memory: torch.Tensor, memory_sq: Optional[torch.Tensor] = None,
                      query_chunk: int = 2048, memory_chunk: int = 8192,
                      query_owner: Optional[torch.Tensor] = None,
                      memory_owner: Optional[torch.Tensor] = None) -> torch.Tensor:
    """L2 distance of each row of `queries` (P×D) to its nearest row of `memory` (K×D), in blocks.

    Uses |q|² + |m|² − 2 q·m one query_chunk × memory_chunk block at a time (at most that many floats at once).
    With `query_owner` (P) and `memory_owner` (K), a query never matches a memory row of its own owner (held-out
    distances of training images: owner = the image's index).
    """
    if memory_sq is None:
        memory_sq = (memory * memory).sum(1)
    if (query_owner is None) != (memory_owner is None):
        raise ValueError("nearest_distances: give both query_owner and memory_owner, or neither")
    out = torch.empty(queries.shape[0], device=queries.device)
    for i in range(0, queries.shape[0], query_chunk):
        q = queries[i:i + query_chunk]
        # on the CPU only: finding the pairs synchronises with the device, and a GPU masks a block cheaply anyway
        pairs = (_own_pairs(query_owner[i:i + query_chunk], memory_owner)
                 if query_owner is not None and queries.device.type == "cpu" else None)
        best = torch.full((q.shape[0],), float("inf"), device=queries.device)
        for j in range(0, memory.shape[0], memory_chunk):
            m = memory[j:j + memory_chunk]
            d = torch.addmm(memory_sq[j:j + memory_chunk], q, m.t(), beta=1.0, alpha=-2.0)
            if pairs is not None:
                rows, cols = pairs
                inside = (cols >= j) & (cols < j + m.shape[0])
                d[rows[inside], cols[inside] - j] = float("inf")
            elif query_owner is not None:
                own = query_owner[i:i + query_chunk, None] == memory_owner[None, j:j + memory_chunk]
                d = d.masked_fill(own, float("inf"))
            best = torch.minimum(best, d.min(dim=1).values)
        out[i:i + query_chunk] = (best + (q * q).sum(1)).clamp_min_(0.0).sqrt_()
    return out


OWN_PAIRS_MAX_OWNERS = 16  # more owners in one query chunk: nearest_distances masks by broadcasting instead


def _own_pairs(query_owner: torch.Tensor, memory_owner: torch.Tensor) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """(query rows, memory rows) of every pair with the same owner, for a query chunk from a few owners (held-out
    distances of training images: a chunk holds the patches of one to three images); None when it has more than
    OWN_PAIRS_MAX_OWNERS. Masking these pairs alone costs a fraction of comparing every owner pair of a block."""
    owners = torch.unique(query_owner)
    if owners.numel() > OWN_PAIRS_MAX_OWNERS:
        return None
    rows, cols = [], []
    for owner in owners:
        q_rows = (query_owner == owner).nonzero().flatten()
        m_rows = (memory_owner == owner).nonzero().flatten()
        rows.append(q_rows.repeat_interleave(m_rows.numel()))
        cols.append(m_rows.repeat(q_rows.numel()))
    return torch.cat(rows), torch.cat(cols)


def memory_inputs(feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The feature maps a patch memory is made of: the last two of the model's scales (with model.stages
    [1, 2, 3], stages 2 and 3: the baseline's, strides 8 and 16 on the backbones used here)."""
    return list(feats[-2:])


def patch_embedding(feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """One feature per patch, N×(ΣC)×h×w at the first map's size: each map averaged over its 3×3 neighbourhood
    (zero padding counted at the borders, as torch's avg_pool2d does by default), the others upsampled bilinearly
    to the first one's size, concatenated along the channels."""
    size = feats[0].shape[-2:]
    out = []
    for f in feats:
        f = F.avg_pool2d(f.float(), kernel_size=3, stride=1, padding=1)
        if f.shape[-2:] != size:
            f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
        out.append(f)
    return torch.cat(out, dim=1)


class PatchMemory(nn.Module):
    """forward(feature maps of the used scales, source=None) -> N×1×h×w distance to the nearest normal patch,
    divided by `mean` (module docstring).

    Buffers: `memory` (M×D patch features, in the state dict, so a checkpoint carries them), `mean` (1, the mean
    held-out distance of the normal training images; NaN until known) and `source` (M, the training image of each
    row; not in the state dict: only training needs it, and the prototype file stores it). Built empty
    (`memory=None`), the module takes its shape from the first state dict loaded into it.
    """

    QUERY_CHUNK = 2048  # query patches matched at once (eager mode; an ONNX trace matches all in one block)

    def __init__(self, memory: Optional[torch.Tensor] = None, source: Optional[torch.Tensor] = None,
                 mean: float = math.nan) -> None:
        super().__init__()
        memory = torch.zeros(0, 0) if memory is None else memory.detach().float().contiguous()
        if memory.dim() != 2:
            raise ValueError(f"PatchMemory: expected an M×D memory, got shape {tuple(memory.shape)}")
        source = torch.zeros(0, dtype=torch.long) if source is None else torch.as_tensor(source).long().reshape(-1)
        if source.numel() and source.numel() != memory.shape[0]:
            raise ValueError(f"PatchMemory: {source.numel()} source indices for {memory.shape[0]} memory rows")
        self.register_buffer("memory", memory)
        self.register_buffer("source", source, persistent=False)
        self.register_buffer("mean", torch.tensor([float(mean)]))

    @property
    def is_empty(self) -> bool:
        return self.memory.numel() == 0

    @property
    def has_mean(self) -> bool:
        return bool(torch.isfinite(self.mean).all() and (self.mean > 0).all())

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):  # type: ignore[override]
        key = f"{prefix}memory"
        if key in state_dict and state_dict[key].shape != self.memory.shape:  # adopt the stored size
            self.memory = torch.empty_like(state_dict[key], dtype=torch.float32, device=self.memory.device)
            self.source = torch.zeros(0, dtype=torch.long, device=self.memory.device)  # rows of another memory
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def raw_distances(self, feats: Sequence[torch.Tensor], source: Optional[torch.Tensor] = None) -> torch.Tensor:
        """N×1×h×w L2 distance of each patch of `feats` (patch_embedding) to its nearest memory row; with `source`
        (one training-image index per input, −1: none) the rows of that image are left out."""
        if self.is_empty:
            raise RuntimeError("PatchMemory has no memory: build the prototypes with prototypes.patch_memory > 0 "
                               "or load a checkpoint")
        e = patch_embedding(feats)
        n, d, h, w = e.shape
        if d != self.memory.shape[1]:
            raise ValueError(f"PatchMemory: patch features of {d} channels, memory of {self.memory.shape[1]} "
                             f"(built for another backbone or stages?)")
        queries = e.permute(0, 2, 3, 1).reshape(-1, d)
        own = {}
        if source is not None:
            if self.source.numel() != self.memory.shape[0]:
                raise RuntimeError("PatchMemory: held-out distances (source=...) need the memory's source images "
                                   "(stored in the prototype file, not in a checkpoint)")
            source = torch.as_tensor(source).long().reshape(-1).to(e.device, non_blocking=True)
            if source.numel() != n:
                raise ValueError(f"PatchMemory: {source.numel()} source indices for {n} inputs")
            own = dict(query_owner=source.repeat_interleave(h * w), memory_owner=self.source)
        if torch.jit.is_tracing():
            # one block: a traced loop over query chunks would keep the trace's batch size (wrong for others)
            sq = (self.memory * self.memory).sum(1)
            d = torch.addmm(sq[None], queries, self.memory.t(), beta=1.0, alpha=-2.0).min(dim=1).values
            dist = (d + (queries * queries).sum(1)).clamp_min(0.0).sqrt()
        else:
            dist = nearest_distances(queries, self.memory, query_chunk=self.QUERY_CHUNK, **own)
        return dist.view(n, 1, h, w)

    def model_distances(self, feats: Sequence[torch.Tensor], source: Optional[torch.Tensor] = None) -> torch.Tensor:
        """raw_distances of the model's feature maps `feats` (all scales; memory_inputs picks), in float32 even
        under autocast."""
        device_type = feats[0].device.type
        autocast_on = torch.is_autocast_enabled(device_type) if device_type in ("cuda", "cpu", "mps") else False
        with torch.autocast(device_type, enabled=False) if autocast_on else contextlib.nullcontext():
            return self.raw_distances(memory_inputs(feats), source)

    def forward(self, feats: Sequence[torch.Tensor], source: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The normalised distance map of the model's feature maps `feats` (model_distances / mean)."""
        if not torch.jit.is_tracing() and not self.has_mean:
            raise RuntimeError("PatchMemory: no mean distance of the normal training images: rebuild the prototypes")
        return self.model_distances(feats, source) / self.mean
