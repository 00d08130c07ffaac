"""PRNet: output shapes, frozen backbone under training, gradients, overfitting one batch, attention blocks."""
import pytest
import torch

from prnet.config import Config
from prnet.losses import PRNetLoss
from prnet.models.attention import MultiSizeSelfAttention, patch_size
from prnet.models.backbone import Backbone
from prnet.models.fusion import MultiScaleFusion
from prnet.models.prnet import PRNet, build_model, count_trainable
from prnet.engine.prototypes import build_prototypes


def _cfg(backbone="tf_efficientnet_lite0", widths=(16, 32, 64)):
    cfg = Config()
    cfg.model.backbone, cfg.model.backbone_weights = backbone, "none"
    cfg.model.head_widths = list(widths)
    cfg.data.image_size = 64
    return cfg


def _model(backbone="tf_efficientnet_lite0", hw=(64, 64), widths=(16, 32, 64)):
    cfg = _cfg(backbone, widths)
    bb = Backbone(backbone, "none")
    images = torch.rand(10, 3, *hw, generator=torch.Generator().manual_seed(0))
    bank = build_prototypes(bb, [images], "cpu")
    return build_model(cfg, bank, backbone=bb), cfg


@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite0", "resnet18"])
@pytest.mark.parametrize("hw", [(64, 64), (64, 96)])
def test_output_shape(backbone, hw):
    model, _ = _model(backbone, hw)
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, *hw))
    assert out.shape == (2, 1, *hw) and torch.isfinite(out).all()


def test_backbone_frozen_while_training_and_every_head_param_gets_grad():
    model, cfg = _model("resnet18")
    model.train()
    assert not model.backbone.training
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    bank_before = [p.clone() for p in model.bank.prototypes]
    opt = torch.optim.SGD(model.head_parameters(), lr=0.1)
    assert len(model.head_parameters()) == sum(1 for p in model.parameters() if p.requires_grad)
    assert count_trainable(model) == sum(p.numel() for p in model.head_parameters())
    x = torch.rand(2, 3, 64, 64)
    mask = (torch.rand(2, 1, 64, 64) > 0.8).float()
    total, _ = PRNetLoss(cfg.loss)(model(x), mask)
    total.backward()
    for name, p in model.named_parameters():
        if name.startswith("backbone."):
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    opt.step()
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k
    for a, b in zip(bank_before, model.bank.prototypes):
        assert torch.equal(a, b)


def test_overfits_one_batch():
    torch.manual_seed(0)
    model, cfg = _model("resnet18")
    model.train()
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(2, 1, 64, 64)
    mask[0, :, 10:30, 20:40] = 1
    mask[1, :, 40:60, 5:25] = 1
    x = 0.3 * torch.rand(2, 3, 64, 64, generator=g) + 0.6 * mask  # bright synthetic defects
    loss_fn = PRNetLoss(cfg.loss)
    opt = torch.optim.Adam(model.head_parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        total, _ = loss_fn(model(x), mask)
        total.backward()
        opt.step()
        losses.append(total.item())
    assert min(losses[-5:]) < losses[0] / 10, losses


def test_clean_source_images_give_the_bank_their_features_and_the_trainer_passes_the_synthetic_rows():
    """PRNet.forward(clean=(rows, images)) hands the bank the backbone's features of those clean images (exact
    held-out residuals); train_step passes the batch's synthetic rows and their clean images, and nothing without
    them."""
    from types import SimpleNamespace
    from prnet.engine.trainer import train_step
    model, cfg = _model("resnet18")
    model.eval()
    g = torch.Generator().manual_seed(2)
    clean = torch.rand(10, 3, 64, 64, generator=g)
    source = torch.tensor([3, 7, 1, 4])
    x = clean[source].clone()
    x[[0, 2], :, 8:24, 8:24] = torch.rand(2, 3, 16, 16, generator=g)  # two changed images, two untouched
    rows = torch.tensor([0, 2])
    with torch.no_grad():
        got = model(x, source, clean=(rows, clean[source[rows]]))
        feats, bottleneck = model.backbone(x)
        res = model.bank(feats, source, clean=(rows, model.backbone(clean[source[rows]])[0]))
        want = model.head(feats, res, bottleneck, (64, 64))
        scaled = model.bank(feats, source)
    assert torch.allclose(got, want, atol=1e-6)
    for r, s in zip(res, scaled):  # the changed images' residuals differ, the untouched ones' do not
        assert (r[[0, 2]] - s[[0, 2]]).abs().max() > 1e-3 * s.abs().max() and torch.equal(r[[1, 3]], s[[1, 3]])
    seen = []

    def train_model(images, src, clean=None):
        seen.append((images, src, clean))
        return weight.expand(images.shape[0], 1, 4, 4)

    weight = torch.zeros(1, 1, 4, 4, requires_grad=True)
    opt = torch.optim.SGD([weight], lr=0.1)
    run = SimpleNamespace(train_model=train_model, criterion=lambda logits, m: (logits.mean(), {}), optimizer=opt,
                          scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0), average=None)
    cfg.train.channels_last = False
    batch = {"image": torch.rand(4, 3, 4, 4), "mask": torch.zeros(4, 1, 4, 4), "label": torch.tensor([0, 1, 0, 1]),
             "source": torch.tensor([5, 2, 6, 0]), "clean": torch.rand(4, 3, 4, 4)}
    train_step(cfg, run, batch, torch.device("cpu"))
    _, src, passed = seen[-1]
    assert torch.equal(src, batch["source"]) and torch.equal(passed[0], torch.tensor([1, 3]))
    assert torch.equal(passed[1], batch["clean"][[1, 3]])
    train_step(cfg, run, {k: v for k, v in batch.items() if k != "clean"}, torch.device("cpu"))
    assert seen[-1][2] is None
    cfg.prototypes.leave_one_out = False
    train_step(cfg, run, batch, torch.device("cpu"))
    assert seen[-1][1] is None and seen[-1][2] is None


