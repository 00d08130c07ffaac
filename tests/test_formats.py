"""The data-set readers of prnet/datasets/formats.py on generated fixtures with each published layout's names,
extensions, bit depths and mask conventions; the folder format against the MVTec layout; metrics without masks."""
import logging
import os
import shutil

import cv2
import numpy as np
import pytest

from prnet.config import ConfigError, load_config
from prnet.datasets import MVTEC, DatasetError, few_shot_samples, format_args, load_mask, resolve_classes, scan_split
from prnet.datasets.demo import make_demo_category
from prnet.datasets.formats import CATEGORIES, READERS, categories
from prnet.metrics import compute_metrics
from prnet.report import write_results_tables


def write(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ext = os.path.splitext(path)[1]
    ok, data = cv2.imencode(ext, array)
    assert ok
    data.tofile(path)
    return path


def image(seed, h=24, w=40, grey=False):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w) if grey else (h, w, 3), dtype=np.uint8)


def region(h, w, y0, y1, x0, x1, value=255, dtype=np.uint8):
    m = np.zeros((h, w), dtype)
    m[y0:y1, x0:x1] = value
    return m


def names(samples):
    return [s.name for s in samples]


def test_every_format_is_registered_with_its_categories():
    from prnet.config import DATA_FORMATS
    assert set(READERS) == set(DATA_FORMATS)
    assert categories("visa", "/nowhere")[0] == "candle" and categories("visa", "/nowhere")[-1] == "pipe_fryum"
    assert categories("btad", "/nowhere") == ["01", "02", "03"]
    assert len(categories("mpdd", "/nowhere")) == 6 and len(CATEGORIES["loco"]) == 5
    with pytest.raises(DatasetError, match="unknown data format 'nope'"):
        scan_split("/nowhere", "x", "train", format="nope")


# -------------------------------------------------------------------------------------------------- VisA
@pytest.fixture
def visa(tmp_path):
    root = str(tmp_path)
    rows = ["object,split,label,image,mask"]
    for i in range(3):
        rel = f"candle/Data/Images/Normal/{i:04d}.JPG"
        write(os.path.join(root, rel), image(i, 30, 45))
        rows.append(f"candle,{'train' if i < 2 else 'test'},normal,{rel},")
    for i in range(2):  # class-id masks: values 1 and 2, invisible to a '== 255' reader
        rel, mrel = f"candle/Data/Images/Anomaly/{i:03d}.JPG", f"candle/Data/Masks/Anomaly/{i:03d}.png"
        write(os.path.join(root, rel), image(10 + i, 30, 45))
        write(os.path.join(root, mrel), region(30, 45, 5, 10, 5 + i, 20, value=i + 1))
        rows.append(f"candle,test,anomaly,{rel},{mrel}")
    write(os.path.join(root, "pcb1/Data/Images/Normal/0000.JPG"), image(20))
    rows.append("pcb1,train,normal,pcb1/Data/Images/Normal/0000.JPG,")
    os.makedirs(os.path.join(root, "split_csv"))
    with open(os.path.join(root, "split_csv", "1cls.csv"), "w") as fh:
        fh.write("\n".join(rows) + "\n")
    return root


def test_visa_reads_1cls_csv_and_class_id_masks(visa):
    train = scan_split(visa, "candle", "train", format="visa")
    assert names(train) == ["good/0000.JPG", "good/0001.JPG"] and {s.label for s in train} == {0}
    test = scan_split(visa, "candle", "test", format="visa")
    assert names(test) == ["anomaly/000.JPG", "anomaly/001.JPG", "good/0002.JPG"]
    assert [s.label for s in test] == [1, 1, 0] and test[0].defect == "anomaly" and test[2].mask_path is None
    mask = load_mask(test[1].mask_path)
    assert mask.shape == (30, 45) and mask.sum() == 5 * 14 and set(np.unique(mask)) == {0.0, 1.0}
    ds = MVTEC(visa, "candle", "test", 32, format="visa")
    assert ds[0]["image"].shape == (3, 32, 32) and ds[0]["mask"].sum() > 0
    with pytest.raises(DatasetError, match="no category 'candel'.*found candle, pcb1"):
        scan_split(visa, "candel", "train", format="visa")


