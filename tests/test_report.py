import csv

import cv2
import numpy as np
import pytest
import torch

from prnet.report import (append_csv_row, examples_grid, heatmap_overlay, loss_columns, plot_loss,
                          save_prediction_figure, select_examples, write_results_tables)

KEYS = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro")


def test_results_tables_with_mean_row(tmp_path):
    rng = np.random.default_rng(0)
    rows = [dict(category=c, **{k: float(rng.random()) for k in KEYS}) for c in ("bottle", "cable", "demo")]
    md = write_results_tables(rows, str(tmp_path))
    with open(tmp_path / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["category"] for r in table] == ["bottle", "cable", "demo", "mean"]
    for k in KEYS:
        assert float(table[-1][k]) == pytest.approx(np.mean([r[k] for r in rows]), abs=1e-15)
        assert float(table[0][k]) == rows[0][k]  # full precision in the csv
    assert (tmp_path / "results.md").read_text() == md
    lines = md.strip().splitlines()
    assert lines[0].split("|")[1].strip() == "category" and len(lines) == 2 + 4
    mean_cells = [c.strip() for c in lines[-1].strip("|").split("|")]
    assert mean_cells[0] == "mean"
    assert mean_cells[1:] == [f"{np.mean([r[k] for r in rows]):.3f}" for k in KEYS]
    with pytest.raises(ValueError, match="'cable' lacks"):
        write_results_tables([rows[0], {"category": "cable", "image_auroc": 0.5}], str(tmp_path))


def test_append_csv_row_writes_the_header_once(tmp_path):
    path = str(tmp_path / "log" / "train_log.csv")
    for epoch in range(3):
        append_csv_row(path, {"epoch": epoch, "loss": 1.0 / (epoch + 1), "lr": np.float64(1e-3)})
    text = open(path).read().splitlines()
    assert text[0] == "epoch,loss,lr" and len(text) == 4
    rows = list(csv.DictReader(open(path)))
    assert float(rows[2]["loss"]) == 1.0 / 3  # full precision
    with pytest.raises(ValueError, match="differs"):
        append_csv_row(path, {"epoch": 3, "loss_total": 0.1, "lr": 1e-3})
    # a partial line left by an interrupted write is cut before the next row
    with open(path, "a") as f:
        f.write("3,0.2")
    append_csv_row(path, {"epoch": 3, "loss": 0.25, "lr": 1e-3})
    rows = list(csv.DictReader(open(path)))
    assert [r["epoch"] for r in rows] == ["0", "1", "2", "3"] and rows[-1]["loss"] == "0.25"


def test_plot_loss_writes_a_png(tmp_path):
    log_path = str(tmp_path / "train_log.csv")
    for e in range(5):
        append_csv_row(log_path, {"epoch": e, "loss": 2.0 / (e + 1), "focal": 1.0 / (e + 1), "smooth_l1": 1.0 / (e + 1),
                                  "lr": 1e-3 * 0.9 ** e, "images_per_s": 10.0, "seconds": 3.0})
    png = tmp_path / "loss.png"
    plot_loss(log_path, str(png))
    assert loss_columns(list(csv.DictReader(open(log_path)))) == ["loss", "focal", "smooth_l1"]
    with pytest.raises(ValueError, match="no column"):
        plot_loss(log_path, str(tmp_path / "x.png"), columns=["loss", "dice"])
    img = cv2.imread(str(png))
    assert img is not None and img.shape[0] >= 200 and img.shape[1] >= 400
    assert img.std() > 5  # not blank
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_overlay_shape_dtype_and_contour():
    h, w = 64, 64
    image = np.full((h, w, 3), 0.5, np.float32)
    amap = np.zeros((h, w), np.float32)
    amap[20:40, 16:48] = 1.0
    amap += np.linspace(0, 0.1, w)[None, :]  # not constant, so the colour varies
    plain = heatmap_overlay(image, amap)
    outlined = heatmap_overlay(image, amap, threshold=0.5)
    assert plain.shape == (h, w, 3) and plain.dtype == np.uint8
    changed = np.any(plain != outlined, axis=-1)
    region = (amap >= 0.5).astype(np.uint8)
    boundary = region - cv2.erode(region, np.ones((3, 3), np.uint8))
    assert changed[boundary > 0].mean() > 0.9  # the outline is drawn on the region's boundary
    near = cv2.dilate(boundary, np.ones((5, 5), np.uint8)) > 0
    assert not changed[~near].any()  # and nowhere else
    # CHW torch input, half-size map (resized to the image): same result as HWC numpy
    chw = torch.from_numpy(image).permute(2, 0, 1)
    small = cv2.resize(amap, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    assert heatmap_overlay(chw, small).shape == (h, w, 3)
    assert np.array_equal(heatmap_overlay(chw, amap, threshold=0.5), outlined)


def test_save_prediction_figure(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.random((48, 48, 3)).astype(np.float32)
    amap = rng.random((48, 48)).astype(np.float32)
    path = tmp_path / "pred" / "img_000.png"
    save_prediction_figure(str(path), image, amap, threshold=0.8, score=0.93, title="img_000.png")
    img = cv2.imread(str(path))
    assert img is not None and img.shape[1] > img.shape[0] >= 200


def test_select_examples_picks_worst_cases():
    scores = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.05, 0.7, 0.6, 0.4])
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 0, 1])
    idx = select_examples(scores, labels, 6)
    assert len(idx) == 6 and len(set(idx.tolist())) == 6
    assert idx[0] == 1  # highest-scored normal image: the worst false positive
    assert 7 in idx[:2]  # the next one
    assert idx[2] == 5  # lowest-scored defective image: the worst false negative
    assert 3 in idx  # highest-scored defective image: a true positive
    # a group that runs short is filled from the others; never more than there are images
    # all defective: the lowest-scored one (0.05) and then the highest-scored ones (0.9, 0.8, 0.7)
    assert select_examples(scores, np.ones(9), 4).tolist() == [5, 1, 3, 6]
    assert len(select_examples(scores, labels, 50)) == 9


def test_examples_grid_writes_png(tmp_path):
    rng = np.random.default_rng(2)
    n = 8
    images = torch.from_numpy(rng.random((n, 3, 32, 32)).astype(np.float32))
    masks = np.zeros((n, 1, 32, 32), np.float32)
    masks[4:, :, 8:20, 8:20] = 1
    maps = rng.random((n, 32, 32)).astype(np.float32) * 0.5 + masks[:, 0] * 0.5
    labels = np.array([0] * 4 + [1] * 4)
    scores = maps.reshape(n, -1).max(1)
    path = tmp_path / "examples.png"
    idx = examples_grid(str(path), images, masks, maps, scores, labels, n=6, threshold=0.6)
    assert np.array_equal(idx, select_examples(scores, labels, 6))

    class Lazy:  # a dataset-like sequence of H×W×3 images: only the shown ones may be loaded
        def __init__(self):
            self.loaded = []

        def __len__(self):
            return n

        def __getitem__(self, i):
            self.loaded.append(i)
            return images[i].permute(1, 2, 0).numpy()

    lazy = Lazy()
    examples_grid(str(path), lazy, masks, maps, scores, labels, n=3)
    assert sorted(lazy.loaded) == sorted(select_examples(scores, labels, 3).tolist())
    img = cv2.imread(str(path))
    assert img is not None and img.shape[0] >= 200 and img.shape[1] >= 300
