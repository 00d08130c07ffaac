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
    scaled_dot_product_attention across the tokens and folds the result back. Branch outputs are
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

    def _tokens(self, t: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
        """N×c×h×w -> N×heads×T×(c/heads·ph·pw)."""
        n, c, h, w = t.shape
        nh, nw = h // ph, w // pw
        t = t.reshape(n, self.heads, c // self.heads, nh, ph, nw, pw)
        t = t.permute(0, 1, 3, 5, 2, 4, 6)
        return t.reshape(n, self.heads, nh * nw, (c // self.heads) * ph * pw)

    def _fold(self, t: torch.Tensor, c: int, h: int, w: int, ph: int, pw: int) -> torch.Tensor:
        n = t.shape[0]
        nh, nw = h // ph, w // pw
        t = t.reshape(n, self.heads, nh, nw, c // self.heads, ph, pw)
        t = t.permute(0, 1, 4, 2, 5, 3, 6)
        return t.reshape(n, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])  # python ints: patch sizes are static (ONNX export)
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=1)
        outs = []
        for b, d in enumerate(self.divisors):
            sl = slice(b * self.branch_ch, (b + 1) * self.branch_ch)
            ph, pw = patch_size(h, d), patch_size(w, d)
            qt, kt, vt = (self._tokens(t[:, sl], ph, pw) for t in (q, k, v))
            o = F.scaled_dot_product_attention(qt, kt, vt)
            outs.append(self._fold(o, self.branch_ch, h, w, ph, pw))
        x = x + self.proj(torch.cat(outs, dim=1))
        return x + self.ffn(x)
