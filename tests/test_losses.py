"""PRNetLoss: focal loss against the direct formula, total, bf16 autocast."""
import pytest
import torch

from prnet.config import LossConfig
from prnet.losses import PRNetLoss, focal_loss


def _direct_focal(x, y, gamma, alpha):
    p = torch.sigmoid(x.double())
    y = y.double()
    a_pos = 1.0 if alpha is None else alpha
    a_neg = 1.0 if alpha is None else 1 - alpha
    fl = -(a_pos * y * (1 - p) ** gamma * torch.log(p) + a_neg * (1 - y) * p ** gamma * torch.log(1 - p))
    return fl.mean()


@pytest.mark.parametrize("alpha", [None, 0.75])
def test_focal_matches_formula(alpha):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 16, 16, generator=g) * 3
    y = (torch.rand(2, 1, 16, 16, generator=g) > 0.7).float()
    got = focal_loss(x, y, gamma=4.0, alpha=alpha)
    assert got.item() == pytest.approx(_direct_focal(x, y, 4.0, alpha).item(), rel=1e-5)


def test_focal_stable_for_extreme_logits():
    x = torch.tensor([[-200.0, 200.0]], requires_grad=True)
    y = torch.tensor([[1.0, 0.0]])
    loss = focal_loss(x, y, gamma=4.0)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 1.0 and torch.isfinite(x.grad).all()


def test_total_and_parts():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 8, 8, generator=g)
    y = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    total, parts = PRNetLoss(LossConfig())(x, y)
    smooth = torch.nn.functional.smooth_l1_loss(torch.sigmoid(x), y)
    assert parts["smooth_l1"].item() == pytest.approx(smooth.item(), rel=1e-6)
    assert total.item() == pytest.approx(smooth.item() + 5.0 * parts["focal"].item(), rel=1e-6)
    with pytest.raises(ValueError, match="differ"):
        PRNetLoss(LossConfig())(x, y[:, :, :4])


def test_bf16_autocast_matches_float32():
    g = torch.Generator().manual_seed(2)
    conv = torch.nn.Conv2d(3, 1, 3, padding=1)
    inp = torch.randn(2, 3, 16, 16, generator=g)
    y = (torch.rand(2, 1, 16, 16, generator=g) > 0.8).float()
    loss = PRNetLoss(LossConfig())
    ref, _ = loss(conv(inp), y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(inp)
        assert logits.dtype == torch.bfloat16
        got, _ = loss(logits, y)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), rel=2e-2)
