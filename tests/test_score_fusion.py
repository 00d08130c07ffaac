"""benchmarks/score_fusion.py: the candidate image-score rules compute what they claim."""
import numpy as np
import pytest

from prnet.metrics import image_auroc
from score_fusion import (PIXEL_WEIGHTS, REAL_POOLED, pixel_fusions, pixel_zscores, rules, score_groups,
                          topk_mean)


def _maps(seed, n=6, hw=(8, 8)):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.01, 1.0, (n, *hw)).astype(np.float32), rng.uniform(0.5, 3.0, (n, *hw)).astype(np.float32)


def test_prnet_and_residual_rules_are_the_top_k_means():
    p, r = _maps(0)
    tp, tr = _maps(1)
    out = rules(p, r, tp, tr, k=5)
    for name, m in (("prnet", p), ("residual", r)):
        want = np.sort(m.reshape(len(m), -1), axis=1)[:, -5:].mean(1)
        np.testing.assert_allclose(out[name], want, rtol=1e-6)


def test_product_rules_rank_images_the_same_whatever_the_scale_of_either_score():
    p, r = _maps(2, n=12)
    tp, tr = _maps(3)
    labels = np.arange(12) % 2
    base = rules(p, r, tp, tr, k=4)
    scaled = rules(p * 0.3, r * 7.0, tp, tr, k=4)
    for name in ("prod0.5", "prod1", "prod2", "map0.5", "map1"):
        assert image_auroc(scaled[name], labels) == pytest.approx(image_auroc(base[name], labels))
    # ... and the residual changes the ranking: an image with a lower learned score but a much higher residual
    # comes first under prod1
    p2 = np.full((2, 4, 4), 0.5, np.float32)
    p2[1] = 0.4
    r2 = np.ones((2, 4, 4), np.float32)
    r2[1] = 2.0
    out = rules(p2, r2, tp, tr, k=1)
    assert out["prnet"][0] > out["prnet"][1] and out["prod1"][1] > out["prod1"][0]


def test_zlog_standardises_each_log_score_on_the_normal_training_images():
    p, r = _maps(4)
    tp, tr = _maps(5, n=20)
    out = rules(p, r, tp, tr, k=3)
    lp, lr = np.log(topk_mean(p, 3) + 1e-8), np.log(topk_mean(r, 3) + 1e-8)
    tlp, tlr = np.log(topk_mean(tp, 3) + 1e-8), np.log(topk_mean(tr, 3) + 1e-8)
    want = (lp - tlp.mean()) / tlp.std() + (lr - tlr.mean()) / tlr.std()
    np.testing.assert_allclose(out["zlog"], want, rtol=1e-5)


def test_top10_and_the_nearest_neighbour_rules():
    p, r = _maps(6, n=5, hw=(10, 10))
    tp, tr = _maps(7, n=9, hw=(10, 10))
    assert "knn" not in rules(p, r, tp, tr, k=50)  # no nearest-neighbour scores given: no such rules
    rng = np.random.default_rng(8)
    knn_test, knn_train = rng.uniform(1.0, 5.0, 5), rng.uniform(1.0, 2.0, 9)
    out = rules(p, r, tp, tr, k=50, knn=(knn_test, knn_train))
    np.testing.assert_allclose(out["top10"], np.sort(p.reshape(5, -1), axis=1)[:, -10:].mean(1), rtol=1e-6)
    np.testing.assert_array_equal(out["knn"], knn_test)
    lp, tlp = np.log(topk_mean(p, 50) + 1e-8), np.log(topk_mean(tp, 50) + 1e-8)
    lk, tlk = np.log(knn_test + 1e-8), np.log(knn_train + 1e-8)
    want = (lp - tlp.mean()) / tlp.std() + (lk - tlk.mean()) / tlk.std()
    np.testing.assert_allclose(out["zknn"], want, rtol=1e-5)
    # the two parts weigh the same whatever the scale of the distances: scaling them changes no ranking
    scaled = rules(p, r, tp, tr, k=50, knn=(knn_test * 40.0, knn_train * 40.0))
    np.testing.assert_allclose(scaled["zknn"], out["zknn"], rtol=1e-5, atol=1e-6)


