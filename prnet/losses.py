"""PRNet loss: focal loss plus smooth-L1 between the sigmoid map and the mask."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prnet.config import LossConfig


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float | None = None) \
        -> torch.Tensor:
    """Mean binary focal loss over pixels, from logits, in float32 (log-sigmoid: stable for any logit).

    FL = −[α y (1−p)^γ log p + (1−α)(1−y) p^γ log(1−p)], p = sigmoid(logit); α=None weighs both classes 1.
    """
    x = logits.float()
    y = target.float()
    log_p = F.logsigmoid(x)
    log_q = F.logsigmoid(-x)  # log(1 − p)
    p = log_p.exp()
    q = log_q.exp()
    pos = y * q.pow(gamma) * log_p
    neg = (1.0 - y) * p.pow(gamma) * log_q
    if alpha is not None:
        pos = alpha * pos
        neg = (1.0 - alpha) * neg
    return -(pos + neg).mean()


class PRNetLoss(nn.Module):
    """forward(logits N×1×H×W, mask N×1×H×W in {0,1}) -> (total, {"focal", "smooth_l1"});
    total = smooth_l1 + focal_weight · focal, all computed in float32."""

    def __init__(self, loss_cfg: LossConfig) -> None:
        super().__init__()
        self.focal_weight = float(loss_cfg.focal_weight)
        self.gamma = float(loss_cfg.focal_gamma)
        self.alpha = None if loss_cfg.focal_alpha is None else float(loss_cfg.focal_alpha)

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if logits.shape != mask.shape:
            raise ValueError(f"PRNetLoss: logits {tuple(logits.shape)} and mask {tuple(mask.shape)} differ")
        with torch.autocast(logits.device.type, enabled=False):
            x = logits.float()
            y = mask.float()
            focal = focal_loss(x, y, self.gamma, self.alpha)
            smooth = F.smooth_l1_loss(torch.sigmoid(x), y)
            total = smooth + self.focal_weight * focal
        return total, {"focal": focal.detach(), "smooth_l1": smooth.detach()}