def test_visa_missing_split_file_is_named(tmp_path):
    with pytest.raises(DatasetError, match="split_csv/1cls.csv"):
        scan_split(str(tmp_path), "candle", "train", format="visa")


# -------------------------------------------------------------------------------------------------- BTAD
@pytest.fixture
def btad(tmp_path):
    root = str(tmp_path)
    for cat, ext, mext in (("01", ".bmp", ".png"), ("02", ".png", ".png"), ("03", ".bmp", ".bmp")):
        c = os.path.join(root, cat)
        for i in range(2):
            write(os.path.join(c, "train", "ok", f"{i:04d}{ext}"), image(i))
        write(os.path.join(c, "test", "ok", f"0100{ext}"), image(5))
        write(os.path.join(c, "test", "ko", f"0200{ext}"), image(6))
        write(os.path.join(c, "ground_truth", "ko", f"0200{mext}"), region(24, 40, 2, 8, 3, 9))
    return root


def test_btad_reads_ok_ko_with_bmp_and_png(btad):
    for cat in ("01", "02", "03"):
        assert [s.label for s in scan_split(btad, cat, "train", format="btad")] == [0, 0]
        test = scan_split(btad, cat, "test", format="btad")
        assert [(s.defect, s.label) for s in test] == [("good", 0), ("ko", 1)]
        assert test[1].name.startswith("ko/0200.") and load_mask(test[1].mask_path).sum() == 36
    assert scan_split(btad, "03", "test", format="btad")[1].mask_path.endswith("0200.bmp")
    os.remove(os.path.join(btad, "01", "ground_truth", "ko", "0200.png"))
    with pytest.raises(DatasetError, match="no mask for .*0200.bmp"):
        scan_split(btad, "01", "test", format="btad")


# -------------------------------------------------------------------------------------------------- MPDD
def test_mpdd_is_read_in_the_mvtec_layout(tmp_path):
    root = str(tmp_path)
    c = os.path.join(root, "tubes")
    write(os.path.join(c, "train", "good", "000.png"), image(0, 40, 24, grey=True))
    write(os.path.join(c, "test", "good", "000.png"), image(1, 40, 24, grey=True))
    write(os.path.join(c, "test", "anomalous", "000.png"), image(2, 40, 24, grey=True))
    write(os.path.join(c, "ground_truth", "anomalous", "000_mask.png"), region(40, 24, 0, 4, 0, 4))
    test = scan_split(root, "tubes", "test", format="mpdd")
    assert names(test) == ["anomalous/000.png", "good/000.png"]
    assert test == scan_split(root, "tubes", "test")  # the same reader as mvtec
    item = MVTEC(root, "tubes", "test", (64, 32), format="mpdd")[0]
    assert item["image"].shape == (3, 64, 32)  # greyscale, non-square: RGB at (h, w)


# ------------------------------------------------------------------------------------------ KolektorSDD2
@pytest.fixture
def ksdd2(tmp_path):
    root = str(tmp_path)
    for split, offset in (("train", 10000), ("test", 20000)):
        for i in range(3):
            write(os.path.join(root, split, f"{offset + i}.png"), image(i, 64, 24))
            gt = region(64, 24, 10, 20, 5, 9) if i == 2 else np.zeros((64, 24), np.uint8)  # empty GT: normal
            write(os.path.join(root, split, f"{offset + i}_GT.png"), gt)
    return root