def test_the_released_score_fused_with_the_nearest_neighbour_distance():
    p, r = _maps(9, n=5, hw=(10, 10))
    tp, tr = _maps(10, n=9, hw=(10, 10))
    rng = np.random.default_rng(11)
    knn_test, knn_train = rng.uniform(1.0, 5.0, 5), rng.uniform(1.0, 2.0, 9)
    out = rules(p, r, tp, tr, k=20, knn=(knn_test, knn_train))

    def z(test, train):
        return (np.log(test + 1e-8) - np.log(train + 1e-8).mean()) / np.log(train + 1e-8).std()

    zm = z(topk_mean(p * np.sqrt(r), 20), topk_mean(tp * np.sqrt(tr), 20))
    zk = z(knn_test, knn_train)
    np.testing.assert_allclose(out["zsum"], zm + zk, rtol=1e-5)
    np.testing.assert_allclose(out["zmax"], np.maximum(zm, zk), rtol=1e-5)
    np.testing.assert_allclose(out["zsum0.25"], zm + 0.25 * zk, rtol=1e-5)
    np.testing.assert_allclose(out["zsum0.5"], zm + 0.5 * zk, rtol=1e-5)
    for k_m in (10, 25):  # the released score with fewer top pixels, its statistics with the same k
        zm_k = z(topk_mean(p * np.sqrt(r), k_m), topk_mean(tp * np.sqrt(tr), k_m))
        np.testing.assert_allclose(out[f"zsum0.25k{k_m}"], zm_k + 0.25 * zk, rtol=1e-5)
        assert not np.allclose(zm_k, zm)
    # zmax follows whichever detector finds an image more unusual: raising one image's distance far above every
    # training image's lifts it to the top under zmax, whatever its map says
    knn_test2 = knn_test.copy()
    knn_test2[np.argmin(out["zmax"])] = 1e3
    lifted = rules(p, r, tp, tr, k=20, knn=(knn_test2, knn_train))
    assert np.argmax(lifted["zmax"]) == np.argmin(out["zmax"])


def test_pixel_fusions_standardise_each_map_on_the_training_pixels():
    rng = np.random.default_rng(0)
    p_train, p_test = rng.uniform(1e-4, 0.2, (5, 6, 7)), rng.uniform(1e-4, 1.0, (3, 6, 7))
    k_train, k_test = rng.uniform(1.0, 3.0, (5, 6, 7)), rng.uniform(1.0, 6.0, (3, 6, 7))
    z = pixel_zscores(p_train, p_train)
    assert abs(float(z.mean())) < 1e-5 and float(z.std()) == pytest.approx(1.0, abs=1e-5)
    ln = np.log(p_train)
    np.testing.assert_allclose(pixel_zscores(p_test, p_train), (np.log(p_test) - ln.mean()) / ln.std(), rtol=1e-5)
    fused = pixel_fusions(p_test, p_train, k_test, k_train)
    assert set(fused) == {f"pz{w:g}" for w in PIXEL_WEIGHTS} == {"pz0.25", "pz0.5", "pz1"}
    lk = np.log(k_train)
    for w in PIXEL_WEIGHTS:
        expected = (np.log(p_test) - ln.mean()) / ln.std() + w * (np.log(k_test) - lk.mean()) / lk.std()
        np.testing.assert_allclose(fused[f"pz{w:g}"], expected, rtol=1e-4, atol=1e-5)
    # invariant to the scale of either map; a constant distance map leaves the head's ranking of pixels
    scaled = pixel_fusions(p_test * 7.0, p_train * 7.0, k_test * 0.1, k_train * 0.1)
    np.testing.assert_allclose(scaled["pz0.5"], fused["pz0.5"], atol=1e-4)
    flat = pixel_fusions(p_test, p_train, np.full_like(k_test, 2.0), k_train)["pz1"]
    assert (np.argsort(flat.ravel(), kind="stable") == np.argsort(p_test.ravel(), kind="stable")).all()


def test_distribution_function_is_the_share_of_training_values_at_or_below():
    from score_fusion import distribution_function

    train = np.arange(1, 11, dtype=np.float32).reshape(2, 5)  # 1..10
    got = distribution_function(np.array([0.5, 1.0, 5.5, 10.0, 99.0]), train)
    np.testing.assert_allclose(got, [0.0, 0.1, 0.5, 1.0, 1.0])
    # a sample of the training values when there are more than n, the same sample on every call
    big = np.random.default_rng(1).normal(size=(50, 40))
    a, b = distribution_function(big[:3], big, n=500), distribution_function(big[:3], big, n=500)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - distribution_function(big[:3], big)).max() < 0.1


