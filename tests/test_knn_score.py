"""eval.image_score=map_residual_knn: the library's fused image score is the rule chosen on validation data
(benchmarks/score_fusion.py zsum0.25), its memory is the baseline's, and it travels with the checkpoint."""
import json
import logging
import os

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from prnet.config import ConfigError, load_config
from prnet.datasets import build_test_dataset, normal_train_set
from prnet.engine.checkpoint import model_from_checkpoint
from prnet.engine.evaluator import predict_maps, run_inference
from prnet.engine.knn_calibration import attach_knn_score
from prnet.engine.prototypes import coreset_memory, patch_features
from prnet.metrics import image_auroc
from prnet.models.prnet import build_model
from tiny_run import tiny_overrides, train_tiny_run


@pytest.fixture(scope="module")
def knn_run(tiny_data, tmp_path_factory):
    """A 1-epoch tiny run trained and scored with map_residual_knn: (checkpoint path, results.json)."""
    return train_tiny_run(tiny_data, tmp_path_factory.mktemp("knn"), ["eval.image_score=map_residual_knn"])


def test_the_memory_is_the_baselines(tiny_data):
    """Same images, backbone and seed: the library's memory holds the PatchCore-style baseline's rows."""
    from patchcore import PatchCore

    cfg = load_config(None, tiny_overrides(tiny_data, "unused", "unused", extra=["seed=3"]))
    train = normal_train_set(cfg, "tiny")
    baseline = PatchCore(cfg.model.backbone, cfg.model.backbone_weights, seed=3, progress=False)
    baseline.fit(DataLoader(train, batch_size=8, shuffle=False))
    model = build_model(cfg, None)
    feats, owner, n = patch_features(model.backbone, DataLoader(train, batch_size=8, shuffle=False), "cpu")
    memory = coreset_memory(feats, owner, None, seed=3)
    assert n == len(train) == 24 and feats.shape[0] == 24 * 8 * 8  # 64 px, stride 8
    assert memory.memory.shape == baseline.memory.shape == (round(0.1 * 24 * 64), feats.shape[1])
    assert torch.allclose(memory.memory, baseline.memory, atol=1e-5)
    assert torch.equal(memory.source, baseline.memory_owner)
    other = coreset_memory(feats, owner, None, seed=4)  # the seed picks the rows
    assert not torch.equal(other.memory, memory.memory)


def test_the_trained_run_scores_with_the_validated_rule(knn_run):
    """Evaluation, the stored threshold and results.json use z(log s_m) + 0.25·z(log s_knn), as score_fusion's
    zsum0.25 computes it independently (its own baseline memory, its own normal-image statistics)."""
    import score_fusion

    ckpt, results = knn_run
    model, cfg, state = model_from_checkpoint(ckpt, torch.device("cpu"))
    assert model.knn is not None and model.knn.is_calibrated and cfg.eval.knn_weight == 0.25
    test = build_test_dataset(cfg, "tiny")
    out = run_inference(model, test, cfg, torch.device("cpu"), progress=False)
    fusion = os.path.join(os.path.dirname(ckpt), "fusion.json")
    assert score_fusion.main(["--checkpoint", ckpt, "--rules", "map0.5,zsum0.25", "--per-image",
                              "--out", fusion]) == 0
    got = json.load(open(fusion))
    assert [im["name"] for im in got["images"]] == [s.name for s in test.samples]
    want = np.array([im["scores"]["zsum0.25"] for im in got["images"]])
    np.testing.assert_allclose(out["scores"], want, rtol=1e-4, atol=1e-4)
    assert results["metrics"]["image_auroc"] == pytest.approx(got["image_auroc"]["zsum0.25"]["all"])
    # the threshold (train_max): the highest fused score of the normal training images, each scored as an unseen
    # image (held-out prototype distance, its own memory rows left out), computed here with score_fusion's parts
    train = normal_train_set(cfg, "tiny")
    model.bank = score_fusion.run_prototypes(cfg, "tiny")  # with the training images' clusters
    p_train, r_train, _ = score_fusion.maps_of(model, train, sigma=cfg.eval.sigma, batch=16,
                                               device=torch.device("cpu"), leave_one_out=True, desc="train")
    r_train = np.mean([r / r.mean() for r in r_train], axis=0)
    _, knn_train, _, _ = score_fusion.knn_scores(cfg, train, test, torch.device("cpu"), 16)
    s_m = score_fusion.topk_mean(p_train * np.sqrt(r_train), cfg.eval.topk)
    # map_residual's held-out training scores (its train_max threshold) are these s_m
    from prnet.engine.knn_calibration import held_out_map_residual_scores
    np.testing.assert_allclose(held_out_map_residual_scores(model, model.bank, train, cfg, torch.device("cpu")), s_m,
                               rtol=1e-4, atol=1e-6)
    held_out = score_fusion.zscores(s_m, s_m) + 0.25 * score_fusion.zscores(knn_train, knn_train)
    assert state["threshold"] == pytest.approx(float(held_out.max()), rel=1e-4, abs=1e-4)
    seen = run_inference(model, train, cfg, torch.device("cpu"), progress=False)["scores"]
    assert seen.max() < state["threshold"]  # scored as test images are, training images sit lower
    # weight 0: the fused score is a monotone function of map_residual's, the same ranking
    cfg.eval.knn_weight = 0.0
    zero = run_inference(model, test, cfg, torch.device("cpu"), progress=False)["scores"]
    cfg.eval.image_score = "map_residual"
    released = run_inference(model, test, cfg, torch.device("cpu"), progress=False)["scores"]
    np.testing.assert_array_equal(np.argsort(zero, kind="stable"), np.argsort(released, kind="stable"))
    assert image_auroc(zero, out["labels"]) == pytest.approx(image_auroc(released, out["labels"]))


