"""The decision threshold a run stores (eval.threshold) and the rates it reports at that threshold."""
import csv
import json
import os

import numpy as np
import pytest
import torch

import train as train_script
from prnet.config import ConfigError, load_config
from prnet.datasets import holdout_normal_names, normal_train_set
from prnet.datasets.mvtec import DatasetError
from prnet.metrics import decision_metrics, decision_threshold
from tiny_run import tiny_overrides


def test_train_max_is_the_highest_normal_score():
    assert decision_threshold(np.array([0.1, 0.7, 0.3]), "train_max") == pytest.approx(0.7)


@pytest.mark.parametrize("target", [0.01, 0.05, 0.1, 0.25, 0.5])
def test_holdout_fpr_is_the_lowest_threshold_within_the_target(target):
    scores = np.random.default_rng(0).random(200).round(2)  # ties included
    t = decision_threshold(scores, "holdout_fpr", target)
    assert (scores >= t).mean() <= target
    lower = scores[scores < t]
    if lower.size:  # the next lower score would flag more than the target allows
        assert (scores >= lower.max()).mean() > target


def test_holdout_fpr_above_every_score_when_one_image_is_too_many():
    scores = np.linspace(0, 1, 20)  # one image is 5 % of them
    t = decision_threshold(scores, "holdout_fpr", 0.01)
    assert t > scores.max() and (scores >= t).sum() == 0


def test_decision_metrics_count_flagged_images():
    m = decision_metrics([0.9, 0.2, 0.6, 0.4], [1, 1, 0, 0], threshold=0.5)
    assert m == {"defect_recall": 0.5, "false_positive_rate": 0.5}
    assert decision_metrics([0.9, 0.2], [1, 1], 0.5) == {"defect_recall": 0.5}


def test_holdout_fpr_needs_held_out_normals():
    with pytest.raises(ConfigError, match="data.holdout_normal"):
        load_config(None, ["eval.threshold=holdout_fpr"])


def test_held_out_normals_are_seeded_and_left_out_of_training(tiny_data):
    cfg = load_config(None, [f"data.root={tiny_data}", "data.holdout_normal=0.25", "data.image_size=64"])
    names = holdout_normal_names(cfg, "tiny")
    assert len(names) == 6 and names == holdout_normal_names(cfg, "tiny")
    other = load_config(None, [f"data.root={tiny_data}", "data.holdout_normal=0.25", "data.split_seed=1"])
    assert holdout_normal_names(other, "tiny") != names
    train = {s.name for s in normal_train_set(cfg, "tiny").samples}
    held = {s.name for s in normal_train_set(cfg, "tiny", held_out=True).samples}
    assert held == set(names) and not train & held and len(train) == 18
    too_many = load_config(None, [f"data.root={tiny_data}", "data.holdout_normal=0.99"])
    with pytest.raises(DatasetError, match="holdout_normal"):
        holdout_normal_names(too_many, "tiny")


def test_a_run_stores_and_reports_its_operating_point(tiny_data, tmp_path):
    out = str(tmp_path / "out")
    extra = ["data.holdout_normal=0.25", "eval.threshold=holdout_fpr", "eval.target_fpr=0.2"]
    assert train_script.main(tiny_overrides(tiny_data, out, str(tmp_path / "protos"), epochs=1, extra=extra)) == 0
    results = json.load(open(os.path.join(out, "tiny", "results.json")))
    op = results["operating_point"]
    assert op["rule"] == "holdout_fpr" and op["normal_images_used"] == 6 and op["held_out_of_training"]
    assert op["threshold"] == results["decision_threshold"] and op["target_fpr"] == 0.2
    assert 0.0 <= op["defect_recall"] <= 1.0 and 0.0 <= op["false_positive_rate"] <= 1.0
    state = torch.load(os.path.join(out, "tiny", "last.pt"), weights_only=True)
    assert state["threshold"] == pytest.approx(op["threshold"]) and state["threshold_rule"] == "holdout_fpr"
    assert state["prototype_meta"]["num_train_images"] == 18  # the held-out normals built no prototype
    with open(os.path.join(out, "results.csv")) as fh:
        row = next(csv.DictReader(fh))
    assert float(row["defect_recall"]) == pytest.approx(op["defect_recall"])
    assert float(row["false_positive_rate"]) == pytest.approx(op["false_positive_rate"])


def test_train_max_of_map_residual_scores_the_training_images_as_unseen_ones(tiny_data, tmp_path):
    """eval.image_score=map_residual: the stored train_max threshold is the highest training score with each image's
    prototype distance held out of its own cluster (knn_calibration.held_out_map_residual_scores), above the same
    images scored as test images are (their own features then part of their prototypes)."""
    from prnet.engine.checkpoint import model_from_checkpoint
    from prnet.engine.evaluator import run_inference
    from prnet.engine.knn_calibration import held_out_map_residual_scores
    from prnet.engine.prototypes import load_prototypes, prototype_path

    out = str(tmp_path / "out")
    extra = ["eval.image_score=map_residual", "eval.anomaly_map=head", "eval.examples=0"]
    assert train_script.main(tiny_overrides(tiny_data, out, str(tmp_path / "protos"), epochs=1, extra=extra)) == 0
    assert not os.path.exists(os.path.join(out, "tiny", "examples.png"))  # eval.examples=0: no figure
    model, cfg, state = model_from_checkpoint(os.path.join(out, "tiny", "last.pt"), torch.device("cpu"))
    train = normal_train_set(cfg, "tiny")
    bank = load_prototypes(prototype_path(cfg, "tiny"))  # with the training images' clusters
    held_out = held_out_map_residual_scores(model, bank, train, cfg, torch.device("cpu"))
    assert state["threshold_rule"] == "train_max" and state["threshold"] == pytest.approx(float(held_out.max()))
    seen = run_inference(model, train, cfg, torch.device("cpu"), progress=False)["scores"]
    assert seen.max() < state["threshold"]


def test_score_test_false_trains_and_calibrates_the_same_model_without_scoring_the_test_split(tiny_data, tmp_path):
    """eval.score_test=false (benchmarks/real_data.py scores the checkpoint on its own test sets): the same weights
    and the same stored threshold as a run that scores the test split, and no test metric, rate or figure."""
    runs = {}
    for score in ("true", "false"):
        out = str(tmp_path / f"out_{score}")
        extra = [f"eval.score_test={score}"]
        assert train_script.main(tiny_overrides(tiny_data, out, str(tmp_path / "protos"), epochs=1, extra=extra)) == 0
        runs[score] = (out, json.load(open(os.path.join(out, "tiny", "results.json"))))
    (scored_out, scored), (skipped_out, skipped) = runs["true"], runs["false"]
    assert scored["scored_on_test"] and set(scored["metrics"]) >= {"image_auroc", "pixel_auroc"}
    assert not skipped["scored_on_test"] and skipped["metrics"] == {} and skipped["test_images"] is None
    assert "eval_s" not in skipped["timings"] and "defect_recall" not in skipped["operating_point"]
    assert skipped["weights_fingerprints"] == scored["weights_fingerprints"]
    assert skipped["decision_threshold"] == scored["decision_threshold"]
    assert os.path.exists(os.path.join(scored_out, "tiny", "examples.png"))
    assert not os.path.exists(os.path.join(skipped_out, "tiny", "examples.png"))
    state = torch.load(os.path.join(skipped_out, "tiny", "last.pt"), weights_only=True)
    assert state["threshold"] == pytest.approx(scored["decision_threshold"])
    with open(os.path.join(skipped_out, "results.md")) as fh:
        assert "n/a" in fh.read()