def test_quantile_lifts_move_only_pixels_within_the_heads_normal_range():
    from score_fusion import CDF_QUANTILES, quantile_lifts

    rng = np.random.default_rng(0)
    p_train = rng.uniform(0.0, 0.01, (20, 8, 8)).astype(np.float32)
    k_train = rng.uniform(1.0, 2.0, (20, 8, 8)).astype(np.float32)
    p_test = np.full((1, 8, 8), 0.002, np.float32)
    p_test[0, 0, 0] = 0.9  # marked by the head
    k_test = np.full((1, 8, 8), 1.5, np.float32)
    k_test[0, 7, 7] = 5.0  # far from normal for the distance only
    out = quantile_lifts(p_test, p_train, k_test, k_train)
    assert set(out) == set(CDF_QUANTILES) == {"pq99", "pq999"}
    q = float(np.quantile(p_train, 0.99))
    assert out["pq99"][0, 7, 7] == pytest.approx(0.002 + q, rel=1e-5)  # F = 1 beyond every training value
    assert out["pq99"][0, 1, 1] == pytest.approx(0.002 + q * 0.5, abs=q * 0.05)
    # the distance reorders the pixels the head leaves low; the one it marks stays on top
    flat = out["pq999"][0]
    assert flat.argmax() == 0 and flat[7, 7] > flat[1, 1]
    assert (out["pq999"] >= out["pq99"]).all()


def test_quantile_max_puts_the_distance_on_the_heads_scale_and_keeps_what_either_map_marks():
    from score_fusion import quantile_lifts, quantile_max

    rng = np.random.default_rng(0)
    p_train = rng.uniform(0.0, 0.01, (20, 8, 8)).astype(np.float32)
    k_train = rng.uniform(1.0, 2.0, (20, 8, 8)).astype(np.float32)
    p_test = np.full((1, 8, 8), 0.002, np.float32)
    p_test[0, 0, 0] = 0.9  # marked by the head, missed by the distance
    k_test = np.full((1, 8, 8), 1.5, np.float32)
    k_test[0, 0, 0] = 1.0
    k_test[0, 7, 7] = 5.0  # far from normal for the distance only
    out = quantile_max(p_test, p_train, k_test, k_train)["pqmax"]
    assert out.dtype == np.float32 and out.shape == p_test.shape
    assert out[0, 0, 0] == pytest.approx(0.9)  # the head's mark stays: the distance's miss does not pull it down
    assert out[0, 7, 7] == pytest.approx(p_train.max())  # beyond every training distance: the head's top normal value
    assert out[0, 1, 1] == pytest.approx(float(np.quantile(p_train, 0.5)), abs=0.001)  # the median maps to the median
    assert (out >= p_test).all()
    # pq99 ranks the head's mark that the distance misses below a pixel the distance alone finds; pqmax does not
    lift = quantile_lifts(p_test, p_train, k_test, k_train)["pq99"]
    assert lift[0, 0, 0] > lift[0, 7, 7] and out[0, 0, 0] > out[0, 7, 7]
    weak = p_test.copy()
    weak[0, 0, 0] = float(np.quantile(p_train, 0.98))  # a pixel the head marks at its normal range's top
    k_high = k_test.copy()
    k_high[0, 2, 2] = 1.95  # a normal pixel with a high but normal distance (F about 0.95)
    lifted, maxed = quantile_lifts(weak, p_train, k_high, k_train)["pq99"], quantile_max(weak, p_train, k_high,
                                                                                         k_train)["pqmax"]
    assert lifted[0, 0, 0] < lifted[0, 2, 2] and maxed[0, 0, 0] > maxed[0, 2, 2]
    # on normal surface the distance's term has the head's distribution: the same values, another order
    k_like = rng.permutation(k_train.reshape(-1)).reshape(k_train.shape)
    mapped = quantile_max(np.zeros_like(p_train), p_train, k_like, k_train)["pqmax"]
    np.testing.assert_allclose(np.sort(mapped.ravel()), np.sort(p_train.ravel()), atol=1e-7)


