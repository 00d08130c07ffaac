"""Data checked before training: every image and mask decodes (truncated, empty, foreign and corrupt-JPEG files),
masks have their image's size and mark something, no two images share a stem, something is left to evaluate.
Each failure is one line on stderr naming the file, exit code 2, and nothing written in the output folder."""
import logging
import os
import shutil

import cv2
import numpy as np
import pytest

import create_proto_feature_maps as proto_script
import train as train_script
from prnet.datasets.checks import check_evaluable, check_samples
from prnet.datasets.demo import make_demo_category
from prnet.datasets.mvtec import DatasetError, load_rgb, scan_split


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_demo_category(str(root), "tiny", seed=3, size=64, n_train=6, n_test_good=2, n_test_bad=6)
    return str(root)


@pytest.fixture
def data(base, tmp_path):
    root = str(tmp_path / "data")
    shutil.copytree(base, root)
    return os.path.join(root, "tiny")


def _overrides(cat, out, *extra):
    return [f"data.root={os.path.dirname(cat)}", "data.classes=[tiny]", "data.image_size=64", "data.dtd_root=null",
            "data.num_anomalies=2", f"output_dir={out}", f"prototypes.dir={out}/protos",
            "model.backbone=tf_efficientnet_lite0", "model.backbone_weights=package",
            "model.head_widths=[16, 32, 64]", "train.epochs=1", "train.batch_size=4", "train.workers=0",
            "train.device=cpu", *extra]


