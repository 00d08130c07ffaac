"""End to end on a tiny generated category: train.py, outputs, refusal to overwrite, resume, predict.py, export.py.

One short training run (module fixture) serves the output, predict and export tests; resume has its own runs.
"""
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import export as export_script
import predict as predict_script
import train as train_script
from tiny_run import tiny_overrides, train_killed_after_first_epoch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    work = tmp_path_factory.mktemp("run")
    out, protos = str(work / "out"), str(work / "protos")
    code = train_script.main(tiny_overrides(tiny_data, out, protos, epochs=3))
    assert code == 0
    return {"root": tiny_data, "out": out, "protos": protos, "work": work}


def test_training_writes_every_output_and_learns(trained):
    out = trained["out"]
    cat = os.path.join(out, "tiny")
    for name in ("last.pt", "results.json", "train_log.csv", "loss.png", "examples.png", "config.yaml"):
        assert os.path.getsize(os.path.join(cat, name)) > 0, name
    for name in ("results.csv", "results.md", "config.yaml"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    results = json.load(open(os.path.join(cat, "results.json")))
    assert set(results["metrics"]) == {"image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro"}
    # learned something: clearly above chance (0.5), not an exact figure
    assert results["metrics"]["image_auroc"] > 0.75
    assert results["metrics"]["pixel_auroc"] > 0.75
    # the real anomalies used for training are listed and excluded from evaluation
    used = results["real_anomalies_used_for_training"]
    assert len(used) == 3 and sorted(used) == sorted(results["excluded_from_evaluation"])
    assert results["test_images"] == {"normal": 8, "defective": 12 - 3}
    assert results["evaluation_resolution"] == [64, 64]
    with open(os.path.join(cat, "train_log.csv")) as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    # each epoch names its inputs and the weights after it: other samples and other weights every epoch
    prints = results["epoch_fingerprints"]
    assert [p["epoch"] for p in prints] == [1, 2, 3]
    assert len({p["batches_sha1"] for p in prints}) == 3 and len({p["weights_sha256"] for p in prints}) == 3
    assert prints[-1]["weights_sha256"] == results["weights_fingerprints"][0]
    with open(os.path.join(out, "results.csv")) as fh:
        table = list(csv.DictReader(fh))
    assert [r["category"] for r in table] == ["tiny", "mean"]


def test_existing_outputs_are_not_overwritten(trained, capsys):
    before = os.path.getmtime(os.path.join(trained["out"], "tiny", "last.pt"))
    code = train_script.main(tiny_overrides(trained["root"], trained["out"], trained["protos"]))
    assert code == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "train.resume=true" in err and "train.overwrite=true" in err
    assert os.path.getmtime(os.path.join(trained["out"], "tiny", "last.pt")) == before


@pytest.mark.parametrize("override, fragment", [
    ("train.epochs=many", "'train.epochs': expected an integer"),
    ("train.nope=1", "unknown config key 'train.nope'"),
])
def test_bad_config_is_one_line_and_exit_2(override, fragment, capsys):
    assert train_script.main([override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0]


def test_missing_root_and_unknown_category_exit_2(tmp_path, tiny_data, capsys):
    assert train_script.main([f"data.root={tmp_path / 'nowhere'}", "data.classes=[tiny]"]) == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err
    assert train_script.main([f"data.root={tiny_data}", "data.classes=[tinny]"]) == 2
    err = capsys.readouterr().err
    assert "tinny" in err and "tiny" in err


def test_resume_after_a_kill_gives_the_same_weights(tiny_data, tmp_path, monkeypatch):
    protos = str(tmp_path / "protos")
    # bitwise equality is a CPU promise (GPU kernels may be nondeterministic)
    extra = ["synthesis.perlin_ratio=0.25", "synthesis.extended_ratio=0.25", "train.device=cpu"]
    full_out, cut_out = str(tmp_path / "full"), str(tmp_path / "cut")
    assert train_script.main(tiny_overrides(tiny_data, full_out, protos, epochs=2, extra=extra)) == 0

    train_killed_after_first_epoch(monkeypatch, tiny_overrides(tiny_data, cut_out, protos, epochs=2, extra=extra))
    assert torch.load(os.path.join(cut_out, "tiny", "last.pt"), weights_only=True)["epoch"] == 1
    assert train_script.main(tiny_overrides(tiny_data, cut_out, protos, epochs=2, extra=[*extra, "train.resume=true"])) == 0

    a = torch.load(os.path.join(full_out, "tiny", "last.pt"), weights_only=True)["model"]
    b = torch.load(os.path.join(cut_out, "tiny", "last.pt"), weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        if torch.is_tensor(a[k]):  # bitwise; NaN where unset (the nearest-neighbour memory's unused mean)
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, equal_nan=True, msg=k)
    with open(os.path.join(cut_out, "tiny", "train_log.csv")) as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1, 2]
    # the per-epoch fingerprints agree: the same inputs in the same order and the same weights after each epoch
    full, cut = (json.load(open(os.path.join(o, "tiny", "results.json")))["epoch_fingerprints"]
                 for o in (full_out, cut_out))
    assert full == cut and len(full) == 2 and all(p["batches_sha1"] and p["weights_sha256"] for p in full)


def test_non_finite_loss_stops_with_epoch_and_step(tiny_data, tmp_path, monkeypatch, caplog):
    from prnet import losses

    real_forward = losses.PRNetLoss.forward
    calls = {"n": 0}

    def poisoned(self, logits, mask):
        calls["n"] += 1
        total, terms = real_forward(self, logits, mask)
        return (total * float("nan"), terms) if calls["n"] == 2 else (total, terms)

    monkeypatch.setattr(losses.PRNetLoss, "forward", poisoned)
    out = str(tmp_path / "out")
    code = train_script.main(tiny_overrides(tiny_data, out, str(tmp_path / "protos"), epochs=1))
    assert code == 1
    assert "non-finite loss at epoch 1, step 2" in caplog.text
    assert not os.path.exists(os.path.join(out, "tiny", "last.pt"))


def test_predict_scores_images_and_reports_unreadable_ones(trained, tmp_path):
    ckpt = os.path.join(trained["out"], "tiny", "last.pt")
    src = tmp_path / "in"
    shutil.copytree(os.path.join(trained["root"], "tiny", "test"), src)
    (src / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "pred"
    code = predict_script.main(["--checkpoint", ckpt, "--input", str(src), "--output", str(out)])
    assert code == 1  # one unreadable file, the rest processed
    with open(out / "scores.csv") as fh:
        rows = list(csv.DictReader(fh))
    n_images = sum(len(files) for _, _, files in os.walk(os.path.join(trained["root"], "tiny", "test")))
    assert len(rows) == n_images
    assert all(r["anomalous"] in ("yes", "no") for r in rows)
    pngs = [f for _, _, names in os.walk(out) for f in names if f.endswith(".png")]  # pictures mirror sub-folders
    assert len(pngs) == n_images
    # defective images score higher on average than good ones
    good = [float(r["score"]) for r in rows if "/good/" in r["path"]]
    bad = [float(r["score"]) for r in rows if "/good/" not in r["path"]]
    assert np.mean(bad) > np.mean(good)


def test_predict_bad_inputs(trained, tmp_path, capsys):
    ckpt = os.path.join(trained["out"], "tiny", "last.pt")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert predict_script.main(["--checkpoint", ckpt, "--input", str(empty), "--output", str(tmp_path / "o")]) == 2
    assert "no image files" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    img = os.path.join(trained["root"], "tiny", "train", "good")
    assert predict_script.main(["--checkpoint", str(bad), "--input", img, "--output", str(tmp_path / "o")]) == 2
    assert "bad.pt could not be read" in capsys.readouterr().err


def test_onnx_export_matches_pytorch(trained, tmp_path):
    import onnxruntime as ort

    from prnet.engine.checkpoint import model_from_checkpoint
    from prnet.engine.evaluator import predict_maps

    ckpt = os.path.join(trained["out"], "tiny", "last.pt")
    onnx_path = str(tmp_path / "model.onnx")
    assert export_script.main(["--checkpoint", ckpt, "--out", onnx_path]) == 0
    model, cfg, _ = model_from_checkpoint(ckpt, torch.device("cpu"))
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # batch 3: the axis is dynamic
    maps, scores = predict_maps(model, x, topk=cfg.eval.topk, sigma=cfg.eval.sigma, image_score=cfg.eval.image_score,
                                knn_weight=cfg.eval.knn_weight, anomaly_map=cfg.eval.anomaly_map,
                                knn_lift=cfg.eval.knn_lift)
    # the default: the distance map, the nearest-neighbour memory, statistics and map table inside the graph
    assert cfg.eval.image_score == "map_residual_knn" and model.knn.is_calibrated
    assert cfg.eval.anomaly_map == "head_knn" and model.knn.map_made_for(cfg.eval.knn_lift, cfg.eval.sigma)
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    onnx_maps, onnx_scores = session.run(None, {"image": x.numpy()})
    assert onnx_maps.shape == (3, 1, 64, 64)
    assert np.abs(onnx_maps - maps.numpy()).max() < 1e-3
    assert np.abs(onnx_scores - scores.numpy()).max() < 1e-3


def test_create_proto_feature_maps_skips_existing_unless_forced(tiny_data, tmp_path):
    protos = str(tmp_path / "protos")
    args = [sys.executable, os.path.join(REPO, "create_proto_feature_maps.py"), f"data.root={tiny_data}",
            "data.classes=[tiny]", "data.image_size=64", f"prototypes.dir={protos}",
            "model.backbone=tf_efficientnet_lite0", "model.backbone_weights=package", "train.workers=0"]
    first = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert first.returncode == 0, first.stderr
    path = os.path.join(protos, "tf_efficientnet_lite0_64x64", "tiny.pt")
    stamp = os.path.getmtime(path)
    again = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert again.returncode == 0 and os.path.getmtime(path) == stamp
    assert "skip" in (again.stderr + again.stdout).lower()
    forced = subprocess.run([*args, "--force"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert forced.returncode == 0 and os.path.getmtime(path) > stamp
    # a file from before held-out residuals (no cluster assignments) is refused, named, and --force rebuilds it
    payload = torch.load(path, weights_only=True)
    assert [a.shape[0] for a in payload["assign"]] == [len(payload["meta"]["train_images"])] * 3
    payload["assign"] = None
    torch.save(payload, path)
    stale = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert stale.returncode == 2 and "tiny.pt" in stale.stderr and "--force" in stale.stderr
    assert subprocess.run([*args, "--force"], capture_output=True, text=True, cwd=REPO, timeout=300).returncode == 0
    assert torch.load(path, weights_only=True)["assign"] is not None


def test_two_gloo_processes_train_to_identical_weights(tiny_data, tmp_path):
    """torchrun --nproc_per_node=2 on the CPU: DDP over gloo, one checkpoint and one report, equal weights."""
    out = str(tmp_path / "ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           os.path.join(REPO, "train.py"),
           *tiny_overrides(tiny_data, out, str(tmp_path / "protos"), epochs=1, extra=["train.device=cpu"])]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.load(open(os.path.join(out, "tiny", "results.json")))
    assert results["world_size"] == 2
    prints = results["weights_fingerprints"]
    assert len(prints) == 2 and prints[0] == prints[1]
    files = [os.path.relpath(os.path.join(d, f), out) for d, _, names in os.walk(out) for f in names]
    assert sorted(f for f in files if f.endswith(".pt")) == ["tiny/last.pt"]
    assert sorted(f for f in files if f.endswith("results.json")) == ["tiny/results.json"]
    assert not [f for f in files if ".tmp" in f]
    # the evaluation split across the two ranks and gathered equals one process evaluating everything
    from prnet.datasets import build_test_dataset
    from prnet.engine.checkpoint import model_from_checkpoint
    from prnet.engine.evaluator import evaluate

    model, cfg, _ = model_from_checkpoint(os.path.join(out, "tiny", "last.pt"), torch.device("cpu"))
    single, _ = evaluate(model, build_test_dataset(cfg, "tiny"), cfg, torch.device("cpu"), progress=False)
    # float32 maps from other batch compositions differ by ~1e-7, which moves pixel AP over many near-tied pixels by
    # a few 1e-6; a lost or doubled image moves it by far more
    assert single == pytest.approx(results["metrics"], abs=5e-5)


def test_monitoring_during_training_scores_without_what_is_made_after_it(tiny_data, tmp_path):
    # train.eval_every with the default image score: the nearest-neighbour memory does not exist before the last
    # epoch, so the monitoring pass scores map_residual and the head's map instead of failing mid-run
    out, protos = str(tmp_path / "out"), str(tmp_path / "protos")
    assert train_script.main(tiny_overrides(tiny_data, out, protos, epochs=2, extra=["train.eval_every=1"])) == 0
    state = torch.load(os.path.join(out, "tiny", "last.pt"), map_location="cpu", weights_only=False)
    first = state["history"][0]
    assert 0.0 <= first["monitor_image_auroc"] <= 1.0 and 0.0 <= first["monitor_pixel_auroc"] <= 1.0
    assert "monitor_image_auroc" not in state["history"][1]  # the last epoch is evaluated once, after training
    assert state["config"]["eval"]["image_score"] == "map_residual_knn"  # the run's own settings are kept