def test_median_removed_shifts_each_map_by_its_own_median():
    from score_fusion import median_removed

    maps = np.stack([np.arange(9, dtype=np.float32).reshape(3, 3), np.full((3, 3), 5.0, np.float32)])
    maps[1, 0, 0] = 100.0
    out = median_removed(maps)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], maps[0] - 4.0)
    np.testing.assert_allclose(out[1], maps[1] - 5.0)  # the median, not the mean, of the second map


def test_rank_among_places_each_score_among_the_training_scores():
    from score_fusion import rank_among

    train = np.array([3.0, 1.0, 2.0])
    np.testing.assert_allclose(rank_among(np.array([0.0, 2.0, 2.5, 9.0]), train), [1 / 4, 2 / 4, 3 / 4, 1.0])


def test_per_image_maps_weigh_by_the_rank_of_the_released_score():
    """prank = p × F(released score), where the released score is rules()'s zsum0.25 for the test images and the
    same standardisation of the training images' own scores for them; without the nearest-neighbour scores only
    the median-removed maps are made."""
    from score_fusion import fused_maps, per_image_maps, rank_among, rules, topk_mean, zscores

    rng = np.random.default_rng(0)
    p_test, r_test = rng.uniform(0, 1, (5, 8, 8)), rng.uniform(0.5, 2, (5, 8, 8))
    p_train, r_train = rng.uniform(0, 1, (7, 8, 8)), rng.uniform(0.5, 2, (7, 8, 8))
    knn = (rng.uniform(1, 3, 5), rng.uniform(1, 3, 7))
    m_test = fused_maps(p_test, r_test)["map0.5"]
    assert set(per_image_maps(p_test, m_test, p_train, r_train, 4, 0.25)) == {"pmed", "map0.5med"}
    knn_maps = rng.uniform(0, 1, (5, 8, 8))
    out = per_image_maps(p_test, m_test, p_train, r_train, 4, 0.25, knn, knn_maps)
    released = rules(p_test, r_test, p_train, r_train, 4, knn=knn)["zsum0.25"]
    s_train = topk_mean(p_train * np.sqrt(r_train), 4)
    released_train = zscores(s_train, s_train) + 0.25 * zscores(knn[1], knn[1])
    expected = rank_among(released, released_train)
    np.testing.assert_allclose(out["prank"], p_test * expected[:, None, None], rtol=1e-5)
    np.testing.assert_allclose(out["map0.5rank"], m_test * expected[:, None, None], rtol=1e-5)
    np.testing.assert_allclose(out["knnrank"], knn_maps * rank_among(*knn)[:, None, None], rtol=1e-5)
    assert set(out) == {"pmed", "map0.5med", "knnmed", "prank", "map0.5rank", "knnrank"}
    lifted = rng.uniform(0, 1.5, (5, 8, 8))  # pq99's map (round 33's pq99rank weighs it by the same rank)
    with_lift = per_image_maps(p_test, m_test, p_train, r_train, 4, 0.25, knn, knn_maps, lifted)
    np.testing.assert_allclose(with_lift["pq99rank"], lifted * expected[:, None, None], rtol=1e-5)
    from score_fusion import PER_IMAGE_RULES

    assert set(PER_IMAGE_RULES) == set(with_lift)  # main() builds them when --rules names any of these


