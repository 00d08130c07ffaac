"""Prototype bank: nearest lookup, k-means, save/load with metadata checks, checkpoint round trip."""
import pytest
import torch

from prnet.config import Config
from prnet.models.prototypes import (PrototypeBank, PrototypeMismatchError, build_prototypes, expected_meta,
                                     inertia, kmeans, kmeans_pp, load_prototypes, num_prototypes, prototype_path,
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
    init = x[torch.randperm(160, generator=torch_generator(4))[:4]]  # 4 random points
    assert inertia(x, a) < inertia(x, init)
    centers, assign = kmeans(x, 4, iters=0, generator=torch_generator(3))  # iters=0 still makes centers means
    for j in assign.unique():
        assert torch.allclose(centers[j], x[assign == j].mean(0), atol=1e-5)
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


# ------------------------------------------------------------------------------ held-out (leave-one-out) residuals
def _clustered_bank(residual="squared", n=30, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.randn(n - 1, 2, 3, 3, generator=g), 9 + torch.randn(1, 2, 3, 3, generator=g)])  # last: alone
    centers, assign = kmeans(x.reshape(n, -1), k, 50, generator=torch_generator(1))
    return x, PrototypeBank([centers.reshape(k, 2, 3, 3)], residual=residual, assignments=[assign]), assign


@pytest.mark.parametrize("residual", ["squared", "abs"])
def test_held_out_residual_equals_the_bank_rebuilt_without_the_image(residual):
    x, bank, assign = _clustered_bank(residual)
    n, k = x.shape[0], bank.proto_0.shape[0]
    flat = x.reshape(n, -1)
    counts = torch.bincount(assign, minlength=k)
    assert counts.min() >= 1 and (counts == 1).any() and (counts > 2).any()  # singletons and real clusters
    for j in range(k):  # kmeans returns centers that are the means of their clusters
        assert torch.allclose(bank.proto_0[j].reshape(-1), flat[assign == j].mean(0), atol=1e-5)
    held = bank([x], torch.arange(n))[0]
    for i in range(n):
        keep = torch.ones(n, dtype=torch.bool)
        keep[i] = False
        means = torch.stack([flat[keep & (assign == j)].mean(0) for j in range(k) if (keep & (assign == j)).any()])
        best = means[((flat[i] - means) ** 2).sum(1).argmin()]
        want = (flat[i] - best) ** 2 if residual == "squared" else (flat[i] - best).abs()
        assert torch.allclose(held[i].reshape(-1), want, atol=1e-4), i
    plain = bank([x])[0]
    assert held.mean() > plain.mean()  # an image in its own prototype looks more normal than it is
    assert torch.equal(bank([x], torch.full((n,), -1))[0], plain)  # -1: not a training image, the bank as it is
    mixed = torch.arange(n)
    mixed[::2] = -1
    out = bank([x], mixed)[0]
    assert torch.equal(out[::2], plain[::2]) and torch.allclose(out[1::2], held[1::2])


# ------------------------------------------------------------------------------ matching per position
@pytest.mark.parametrize("residual", ["squared", "abs"])
def test_per_position_match_takes_the_nearest_prototype_vector_at_each_position(residual):
    bank = _bank(residual=residual)
    bank.match = "position"
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(7, 4, 3, 2, generator=g), torch.randn(7, 6, 2, 2, generator=g)]
    res = bank(feats)
    for f, p, r in zip(feats, bank.prototypes, res):
        for n in range(f.shape[0]):
            for y in range(f.shape[2]):
                for x in range(f.shape[3]):
                    d = ((f[n, :, y, x][None] - p[:, :, y, x]) ** 2).sum(1)
                    best = p[int(d.argmin()), :, y, x]
                    want = (f[n, :, y, x] - best) ** 2 if residual == "squared" else (f[n, :, y, x] - best).abs()
                    assert torch.allclose(r[n, :, y, x], want, atol=1e-5)
    image = _bank(residual=residual)  # the same prototypes matched per image: never closer (in L2) per position
    sq = (lambda r: r) if residual == "squared" else (lambda r: r * r)
    for a, b in zip(res, image(feats)):
        assert (sq(a).sum(1) <= sq(b).sum(1) + 1e-5).all() and sq(a).sum() < sq(b).sum()


