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


def _rebuilt_without(flat, assign, k, i, f, residual):
    """The residual of f (flattened) against the k-means bank of `flat` rebuilt without image i, by brute force."""
    keep = torch.ones(flat.shape[0], dtype=torch.bool)
    keep[i] = False
    means = torch.stack([flat[keep & (assign == j)].mean(0) for j in range(k) if (keep & (assign == j)).any()])
    best = means[((f - means) ** 2).sum(1).argmin()]
    return (f - best) ** 2 if residual == "squared" else (f - best).abs()


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
        assert torch.allclose(held[i].reshape(-1), _rebuilt_without(flat, assign, k, i, flat[i], residual), atol=1e-4)
    plain = bank([x])[0]
    assert held.mean() > plain.mean()  # an image in its own prototype looks more normal than it is
    assert torch.equal(bank([x], torch.full((n,), -1))[0], plain)  # -1: not a training image, the bank as it is
    mixed = torch.arange(n)
    mixed[::2] = -1
    out = bank([x], mixed)[0]
    assert torch.equal(out[::2], plain[::2]) and torch.allclose(out[1::2], held[1::2])


@pytest.mark.parametrize("residual", ["squared", "abs"])
def test_exact_held_out_residual_of_a_changed_image_equals_the_bank_rebuilt_without_its_source(residual):
    """With the clean source image's features (prototypes.held_out_exact), a sample changed from training image i
    gets its residual against the bank rebuilt without i; the scaled form differs by the change times 1/(n - 1)."""
    x, bank, assign = _clustered_bank(residual)
    n, k = x.shape[0], bank.proto_0.shape[0]
    flat = x.reshape(n, -1)
    counts = torch.bincount(assign, minlength=k)
    g = torch.Generator().manual_seed(3)
    delta = torch.zeros_like(x)
    delta[:, :, :2, :2] = 0.8 * torch.randn(n, 2, 2, 2, generator=g)  # a local change, as an anomaly's
    changed = x + delta
    rows = torch.arange(0, n, 2)  # every other input is a changed image, the rest the images themselves
    source = torch.arange(n)
    feats = torch.where((torch.arange(n) % 2 == 0).view(-1, 1, 1, 1), changed, x)
    exact = bank([feats], source, clean=(rows, [x[rows]]))[0]
    scaled = bank([feats], source)[0]
    f_flat = feats.reshape(n, -1)
    for i in range(n):
        want = _rebuilt_without(flat, assign, k, i, f_flat[i], residual)
        assert torch.allclose(exact[i].reshape(-1), want, atol=1e-4), i
        if i % 2:  # the images themselves: the scaled form is exact for them
            assert torch.allclose(scaled[i], exact[i], atol=1e-5)
    # the scaled form: the change scaled by n/(n - 1) where the own cluster is the nearest
    ni = counts[assign].float()
    own = [i for i in rows.tolist() if ni[i] > 2 and torch.allclose(
        scaled[i], (ni[i] / (ni[i] - 1) * (feats[i] - bank.proto_0[assign[i]])) ** 2 if residual == "squared"
        else (ni[i] / (ni[i] - 1) * (feats[i] - bank.proto_0[assign[i]])).abs(), atol=1e-5)]
    assert len(own) >= 3
    for i in own:
        assert not torch.allclose(scaled[i], exact[i], atol=1e-3)
        with_clean = ni[i] / (ni[i] - 1) * (x[i] - bank.proto_0[assign[i]]) + delta[i]
        want = with_clean ** 2 if residual == "squared" else with_clean.abs()
        assert torch.allclose(exact[i], want, atol=1e-4)
    # no clean rows: the scaled form, to the bit
    assert torch.equal(bank([feats], source, clean=(rows[:0], [x[:0]]))[0], scaled)


def test_clean_features_need_sources_and_matching_shapes():
    x, bank, _ = _clustered_bank()
    n = x.shape[0]
    with pytest.raises(ValueError, match="need source"):
        bank([x], None, clean=(torch.tensor([0]), [x[:1]]))
    with pytest.raises(ValueError, match="clean features must match"):
        bank([x], torch.arange(n), clean=(torch.tensor([0, 1]), [x[:1]]))
    with pytest.raises(ValueError, match="clean features must match"):
        bank([x], torch.arange(n), clean=(torch.tensor([0]), [x[:1, :1]]))


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
