"""Multi-scale fusion: every scale receives every other scale resampled to its size, then a 3×3 conv block."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    """k×k conv (same padding, no bias) - BatchNorm - ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class MultiScaleFusion(nn.Module):
    """Scales ordered fine to coarse, with channel `widths`; forward(list of maps) -> list of maps.

    Scale i gets Σ_j≠i conv1×1_ij(resample(x_j)) + x_i, then conv3×3-BN-ReLU. Coarser maps are projected
    by the 1×1 conv first and upsampled bilinearly (cheaper); finer maps are average-pooled by the integer
    size ratio first, then projected.
    """

    def __init__(self, widths: Sequence[int], strides: Sequence[int] | None = None) -> None:
        super().__init__()
        self.widths = [int(w) for w in widths]
        n = len(self.widths)
        # Feature strides of the scales (default 4, 8, 16, ...): fixed pooling factors keep ONNX export static.
        self.strides = [int(s) for s in strides] if strides is not None else [4 * 2 ** i for i in range(n)]
        if len(self.strides) != n:
            raise ValueError(f"MultiScaleFusion: {len(self.strides)} strides for {n} widths")
        self.cross = nn.ModuleDict({
            f"{j}to{i}": nn.Conv2d(self.widths[j], self.widths[i], 1, bias=False)
            for i in range(n) for j in range(n) if i != j})
        self.out = nn.ModuleList(conv_bn_relu(w, w) for w in self.widths)

    def forward(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(xs) != len(self.widths):
            raise ValueError(f"MultiScaleFusion: {len(xs)} maps for {len(self.widths)} scales")
        outs = []
        for i, xi in enumerate(xs):
            acc = xi
            h, w = xi.shape[-2:]
            for j, xj in enumerate(xs):
                if j == i:
                    continue
                conv = self.cross[f"{j}to{i}"]
                if j < i:  # finer source: pool down by the stride ratio
                    k = max(1, self.strides[i] // self.strides[j])
                    y = conv(F.avg_pool2d(xj, k, k, ceil_mode=True))
                    if y.shape[-2:] != xi.shape[-2:]:  # odd sizes: match the target exactly
                        y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
                else:  # coarser source: project, then upsample
                    y = F.interpolate(conv(xj), size=(h, w), mode="bilinear", align_corners=False)
                acc = acc + y
            outs.append(self.out[i](acc))
        return outs