def test_scores_a_trained_run_end_to_end(tiny_data, tmp_path, caplog):
    """A 1-epoch run on the tiny category, scored by every rule; a foreign prototype file is refused."""
    import glob
    import json
    import logging
    import os

    import score_fusion
    from prnet.engine.prototypes import PrototypeMismatchError, load_prototypes, save_prototypes
    from prnet.provenance import git_state
    from tiny_run import tiny_overrides

    import train as train_script

    out, protos = str(tmp_path / "out"), str(tmp_path / "protos")
    assert train_script.main(tiny_overrides(tiny_data, out, protos, epochs=1)) == 0
    ckpt, result = os.path.join(out, "tiny", "last.pt"), str(tmp_path / "fusion.json")
    assert score_fusion.main(["--checkpoint", ckpt, "--pixel-groups", "--out", result]) == 0
    got = json.load(open(result))
    # the baseline's own map is scored at pixel level next to the head's; --pixel-groups repeats "all" per group
    assert 0.0 <= got["metrics"]["knn"]["pixel_auroc"] <= 1.0
    assert got["metrics"]["knn"]["image_auroc"] == pytest.approx(got["image_auroc"]["knn"]["all"])
    by_group = got["pixel_by_group"]
    assert set(by_group) == set(got["metrics"]) and set(by_group["prnet"]) == set(got["image_auroc"]["prnet"])
    for name in by_group:
        assert by_group[name]["all"] == pytest.approx({k: got["metrics"][name][k] for k in ("pixel_auroc", "aupro")})
    assert {"prnet", "top10", "residual", "prod1", "zlog", "map0.5", "knn", "zknn", "zsum",
            "zmax", "zsum0.25", "zsum0.5"} <= set(got["image_auroc"])
    # the pixel-level candidates: the head's map fused with the baseline's, at pixel level next to both
    assert {"pz0.25", "pz0.5", "pz1", "pq99", "pq999", "pqmax"} <= set(got["metrics"])
    assert set(got["pixel_by_group"]) == set(got["metrics"])
    # rounds 17, 18 and 33: maps shifted by their median or weighed by the image's rank, at pixel level too
    assert {"pmed", "map0.5med", "knnmed", "prank", "map0.5rank", "knnrank", "pq99rank"} <= set(got["metrics"])
    assert all(0.0 <= row["all"] <= 1.0 for row in got["image_auroc"].values())
    assert got["metrics"]["prnet"]["image_auroc"] == pytest.approx(got["image_auroc"]["prnet"]["all"])
    # the scores name the code and machine that computed them
    assert got["provenance"]["git_commit"] == git_state()["git_commit"] and got["provenance"]["device"] == "cpu"
    assert score_fusion.main(["--checkpoint", ckpt, "--no-knn", "--out", result]) == 0
    assert "zknn" not in json.load(open(result))["image_auroc"]
    assert got["test_images"] == 20 - 3  # the tiny test split minus the run's 3 real anomalies
    _test_data_from_another_root(ckpt, tiny_data, tmp_path)
    _library_score_is_the_validated_map05(ckpt)
    _flip_rules(ckpt, result)
    # a prototype file whose digest of the training files differs (made when it was taken from modification times;
    # the same names in the same order): still used, with a warning
    import torch

    path = glob.glob(os.path.join(protos, "*", "tiny.pt"))[0]
    original = open(path, "rb").read()
    payload = torch.load(path, weights_only=True)
    payload["meta"]["train_files"] = "0" * 64
    torch.save(payload, path)
    try:
        with caplog.at_level(logging.WARNING, logger="score_fusion"):
            assert score_fusion.main(["--checkpoint", ckpt, "--no-knn", "--out", result]) == 0
        assert json.load(open(result))["image_auroc"]["prnet"] == got["image_auroc"]["prnet"]
        assert any("digest of the training files" in r.getMessage() for r in caplog.records)
    finally:
        open(path, "wb").write(original)
    # a prototype file of the earlier format 3 (no residual means): its prototypes and clusters are used as well
    payload = torch.load(path, weights_only=True)
    payload["format"] = payload["meta"]["format"] = 3
    del payload["residual_mean"]
    torch.save(payload, path)
    try:
        assert score_fusion.main(["--checkpoint", ckpt, "--no-knn", "--out", result]) == 0
        assert json.load(open(result))["image_auroc"]["prnet"] == got["image_auroc"]["prnet"]
    finally:
        open(path, "wb").write(original)
    # another run with another prototype ratio rebuilds the prototype file in the same place: the first run's
    # checkpoint no longer matches it, and is refused
    other = str(tmp_path / "out2")
    extra = ["prototypes.ratio=0.3", "data.num_anomalies=1"]
    assert train_script.main(tiny_overrides(tiny_data, other, protos, epochs=1, extra=extra)) == 0
    with pytest.raises(PrototypeMismatchError, match="ratio"):
        score_fusion.main(["--checkpoint", ckpt, "--no-knn"])
    # the other run scored on its own test images, then on the first run's (as real_data.py's common test set)
    ckpt2 = os.path.join(other, "tiny", "last.pt")
    assert score_fusion.main(["--checkpoint", ckpt2, "--no-knn", "--out", result]) == 0
    assert json.load(open(result))["test_images"] == 20 - 1
    assert score_fusion.main(["--checkpoint", ckpt2, "--no-knn", "--test-as", ckpt, "--out", result]) == 0
    assert json.load(open(result))["test_images"] == 20 - 3
    # a file with the same settings but other prototypes than the checkpoint's: refused
    path = glob.glob(os.path.join(protos, "*", "tiny.pt"))[0]
    bank = load_prototypes(path)
    bank.proto_0.add_(1.0)
    save_prototypes(bank, path)
    with pytest.raises(SystemExit, match="not the prototypes"):
        score_fusion.main(["--checkpoint", ckpt2, "--no-knn"])


