"""benchmarks/score_fusion.py: the candidate image-score rules compute what they claim."""
import numpy as np
import pytest

from prnet.metrics import image_auroc
from score_fusion import rules, topk_mean


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