def test_ksdd2_labels_from_empty_or_nonempty_gt(ksdd2, caplog):
    with caplog.at_level(logging.INFO):
        train = scan_split(ksdd2, "ksdd2", "train", format="ksdd2")
    assert names(train) == ["good/10000.png", "good/10001.png"]  # the defective training image is not used
    assert "1 defective training images not used" in caplog.text
    test = scan_split(ksdd2, "ksdd2", "test", format="ksdd2")
    assert [(s.name, s.label) for s in test] == [("defect/20002.png", 1), ("good/20000.png", 0),
                                                 ("good/20001.png", 0)]
    assert test[0].mask_path.endswith("20002_GT.png") and test[1].mask_path is None
    assert categories("ksdd2", ksdd2) == ["ksdd2"]
    os.remove(os.path.join(ksdd2, "test", "20001_GT.png"))
    with pytest.raises(DatasetError, match="expected .*20001_GT.png"):
        scan_split(ksdd2, "ksdd2", "test", format="ksdd2")


# ------------------------------------------------------------------------------------------------ DAGM
@pytest.fixture
def dagm(tmp_path):
    root = str(tmp_path)
    for split in ("Train", "Test"):
        d = os.path.join(root, "Class1", split)
        lines = ["1"]
        for i in range(1, 5):
            write(os.path.join(d, f"{i:04d}.PNG"), image(i, 32, 32, grey=True))
            bad = i >= 3
            if bad:
                mask = np.zeros((32, 32), np.uint8)
                cv2.ellipse(mask, (16, 16), (6, 3), 30, 0, 360, 255, -1)
                write(os.path.join(d, "Label", f"{i:04d}_label.PNG"), mask)
            lines.append(f"{i}\t{int(bad)}\t{i:04d}.PNG\t0\t{f'{i:04d}_label.PNG' if bad else 0}")
        with open(os.path.join(d, "Label", "Labels.txt"), "w", encoding="utf-8-sig") as fh:
            fh.write("\n".join(lines) + "\n")
    os.makedirs(os.path.join(root, "Class3"))
    return root


def test_dagm_reads_labels_txt_and_label_masks(dagm):
    assert names(scan_split(dagm, "Class1", "train", format="dagm")) == ["good/0001.PNG", "good/0002.PNG"]
    test = scan_split(dagm, "Class1", "test", format="dagm")
    assert names(test) == ["defect/0003.PNG", "defect/0004.PNG", "good/0001.PNG", "good/0002.PNG"]
    assert test[0].mask_path.endswith(os.path.join("Test", "Label", "0003_label.PNG"))
    assert load_mask(test[0].mask_path).sum() > 10
    assert categories("dagm", dagm) == ["Class1", "Class3"]
    labels = os.path.join(dagm, "Class1", "Test", "Label", "Labels.txt")
    with open(labels, "a") as fh:
        fh.write("5\t2\t0005.PNG\n")
    with pytest.raises(DatasetError, match="Labels.txt line 6: expected 'id label image 0 mask'"):
        scan_split(dagm, "Class1", "test", format="dagm")


# -------------------------------------------------------------------------------------------- MVTec LOCO
def test_loco_mask_is_the_union_of_every_mask_file(tmp_path):
    root = str(tmp_path)
    c = os.path.join(root, "pushpins")
    write(os.path.join(c, "train", "good", "000.png"), image(0))
    write(os.path.join(c, "validation", "good", "000.png"), image(1))
    write(os.path.join(c, "test", "good", "000.png"), image(2))
    for kind in ("logical_anomalies", "structural_anomalies"):
        write(os.path.join(c, "test", kind, "000.png"), image(3))
    write(os.path.join(c, "ground_truth", "logical_anomalies", "000", "000.png"), region(24, 40, 0, 5, 0, 5))
    write(os.path.join(c, "ground_truth", "logical_anomalies", "000", "001.png"), region(24, 40, 10, 15, 20, 30))
    write(os.path.join(c, "ground_truth", "structural_anomalies", "000", "000.png"), region(24, 40, 1, 2, 1, 2))
    assert names(scan_split(root, "pushpins", "train", format="loco")) == ["good/000.png"]
    test = scan_split(root, "pushpins", "test", format="loco")
    assert names(test) == ["good/000.png", "logical_anomalies/000.png", "structural_anomalies/000.png"]
    logical = test[1]
    assert isinstance(logical.mask_path, tuple) and len(logical.mask_path) == 2
    assert load_mask(logical.mask_path).sum() == 25 + 50
    assert load_mask(logical.mask_path, 12).shape == (12, 12)
    assert MVTEC(root, "pushpins", "test", 32, format="loco").mask(1).sum() > 0


