"""Multi-size self-attention: patches of several sizes, each flattened into one token, attend to each other."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def patch_size(n: int, divisor: int) -> int:
    """Patch side for a map side `n` and divisor d: n // d if d divides n, else the largest divisor of n ≤ n // d."""
    target = max(1, n // divisor)
    if n % target == 0:
        return target
    for p in range(target, 0, -1):
        if n % p == 0:
            return p
    return 1


class MultiSizeSelfAttention(nn.Module):
    """One transformer-style block over a C×h×w map.

    The channels are split into len(patch_divisors) branches (C/len each). Branch b cuts its q/k/v maps
    into non-overlapping p_h×p_w patches with p = side // d_b, flattens each patch into one token, runs
    scaled_dot_product_attention across the tokens and folds the result back (a branch whose patch is the whole
    map has one token: its attention output is its v). Branch outputs are
    concatenated and projected by a 1×1 conv (residual), followed by a conv FFN (residual). Four patch
    sizes per scale, as in the public reimplementation (the paper does not fix them).
    """

    def __init__(self, channels: int, patch_divisors: Sequence[int] = (1, 2, 4, 8), heads: int = 1,
                 ffn_ratio: float = 2.0) -> None:
        super().__init__()
        self.divisors = [int(d) for d in patch_divisors]
        nb = len(self.divisors)
        if channels % nb:
            raise ValueError(f"MultiSizeSelfAttention: channels {channels} not divisible by {nb} branches")
        self.branch_ch = channels // nb
        if self.branch_ch % heads:
            raise ValueError(f"MultiSizeSelfAttention: {self.branch_ch} channels per branch not divisible by "
                             f"{heads} heads")
        self.heads = heads
        self.norm1 = nn.BatchNorm2d(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=False)
        self.proj = nn.Conv2d(channels, channels, 1)
        hidden = max(8, int(channels * ffn_ratio))
        self.ffn = nn.Sequential(nn.BatchNorm2d(channels), nn.Conv2d(channels, hidden, 1), nn.GELU(),
                                 nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden), nn.GELU(),
                                 nn.Conv2d(hidden, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # python ints: static patch sizes; the batch stays -1 in every reshape (dynamic in an ONNX export)
        h, w = int(x.shape[-2]), int(x.shape[-1])
        nb, bc, heads = len(self.divisors), self.branch_ch, self.heads
        ch = bc // heads
        # q | k | v, each nb branches of bc channels: one view per branch (unbind: its backward is one stack)
        branches = self.qkv(self.norm1(x)).reshape(-1, 3, nb, bc, h, w).unbind(2)
        outs = []
        for qkv, d in zip(branches, self.divisors):
            ph, pw = patch_size(h, d), patch_size(w, d)
            if ph == h and pw == w:
                # one token: the softmax over a single key is 1, attention returns v (exactly)
                outs.append(qkv[:, 2])
                continue
            nh, nw = h // ph, w // pw
            # q, k and v into tokens in one copy: 3 × N × heads × T × (ch·ph·pw)
            t = qkv.reshape(-1, 3, heads, ch, nh, ph, nw, pw).permute(1, 0, 2, 4, 6, 3, 5, 7)
            t = t.reshape(3, -1, heads, nh * nw, ch * ph * pw)
            o = F.scaled_dot_product_attention(t[0], t[1], t[2])
            o = o.reshape(-1, heads, nh, nw, ch, ph, pw).permute(0, 1, 4, 2, 5, 3, 6)
            outs.append(o.reshape(-1, bc, h, w))
        x = x + self.proj(torch.cat(outs, dim=1))
        return x + self.ffn(x)