def test_score_fusion_reads_the_distance_at_another_size(knn_run):
    """--knn-size (round 28): at the run's own size the read-again score is the run's distance and zsum0.25k25s is
    zsum0.25k25; at another size the distance comes from images read at that size (its own memory)."""
    import score_fusion

    ckpt, _ = knn_run
    out = os.path.join(os.path.dirname(ckpt), "sized.json")
    rules = "knn,knns,zsum0.25k25,zsum0.25k25s,residual"
    got, parts = {}, {}
    for size in ("64", "64,128"):
        assert score_fusion.main(["--checkpoint", ckpt, "--rules", rules, "--per-image", "--knn-size", size,
                                  "--out", out]) == 0
        written = json.load(open(out))
        got[size] = {r: np.array([im["scores"][r] for im in written["images"]]) for r in rules.split(",")}
        parts[size] = written["raw_parts"]
    same, wide = got["64"], got["64,128"]
    np.testing.assert_allclose(same["knns"], same["knn"], rtol=1e-5)
    np.testing.assert_allclose(same["zsum0.25k25s"], same["zsum0.25k25"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(wide["knn"], same["knn"])  # the run's own distance does not move
    assert np.abs(wide["knns"] - same["knns"]).max() > 1e-3  # read at 64×128: another memory, other distances
    assert not np.allclose(wide["zsum0.25k25s"], wide["zsum0.25k25"])
    # the raw parts give the fused rules back (and so any other weight): z from the held-out training values
    raw = parts["64,128"]
    assert {"s_m_k10", "s_m_k25"} <= set(raw["test"]) and len(raw["train"]["s_m_k25"]) == len(raw["train"]["s_knns"])
    z = {n: score_fusion.zscores(np.array(raw["test"][n]), np.array(raw["train"][n])) for n in raw["test"]}
    np.testing.assert_allclose(z["s_m_k25"] + 0.25 * z["s_knns"], wide["zsum0.25k25s"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(z["s_m_k25"] + 0.25 * z["s_knn"], wide["zsum0.25k25"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(raw["test"]["s_knns"], wide["knns"])
    [s_r] = [n for n in raw["test"] if n.startswith("s_r_k")]  # the residual's own top-k mean, at the run's eval.topk
    np.testing.assert_allclose(raw["test"][s_r], wide["residual"], rtol=1e-6)
    assert len(raw["train"][s_r]) == len(raw["train"]["s_knn"])


def test_a_checkpoint_without_it_gets_the_same_score_from_its_prototype_file(knn_run, caplog):
    """attach_knn_score (real_data.py --rescore): a model without the score gets the one training made; one made
    for another eval.topk is made again; training images edited since the run are reported."""
    ckpt, _ = knn_run
    model, cfg, _ = model_from_checkpoint(ckpt, torch.device("cpu"))
    stored_stats, stored_memory = model.knn.stats.clone(), model.knn.memory.memory.clone()
    assert not attach_knn_score(model, cfg, "tiny", torch.device("cpu"))  # calibrated: left as it is
    model.knn = None
    with caplog.at_level(logging.WARNING):
        assert attach_knn_score(model, cfg, "tiny", torch.device("cpu"))
    assert not [r for r in caplog.records if "byte for byte" in r.getMessage()]
    assert torch.equal(model.knn.memory.memory, stored_memory)
    torch.testing.assert_close(model.knn.stats, stored_stats)
    # a training image edited since: the statistics are made from it as it is now, with a warning
    good = os.path.join(cfg.data.root, "tiny", "train", "good")
    first = os.path.join(good, sorted(os.listdir(good))[0])
    original = open(first, "rb").read()
    cv2.imwrite(first, 255 - cv2.imread(first))
    try:
        with caplog.at_level(logging.WARNING):
            assert attach_knn_score(model.eval(), cfg, "tiny", torch.device("cpu")) is False  # still calibrated
            model.knn = None
            assert attach_knn_score(model, cfg, "tiny", torch.device("cpu"))
        assert len([r for r in caplog.records if "byte for byte" in r.getMessage()]) == 1
    finally:
        open(first, "wb").write(original)
    model.knn = None
    assert attach_knn_score(model, cfg, "tiny", torch.device("cpu"))
    torch.testing.assert_close(model.knn.stats, stored_stats)
    # statistics made for other evaluation settings are refused, then made again for the new ones
    test = build_test_dataset(cfg, "tiny")
    cfg.eval.topk = 5
    with pytest.raises(RuntimeError, match="eval.topk=10"):
        run_inference(model, test, cfg, torch.device("cpu"), progress=False)
    assert attach_knn_score(model, cfg, "tiny", torch.device("cpu"))
    assert model.knn.made_for(5, cfg.eval.sigma) and not torch.allclose(model.knn.stats[:2], stored_stats[:2])
    torch.testing.assert_close(model.knn.stats[2:], stored_stats[2:])  # the distance's part is the same
    scores = run_inference(model, test, cfg, torch.device("cpu"), progress=False)["scores"]
    assert np.isfinite(scores).all()


def test_an_uncalibrated_score_is_refused_and_the_weight_is_checked(tiny_data):
    cfg = load_config(None, tiny_overrides(tiny_data, "unused", "unused", extra=["eval.image_score=map_residual_knn"]))
    model = build_model(cfg, None)
    assert model.knn is not None and not model.knn.is_calibrated
    plain = load_config(None, tiny_overrides(tiny_data, "u", "u", extra=["eval.image_score=map_residual"]))
    with pytest.raises(ValueError, match="not made yet"):
        build_model(plain, None)(torch.zeros(1, 3, 64, 64), with_distance=True, with_knn=True)
    with pytest.raises(ValueError, match="with_knn needs with_distance"):
        build_model(plain, None)(torch.zeros(1, 3, 64, 64), with_knn=True)
    with pytest.raises(ConfigError, match="knn_weight"):
        load_config(None, ["eval.knn_weight=-1"])
    assert load_config(None, ["eval.knn_weight=0.5"]).eval.knn_weight == 0.5


def test_loading_a_state_gives_or_takes_the_nearest_neighbour_score(knn_run, tiny_data):
    """Whether a model holds a KnnScore follows the state loaded, not its evaluation settings (eval.* may change on
    resume and in predict.py): a model built without one gains the stored one, a model built with one loses it."""
    model, cfg, _ = model_from_checkpoint(knn_run[0], torch.device("cpu"))
    plain = build_model(load_config(None, tiny_overrides(tiny_data, "u", "u",
                                                         extra=["eval.image_score=map_residual",
                                                                "eval.anomaly_map=head"])), None)
    assert plain.knn is None
    plain.load_state_dict(model.state_dict())
    assert plain.knn is not None and plain.knn.is_calibrated
    torch.testing.assert_close(plain.knn.stats, model.knn.stats)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(plain.eval()(x, with_distance=True, with_knn=True)[2],
                               model(x, with_distance=True, with_knn=True)[2])
    fused = build_model(cfg, None)
    assert fused.knn is not None
    fused.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("knn.")})
    assert fused.knn is None
    with pytest.raises(ValueError, match="not made yet"):
        fused.eval()(x, with_distance=True, with_knn=True)


def test_prediction_and_onnx_give_the_evaluations_scores(knn_run, tmp_path):
    """The Python API and the exported graph (memory and statistics inside it) score as evaluation does."""
    import prnet
    from prnet.datasets.mvtec import load_rgb

    import export as export_script

    ckpt, _ = knn_run
    detector = prnet.load_detector(ckpt, device="cpu")
    test = build_test_dataset(detector.cfg, "tiny")
    paths = [s.path for s in test.samples[:5]]
    got = np.array([r.score for r in detector.predict(paths)])
    x = torch.from_numpy(np.stack([load_rgb(p, detector.image_size) for p in paths])).permute(0, 3, 1, 2)
    _, want = predict_maps(detector.model, x, topk=detector.topk, sigma=detector.sigma,
                           image_score="map_residual_knn", knn_weight=0.25)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="knn_weight"):
        predict_maps(detector.model, x, topk=detector.topk, sigma=detector.sigma, image_score="map_residual_knn")
    ort = pytest.importorskip("onnxruntime")
    out = str(tmp_path / "m.onnx")
    assert export_script.main(["--checkpoint", ckpt, "--out", out]) == 0
    session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    amap, score = session.run(None, {"image": x.numpy()})  # a batch of 5, traced with 2
    np.testing.assert_allclose(score, want.numpy(), rtol=1e-4, atol=1e-4)
    assert amap.shape == (5, 1, 64, 64)
