"""The nearest-neighbour part of the image score eval.image_score=map_residual_knn.

The image score map_residual (s_m: the top-k mean of the head's map times the square root of the prototype distance
map) is combined with a training-free distance to normal, the PatchCore-style one of benchmarks/patchcore.py
(s_knn): each patch's L2 distance to its nearest normal training patch in a coreset memory, the distance map
upsampled bilinearly to the image size, smoothed with a Gaussian of σ = KNN_SIGMA, its maximum. The two are put on
one scale by the normal training images: score = z(log s_m) + w · z(log s_knn), each log standardised by the mean and
standard deviation of its values over the normal training images (`stats`), w = eval.knn_weight. s_m depends on
eval.topk and eval.sigma, so the statistics hold for the values they were made with (`settings`); scoring with
others is refused. Chosen on validation data (docs/experiments.md, round 13); the memory and its settings are the
baseline's.

The same memory also gives the anomaly map eval.anomaly_map=head_knn: (p + q · F(d)) / (1 + q), p the head's smoothed
map, d the distance map (upsampled, σ = KNN_SIGMA, as for s_knn), F the distribution function of d over the normal
training images' pixels (held out; `map_table`, MAP_TABLE quantiles), q the eval.knn_lift percentile of p over the
same pixels. The distance lifts a pixel by at most q, the head's own range on normal surface, and the map stays in
[0, 1] with the head's order above that range (docs/experiments.md, rounds 21 and 22).

`KnnScore` holds the memory (a PatchMemory of the last two feature scales, prnet.models.patch_memory), the four
statistics and the map's table and lift; all are buffers, so a checkpoint and an ONNX export carry them. Built empty,
it takes its memory's shape from the first state dict loaded into it; its statistics stay NaN (`is_calibrated` False)
until prnet.engine.knn_calibration fills them, after training.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from prnet.models.patch_memory import PatchMemory

MAP_TABLE = 4096  # quantiles of the normal training pixels' distance kept for F (a power of two: see map_cdf)
KNN_SIGMA = 4.0  # the baseline's smoothing of the distance map before its maximum is taken
EPS = 1e-8  # inside the logarithms and under the standard deviations
NOT_CALIBRATED = ("the model's nearest-neighbour memory (eval.image_score=map_residual_knn, eval.anomaly_map=head_knn) "
                  "is not made yet: it is made after the last epoch, so a checkpoint saved before training finished "
                  "has none; finish the run (train.resume=true), or score with eval.image_score=map_residual "
                  "eval.anomaly_map=head")


class ScoreStatistics:
    """For a module whose statistics standardise an image score made with some eval.topk and eval.sigma (its
    `settings` buffer: those two values; NaN until made) and that says whether they are made (`is_calibrated`)."""

    NAME = ""  # the module, in errors
    NOT_CALIBRATED = ""  # why it is not made yet, and what to do
    REMAKE = ""  # what makes the statistics again

    def made_for(self, topk: int, sigma: float) -> bool:
        """Whether the statistics were made with these eval.topk and eval.sigma."""
        return bool(self.settings[0] == float(topk) and torch.isclose(self.settings[1], torch.tensor(float(sigma))))

    def check_made_for(self, topk: int, sigma: float) -> None:
        """RuntimeError unless the statistics are made, and made for eval.topk `topk` and eval.sigma `sigma` (not
        checked while tracing: the export checks before it traces)."""
        if torch.jit.is_tracing():
            return
        if not self.is_calibrated:
            raise RuntimeError(f"{self.NAME}: {self.NOT_CALIBRATED}")
        if not self.made_for(topk, sigma):
            raise RuntimeError(f"{self.NAME}: its statistics were made with eval.topk={self.settings[0]:g}, "
                               f"eval.sigma={self.settings[1]:g}, scored now with {topk}, {sigma:g}: make them "
                               f"again ({self.REMAKE})")


class KnnScore(ScoreStatistics, nn.Module):
    """forward(feature maps of all scales, source=None) -> N×1×h×w raw L2 distance to the nearest memory patch.

    Buffers: `memory` (a PatchMemory; its `mean` is not used), `stats` (mean and std of log s_m, then of log s_knn,
    over the normal training images; NaN until calibrated), `settings` (the eval.topk and eval.sigma of s_m when
    they were made)."""

    NAME, NOT_CALIBRATED, REMAKE = "KnnScore", NOT_CALIBRATED, "prnet.engine.knn_calibration.attach_knn_score"

    def __init__(self, memory: Optional[PatchMemory] = None) -> None:
        super().__init__()
        self.memory = memory if memory is not None else PatchMemory()
        self.register_buffer("stats", torch.full((4,), math.nan))
        self.register_buffer("settings", torch.full((2,), math.nan))
        self.register_buffer("map_table", torch.full((MAP_TABLE,), math.nan))
        self.register_buffer("map_lift", torch.full((3,), math.nan))  # q, its percentile level, eval.sigma of p

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints made before the map's table existed load without it (not calibrated for head_knn)
        for name in ("map_table", "map_lift"):
            state_dict.setdefault(prefix + name, torch.full_like(getattr(self, name), math.nan))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def map_made_for(self, level: float, sigma: float) -> bool:
        """Whether the anomaly map's table and lift are made, for eval.knn_lift `level` and eval.sigma `sigma`."""
        return bool(torch.isfinite(self.map_table).all() and torch.isfinite(self.map_lift).all()
                    and torch.isclose(self.map_lift[1], torch.tensor(float(level)))
                    and torch.isclose(self.map_lift[2], torch.tensor(float(sigma))))

    def map_cdf(self, d: torch.Tensor) -> torch.Tensor:
        """F(d): the share of the table's quantiles at or below each value, by a binary search written with gathers
        and comparisons (torch.searchsorted has no ONNX export); float32 in [0, 1]."""
        table = self.map_table.to(d.device, torch.float32)
        flat = d.float().reshape(-1)
        idx = torch.zeros_like(flat, dtype=torch.long)
        step = MAP_TABLE // 2
        while step >= 1:  # the largest idx <= MAP_TABLE - 1 with table[idx - 1] <= value (or 0)
            probe = idx + step
            idx = torch.where(table[probe - 1] <= flat, probe, idx)
            step //= 2
        idx = idx + (table[idx] <= flat).long()  # MAP_TABLE when the value is at or above the last quantile
        return (idx.float() / MAP_TABLE).reshape(d.shape)

    def lift(self, p: torch.Tensor, d: torch.Tensor, level: float, sigma: float) -> torch.Tensor:
        """(p + q · F(d)) / (1 + q): the head's smoothed map p (N×1×H×W) lifted by the distance map d (the same
        shape, upsampled and smoothed with KNN_SIGMA) with the stored table; p made with eval.sigma `sigma`, q for
        eval.knn_lift `level` (RuntimeError otherwise)."""
        if not torch.jit.is_tracing() and not self.map_made_for(level, sigma):
            made = self.map_lift[1:].tolist()
            raise RuntimeError(f"KnnScore: the anomaly map head_knn needs its table made for eval.knn_lift={level:g}, "
                               f"eval.sigma={sigma:g} (made for {made}; NaN: not made): make it again "
                               f"(prnet.engine.knn_calibration.attach_knn_score)")
        q = self.map_lift[0].to(p.device, torch.float32)
        return (p.float() + q * self.map_cdf(d)) / (1.0 + q)

    @property
    def is_calibrated(self) -> bool:
        return bool(not self.memory.is_empty and torch.isfinite(self.stats).all() and (self.stats[[1, 3]] > 0).all())

    def forget(self) -> None:
        """Mark the statistics, the map table and the lift as not made (the head they were made for has changed)."""
        for buf in (self.stats, self.settings, self.map_table, self.map_lift):
            buf.fill_(math.nan)

    def forward(self, feats: Sequence[torch.Tensor], source: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.memory.model_distances(feats, source)

    def fuse(self, s_m: torch.Tensor, s_knn: torch.Tensor, weight: float, topk: int, sigma: float) -> torch.Tensor:
        """z(log s_m) + weight · z(log s_knn) with the stored statistics; s_m scored with eval.topk `topk` and
        eval.sigma `sigma`, the values the statistics were made with (RuntimeError otherwise)."""
        self.check_made_for(topk, sigma)
        st = self.stats.to(s_m.device)  # (calibration fuses the scores on the CPU, the statistics may be on a GPU)
        z_m = (torch.log(s_m.float() + EPS) - st[0]) / (st[1] + EPS)
        z_k = (torch.log(s_knn.float() + EPS) - st[2]) / (st[3] + EPS)
        return z_m + weight * z_k
