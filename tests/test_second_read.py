"""The head's second read at another size (eval.second_read): its size, its part of the image score, and that every
path (evaluation, the threshold, the Python API, ONNX, a reloaded checkpoint) scores with it alike."""
import json
import os

import cv2
import numpy as np
import pytest
import torch

import prnet
from prnet.config import ConfigError, load_config
from prnet.datasets import build_test_dataset, normal_train_set
from prnet.datasets.demo import make_demo_category
from prnet.datasets.mvtec import load_rgb
from prnet.engine.checkpoint import load_checkpoint, model_from_checkpoint
from prnet.engine.evaluator import map_residual_scores, predict_maps, run_inference, second_read_outputs, \
    second_weight_of
from prnet.engine.second_read import AUTO_MIN_ASPECT, auto_size, resolve_second_read, with_second_read
from prnet.metrics import image_auroc
from prnet.models.knn_score import EPS

from tiny_run import train_tiny_run


def _widen(folder: str, width: int) -> None:
    """Resize every PNG under `folder` to `width` wide, keeping its height (masks: nearest)."""
    for dirpath, _, files in os.walk(folder):
        for f in files:
            if f.endswith(".png"):
                path = os.path.join(dirpath, f)
                image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
                interp = cv2.INTER_NEAREST if "ground_truth" in dirpath else cv2.INTER_LINEAR
                cv2.imwrite(path, cv2.resize(image, (width, image.shape[0]), interpolation=interp))


@pytest.fixture(scope="module")
def wide_data(tmp_path_factory):
    """The tiny category with every image 2.5 times as wide as high (64×160)."""
    root = str(tmp_path_factory.mktemp("wide"))
    make_demo_category(root, "tiny", seed=1, size=64, n_train=24, n_test_good=8, n_test_bad=12)
    _widen(root, 160)
    return root


@pytest.fixture(scope="module")
def wide_run(wide_data, tmp_path_factory):
    """A 1-epoch run at 64×64 on the wide images with eval.second_read=auto: it reads them again at 64×160."""
    ckpt, results = train_tiny_run(wide_data, tmp_path_factory.mktemp("wide_run"), extra=["eval.second_read=auto"])
    return ckpt, results


def test_auto_reads_again_only_square_runs_of_images_far_from_square():
    assert auto_size((256, 256), [1130 / 460] * 5) == [256, 640]  # BSData's shots
    assert auto_size((256, 256), [460 / 1130] * 5) == [640, 256]  # the same, standing
    assert auto_size((256, 256), [1.15] * 5) == "none"  # Magnetic Tile's median aspect
    assert auto_size((256, 256), [AUTO_MIN_ASPECT] * 3) == [256, 384]
    assert auto_size((256, 256), [1.0, 1.0, 3.0]) == "none"  # the median decides
    assert auto_size((256, 512), [2.5] * 3) == "none"  # the run chose its aspect itself
    assert auto_size((64, 64), [2.5]) == [64, 160]


def test_the_second_read_key_is_checked():
    assert load_config(None, []).eval.second_read == "auto" and load_config(None, []).eval.second_weight == 1.0
    assert load_config(None, ["eval.second_read=[256,640]"]).eval.second_read == [256, 640]
    for bad, words in (("eval.second_read=wide", "auto or none"), ("eval.second_read=[250,640]", "multiples of 32"),
                       ("eval.second_read=[256]", "[h, w]"), ("eval.second_weight=-1", "second_weight")):
        with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
            load_config(None, [bad])
    with pytest.raises(ConfigError, match="map_residual_knn"):
        load_config(None, ["eval.second_read=[256,640]", "eval.image_score=map_residual"])
    with pytest.raises(ConfigError, match="patch_memory"):
        load_config(None, ["eval.second_read=[256,640]", "prototypes.patch_memory=1000"])


