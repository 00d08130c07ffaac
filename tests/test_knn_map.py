"""The anomaly map eval.anomaly_map=head_knn: the head's map lifted by the nearest-neighbour distance within the
head's range on normal training pixels (prnet.models.knn_score, rounds 21-22 of docs/experiments.md)."""
import json
import math
import os

import numpy as np
import pytest
import torch

from prnet.config import ConfigError, load_config
from prnet.datasets import build_test_dataset
from prnet.engine.checkpoint import model_from_checkpoint
from prnet.engine.evaluator import knn_distance_maps, predict_maps, run_inference
from prnet.engine.knn_calibration import attach_knn_score
from prnet.metrics import compute_metrics
from prnet.models.knn_score import MAP_TABLE, KnnScore
from tiny_run import train_tiny_run


@pytest.fixture(scope="module")
def lifted_run(tiny_data, tmp_path_factory):
    """A 1-epoch tiny run evaluated with eval.anomaly_map=head_knn: (checkpoint path, results.json)."""
    return train_tiny_run(tiny_data, tmp_path_factory.mktemp("lift"), ["eval.anomaly_map=head_knn"])


def test_the_distribution_function_is_a_search_of_the_table():
    knn = KnnScore()
    table = torch.sort(torch.randn(MAP_TABLE, generator=torch.Generator().manual_seed(0)))[0]
    knn.map_table.copy_(table)
    d = torch.randn(2, 1, 9, 11, generator=torch.Generator().manual_seed(1)) * 2
    d[0, 0, 0, :4] = torch.tensor([table[0] - 1, table[7], table[-1], table[-1] + 1])
    want = np.searchsorted(table.numpy(), d.numpy(), side="right") / MAP_TABLE
    np.testing.assert_array_equal(knn.map_cdf(d).numpy(), want.astype(np.float32))
    assert knn.map_cdf(d)[0, 0, 0, :4].tolist() == [0.0, 8 / MAP_TABLE, 1.0, 1.0]
    # the lift: (p + q F) / (1 + q), refused unless made for these settings
    with pytest.raises(RuntimeError, match="head_knn needs its table"):
        knn.lift(torch.zeros_like(d), d, 0.99, 1.0)
    knn.map_lift.copy_(torch.tensor([0.05, 0.99, 1.0]))
    p = torch.rand(d.shape, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(knn.lift(p, d, 0.99, 1.0), (p + 0.05 * torch.from_numpy(want).float()) / 1.05)
    with pytest.raises(RuntimeError, match="eval.knn_lift=0.999"):
        knn.lift(p, d, 0.999, 1.0)
    with pytest.raises(RuntimeError, match="eval.sigma=0"):
        knn.lift(p, d, 0.99, 0.0)


def test_a_state_made_before_the_table_loads_without_it():
    old = {k: v for k, v in KnnScore().state_dict().items() if not k.startswith("map_")}
    knn = KnnScore()
    knn.load_state_dict(old)
    assert torch.isnan(knn.map_table).all() and not knn.map_made_for(0.99, 0.0)


def test_the_keys_are_checked():
    with pytest.raises(ConfigError, match="knn_lift"):
        load_config(None, ["eval.knn_lift=1.0"])
    with pytest.raises(ConfigError, match="anomaly_map"):
        load_config(None, ["eval.anomaly_map=knn"])
    assert load_config(None, []).eval.anomaly_map == "head_knn"


def test_the_run_scores_the_lifted_map_and_the_heads_image_score(lifted_run, tiny_data):
    ckpt, results = lifted_run
    model, cfg, _ = model_from_checkpoint(ckpt, torch.device("cpu"))
    assert cfg.eval.anomaly_map == "head_knn" and model.knn.map_made_for(0.99, cfg.eval.sigma)
    test = build_test_dataset(cfg, "tiny")
    lifted = run_inference(model, test, cfg, torch.device("cpu"), progress=False)
    assert results["metrics"]["pixel_auroc"] == pytest.approx(
        compute_metrics(lifted["scores"], lifted["labels"], lifted["maps"], lifted["masks"])["pixel_auroc"])
    cfg.eval.anomaly_map = "head"
    head = run_inference(model, test, cfg, torch.device("cpu"), progress=False)
    np.testing.assert_array_equal(lifted["scores"], head["scores"])  # the image score is the head's
    assert not np.array_equal(lifted["maps"], head["maps"])
    assert lifted["maps"].min() >= 0.0 and lifted["maps"].max() <= 1.0
    # by hand: (p + q F(d)) / (1 + q) with the stored lift and table
    x = torch.stack([test[i]["image"] for i in range(len(test))])
    raw = model.eval()(x, with_distance=True, with_knn=True)[2]
    d = knn_distance_maps(raw, (64, 64))
    table, q = model.knn.map_table.numpy(), float(model.knn.map_lift[0])
    f = np.searchsorted(table, d[:, 0].numpy(), side="right") / MAP_TABLE
    # (batches of another size move a few distances by a float step, and so F by at most one quantile)
    np.testing.assert_allclose(lifted["maps"], (head["maps"] + q * f) / (1 + q), rtol=0, atol=1.01 * q / MAP_TABLE)
    assert 0.0 < q < 1.0 and np.all(np.diff(table) >= 0)


def test_the_library_map_is_score_fusions_pq99(lifted_run):
    """The validated rule (benchmarks/score_fusion.py pq99: its own baseline memory, every training pixel for q, a
    million-pixel sample for F) and the library's map (2048 pixels per image) rank the pixels alike."""
    import score_fusion

    ckpt, results = lifted_run
    fusion = os.path.join(os.path.dirname(ckpt), "pq.json")
    assert score_fusion.main(["--checkpoint", ckpt, "--rules", "prnet,pq99", "--out", fusion]) == 0
    got = json.load(open(fusion))["metrics"]
    assert results["metrics"]["pixel_auroc"] == pytest.approx(got["pq99"]["pixel_auroc"], abs=2e-3)
    assert results["metrics"]["aupro"] == pytest.approx(got["pq99"]["aupro"], abs=1e-2)


def test_a_table_missing_or_made_for_other_settings_is_made_again(lifted_run):
    ckpt, _ = lifted_run
    model, cfg, _ = model_from_checkpoint(ckpt, torch.device("cpu"))
    table, lift = model.knn.map_table.clone(), model.knn.map_lift.clone()
    assert not attach_knn_score(model, cfg, "tiny", torch.device("cpu"))
    model.knn.map_table.fill_(math.nan)  # a checkpoint made before the table existed
    test = build_test_dataset(cfg, "tiny")
    with pytest.raises(RuntimeError, match="head_knn needs its table"):
        run_inference(model, test, cfg, torch.device("cpu"), progress=False)
    assert attach_knn_score(model, cfg, "tiny", torch.device("cpu"))
    torch.testing.assert_close(model.knn.map_table, table)  # seeded: the same pixels
    torch.testing.assert_close(model.knn.map_lift, lift)
    cfg.eval.knn_lift = 0.5
    assert attach_knn_score(model, cfg, "tiny", torch.device("cpu"))
    assert float(model.knn.map_lift[0]) < float(lift[0]) and model.knn.map_made_for(0.5, cfg.eval.sigma)


def test_prediction_and_onnx_give_the_lifted_map(lifted_run, tmp_path):
    import prnet
    from prnet.datasets.mvtec import load_rgb

    import export as export_script

    ckpt, _ = lifted_run
    detector = prnet.load_detector(ckpt, device="cpu")
    test = build_test_dataset(detector.cfg, "tiny")
    paths = [s.path for s in test.samples[:4]]
    x = torch.from_numpy(np.stack([load_rgb(p, detector.image_size) for p in paths])).permute(0, 3, 1, 2)
    want_maps, want_scores = predict_maps(detector.model, x, topk=detector.topk, sigma=detector.sigma,
                                          image_score=detector.cfg.eval.image_score, knn_weight=0.25,
                                          anomaly_map="head_knn", knn_lift=0.99)
    got = detector.predict(paths)
    np.testing.assert_allclose([r.score for r in got], want_scores.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.stack([r.anomaly_map for r in got]), want_maps[:, 0].numpy(), atol=1e-5)
    ort = pytest.importorskip("onnxruntime")
    out = str(tmp_path / "m.onnx")
    assert export_script.main(["--checkpoint", ckpt, "--out", out]) == 0
    amap, score = ort.InferenceSession(out, providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})
    np.testing.assert_allclose(score, want_scores.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(amap, want_maps.numpy(), atol=1e-4)


def test_a_stored_evaluation_of_the_heads_map_keeps_its_key():
    from real_data import eval_settings

    head = eval_settings(load_config(None, ["eval.anomaly_map=head"]).eval)
    assert "anomaly_map" not in head and "knn_lift" not in head
    lifted = eval_settings(load_config(None, []).eval)
    assert lifted["anomaly_map"] == "head_knn" and lifted["knn_lift"] == 0.99