def _refused(cat, tmp_path, capsys, *extra):
    """Run train.py on the category: exit 2, nothing written; returns the one stderr line."""
    out = str(tmp_path / "out")
    capsys.readouterr()
    assert train_script.main(_overrides(cat, out, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert not os.path.exists(out) or not os.listdir(out)
    return err[0]


def _first(cat, folder):
    d = os.path.join(cat, folder)
    return os.path.join(d, sorted(os.listdir(d))[0])


def _damaged_jpeg(png_path):
    """A cv2-encoded JPEG of the image with bytes in the middle of its entropy-coded data overwritten, and the
    clean JPEG's decoded pixels."""
    image = cv2.imread(png_path)
    clean = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    sos = clean.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(clean[sos + 2:sos + 4], "big")  # after the scan header
    mid = start + (len(clean) - 2 - start) // 2
    damaged = bytearray(clean)
    damaged[mid:mid + 24] = bytes(24)  # zeros: no marker is created, the Huffman codes are destroyed
    return bytes(damaged), cv2.imdecode(np.frombuffer(clean, np.uint8), cv2.IMREAD_COLOR)


# ------------------------------------------------------------------------------------------------ decoding
def test_a_jpeg_with_corrupt_data_is_refused_though_opencv_decodes_it(data, tmp_path, capsys):
    png = _first(data, "train/good")
    damaged, clean = _damaged_jpeg(png)
    silently = cv2.imdecode(np.frombuffer(damaged, np.uint8), cv2.IMREAD_COLOR)
    assert silently is not None and silently.shape == clean.shape  # OpenCV returns an image, no error
    h = clean.shape[0]
    top = np.abs(silently[: h // 4].astype(int) - clean[: h // 4]).mean()
    bottom = np.abs(silently[-h // 4:].astype(int) - clean[-h // 4:]).mean()
    assert top < 1 < 10 < bottom  # the first rows intact, the last ones garbage
    os.remove(png)
    bad = png[:-4] + ".jpg"
    with open(bad, "wb") as fh:
        fh.write(damaged)
    with pytest.raises(DatasetError, match="corrupt image file .*jpg"):
        load_rgb(bad)  # what every reader uses (predict.py then skips and lists the file)
    err = _refused(data, tmp_path, capsys)
    assert bad in err and "corrupt" in err
    assert proto_script.main(_overrides(data, str(tmp_path / "p"))) == 2  # the prototype script checks too
    assert bad in capsys.readouterr().err and not os.path.exists(tmp_path / "p")


@pytest.mark.parametrize("kind", ["truncated", "zero-byte", "not an image"])
def test_unreadable_files_are_one_line_each(data, tmp_path, capsys, kind):
    folder = {"truncated": "test/good", "zero-byte": "train/good", "not an image": "test/hole"}[kind]
    path = _first(data, folder)
    content = open(path, "rb").read()
    with open(path, "wb") as fh:
        fh.write({"truncated": content[: len(content) // 2], "zero-byte": b"",
                  "not an image": b"<html>not found</html>"}[kind])
    err = _refused(data, tmp_path, capsys)
    assert path in err and "cannot read image file" in err


def test_a_corrupt_mask_is_refused(data, tmp_path, capsys):
    mask = _first(data, "ground_truth/hole")
    open(mask, "wb").write(open(mask, "rb").read()[:40])
    assert mask in _refused(data, tmp_path, capsys)


# ------------------------------------------------------------------------------------------------ masks, stems
def test_a_mask_of_another_size_names_both_files(data, tmp_path, capsys):
    mask = _first(data, "ground_truth/hole")
    cv2.imwrite(mask, cv2.resize(cv2.imread(mask, cv2.IMREAD_GRAYSCALE), (32, 48), interpolation=cv2.INTER_NEAREST))
    image = os.path.join(data, "test", "hole", os.path.basename(mask).replace("_mask", ""))
    err = _refused(data, tmp_path, capsys)
    assert mask in err and image in err and "32x48" in err and "64x64" in err


def test_two_images_with_one_stem_are_refused(data, tmp_path, capsys):
    png = _first(data, "test/hole")
    twin = png[:-4] + ".jpg"
    cv2.imwrite(twin, cv2.imread(png))
    err = _refused(data, tmp_path, capsys)
    assert png in err and twin in err and "stem" in err


def test_empty_masks_warn_and_all_empty_is_refused(data, tmp_path, capsys, caplog):
    masks = sorted(os.path.join(r, f) for r, _, fs in os.walk(os.path.join(data, "ground_truth")) for f in fs)
    cv2.imwrite(masks[0], np.zeros(cv2.imread(masks[0]).shape[:2], np.uint8))
    samples = scan_split(os.path.dirname(data), "tiny", "test")
    with caplog.at_level(logging.WARNING):
        check_samples(samples, 64)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and masks[0] in warnings[0] and masks[1] not in warnings[0]
    for m in masks:
        cv2.imwrite(m, np.zeros(cv2.imread(m).shape[:2], np.uint8))
    err = _refused(data, tmp_path, capsys)
    assert "every mask" in err and os.path.join(data, "test") in err


def test_a_mask_that_vanishes_at_the_run_size_counts_as_empty(data, caplog):
    mask = _first(data, "ground_truth/hole")
    one = np.zeros((64, 64), np.uint8)
    one[1, 1] = 255  # a single pixel: lost by nearest resizing to 32x32
    cv2.imwrite(mask, one)
    samples = [s for s in scan_split(os.path.dirname(data), "tiny", "test") if s.mask_path == mask]
    samples += [s for s in scan_split(os.path.dirname(data), "tiny", "test") if s.label == 1 and s.mask_path != mask]
    with caplog.at_level(logging.WARNING):
        check_samples(samples, 64)
        assert mask not in caplog.text
        check_samples(samples, 32)
        assert mask in caplog.text


# ------------------------------------------------------------------------------------------------ enough to evaluate
def test_nothing_left_to_evaluate_is_refused_with_the_counts(data, tmp_path, capsys):
    err = _refused(data, tmp_path, capsys, "data.num_anomalies=6")
    assert f"6 defective images found in {os.path.join(data, 'test')}, data.num_anomalies=6: nothing left" in err
    err = _refused(data, tmp_path, capsys, "data.num_anomalies=9")
    assert "6 defective images found" in err and "data.num_anomalies=9" in err


def test_no_defective_images_need_a_training_only_run(data, tmp_path, capsys, caplog):
    for d in os.listdir(os.path.join(data, "test")):
        if d != "good":
            shutil.rmtree(os.path.join(data, "test", d))
    shutil.rmtree(os.path.join(data, "ground_truth"))
    err = _refused(data, tmp_path, capsys, "data.num_anomalies=0")
    assert "no defective images" in err and "eval.require_defective=false" in err
    samples = scan_split(os.path.dirname(data), "tiny", "test")
    with caplog.at_level(logging.WARNING):
        check_evaluable(samples, 2, require_defective=False)
    assert "training only" in caplog.text


def test_a_training_only_run_reports_no_metric_rather_than_nan(data, tmp_path):
    """eval.require_defective=false on a test split of normal images: training runs, no image or pixel metric is
    reported (n/a, never NaN), the false-positive rate at the stored threshold is."""
    import json

    for d in os.listdir(os.path.join(data, "test")):
        if d != "good":
            shutil.rmtree(os.path.join(data, "test", d))
    shutil.rmtree(os.path.join(data, "ground_truth"))
    out = str(tmp_path / "out")
    args = _overrides(data, out, "data.num_anomalies=0", "eval.require_defective=false", "eval.topk=10")
    assert train_script.main(args) == 0
    results = json.load(open(os.path.join(out, "tiny", "results.json")))
    assert results["metrics"] == {}
    assert set(results["operating_point"]) >= {"false_positive_rate"} and "defect_recall" not in results["operating_point"]
    with open(os.path.join(out, "results.md")) as fh:
        table = fh.read()
    assert "nan" not in table.lower() and "n/a" in table