def test_auto_resolves_from_the_training_images(wide_data, tiny_data):
    wide = load_config(None, [f"data.root={wide_data}", "data.classes=[tiny]", "data.image_size=64",
                              "eval.second_read=auto"])
    assert resolve_second_read(wide, "tiny") == [64, 160]
    assert with_second_read(wide, "tiny").eval.second_read == [64, 160] and wide.eval.second_read == "auto"
    square = load_config(None, [f"data.root={tiny_data}", "data.classes=[tiny]", "data.image_size=64",
                                "eval.second_read=auto"])
    assert resolve_second_read(square, "tiny") == "none"
    other_score = load_config(None, [f"data.root={wide_data}", "data.classes=[tiny]", "data.image_size=64",
                                     "eval.image_score=map_residual", "eval.second_read=auto"])
    assert resolve_second_read(other_score, "tiny") == "none"
    memory = load_config(None, [f"data.root={wide_data}", "data.classes=[tiny]", "data.image_size=64",
                                "prototypes.patch_memory=50", "eval.second_read=auto"])
    assert resolve_second_read(memory, "tiny") == "none"  # a size would be refused with a patch memory
    with pytest.raises(ValueError, match="auto is resolved"):  # never scored silently without it
        second_weight_of(wide)


def test_a_run_stores_its_resolved_read_and_its_statistics(wide_run):
    ckpt, results = wide_run
    assert results["second_read"] == [64, 160]
    state = load_checkpoint(ckpt)
    assert state["config"]["eval"]["second_read"] == [64, 160]
    model, cfg, _ = model_from_checkpoint(ckpt, torch.device("cpu"))
    assert model.second is not None and model.second.is_calibrated and model.second.hw == (64, 160)
    assert model.second.bank.prototypes[0].shape[-1] == 2.5 * model.bank.prototypes[0].shape[-1]
    # the statistics are those of the held-out training images' log s_w
    train = normal_train_set(load_config(None, [f"data.root={cfg.data.root}", "data.classes=[tiny]",
                                                "data.image_size=[64,160]", f"prototypes.dir={cfg.prototypes.dir}"]),
                             "tiny")
    from prnet.engine.prototypes import load_matching
    from prnet.engine.second_read import second_read_config
    bank = load_matching(second_read_config(cfg), "tiny")
    model.second.bank = bank  # the file's bank: the same prototypes, with the training images' clusters
    x = torch.stack([train[i]["image"] for i in range(len(train))])
    with torch.no_grad():
        s_w = map_residual_scores(*second_read_outputs(model, x, torch.arange(len(train))), cfg.eval.topk,
                                  cfg.eval.sigma)
    logs = np.log(s_w.double().numpy() + EPS)
    np.testing.assert_allclose(model.second.stats.numpy(), [logs.mean(), logs.std()], rtol=1e-4, atol=1e-5)


def test_the_second_read_is_a_part_of_every_score(wide_run, tmp_path):
    ckpt, results = wide_run
    model, cfg, _ = model_from_checkpoint(ckpt, torch.device("cpu"))
    test = build_test_dataset(cfg, "tiny")
    with_read = run_inference(model, test, cfg, torch.device("cpu"), progress=False)
    # the same scores without the read, plus its weighted z, computed from the images read at 64×160 from the files
    paths = [s.path for s in test.samples]
    x = torch.from_numpy(np.stack([load_rgb(p, (64, 64)) for p in paths])).permute(0, 3, 1, 2)
    x2 = torch.from_numpy(np.stack([load_rgb(p, (64, 160)) for p in paths])).permute(0, 3, 1, 2)
    kw = dict(topk=cfg.eval.topk, sigma=cfg.eval.sigma, image_score=cfg.eval.image_score,
              knn_weight=cfg.eval.knn_weight, anomaly_map=cfg.eval.anomaly_map, knn_lift=cfg.eval.knn_lift)
    maps_without, without = predict_maps(model, x, **kw)
    with torch.no_grad():
        s_w = map_residual_scores(*second_read_outputs(model, x2), cfg.eval.topk, cfg.eval.sigma)
    st = model.second.stats.double().numpy()
    part = cfg.eval.second_weight * (np.log(s_w.double().numpy() + EPS) - st[0]) / (st[1] + EPS)
    assert np.abs(part).max() > 1e-3  # it moves the scores
    np.testing.assert_allclose(with_read["scores"], without.numpy() + part, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(with_read["maps"], maps_without[:, 0].numpy(), atol=1e-4)  # the first read's map
    assert results["metrics"]["image_auroc"] == pytest.approx(image_auroc(with_read["scores"], with_read["labels"]),
                                                              abs=1e-6)  # what the run reported
    # the Python API reads each file at both sizes itself
    detector = prnet.load_detector(ckpt, device="cpu")
    got = detector.predict(paths, batch_size=7)
    np.testing.assert_allclose([r.score for r in got], with_read["scores"], rtol=1e-4, atol=1e-4)
    # without the images at the second size the score is refused, not made without them
    with pytest.raises(ValueError, match="second_images"):
        predict_maps(model, x, **kw, second_weight=cfg.eval.second_weight)
    # ONNX: the second input carries them
    ort = pytest.importorskip("onnxruntime")
    import export as export_script
    out = str(tmp_path / "m.onnx")
    assert export_script.main(["--checkpoint", ckpt, "--out", out]) == 0
    session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "image2"]
    _, onnx_scores = session.run(None, {"image": x[:5].numpy(), "image2": x2[:5].numpy()})
    np.testing.assert_allclose(onnx_scores, with_read["scores"][:5], rtol=1e-3, atol=1e-3)
    import onnx
    meta = {p.key: json.loads(p.value) for p in onnx.load(out).metadata_props}
    assert meta["second_read"] == [64, 160] and meta["second_weight"] == cfg.eval.second_weight


