"""PRNet loss: focal loss plus smooth-L1 between the sigmoid map and the mask."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prnet.config import LossConfig


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float | None = None,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean binary focal loss over pixels, from logits, in float32 (log-sigmoid: stable for any logit).

    FL = −[α y (1−p)^γ log p + (1−α)(1−y) p^γ log(1−p)], p = sigmoid(logit); α=None weighs both classes 1.
    `weight` (broadcast to the pixels): each pixel's loss times it before the mean; None: all 1.
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
    loss = -(pos + neg)
    return (loss if weight is None else loss * weight).mean()


def area_weights(mask: torch.Tensor, power: float) -> torch.Tensor:
    """Per-pixel weights (N×1×H×W) that even out the defects' sizes (loss.area_balance): the anomalous pixels of
    sample i weigh w_i = c · (1 / A_i)^power, A_i its anomalous area (the mask's sum), c such that the batch's
    anomalous pixels weigh as much in all as before (Σ w_i A_i = Σ A_i); normal pixels 1 (a soft mask value y:
    1 + y (w_i − 1)).
    power 1: every defect weighs the same whatever its size; 0: the plain per-pixel mean."""
    y = mask.float()
    area = y.flatten(1).sum(dim=1)
    has = area > 0
    w = torch.ones_like(area)
    if bool(has.any()):
        raw = area[has].pow(-power)
        w[has] = raw * area[has].sum() / (raw * area[has]).sum()
    return 1.0 + y * (w.view(-1, 1, 1, 1) - 1.0)


class PRNetLoss(nn.Module):
    """forward(logits N×1×H×W, mask N×1×H×W in {0,1}) -> (total, {"focal", "smooth_l1"});
    total = smooth_l1 + focal_weight · focal, all computed in float32; with loss.area_balance > 0 both are means of
    pixels weighed by `area_weights`."""

    def __init__(self, loss_cfg: LossConfig) -> None:
        super().__init__()
        self.focal_weight = float(loss_cfg.focal_weight)
        self.gamma = float(loss_cfg.focal_gamma)
        self.alpha = None if loss_cfg.focal_alpha is None else float(loss_cfg.focal_alpha)
        self.area_balance = float(loss_cfg.area_balance)

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if logits.shape != mask.shape:
            raise ValueError(f"PRNetLoss: logits {tuple(logits.shape)} and mask {tuple(mask.shape)} differ")
        with torch.autocast(logits.device.type, enabled=False):
            x = logits.float()
            y = mask.float()
            if self.area_balance > 0:
                w = area_weights(y, self.area_balance)
                focal = focal_loss(x, y, self.gamma, self.alpha, w)
                smooth = (F.smooth_l1_loss(torch.sigmoid(x), y, reduction="none") * w).mean()
            else:
                focal = focal_loss(x, y, self.gamma, self.alpha)
                smooth = F.smooth_l1_loss(torch.sigmoid(x), y)
            total = smooth + self.focal_weight * focal
        return total, {"focal": focal.detach(), "smooth_l1": smooth.detach()}
