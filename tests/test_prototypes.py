"""Prototype bank: nearest lookup, k-means, save/load with metadata checks, checkpoint round trip."""
import pytest
import torch

from prnet.config import Config
from prnet.models.prototypes import (PrototypeBank, PrototypeMismatchError, build_prototypes, expected_meta,
                                     inertia, kmeans_pp, load_prototypes, num_prototypes, prototype_path,
                                     save_prototypes)
from prnet.utils import torch_generator


def _bank(seed=0, residual="squared"):
    g = torch.Generator().manual_seed(seed)
    return PrototypeBank([torch.randn(5, 4, 3, 2, generator=g), torch.randn(3, 6, 2, 2, generator=g)],
                         {"backbone": "resnet18"}, residual=residual)


@pytest.mark.parametrize("residual", ["squared", "abs"])
def test_nearest_and_residual_match_brute_force(residual):
    bank = _bank(residual=residual)
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(7, 4, 3, 2, generator=g), torch.randn(7, 6, 2, 2, generator=g)]
    res = bank(feats)
    for f, p, r in zip(feats, bank.prototypes, res):
        for n in range(f.shape[0]):
            d = [float(((f[n] - p[k]) ** 2).sum()) for k in range(p.shape[0])]
            best = p[min(range(len(d)), key=d.__getitem__)]
            want = (f[n] - best) ** 2 if residual == "squared" else (f[n] - best).abs()
            assert torch.allclose(r[n], want, atol=1e-5)


def test_kmeans_deterministic_and_improves_inertia():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(40, 16, generator=g) + 6 * torch.randn(1, 16, generator=g) for _ in range(4)])
    a = kmeans_pp(x, 4, iters=20, generator=torch_generator(3))
    b = kmeans_pp(x, 4, iters=20, generator=torch_generator(3))
    assert torch.equal(a, b)
    init = kmeans_pp(x, 4, iters=0, generator=torch_generator(3))
    assert inertia(x, a) < inertia(x, init)
    true_means = x.view(4, 40, 16).mean(1)
    assert inertia(x, a) <= inertia(x, true_means) * (1 + 1e-4)  # 4 clear clusters found
    assert num_prototypes(762, 0.1) == 76 and num_prototypes(3, 0.1) == 1
    with pytest.raises(ValueError, match="k=5"):
        kmeans_pp(x[:3], 5)


def test_build_from_batches_and_save_load(tmp_path):
    from prnet.models.backbone import Backbone
    cfg = Config()
    cfg.model.backbone, cfg.model.backbone_weights, cfg.data.image_size = "resnet18", "none", 64
    bb = Backbone("resnet18", "none")
    images = [torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    meta = expected_meta(cfg, "demo")
    bank = build_prototypes(bb, images, cfg, "cpu", meta=meta)
    assert [tuple(p.shape) for p in bank.prototypes] == [(1, 64, 16, 16), (1, 128, 8, 8), (1, 256, 4, 4)]
    assert bank.meta["num_images"] == 12 and bank.meta["k"] == [1, 1, 1]
    path = str(tmp_path / "p.pt")
    save_prototypes(bank, path)
    loaded = load_prototypes(path, meta)
    for a, b in zip(bank.prototypes, loaded.prototypes):
        assert torch.equal(a, b)
    assert loaded.meta["image_size"] == [64, 64]
    assert prototype_path(cfg, "demo").endswith("resnet18_64x64/demo.pt")


@pytest.mark.parametrize("field,value", [("backbone", "resnet50"), ("stages", [2, 3]),
                                         ("image_size", [128, 128])])
def test_metadata_mismatch_names_field(tmp_path, field, value):
    cfg = Config()
    meta = expected_meta(cfg, "bottle")
    bank = _bank()
    bank.meta.update(meta)
    path = str(tmp_path / "p.pt")
    save_prototypes(bank, path)
    with pytest.raises(PrototypeMismatchError, match=field):
        load_prototypes(path, {**meta, field: value})


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(RuntimeError, match="bad.pt"):
        load_prototypes(str(bad))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_prototypes(str(tmp_path / "missing.pt"))


def test_empty_bank_takes_shapes_from_state_dict():
    src = _bank(seed=5)
    dst = PrototypeBank(None, num_scales=2)
    with pytest.raises(RuntimeError, match="no prototypes"):
        dst([torch.zeros(1, 4, 3, 2), torch.zeros(1, 6, 2, 2)])
    dst.load_state_dict(src.state_dict())
    assert torch.equal(dst.proto_1, src.proto_1)
