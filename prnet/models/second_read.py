"""The head's second read of each image at another size: a part of the image score (eval.second_read).

The head is trained at data.image_size. Where the images are far from that aspect (BSData's shots are 2.5:1, read at
256×256), small defects shrink below what the features resolve. The second read gives the same trained head the image
resized to another size (eval.second_read; `auto`: prnet.engine.second_read.resolve_second_read) with a prototype bank
built at that size from the same normal training images: the prototypes are maps of one size, while the head's
convolutions and its attention, whose patches are fractions of the map, read any size. Its score s_w is map_residual's
at that size (the top-k mean of the head's map times the square root of the prototype distance map) and joins the
image score standardised over the normal training images, each held out of its own cluster as for s_m:

    score = z(log s_m) + knn_weight · z(log s_knn) + second_weight · z(log s_w)

Chosen on validation data (docs/experiments.md, round 29). The anomaly map stays the first read's.

`SecondRead` holds the bank (its prototypes and residual means are buffers, so a checkpoint and an ONNX export carry
them), the read's size and the two statistics, NaN until prnet.engine.second_read.calibrate_second_read makes them
after training. Built empty, its bank takes its shapes from the first state dict loaded.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from prnet.models.knn_score import EPS, ScoreStatistics
from prnet.models.prototypes import PrototypeBank

NOT_CALIBRATED = ("the model's second read (eval.second_read) is not made yet: it is made after the last epoch, so a "
                  "checkpoint saved before training finished has none; finish the run (train.resume=true)")


class SecondRead(ScoreStatistics, nn.Module):
    """Buffers: the bank's (`bank.*`), `size` (H, W of the read), `stats` (mean and std of log s_w over the normal
    training images), `settings` (the eval.topk and eval.sigma they were made with); NaN until calibrated."""

    NAME, NOT_CALIBRATED, REMAKE = "SecondRead", NOT_CALIBRATED, "prnet.engine.second_read.attach_second_read"

    def __init__(self, bank: Optional[PrototypeBank] = None, num_scales: int = 3, residual: str = "squared",
                 size: Optional[tuple[int, int]] = None) -> None:
        super().__init__()
        self.bank = bank if bank is not None else PrototypeBank(None, num_scales=num_scales, residual=residual)
        self.register_buffer("size", torch.tensor([math.nan, math.nan]) if size is None
                             else torch.tensor([float(size[0]), float(size[1])]))
        self.register_buffer("stats", torch.full((2,), math.nan))
        self.register_buffer("settings", torch.full((2,), math.nan))

    @property
    def hw(self) -> tuple[int, int]:
        """(H, W) of the read; ValueError when the size is not set."""
        if not torch.isfinite(self.size).all():
            raise ValueError(f"SecondRead: {NOT_CALIBRATED}")
        return int(self.size[0]), int(self.size[1])

    @property
    def is_calibrated(self) -> bool:
        return bool(not self.bank.is_empty and self.bank.has_residual_mean and torch.isfinite(self.size).all()
                     and torch.isfinite(self.stats).all() and self.stats[1] > 0)

    def forget(self) -> None:
        """Mark the statistics as not made (the head they were made for has changed); the bank stays."""
        for buf in (self.stats, self.settings):
            buf.fill_(math.nan)

    def z(self, s_w: torch.Tensor, topk: int, sigma: float) -> torch.Tensor:
        """z(log s_w) with the stored statistics; s_w scored with eval.topk `topk` and eval.sigma `sigma`, the values
        they were made with (RuntimeError otherwise)."""
        self.check_made_for(topk, sigma)
        st = self.stats.to(s_w.device)
        return (torch.log(s_w.float() + EPS) - st[0]) / (st[1] + EPS)
