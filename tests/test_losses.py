"""PRNetLoss: focal loss against the direct formula, total, bf16 autocast, the area-balanced weights."""
import pytest
import torch

from prnet.config import LossConfig
from prnet.losses import PRNetLoss, area_weights, focal_loss


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


def _masks_of_three_sizes():
    """A batch of four masks: defects of 4, 16 and 64 pixels and one normal sample."""
    y = torch.zeros(4, 1, 16, 16)
    y[0, 0, :2, :2] = 1
    y[1, 0, 4:8, 4:8] = 1
    y[2, 0, 8:16, 8:16] = 1
    return y


@pytest.mark.parametrize("power", [0.5, 1.0])
def test_area_weights_even_out_defect_sizes(power):
    y = _masks_of_three_sizes()
    w = area_weights(y, power)
    assert torch.equal(w[y == 0], torch.ones_like(w[y == 0]))  # normal pixels, the normal sample's included
    per_pixel = [float(w[i][y[i] > 0].unique()) for i in range(3)]  # one weight per defect
    area = [4.0, 16.0, 64.0]
    assert sum(p * a for p, a in zip(per_pixel, area)) == pytest.approx(sum(area), rel=1e-6)
    totals = [p * a for p, a in zip(per_pixel, area)]  # each defect's pixels' total weight ∝ area^(1 - power)
    assert totals[1] / totals[0] == pytest.approx(4.0 ** (1 - power), rel=1e-5)
    assert totals[2] / totals[1] == pytest.approx(4.0 ** (1 - power), rel=1e-5)
    assert per_pixel[0] > per_pixel[1] > per_pixel[2]
    assert torch.equal(area_weights(torch.zeros(2, 1, 4, 4), power), torch.ones(2, 1, 4, 4))


def test_area_balanced_loss_is_the_weighted_mean():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 1, 16, 16, generator=g) * 2
    y = _masks_of_three_sizes()
    total, parts = PRNetLoss(LossConfig(area_balance=1.0))(x, y)
    w = area_weights(y, 1.0).double()
    p = torch.sigmoid(x.double())
    fl = -(y * (1 - p) ** 2 * torch.log(p) + (1 - y) * p ** 2 * torch.log(1 - p))
    smooth = torch.nn.functional.smooth_l1_loss(p, y.double(), reduction="none")
    assert parts["focal"].item() == pytest.approx((fl * w).mean().item(), rel=1e-5)
    assert parts["smooth_l1"].item() == pytest.approx((smooth * w).mean().item(), rel=1e-5)
    assert total.item() == pytest.approx(parts["smooth_l1"].item() + 5.0 * parts["focal"].item(), rel=1e-6)
    # the smallest defect's share of the gradient grows against the plain mean
    shares = []
    for balance in (0.0, 1.0):
        xg = x.clone().requires_grad_(True)
        PRNetLoss(LossConfig(area_balance=balance))(xg, y)[0].backward()
        grad = xg.grad.abs()
        shares.append(float(grad[0][y[0] > 0].sum() / grad[y > 0].sum()))
    assert shares[1] > 2 * shares[0]
    plain, _ = PRNetLoss(LossConfig())(x, y)
    off, _ = PRNetLoss(LossConfig(area_balance=0.0))(x, y)
    assert torch.equal(plain, off)