def test_checkpoint_round_trip_without_bank():
    model, cfg = _model("tf_efficientnet_lite0")
    model.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    other = PRNet(cfg.model, None, backbone=Backbone("tf_efficientnet_lite0", "none")).eval()
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(other(x), ref, atol=1e-5)


def test_patch_size_rule():
    assert patch_size(16, 4) == 4 and patch_size(12, 8) == 1 and patch_size(20, 8) == 2 and patch_size(3, 1) == 3
    assert patch_size(14, 4) == 2  # 14 // 4 = 3 does not divide 14: largest divisor <= 3


def test_attention_non_square_and_token_mixing():
    torch.manual_seed(0)
    att = MultiSizeSelfAttention(16, (1, 2, 4, 8)).eval()
    x = torch.randn(2, 16, 12, 20)
    y = att(x)
    assert y.shape == x.shape
    # attention mixes positions: changing one corner changes the output far away
    x2 = x.clone()
    x2[:, :, 0, 0] += 5
    assert not torch.allclose(att(x2)[:, :, -1, -1], y[:, :, -1, -1])


def test_fusion_shapes():
    fus = MultiScaleFusion([8, 16, 32])
    xs = [torch.randn(1, 8, 16, 24), torch.randn(1, 16, 8, 12), torch.randn(1, 32, 4, 6)]
    assert [tuple(o.shape) for o in fus(xs)] == [tuple(x.shape) for x in xs]


def test_onnx_export(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model, _ = _model("tf_efficientnet_lite0", hw=(64, 96), widths=(16, 32, 64))
    model.eval()
    x = torch.rand(1, 3, 64, 96)
    path = str(tmp_path / "m.onnx")
    torch.onnx.export(model, (x,), path, opset_version=17, input_names=["image"], output_names=["logits"],
                      dynamo=False)
    onnx.checker.check_model(onnx.load(path))
    out = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        assert abs(out - model(x).numpy()).max() < 1e-3


def _reference_attention_forward(att: MultiSizeSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """MultiSizeSelfAttention.forward as first written (per-branch q/k/v reshapes, SDPA for every branch): the
    reference the current forward must equal."""
    def tokens(t, ph, pw):
        n, c, h, w = t.shape
        t = t.reshape(n, att.heads, c // att.heads, h // ph, ph, w // pw, pw).permute(0, 1, 3, 5, 2, 4, 6)
        return t.reshape(n, att.heads, (h // ph) * (w // pw), (c // att.heads) * ph * pw)

    def fold(t, c, h, w, ph, pw):
        t = t.reshape(t.shape[0], att.heads, h // ph, w // pw, c // att.heads, ph, pw).permute(0, 1, 4, 2, 5, 3, 6)
        return t.reshape(t.shape[0], c, h, w)

    h, w = x.shape[-2:]
    q, k, v = att.qkv(att.norm1(x)).chunk(3, dim=1)
    outs = []
    for b, d in enumerate(att.divisors):
        sl = slice(b * att.branch_ch, (b + 1) * att.branch_ch)
        ph, pw = patch_size(h, d), patch_size(w, d)
        o = torch.nn.functional.scaled_dot_product_attention(*(tokens(t[:, sl], ph, pw) for t in (q, k, v)))
        outs.append(fold(o, att.branch_ch, h, w, ph, pw))
    x = x + att.proj(torch.cat(outs, dim=1))
    return x + att.ffn(x)


@pytest.mark.parametrize("channels, divisors, heads, hw", [
    (16, (1, 2, 4, 8), 1, (16, 16)), (32, (1, 2, 4, 8), 2, (12, 20)), (24, (2, 3, 5), 1, (15, 10)),
    (8, (1, 1), 2, (8, 8))])
def test_attention_equals_the_reference_forward(channels, divisors, heads, hw):
    torch.manual_seed(0)
    att = MultiSizeSelfAttention(channels, divisors, heads=heads).train()
    with torch.no_grad():
        for p in att.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    x = torch.randn(3, channels, *hw, requires_grad=True)
    for channels_last in (False, True):
        xi = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        y, ref = att(xi), _reference_attention_forward(att, xi)
        torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
        g, g_ref = torch.autograd.grad(y.square().sum(), [x] + list(att.parameters())), \
            torch.autograd.grad(ref.square().sum(), [x] + list(att.parameters()))
        for a, b in zip(g, g_ref):  # gradients in the hundreds: float32 noise relative to the largest
            torch.testing.assert_close(a, b, atol=1e-6 * float(b.abs().max()), rtol=1e-5)


def test_attention_onnx_export_keeps_the_batch_dynamic(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    att = MultiSizeSelfAttention(16, (1, 2, 4, 8), heads=2).eval()
    path = str(tmp_path / "att.onnx")
    torch.onnx.export(att, (torch.randn(1, 16, 16, 12),), path, opset_version=17, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
    onnx.checker.check_model(onnx.load(path))
    x = torch.randn(3, 16, 16, 12)
    out = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        assert abs(out - att(x).numpy()).max() < 1e-4