# ------------------------------------------------------------------------------------------ plain folders
@pytest.fixture
def folders(tmp_path):
    root = str(tmp_path)
    c = os.path.join(root, "parts")
    for i in range(10):
        write(os.path.join(c, "normal", f"good part {i}.png"), image(i, 20, 36))
    # sort orders disagree: images a.png < a_1.png, masks a_1_mask.png < a_mask.png
    write(os.path.join(c, "abnormal", "a.png"), image(20, 20, 36))
    write(os.path.join(c, "abnormal", "a_1.png"), image(21, 20, 36, grey=True))
    write(os.path.join(c, "masks", "a_1_mask.png"), region(20, 36, 15, 20, 30, 36))
    write(os.path.join(c, "masks", "a.png"), region(20, 36, 0, 2, 0, 3, value=65535, dtype=np.uint16))
    return root


def folder_options(**kw):
    options = {"normal": "normal", "abnormal": "abnormal", "mask": "masks", "test_normal": None,
               "test_fraction": 0.2, "seed": 0}
    options.update(kw)
    return options


def test_folder_pairs_masks_by_stem_not_by_sort_order(folders):
    test = scan_split(folders, "parts", "test", format="folder", format_options=folder_options())
    bad = {s.name: s for s in test if s.label == 1}
    assert sorted(bad) == ["abnormal/a.png", "abnormal/a_1.png"]
    assert load_mask(bad["abnormal/a.png"].mask_path).sum() == 6  # 16-bit mask, top-left
    assert load_mask(bad["abnormal/a_1.png"].mask_path)[15:, 30:].all()
    assert all(s.has_mask for s in test)


def test_folder_holds_out_a_seeded_share_of_the_normal_images(folders):
    opts = folder_options()
    train = scan_split(folders, "parts", "train", format="folder", format_options=opts)
    test_normal = [s for s in scan_split(folders, "parts", "test", format="folder", format_options=opts)
                   if s.label == 0]
    assert len(train) == 8 and len(test_normal) == 2
    assert not set(names(train)) & set(names(test_normal))
    assert set(names(train)) | set(names(test_normal)) == {f"good/good part {i}.png" for i in range(10)}
    again = scan_split(folders, "parts", "train", format="folder", format_options=opts)
    assert again == train
    held = {frozenset(names(scan_split(folders, "parts", "train", format="folder",
                                       format_options=folder_options(seed=s)))) for s in range(6)}
    assert len(held) > 1  # the seed chooses the held-out images
    shutil.copytree(os.path.join(folders, "parts", "normal"), os.path.join(folders, "parts", "more good"))
    explicit = folder_options(test_normal="more good")
    assert len(scan_split(folders, "parts", "train", format="folder", format_options=explicit)) == 10


def test_folder_refuses_folders_that_overlap_and_skips_hidden_ones(folders):
    """The same images may not count as normal and defective, nor train and test: folders that hold one another are
    refused. A hidden sub-folder of the abnormal folder (a tool's, e.g. .ipynb_checkpoints) is no defect type; an
    absolute normal folder cannot tell categories apart, so the class list asks for data.classes."""
    parts = os.path.join(folders, "parts")
    shutil.copytree(os.path.join(parts, "normal"), os.path.join(parts, "abnormal", "ok"))
    for bad, keys in ((folder_options(mask=None, test_normal="abnormal/ok"), "data.folder.abnormal .* and "
                       "data.folder.test_normal"),
                      (folder_options(mask=None, normal="abnormal/ok"), "data.folder.normal .* and "
                       "data.folder.abnormal"),
                      (folder_options(mask=None, test_normal="normal"), "data.folder.normal .* and "
                       "data.folder.test_normal")):
        with pytest.raises(DatasetError, match=keys + ".* overlap"):
            scan_split(folders, "parts", "test", format="folder", format_options=bad)
    shutil.rmtree(os.path.join(parts, "abnormal", "ok"))
    os.makedirs(os.path.join(parts, "abnormal", ".ipynb_checkpoints"))
    shutil.copy(os.path.join(parts, "abnormal", "a.png"), os.path.join(parts, "abnormal", ".ipynb_checkpoints"))
    test = scan_split(folders, "parts", "test", format="folder", format_options=folder_options(mask=None))
    assert sorted(s.name for s in test if s.label == 1) == ["abnormal/a.png", "abnormal/a_1.png"]
    cfg = load_config(None, [f"data.root={folders}", "data.format=folder", f"data.folder.normal={parts}/normal"])
    with pytest.raises(DatasetError, match="absolute path .*data.classes"):
        resolve_classes(cfg)


