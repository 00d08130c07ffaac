"""The Python API (prnet.load_detector / Detector.predict), the ONNX metadata, and `pip install .` + import."""
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import prnet
from prnet.datasets.mvtec import DatasetError, load_rgb
from prnet.engine.evaluator import predict_maps
from prnet.inference import DEFAULT_THRESHOLD_RULE, Detector
from tiny_checkpoint import SIZE, make_tiny_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rgb(seed, h, w):
    rng = np.random.default_rng(seed)
    image = (rng.random((h, w, 3)) * 80 + 60).astype(np.uint8)
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    image[y:y + h // 3, x:x + w // 3] = 250  # a bright patch, so maps and scores differ between images
    return image


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "tiny.pt"), threshold=0.5)


@pytest.fixture(scope="module")
def detector(ckpt):
    return prnet.load_detector(ckpt, "cpu", batch_size=2)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("img")
    paths = []
    for k, (h, w) in enumerate([(64, 64), (90, 130), (40, 50)]):
        path = str(d / f"{k}.png")
        cv2.imwrite(path, cv2.cvtColor(_rgb(k, h, w), cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def _reference(detector, path):
    """Score and training-size map computed directly: load_rgb at the training size, then predict_maps."""
    x = torch.from_numpy(load_rgb(path, SIZE)).permute(2, 0, 1)[None].contiguous()
    maps, scores = predict_maps(detector.model, x, topk=detector.topk, sigma=detector.sigma,
                                image_score=detector.image_score)
    return float(scores[0]), maps


def test_path_score_equals_evaluation_and_map_has_the_input_size(detector, files):
    for path in files:
        r = detector.predict(path)
        score, maps = _reference(detector, path)
        h, w = cv2.imread(path).shape[:2]
        assert r.score == pytest.approx(score, abs=1e-6)
        assert r.anomaly_map.shape == (h, w) and r.anomaly_map.dtype == np.float32
        expected = F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
        assert np.abs(r.anomaly_map - expected).max() < 1e-6
        assert r.source == path and r.anomalous == (r.score >= 0.5)
    # the 64×64 input is at the training size: its map is the evaluation map itself
    assert np.abs(detector.predict(files[0]).anomaly_map - _reference(detector, files[0])[1][0, 0].numpy()).max() < 1e-6


def test_every_input_form_gives_the_same_result(detector, files):
    path = files[1]
    rgb = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    base = detector.predict(path)
    alpha = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    for item in (rgb, rgb.astype(np.float64) / 255.0, Image.fromarray(rgb), alpha, Image.fromarray(alpha)):
        r = detector.predict(item)
        assert r.score == pytest.approx(base.score, abs=1e-5)
        assert np.abs(r.anomaly_map - base.anomaly_map).max() < 1e-5
    grey = rgb[..., 1]
    for item in (grey, Image.fromarray(grey), np.repeat(grey[..., None], 3, axis=2)):
        assert detector.predict(item).score == pytest.approx(detector.predict(np.dstack([grey] * 3)).score, abs=1e-6)
    assert detector.predict(rgb).source == "<array>"


def test_batches_equal_single_images_in_order(detector, files):
    singles = [detector.predict(p) for p in files]
    for batch_size in (1, 2, 8):
        batch = detector.predict(files, batch_size=batch_size)
        assert isinstance(batch, list) and [r.source for r in batch] == files
        for a, b in zip(batch, singles):
            assert a.score == pytest.approx(b.score, abs=1e-5) and a.anomaly_map.shape == b.anomaly_map.shape
    stack = np.stack([_rgb(5, 48, 48), _rgb(6, 48, 48)])  # N×H×W×3: a batch
    as_array = detector.predict(stack)
    assert len(as_array) == 2 and as_array[1].score == pytest.approx(detector.predict(stack[1]).score, abs=1e-5)
    assert len({round(r.score, 6) for r in singles}) > 1  # the images really score differently


def test_threshold_stored_given_or_absent(ckpt, detector, files):
    # save_checkpoint writes no threshold_rule (as in checkpoints from before rules existed): the default rule
    assert (detector.threshold, detector.threshold_rule) == (0.5, DEFAULT_THRESHOLD_RULE)
    scores = sorted(r.score for r in detector.predict(files))
    cut = (scores[0] + scores[1]) / 2
    given = prnet.load_detector(ckpt, "cpu", threshold=cut)
    decisions = [r.anomalous for r in given.predict(files)]
    assert sorted(decisions) == [False, True, True]
    r = given.predict(files[0])
    assert (r.threshold, r.threshold_rule, r.anomalous) == (cut, "given", r.score >= cut)
    state = {"threshold": 0.25, "threshold_rule": "fpr"}
    named = Detector(detector.model, detector.cfg, state).predict(files[0])
    assert (named.threshold, named.threshold_rule) == (0.25, "fpr")
    r = Detector(detector.model, detector.cfg, {"threshold": None}).predict(files[0])
    assert (r.anomalous, r.threshold, r.threshold_rule) == (None, None, None) and 0 <= r.score <= 1


def test_bad_inputs_are_named(detector, tmp_path):
    with pytest.raises(DatasetError, match=r"float pixels must lie in \[0, 1\]"):
        detector.predict(np.full((20, 20, 3), 200.0))
    for dtype in (np.int64, np.int32, np.int16):  # 0-255 values in a wide integer type are not scaled by its maximum
        with pytest.raises(DatasetError, match=f"integer pixels of type {np.dtype(dtype)}: pass uint8"):
            detector.predict(np.full((20, 20, 3), 200, dtype))
    for shape in ((20,), (3, 20, 20), (4, 20, 20)):  # not H×W(×C): channels first, or a grey stack
        with pytest.raises(DatasetError, match=r"expected H×W or H×W×C with C in 1-4"):
            detector.predict(np.zeros(shape, np.uint8))
    with pytest.raises(TypeError, match="expected a file path, a PIL image or a numpy array, got dict"):
        detector.predict({"image": 1})
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="broken.png"):
        detector.predict([np.zeros((8, 8, 3), np.uint8), str(broken)])


def test_detector_from_a_model_in_memory(detector, files):
    state = {"threshold": 0.1, "prototype_meta": {"category": "x"}}
    d = Detector(detector.model, detector.cfg, state, "cpu")
    assert d.category == "x" and d.predict(files[0]).score == pytest.approx(detector.predict(files[0]).score)


def test_onnx_metadata_records_the_operating_point(ckpt, detector):
    onnx = pytest.importorskip("onnx")
    import export as export_script

    out = os.path.join(os.path.dirname(ckpt), "m.onnx")
    assert export_script.main(["--checkpoint", ckpt, "--out", out]) == 0
    meta = {p.key: json.loads(p.value) for p in onnx.load(out).metadata_props}
    assert meta["threshold"] == 0.5 and meta["threshold_rule"] == DEFAULT_THRESHOLD_RULE
    assert meta["image_size"] == [SIZE, SIZE] and meta["topk"] == 10 and meta["sigma"] == 1.0
    assert meta["category"] == "tiny" and meta["backbone"] == "tf_efficientnet_lite0"
    # the same fields from other checkpoint states (no export needed to check them)
    state = {"threshold": None, "threshold_rule": "fpr", "prototype_meta": {"category": "tiny"}}
    bare = {k: json.loads(v) for k, v in export_script.onnx_metadata(detector.cfg, state).items()}
    assert bare["threshold"] is None and bare["threshold_rule"] is None
    state["threshold"] = 0.3
    named = {k: json.loads(v) for k, v in export_script.onnx_metadata(detector.cfg, state).items()}
    assert (named["threshold"], named["threshold_rule"]) == (0.3, "fpr")


def test_pip_install_then_the_api_from_another_directory(ckpt, files, detector, tmp_path):
    """`pip install .` into a fresh venv (system site-packages for torch & co.), then import prnet elsewhere.
    Bounded to ~30 s by the subprocess timeouts (install ~5 s, the scoring process ~10 s on 2 cores)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), src / name)
    shutil.copytree(os.path.join(REPO, "prnet"), src / "prnet", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
                   check=True, timeout=30)
    python = str(venv / ("Scripts" if os.name == "nt" else "bin") / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    install = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
                              "--no-build-isolation", "--no-index", "-q", str(src)],
                             capture_output=True, text=True, env=env, timeout=60)
    assert install.returncode == 0, install.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import json, sys, prnet; d = prnet.load_detector(sys.argv[1], 'cpu'); r = d.predict(sys.argv[2]); "
            "print(json.dumps({'file': prnet.__file__, 'score': r.score, 'shape': list(r.anomaly_map.shape), "
            "'anomalous': r.anomalous}))")
    run = subprocess.run([python, "-c", code, ckpt, files[1]], capture_output=True, text=True, cwd=str(elsewhere),
                         env=env, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["file"].startswith(str(venv))  # the installed copy, not the source tree
    expected = detector.predict(files[1])
    assert got["score"] == pytest.approx(expected.score, abs=1e-6)
    assert got["shape"] == [90, 130] and got["anomalous"] == expected.anomalous