def _test_data_from_another_root(ckpt, data, tmp_path):
    """--test-data: another root's test images (here one normal fewer) scored with the checkpoint's own training
    normals and prototype file, so every image the two roots share keeps its scores. --data with that root (a copy,
    training images included) is refused: the prototype file was made from the checkpoint's root."""
    import json
    import os
    import shutil

    import score_fusion
    from prnet.engine.prototypes import PrototypeMismatchError

    other = tmp_path / "other"
    for part in ("train", "test", "ground_truth"):
        shutil.copytree(os.path.join(data, "tiny", part), other / "tiny" / part)
    good = other / "tiny" / "test" / "good"
    dropped = sorted(os.listdir(good))[0]
    os.remove(good / dropped)
    runs = {}
    for name, extra in (("own", []), ("other", ["--test-data", str(other)])):
        out = str(tmp_path / f"{name}.json")
        argv = ["--checkpoint", ckpt, "--rules", "prnet,zsum0.25", "--per-image", "--out", out, *extra]
        assert score_fusion.main(argv) == 0
        runs[name] = {im["name"]: im["scores"] for im in json.load(open(out))["images"]}
    assert set(runs["own"]) - set(runs["other"]) == {f"good/{dropped}"}
    assert all(runs["other"][n] == pytest.approx(runs["own"][n], rel=1e-6) for n in runs["other"])
    with pytest.raises(PrototypeMismatchError, match="data_root"):
        score_fusion.main(["--checkpoint", ckpt, "--rules", "prnet", "--no-knn", "--data", str(other)])


def _library_score_is_the_validated_map05(ckpt):
    """eval.image_score=map_residual (the library) gives map0.5's scores (score_fusion, the rule validated), and a
    checkpoint without residual means gets the same ones back from its prototype file."""
    import torch

    from prnet.datasets import build_test_dataset, normal_train_set
    from prnet.engine.checkpoint import model_from_checkpoint
    from prnet.engine.evaluator import run_inference
    from prnet.engine.prototypes import attach_residual_means
    from score_fusion import fused_maps, maps_of, run_prototypes

    device = torch.device("cpu")
    model, cfg, _ = model_from_checkpoint(ckpt, device)
    assert model.bank.has_residual_mean
    cfg.eval.image_score = "map_residual"  # the default's first term, without the nearest-neighbour distance
    test = build_test_dataset(cfg, "tiny")
    library = run_inference(model, test, cfg, device, progress=False)["scores"]
    kw = dict(sigma=cfg.eval.sigma, batch=8, device=device)
    validated = model_from_checkpoint(ckpt, device)[0]
    validated.bank = run_prototypes(cfg, "tiny")
    _, r_train, _ = maps_of(validated, normal_train_set(cfg, "tiny"), leave_one_out=True, desc="train", **kw)
    p_test, r_test, _ = maps_of(validated, test, leave_one_out=False, desc="test", **kw)
    r_test = np.mean([r / t.mean() for r, t in zip(r_test, r_train)], axis=0)
    np.testing.assert_allclose(library, topk_mean(fused_maps(p_test, r_test)["map0.5"], cfg.eval.topk), rtol=1e-4)
    stored = model.bank.residual_mean.clone()
    model.bank.residual_mean.fill_(float("nan"))
    assert attach_residual_means(model, cfg, "tiny", device) and not attach_residual_means(model, cfg, "tiny", device)
    np.testing.assert_allclose(model.bank.residual_mean.numpy(), stored.numpy(), rtol=1e-5)
    cfg.eval.image_score, cfg.eval.anomaly_map = "map", "head"  # the score is the top-k of the head's map
    plain = run_inference(model, test, cfg, device, progress=False)
    np.testing.assert_allclose(plain["scores"], topk_mean(plain["maps"], cfg.eval.topk), rtol=1e-5)