def test_folder_without_masks_and_with_missing_masks(folders):
    test = scan_split(folders, "parts", "test", format="folder", format_options=folder_options(mask=None))
    bad = [s for s in test if s.label == 1]
    assert len(bad) == 2 and all(s.mask_path is None and not s.has_mask for s in bad)
    os.remove(os.path.join(folders, "parts", "masks", "a.png"))
    with pytest.raises(DatasetError, match="no mask in .*masks for 1 of the 2 images.*a.png"):
        scan_split(folders, "parts", "test", format="folder", format_options=folder_options())
    normal_only = scan_split(folders, "parts", "test", format="folder",
                             format_options=folder_options(abnormal=None, mask=None))
    assert {s.label for s in normal_only} == {0}


def test_folder_config_reaches_the_reader_and_the_class_list(folders):
    cfg = load_config(None, [f"data.root={folders}", "data.format=folder", "data.folder.mask=masks",
                             "data.num_anomalies=1"])
    assert resolve_classes(cfg) == ["parts"]
    assert format_args(cfg)["format_options"]["mask"] == "masks"
    assert len(MVTEC(cfg.data.root, "parts", "test", 32, **format_args(cfg))) == 4
    assert [s.label for s in few_shot_samples(cfg, "parts")] == [1]
    with pytest.raises(ConfigError, match="data.folder.test_fraction"):
        load_config(None, ["data.format=folder", "data.folder.test_fraction=1.5"])
    with pytest.raises(ConfigError, match="data.format"):
        load_config(None, ["data.format=kolektor"])
    visa = load_config(None, ["data.format=visa", "data.root=/nowhere"])
    assert resolve_classes(visa)[0] == "candle" and resolve_classes(load_config())[0] == "bottle"


def test_without_masks_training_uses_synthetic_anomalies_only(folders, caplog):
    cfg = load_config(None, [f"data.root={folders}", "data.format=folder", "data.num_anomalies=2"])
    with caplog.at_level(logging.INFO):
        assert few_shot_samples(cfg, "parts") == []
    assert "have no masks: training uses synthetic anomalies only" in caplog.text
    cfg = load_config(None, [f"data.root={folders}", "data.format=folder", "data.num_anomalies=1",
                             "data.few_shot=[abnormal/a.png]"])
    with pytest.raises(DatasetError, match="have no masks"):
        few_shot_samples(cfg, "parts")


def test_names_stay_unique_within_a_split(folders):
    # loose abnormal images are type 'abnormal': a sub-folder of that name would give the same names
    shutil.copytree(os.path.join(folders, "parts", "abnormal"), os.path.join(folders, "parts", "abnormal", "abnormal"))
    with pytest.raises(DatasetError, match="both named 'abnormal/a.png'"):
        scan_split(folders, "parts", "test", format="folder", format_options=folder_options(mask=None))