def test_the_threshold_counts_the_second_read(wide_run):
    ckpt, results = wide_run
    model, cfg, state = model_from_checkpoint(ckpt, torch.device("cpu"))
    from prnet.engine.knn_calibration import calibrate_knn_score
    from prnet.engine.prototypes import run_prototype_file
    from prnet.engine.second_read import calibrate_second_read
    bank, train = run_prototype_file(model, cfg, "tiny")
    fused = calibrate_knn_score(model, bank, train, cfg, torch.device("cpu"))
    part = calibrate_second_read(model, cfg, "tiny", torch.device("cpu"))
    assert cfg.eval.threshold == "train_max"
    assert state["threshold"] == pytest.approx(float(np.max(fused + part)), rel=1e-5, abs=1e-5)
    assert state["threshold"] != pytest.approx(float(np.max(fused)), rel=1e-5, abs=1e-5)


def test_square_images_are_read_once(tiny_data, tmp_path):
    from tiny_run import tiny_overrides
    import train as train_script

    out, protos = str(tmp_path / "out"), str(tmp_path / "protos")
    assert train_script.main(tiny_overrides(tiny_data, out, protos, epochs=1, extra=["eval.second_read=auto"])) == 0
    results = json.load(open(os.path.join(out, "tiny", "results.json")))
    assert results["second_read"] == "none"
    model, cfg, _ = model_from_checkpoint(os.path.join(out, "tiny", "last.pt"), torch.device("cpu"))
    assert model.second is None and cfg.eval.second_read == "none"
    assert sorted(os.listdir(protos)) == ["tf_efficientnet_lite0_64x64"]  # no second bank was built


def test_create_proto_feature_maps_also_builds_the_second_reads_bank(wide_data, tmp_path):
    import create_proto_feature_maps as protos_script

    protos = str(tmp_path / "protos")
    args = [f"data.root={wide_data}", "data.classes=[tiny]", "data.image_size=64", f"prototypes.dir={protos}",
            "model.backbone=tf_efficientnet_lite0", "model.backbone_weights=package", "train.workers=0"]
    assert protos_script.main(args + ["eval.second_read=none"]) == 0  # one bank
    assert sorted(os.listdir(protos)) == ["tf_efficientnet_lite0_64x64"]
    assert protos_script.main(args) == 0  # the default, auto: the first is kept, the second built
    assert sorted(os.listdir(protos)) == ["tf_efficientnet_lite0_64x160", "tf_efficientnet_lite0_64x64"]
    assert os.path.isfile(os.path.join(protos, "tf_efficientnet_lite0_64x160", "tiny.pt"))


def test_statistics_for_other_settings_are_refused_and_made_again(wide_run):
    import copy

    from prnet.engine.second_read import attach_second_read

    ckpt, _ = wide_run
    model, cfg, _ = model_from_checkpoint(ckpt, torch.device("cpu"))
    other = copy.deepcopy(cfg)
    other.eval.topk = cfg.eval.topk + 5
    with pytest.raises(RuntimeError, match="attach_second_read"):
        model.second.z(torch.ones(2), other.eval.topk, other.eval.sigma)
    assert not attach_second_read(model, cfg, "tiny", torch.device("cpu"))  # made for the run's settings already
    assert attach_second_read(model, other, "tiny", torch.device("cpu"))
    assert model.second.made_for(other.eval.topk, other.eval.sigma)
    none = copy.deepcopy(cfg)
    none.eval.second_read = "none"
    assert not attach_second_read(model, none, "tiny", torch.device("cpu")) and model.second is None