def test_per_position_held_out_equals_the_bank_rebuilt_without_the_image():
    x, bank, assign = _clustered_bank("squared")
    bank.match = "position"
    n, k = x.shape[0], bank.proto_0.shape[0]
    held = bank([x], torch.arange(n))[0]
    for i in range(n):
        keep = torch.ones(n, dtype=torch.bool)
        keep[i] = False
        means = torch.stack([x[keep & (assign == j)].mean(0) for j in range(k) if (keep & (assign == j)).any()])
        d = ((x[i][None] - means) ** 2).sum(1)  # K'×h×w: per position, over channels
        best = torch.gather(means, 0, d.argmin(0)[None, None].expand(1, x.shape[1], -1, -1))[0]
        assert torch.allclose(held[i], (x[i] - best) ** 2, atol=1e-4), i
    plain = bank([x])[0]
    assert held.mean() > plain.mean()
    mixed = torch.arange(n)
    mixed[::2] = -1
    out = bank([x], mixed)[0]
    assert torch.equal(out[::2], plain[::2]) and torch.allclose(out[1::2], held[1::2])


def test_match_setting_reaches_the_bank_and_is_checked():
    from prnet.config import ConfigError, load_config
    from prnet.models.prnet import build_model
    cfg = load_config(None, ["prototypes.match=position"])
    cfg.model.backbone, cfg.model.backbone_weights = "resnet18", "none"
    assert build_model(cfg).bank.match == "position"
    with pytest.raises(ConfigError, match="prototypes.match"):
        load_config(None, ["prototypes.match=patch"])
    with pytest.raises(ValueError, match="match"):
        PrototypeBank([torch.zeros(1, 1, 1, 1)], match="patch")


def test_held_out_residuals_need_assignments_and_valid_sources():
    x, bank, _ = _clustered_bank()
    with pytest.raises(ValueError, match="source"):
        bank([x], torch.full((x.shape[0],), x.shape[0]))  # index past the training images
    with pytest.raises(ValueError, match="source"):
        bank([x], torch.zeros(3, dtype=torch.long))  # not one per input
    with pytest.raises(RuntimeError, match="assignments"):
        _bank()([torch.zeros(2, 4, 3, 2), torch.zeros(2, 6, 2, 2)], torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="clusters outside"):
        PrototypeBank([torch.zeros(2, 1, 1, 1)], assignments=[torch.tensor([0, 2])])


def test_assignments_survive_save_load_and_name_the_training_images(tmp_path):
    from prnet.models.backbone import Backbone
    cfg = Config()
    cfg.model.backbone, cfg.model.backbone_weights, cfg.data.image_size = "resnet18", "none", 64
    cfg.prototypes.ratio = 0.25
    images = [torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    names = [f"good/{i:03d}.png" for i in range(12)]
    bank = build_prototypes(Backbone("resnet18", "none"), images, cfg, "cpu",
                            meta={**expected_meta(cfg, "demo"), "train_images": names})
    assert [a.shape[0] for a in bank.assignments] == [12, 12, 12] and bank.num_sources == 12
    path = str(tmp_path / "p.pt")
    save_prototypes(bank, path)
    loaded = load_prototypes(path, expected_meta(cfg, "demo"))
    for a, b in zip(bank.assignments, loaded.assignments):
        assert torch.equal(a, b)
    loaded.check_sources(names, path)
    with pytest.raises(PrototypeMismatchError, match="p.pt.*12 training images.*11"):
        loaded.check_sources(names[:11], path)
    assert "assign_0" not in loaded.state_dict()  # checkpoints and ONNX exports carry prototypes only
    old = _bank()  # a file from before held-out residuals: no assignments
    with pytest.raises(PrototypeMismatchError, match="old.pt.*--force.*leave_one_out=false"):
        old.check_sources(names, "old.pt")
