"""U-Net-like decoder from the bottleneck stage and the fused scales back to full resolution."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from prnet.models.fusion import conv_bn_relu


class Decoder(nn.Module):
    """Bottleneck (stride 32) → 1×1 → up + fused scale 3 → up + scale 2 → up + scale 1 (stride 4)
    → two ×2 upsampling conv blocks → 1×1 conv → 1-channel logits at the input resolution."""

    def __init__(self, widths: Sequence[int], bottleneck_channels: int) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        self.bottleneck = nn.Sequential(nn.Conv2d(bottleneck_channels, widths[-1], 1, bias=False),
                                        nn.BatchNorm2d(widths[-1]), nn.ReLU(inplace=True))
        blocks = []
        cin = widths[-1]
        for w in reversed(widths):  # coarse to fine skips
            blocks.append(nn.Sequential(conv_bn_relu(cin + w, w), conv_bn_relu(w, w)))
            cin = w
        self.blocks = nn.ModuleList(blocks)
        w1 = max(8, widths[0] // 2)
        w2 = max(8, widths[0] // 4)
        self.up1 = conv_bn_relu(cin, w1)
        self.up2 = conv_bn_relu(w1, w2)
        self.head = nn.Conv2d(w2, 1, 1)
        # Prior of a rare anomalous pixel (RetinaNet-style focal-loss init): sigmoid(bias) = 0.01, so training
        # does not start by spending its first steps pushing every background pixel down from 0.5.
        nn.init.constant_(self.head.bias, -math.log((1 - 0.01) / 0.01))

    def forward(self, bottleneck: torch.Tensor, skips: Sequence[torch.Tensor], out_size: tuple[int, int]) \
            -> torch.Tensor:
        """skips: fused maps fine to coarse; out_size: (H, W) of the input image."""
        x = self.bottleneck(bottleneck)
        for block, skip in zip(self.blocks, reversed(list(skips))):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        h, w = x.shape[-2:]
        x = self.up1(F.interpolate(x, size=(h * 2, w * 2), mode="bilinear", align_corners=False))
        x = self.up2(F.interpolate(x, size=tuple(out_size), mode="bilinear", align_corners=False))
        return self.head(x)