def _flip_rules(ckpt, result):
    """--flips: flip2 / flip4 are scored; the flip4 average is equivariant under every mirror (the plain head and
    the left-right average are not under an up-down mirror); the plain map is unchanged by --flips."""
    import json

    import torch

    import score_fusion
    from prnet.datasets import build_test_dataset
    from prnet.engine.checkpoint import model_from_checkpoint

    assert score_fusion.main(["--checkpoint", ckpt, "--no-knn", "--flips", "--per-image", "--out", result]) == 0
    got = json.load(open(result))
    assert {"flip2", "flip4"} <= set(got["image_auroc"]) and {"flip2", "flip4"} <= set(got["metrics"])
    # --per-image: the reported AUROCs are those of the written scores
    images = got["images"]
    assert len(images) == got["test_images"] and len({im["name"] for im in images}) == len(images)
    labels = np.array([im["label"] for im in images])
    for rule in ("prnet", "map0.5", "flip2", "flip4"):
        scores = np.array([im["scores"][rule] for im in images])
        assert image_auroc(scores, labels) == pytest.approx(got["image_auroc"][rule]["all"])
    assert not np.allclose([im["scores"]["flip4"] for im in images], [im["scores"]["map0.5"] for im in images])
    model, cfg, _ = model_from_checkpoint(ckpt, torch.device("cpu"))
    test = build_test_dataset(cfg, "tiny")
    x = torch.stack([test[i]["image"] for i in range(3)])
    hw = (x.shape[-2], x.shape[-1])
    with torch.no_grad():
        feats, residuals, bottleneck, patch = model.encode(x)
        assert patch is None  # no patch memory in this run
        names = ["plain", "flip2", "flip4"]
        base = score_fusion.flip_averages(model, feats, residuals, bottleneck, hw, names)
        np.testing.assert_allclose(base["plain"].numpy(), torch.sigmoid(model(x)).numpy(), rtol=1e-5, atol=1e-6)
        for dims in ((-1,), (-2,), (-2, -1)):
            flip = lambda t: torch.flip(t, dims)  # noqa: E731
            mirrored = score_fusion.flip_averages(model, [flip(f) for f in feats], [flip(r) for r in residuals],
                                                  flip(bottleneck), hw, names)
            np.testing.assert_allclose(mirrored["flip4"].numpy(), flip(base["flip4"]).numpy(), rtol=1e-4,
                                       atol=1e-5)
            if dims == (-1,):
                np.testing.assert_allclose(mirrored["flip2"].numpy(), flip(base["flip2"]).numpy(), rtol=1e-4,
                                           atol=1e-5)
            else:
                assert not np.allclose(mirrored["flip2"].numpy(), flip(base["flip2"]).numpy(), atol=1e-4)
            assert not np.allclose(mirrored["plain"].numpy(), flip(base["plain"]).numpy(), atol=1e-4)


def test_proxy_groups_pool_the_real_defect_images_apart_from_all():
    from proxy_validation import EXTENDED, IN_CONTEXT, PERLIN, REAL, SWAP
    defects = np.array(["good", "good", PERLIN, EXTENDED, SWAP, IN_CONTEXT, REAL, "crack", "uneven"])
    groups = score_groups(defects, subsets=True)
    assert groups["all"].tolist() == [True, True, True, True, False, False, False, False, False]
    pooled = groups[REAL_POOLED]
    assert defects[pooled].tolist() == ["good", "good", REAL, "crack", "uneven"]
    assert defects[groups["crack"]].tolist() == ["good", "good", "crack"]
    # no real image (a 10-shot proxy run without the real subset): no pooled group; a test split: every image is "all"
    assert REAL_POOLED not in score_groups(defects[:6], subsets=True)
    plain = score_groups(defects, subsets=False)
    assert plain["all"].all() and REAL_POOLED not in plain