# ------------------------------------------------------------------------- folder copy of the MVTec demo
def folder_copy(src_cat, dst_cat):
    """The MVTec-layout category `src_cat` as plain folders: normal, test_normal, abnormal/<type>, mask/<type>."""
    shutil.copytree(os.path.join(src_cat, "train", "good"), os.path.join(dst_cat, "normal"))
    shutil.copytree(os.path.join(src_cat, "test", "good"), os.path.join(dst_cat, "test_normal"))
    for defect in os.listdir(os.path.join(src_cat, "test")):
        if defect != "good":
            shutil.copytree(os.path.join(src_cat, "test", defect), os.path.join(dst_cat, "abnormal", defect))
            shutil.copytree(os.path.join(src_cat, "ground_truth", defect), os.path.join(dst_cat, "mask", defect))


FOLDER_KEYS = ["data.format=folder", "data.folder.test_normal=test_normal", "data.folder.mask=mask"]


@pytest.fixture(scope="module")
def demo_pair(tmp_path_factory):
    base = tmp_path_factory.mktemp("demo")
    mvtec_root, folder_root = str(base / "mvtec"), str(base / "folder")
    make_demo_category(mvtec_root, "tiny", seed=1, size=64, n_train=10, n_test_good=4, n_test_bad=6)
    folder_copy(os.path.join(mvtec_root, "tiny"), os.path.join(folder_root, "tiny"))
    return mvtec_root, folder_root


def test_demo_as_folders_reads_like_the_mvtec_layout(demo_pair):
    mvtec_root, folder_root = demo_pair
    cfg = load_config(None, [f"data.root={folder_root}", *FOLDER_KEYS])
    for split in ("train", "test"):
        a = scan_split(mvtec_root, "tiny", split)
        b = scan_split(folder_root, "tiny", split, **format_args(cfg))
        assert [(s.name, s.label, s.defect) for s in a] == [(s.name, s.label, s.defect) for s in b]
        for x, y in zip(a, b):
            assert open(x.path, "rb").read() == open(y.path, "rb").read()
            if x.mask_path:
                assert np.array_equal(load_mask(x.mask_path), load_mask(y.mask_path))


def test_one_epoch_on_the_folder_copy_gives_the_same_metrics(demo_pair, tmp_path):
    import json

    import train as train_script
    from tests.test_train_e2e import tiny_overrides
    results = []
    for root, extra in ((demo_pair[0], []), (demo_pair[1], FOLDER_KEYS)):
        out, protos = str(tmp_path / f"out{len(results)}"), str(tmp_path / f"protos{len(results)}")
        assert train_script.main(tiny_overrides(root, out, protos, epochs=1, extra=extra)) == 0
        results.append(json.load(open(os.path.join(out, "tiny", "results.json"))))
    assert results[0]["metrics"] == results[1]["metrics"]
    assert set(results[0]["metrics"]) == {"image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro"}
    assert results[0]["excluded_from_evaluation"] == results[1]["excluded_from_evaluation"]


# ---------------------------------------------------------------------------------- metrics without masks
def test_metrics_omit_what_the_test_set_cannot_define(caplog, tmp_path):
    rng = np.random.default_rng(0)
    scores, maps = rng.random(6), rng.random((6, 8, 8))
    labels = np.array([0, 0, 0, 1, 1, 1])
    masks = np.zeros((6, 8, 8))
    with caplog.at_level(logging.INFO):
        m = compute_metrics(scores, labels, maps, masks)
    assert set(m) == {"image_auroc", "image_ap"} and "pixel metrics omitted" in caplog.text
    assert compute_metrics(scores, np.zeros(6), maps, masks) == {}
    assert "normal-only test set" in caplog.text
    masks[3:, 2:4, 2:4] = 1
    only_bad = compute_metrics(scores[3:], labels[3:], maps[3:], masks[3:])
    assert set(only_bad) == {"pixel_auroc", "pixel_ap", "aupro"} and "no normal image" in caplog.text
    full = compute_metrics(scores, labels, maps, masks)
    assert len(full) == 5 and not any(np.isnan(v) for v in full.values())
    rows = [{"category": "a", **full}, {"category": "b", **{k: m.get(k) for k in full}}]
    md = write_results_tables(rows, str(tmp_path))
    assert "| b | " in md and "n/a" in md.splitlines()[-1]
    assert open(tmp_path / "results.csv").read().splitlines()[-1].endswith(",,,")
