"""Prototype bank: nearest lookup, residuals, held-out residuals, shapes from a checkpoint."""
import pytest
import torch

from prnet.models.kmeans import kmeans
from prnet.models.prototypes import PrototypeBank
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


def test_per_position_matching_is_gone_from_the_schema():
    from prnet.config import ConfigError, config_from_dict, config_to_dict, load_config
    with pytest.raises(ConfigError, match="prototypes.match"):
        load_config(None, ["prototypes.match=position"])
    stored = config_to_dict(load_config(None))
    stored["prototypes"]["match"] = "image"  # a checkpoint written while the option existed
    assert config_from_dict(stored).prototypes.ratio == stored["prototypes"]["ratio"]
    stored["prototypes"]["match"] = "position"
    with pytest.raises(ConfigError, match="prototypes.match"):
        config_from_dict(stored)


def test_distance_map_divides_each_scale_by_its_mean_and_averages():
    import math

    g = torch.Generator().manual_seed(0)
    protos = [torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 5, 2, 2, generator=g)]
    bank = PrototypeBank(protos, residual_mean=[2.0, 0.5])
    feats = [torch.randn(3, 3, 4, 4, generator=g), torch.randn(3, 5, 2, 2, generator=g)]
    res = bank(feats)
    want = sum(torch.nn.functional.interpolate(r.sum(1, keepdim=True), size=(8, 8), mode="bilinear",
                                               align_corners=False) / m for r, m in zip(res, (2.0, 0.5))) / 2
    torch.testing.assert_close(bank.distance_map(res, (8, 8)), want)
    # abs residuals: the squared distance is the sum of their squares
    bank_abs = PrototypeBank(protos, residual="abs", residual_mean=[2.0, 0.5])
    torch.testing.assert_close(bank_abs.distance_map(bank_abs(feats), (8, 8)), want, rtol=1e-4, atol=1e-5)
    # unknown means (a bank or checkpoint made before they were stored): refused, named
    unknown = PrototypeBank(protos)
    assert not unknown.has_residual_mean and math.isnan(float(unknown.residual_mean[0]))
    with pytest.raises(RuntimeError, match="eval.image_score=map"):
        unknown.distance_map(res, (8, 8))
    with pytest.raises(ValueError, match="residual means"):
        PrototypeBank(protos, residual_mean=[1.0])


def test_residual_means_travel_in_the_state_dict_and_older_state_dicts_still_load():
    g = torch.Generator().manual_seed(1)
    protos = [torch.randn(2, 3, 4, 4, generator=g)]
    state = PrototypeBank(protos, residual_mean=[3.0]).state_dict()
    assert torch.equal(state["residual_mean"], torch.tensor([3.0]))
    empty = PrototypeBank(None, num_scales=1)
    empty.load_state_dict(state)
    assert empty.has_residual_mean and float(empty.residual_mean[0]) == 3.0
    older = {k: v for k, v in state.items() if k != "residual_mean"}
    again = PrototypeBank(None, num_scales=1)
    again.load_state_dict(older)  # strict: the missing means are not an error
    assert not again.has_residual_mean and torch.equal(again.proto_0, protos[0])
