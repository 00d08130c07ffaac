"""MVTec-layout reading, errors, the few-shot split and the training set (tiny folders written in tmp_path)."""
import logging
import os

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from prnet.config import load_config
from prnet.datasets import (MVTEC, DatasetError, EpochSampler, build_test_dataset, build_train_dataset, ensure_data,
                            few_shot_names, load_mask, load_rgb, resolve_classes, select_few_shot)


def _rgb(rng, h, w):
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _grey(rng, h, w):
    return rng.integers(0, 256, size=(h, w), dtype=np.uint8)


def make_category(root, name="cat", n_train=4, n_good=3, defects=(("crack", 3), ("hole", 2)), ext=".png",
                  size=(40, 48), seed=0, grey=False):
    """A tiny category in the MVTec layout (single-channel files if `grey`); defect masks are a rectangle.
    Returns the category path."""
    rng = np.random.default_rng(seed)
    _rgb = _grey if grey else globals()["_rgb"]
    cat = os.path.join(root, name)
    for sub in ("train/good", "test/good"):
        os.makedirs(os.path.join(cat, sub), exist_ok=True)
    for i in range(n_train):
        cv2.imwrite(os.path.join(cat, "train/good", f"{i:03d}{ext}"), _rgb(rng, *size))
    for i in range(n_good):
        cv2.imwrite(os.path.join(cat, "test/good", f"{i:03d}{ext}"), _rgb(rng, *size))
    for defect, n in defects:
        os.makedirs(os.path.join(cat, "test", defect), exist_ok=True)
        os.makedirs(os.path.join(cat, "ground_truth", defect), exist_ok=True)
        for i in range(n):
            cv2.imwrite(os.path.join(cat, "test", defect, f"{i:03d}{ext}"), _rgb(rng, *size))
            m = np.zeros(size, np.uint8)
            m[5:15, 10:30] = 255
            cv2.imwrite(os.path.join(cat, "ground_truth", defect, f"{i:03d}_mask.png"), m)
    return cat


def cfg_for(root, **over):
    items = [f"data.root={root}", "data.image_size=32", "data.dtd_root=null", "data.classes=[cat]"]
    items += [f"{k}={v}" for k, v in over.items()]
    return load_config(None, items)


# ------------------------------------------------------------------------------------------------ reading
def test_reads_every_format_as_rgb_float(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200  # red in RGB
    Image.fromarray(rgb).save(d / "rgb.png")
    Image.fromarray(rgb).save(d / "rgb.jpg", quality=100)
    Image.fromarray(np.full((20, 30), 128, np.uint8), "L").save(d / "grey.png")
    Image.fromarray(np.dstack([rgb, np.full((20, 30), 7, np.uint8)]), "RGBA").save(d / "rgba.png")
    pal = Image.fromarray(rgb).convert("P")
    pal.save(d / "pal.png")
    cv2.imwrite(str(d / "deep.TIF"), np.full((20, 30), 65535 // 4, np.uint16))
    cv2.imwrite(str(d / "deep.png"), np.full((20, 30, 3), 65535, np.uint16))
    for name in ("rgb.png", "rgb.jpg", "rgba.png", "pal.png"):
        x = load_rgb(str(d / name))
        assert x.shape == (20, 30, 3) and x.dtype == np.float32
        assert x[..., 0].mean() == pytest.approx(200 / 255, abs=0.02), name  # RGB order, not BGR
        assert x[..., 1].max() < 0.05 and x[..., 2].max() < 0.05, name
    g = load_rgb(str(d / "grey.png"), 16)
    assert g.shape == (16, 16, 3) and np.allclose(g, 128 / 255, atol=1e-3)
    assert np.allclose(load_rgb(str(d / "deep.TIF")), 0.25, atol=1e-3)  # 16-bit scaled by 65535, not 255
    assert np.allclose(load_rgb(str(d / "deep.png"), (8, 12)), 1.0)
    assert load_rgb(str(d / "rgb.png"), (10, 60)).shape == (10, 60, 3)


def test_mask_is_nearest_and_binary(tmp_path):
    m = np.zeros((40, 40), np.uint8)
    m[:, 20:] = 3  # any non-zero value is defective
    path = str(tmp_path / "m_mask.png")
    cv2.imwrite(path, m)
    out = load_mask(path, (32, 20))
    assert out.shape == (32, 20) and set(np.unique(out)) == {0.0, 1.0}
    assert out[:, :10].max() == 0 and out[:, 10:].min() == 1


def test_layout_items_and_order(tmp_path):
    make_category(tmp_path, ext=".jpg")
    train = MVTEC(str(tmp_path), "cat", "train", image_size=32)
    assert len(train) == 4 and [s.name for s in train.samples] == [f"good/{i:03d}.jpg" for i in range(4)]
    test = MVTEC(str(tmp_path), "cat", "test", image_size=(32, 64))
    assert len(test) == 3 + 3 + 2
    assert [s.defect for s in test.samples] == ["crack"] * 3 + ["good"] * 3 + ["hole"] * 2
    item = test[0]
    assert item["image"].shape == (3, 32, 64) and item["image"].dtype == torch.float32
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    assert item["mask"].shape == (1, 32, 64) and set(item["mask"].unique().tolist()) == {0.0, 1.0}
    assert item["label"] == 1 and item["defect"] == "crack" and item["path"].endswith("crack/000.jpg")
    good = test[3]
    assert good["label"] == 0 and good["mask"].sum() == 0 and good["defect"] == "good"


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_images_and_masks_are_turned_upright_by_their_exif_orientation(tmp_path, ext):
    """A file with an EXIF orientation (phone photos) is read as viewers and annotation tools show it, image and mask
    alike (PIL's ImageOps.exif_transpose is the reference); so is a PIL image given to the API."""
    from PIL import ImageOps

    from prnet.inference import _pil_to_array

    def upright(path):
        return np.asarray(ImageOps.exif_transpose(Image.open(path)))

    base = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    mask = np.zeros((24, 40), np.uint8)
    mask[:8, 3:11] = 255
    tol = 0 if ext == ".png" else 2  # the JPEG's decoders may round differently
    for o in range(1, 9):
        exif = Image.new("L", (1, 1)).getexif()
        exif[0x0112] = o
        path, mask_path = tmp_path / f"o{o}{ext}", tmp_path / f"o{o}_mask.png"
        Image.fromarray(base).save(path, exif=exif.tobytes(), **({"quality": 100} if ext == ".jpg" else {}))
        Image.fromarray(mask).save(mask_path, exif=exif.tobytes())
        want = upright(path).astype(np.float32)
        got = load_rgb(str(path)) * 255
        assert got.shape == want.shape == ((24, 40, 3) if o <= 4 else (40, 24, 3)), o
        assert np.abs(got - want).max() <= tol + 1e-3, o
        assert np.abs(_pil_to_array(Image.open(path)).astype(np.float32) - want).max() <= tol, o
        assert np.array_equal(load_mask(str(mask_path)) > 0, upright(mask_path) > 0), o


def test_mixed_formats_sizes_and_mask_extension(tmp_path):
    """grey jpg + RGBA png + 16-bit tif of varying non-square sizes; a mask stored as .bmp."""
    cat = tmp_path / "mix"
    (cat / "train/good").mkdir(parents=True)
    (cat / "test/bad").mkdir(parents=True)
    (cat / "ground_truth/bad").mkdir(parents=True)
    cv2.imwrite(str(cat / "train/good/a.JPG"), np.full((37, 90), 100, np.uint8))
    Image.fromarray(np.full((50, 21, 4), 90, np.uint8), "RGBA").save(cat / "train/good/b.png")
    cv2.imwrite(str(cat / "train/good/c.tiff"), np.full((64, 64, 3), 30000, np.uint16))
    cv2.imwrite(str(cat / "test/bad/x.jpeg"), np.full((33, 45, 3), 10, np.uint8))
    cv2.imwrite(str(cat / "ground_truth/bad/x_mask.bmp"), np.full((33, 45), 255, np.uint8))
    train = MVTEC(str(tmp_path), "mix", "train", image_size=(32, 48), cache=True)
    images = [train[i]["image"] for i in range(3)]
    assert all(x.shape == (3, 32, 48) for x in images)
    assert images[2].mean().item() == pytest.approx(30000 / 65535, abs=0.01)
    assert train[0]["image"].mean().item() == pytest.approx(100 / 255, abs=0.01)
    test = MVTEC(str(tmp_path), "mix", "test", image_size=32)
    assert test.samples[0].mask_path.endswith("x_mask.bmp") and test[0]["mask"].min() == 1


@pytest.mark.parametrize("case", ["root", "category", "split", "mask", "unreadable", "empty"])
def test_bad_input_errors_name_the_path(tmp_path, case):
    cat = make_category(tmp_path)
    root = str(tmp_path)
    if case == "root":
        root = str(tmp_path / "nowhere")
        with pytest.raises(DatasetError, match="nowhere"):
            MVTEC(root, "cat", "train")
        return
    if case == "category":
        with pytest.raises(DatasetError, match=r"no category 'cta' under .*: found cat"):
            MVTEC(root, "cta", "train")
        return
    if case == "split":
        os.rename(os.path.join(cat, "test"), os.path.join(cat, "tset"))
        with pytest.raises(DatasetError, match=r"no 'test' folder in .*cat: found .*tset"):
            MVTEC(root, "cat", "test")
        return
    if case == "mask":
        os.remove(os.path.join(cat, "ground_truth", "hole", "001_mask.png"))
        with pytest.raises(DatasetError, match=r"no mask for .*hole/001\.png.*000_mask\.png"):
            MVTEC(root, "cat", "test")
        return
    if case == "unreadable":
        with open(os.path.join(cat, "train", "good", "001.png"), "wb") as fh:
            fh.write(b"not an image")
        ds = MVTEC(root, "cat", "train", image_size=32)
        with pytest.raises(DatasetError, match=r"train/good/001\.png"):
            ds[1]
        return
    for f in os.listdir(os.path.join(cat, "test", "hole")):
        os.remove(os.path.join(cat, "test", "hole", f))
    with pytest.raises(DatasetError, match=r"no images in .*test/hole"):
        MVTEC(root, "cat", "test")


def test_resolve_classes_reads_the_class_attribute_at_call_time(monkeypatch):
    cfg = load_config()
    monkeypatch.setattr(MVTEC, "CLASSNAMES", ["only_this"])
    assert resolve_classes(cfg) == ["only_this"]
    assert resolve_classes(load_config(None, ["data.classes=[a, b]"])) == ["a", "b"]


# ----------------------------------------------------------------------------------------------- few-shot
def test_few_shot_is_seeded_balanced_and_removed_from_evaluation(tmp_path):
    make_category(tmp_path, defects=(("a", 6), ("b", 6), ("c", 1)))
    samples = MVTEC(str(tmp_path), "cat", "test").samples
    first = [s.name for s in select_few_shot(samples, 5, seed=0)]
    assert first == [s.name for s in select_few_shot(samples, 5, seed=0)]
    others = {tuple(s.name for s in select_few_shot(samples, 5, seed=k)) for k in range(1, 6)}
    assert any(o != tuple(first) for o in others)
    types = [n.split("/")[0] for n in first]
    assert types == ["a", "b", "c", "a", "b"]  # round-robin, c exhausted after one
    assert select_few_shot(samples, 0, 0) == []
    assert len(select_few_shot(samples, 12, 0)) == 12  # never good ones
    with pytest.raises(DatasetError, match=r"13 defective images found in .*test, data.num_anomalies=13: nothing"):
        select_few_shot(samples, 13, 0)  # all of them would go to training
    cfg = cfg_for(tmp_path, **{"data.num_anomalies": 4, "data.split_seed": 3})
    names = few_shot_names(cfg, "cat")
    test = build_test_dataset(cfg, "cat")
    assert sorted(test.excluded) == sorted(names) and len(names) == 4
    assert not set(names) & {s.name for s in test.samples}
    assert len(test) == 3 + 13 - 4
    train = build_train_dataset(cfg, "cat")
    assert train.real_anomalies == names


def test_training_images_are_the_same_with_and_without_the_cache(tmp_path):
    """data.cache_images only keeps the training images in memory: both ways they are the resize rounded to 8 bits
    (a test image keeps the resize's float values), so a run may switch it when it resumes."""
    make_category(tmp_path, n_train=4, size=(45, 61))
    sets = [build_train_dataset(cfg_for(tmp_path, **{"data.cache_images": c, "data.num_anomalies": 0}), "cat")
            for c in ("true", "false")]
    assert sets[0].normal.cache and not sets[1].normal.cache
    for i in range(len(sets[0])):
        a, b = sets[0][(0, i)]["image"], sets[1][(0, i)]["image"]
        assert torch.equal(a, b)
    x = sets[1].normal.image(0)
    assert np.array_equal(x, np.round(x * 255) / np.float32(255))
    plain = MVTEC(str(tmp_path), "cat", "train", image_size=32).image(0)
    assert not np.array_equal(plain, x) and np.abs(plain - x).max() <= 0.5 / 255 + 1e-6


def test_named_few_shot_replaces_the_draw(tmp_path):
    from prnet.config import ConfigError

    make_category(tmp_path, defects=(("a", 6), ("b", 6)))
    chosen = ["b/004.png", "a/000.png"]
    cfg = cfg_for(tmp_path, **{"data.num_anomalies": 2, "data.few_shot": f"[{', '.join(chosen)}]"})
    assert few_shot_names(cfg, "cat") == chosen  # in the given order, whatever split_seed says
    assert build_test_dataset(cfg, "cat").excluded == sorted(chosen)
    assert build_train_dataset(cfg, "cat").real_anomalies == chosen
    with pytest.raises(ConfigError, match="data.few_shot"):
        cfg_for(tmp_path, **{"data.num_anomalies": 3, "data.few_shot": "[a/000.png]"})
    for bad in ("a/999.png", "good/000.png"):  # not a file / not defective
        cfg = cfg_for(tmp_path, **{"data.num_anomalies": 1, "data.few_shot": f"[{bad}]"})
        with pytest.raises(DatasetError, match=bad):
            few_shot_names(cfg, "cat")


# ----------------------------------------------------------------------------------------- training set
def test_train_dataset_layout_and_labels(tmp_path):
    make_category(tmp_path, n_train=6)
    cfg = cfg_for(tmp_path, **{"data.num_anomalies": 2, "synthesis.perlin_ratio": 0.5,
                               "synthesis.extended_ratio": 0.34})
    ds = build_train_dataset(cfg, "cat")
    assert (ds.n_normal, ds.n_perlin, ds.n_scratch, ds.n_extended) == (6, 3, 1, 2) and len(ds) == 11
    kinds = [ds[i]["kind"] for i in range(len(ds))]  # by default a quarter of the Perlin samples are thin curves
    assert kinds == ["normal"] * 6 + ["perlin"] * 2 + ["scratch"] + ["extended"] * 2
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (1, 32, 32)
        assert item["label"] == int(item["kind"] != "normal")
        assert (item["mask"].sum() > 0) == (item["label"] == 1)
        assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    normal = MVTEC(str(tmp_path), "cat", "train", 32)
    assert torch.allclose(ds[2]["image"], normal[2]["image"], atol=1 / 255)  # normal images unaugmented
    # `source` names the normal image each sample was made from: identical outside the anomaly mask
    for i in range(len(ds)):
        item = ds[i]
        src = item["source"]
        assert 0 <= src < 6 and (src == i if i < 6 else True)
        outside = item["mask"][0] == 0
        assert torch.allclose(item["image"][:, outside], normal[src]["image"][:, outside], atol=1 / 255)


def _without_and_with(tmp_path, over, key, value):
    """The training sets of a 6-image category (2 real anomalies, as many Perlin samples as normal images) with the
    overrides `over`, then with `key` set to `value` as well."""
    make_category(tmp_path, n_train=6)
    base = {"data.num_anomalies": 2, "synthesis.perlin_ratio": 1.0, "synthesis.extended_ratio": 0.34, **over}
    return (build_train_dataset(cfg_for(tmp_path, **base), "cat"),
            build_train_dataset(cfg_for(tmp_path, **{**base, key: value}), "cat"))


def test_region_swaps_are_the_last_perlin_samples_and_come_from_another_normal_image(tmp_path):
    plain, ds = _without_and_with(tmp_path, {"synthesis.scratch_fraction": 0}, "synthesis.swap_fraction", 0.5)
    assert (ds.n_perlin, ds.n_swap, ds.n_extended) == (6, 3, 2) and len(ds) == len(plain) == 14
    assert [ds.kind(i) for i in range(len(ds))] == ["normal"] * 6 + ["perlin"] * 3 + ["swap"] * 3 + ["extended"] * 2
    for i in range(9):  # the other samples keep their draws
        assert torch.equal(ds[i]["image"], plain[i]["image"]) and torch.equal(ds[i]["mask"], plain[i]["mask"])
    normal = MVTEC(str(tmp_path), "cat", "train", 32)
    for i in range(9, 12):
        item = ds[i]
        m = item["mask"][0] > 0
        assert item["kind"] == "swap" and item["label"] == 1 and 0.04 <= m.float().mean() <= 0.32
        base = normal[item["source"]]["image"]
        assert torch.allclose(item["image"][:, ~m], base[:, ~m], atol=1 / 255)
        assert (item["image"][:, m] - base[:, m]).abs().max() > 0.05  # something else is inside the mask
        # inside the mask: base + opacity · (other − base) for one other normal image and one opacity
        fits = []
        for j in range(6):
            diff = (normal[j]["image"] - base)[:, m]
            if j == item["source"] or diff.abs().max() < 0.05:
                continue
            t = ((item["image"][:, m] - base[:, m]) * diff).sum() / (diff * diff).sum()
            fits.append(float((item["image"][:, m] - base[:, m] - t * diff).abs().max()))
        assert min(fits) < 2 / 255
    from prnet.config import ConfigError
    with pytest.raises(ConfigError, match="swap_fraction"):
        cfg_for(tmp_path, **{"synthesis.swap_fraction": 1.5})
    with pytest.raises(ConfigError, match="swap_beta_max"):
        cfg_for(tmp_path, **{"synthesis.swap_beta_max": 1.0})
    with pytest.raises(ConfigError, match="swap_area"):
        cfg_for(tmp_path, **{"synthesis.swap_area": "[0.5, 0.2]"})


def test_thin_curve_samples_come_before_the_other_kinds_and_leave_their_draws(tmp_path):
    plain, ds = _without_and_with(tmp_path, {"synthesis.swap_fraction": 0.34, "synthesis.scratch_fraction": 0},
                                  "synthesis.scratch_fraction", 0.34)
    assert (ds.n_perlin, ds.n_scratch, ds.n_swap, ds.n_extended) == (6, 2, 2, 2) and len(ds) == len(plain)
    assert [ds.kind(i) for i in range(len(ds))] == (["normal"] * 6 + ["perlin"] * 2 + ["scratch"] * 2 + ["swap"] * 2
                                                    + ["extended"] * 2)
    normal = MVTEC(str(tmp_path), "cat", "train", 32)
    for i in range(len(ds)):
        item = ds[i]
        if item["kind"] == "scratch":
            m = item["mask"][0] > 0
            assert item["label"] == 1 and 0 < m.float().mean() < 0.5
            assert torch.allclose(item["image"][:, ~m], normal[item["source"]]["image"][:, ~m], atol=1 / 255)
        else:  # every other sample keeps its draw
            assert torch.equal(item["image"], plain[i]["image"]) and torch.equal(item["mask"], plain[i]["mask"])
    from prnet.config import ConfigError
    with pytest.raises(ConfigError, match="scratch_fraction"):
        cfg_for(tmp_path, **{"synthesis.scratch_fraction": 0.8, "synthesis.swap_fraction": 0.3})


@pytest.mark.parametrize("kind, key", [("structure", "structure_fraction"), ("shade", "shade_fraction"),
                                       ("spot", "spot_fraction")])
def test_a_share_of_the_perlin_samples_takes_the_place_of_dtd_blobs_and_leaves_every_other_draw(tmp_path, kind, key):
    """Structural anomalies, photometric anomalies and small spots: each share of the Perlin samples comes before the
    thin curves, changes its images only under its mask, and every other sample keeps its draw."""
    over = {"synthesis.scratch_fraction": 0.34}
    plain, ds = _without_and_with(tmp_path, over, f"synthesis.{key}", 0.34)
    assert (ds.n_perlin, getattr(ds, f"n_{kind}"), ds.n_scratch, ds.n_extended) == (6, 2, 2, 2)
    assert len(ds) == len(plain)
    assert [ds.kind(i) for i in range(len(ds))] == (["normal"] * 6 + ["perlin"] * 2 + [kind] * 2
                                                    + ["scratch"] * 2 + ["extended"] * 2)
    normal = MVTEC(str(tmp_path), "cat", "train", 32)
    for i in range(len(ds)):
        item = ds[i]
        if item["kind"] == kind:
            m = item["mask"][0] > 0
            base = normal[item["source"]]["image"]
            assert item["label"] == 1 and m.any()
            assert torch.allclose(item["image"][:, ~m], base[:, ~m], atol=1 / 255)
            if kind == "spot":
                assert m.float().mean() < 0.05  # one small blob
            else:
                assert (item["image"][:, m] - base[:, m]).abs().max() > 0.02  # the surface moved under the mask
        else:
            assert torch.equal(item["image"], plain[i]["image"]) and torch.equal(item["mask"], plain[i]["mask"])
    assert getattr(_without_and_with(tmp_path, over, f"synthesis.{key}", 0)[1], f"n_{kind}") == 0
    from prnet.config import ConfigError
    with pytest.raises(ConfigError, match=key):  # the shares of the Perlin samples sum past 1
        cfg_for(tmp_path, **{f"synthesis.{key}": 0.8, "synthesis.scratch_fraction": 0.25})
    with pytest.raises(ConfigError, match=key):
        cfg_for(tmp_path, **{f"synthesis.{key}": -0.1})


def test_the_perlin_samples_are_laid_out_blobs_spots_shades_structures_curves_swaps(tmp_path):
    make_category(tmp_path, n_train=6)
    five = {"data.num_anomalies": 2, "synthesis.perlin_ratio": 1.0, "synthesis.extended_ratio": 0.34,
            "synthesis.scratch_fraction": 0.17, "synthesis.structure_fraction": 0.17, "synthesis.shade_fraction": 0.17,
            "synthesis.spot_fraction": 0.17}
    five = build_train_dataset(cfg_for(tmp_path, **five), "cat")
    assert [five.kind(i) for i in range(6, 12)] == ["perlin", "perlin", "spot", "shade", "structure", "scratch"]
    six = {"data.num_anomalies": 2, "synthesis.perlin_ratio": 2.0, "synthesis.scratch_fraction": 0.17,
           "synthesis.structure_fraction": 0.17, "synthesis.shade_fraction": 0.17, "synthesis.spot_fraction": 0.17,
           "synthesis.swap_fraction": 0.17}
    six = build_train_dataset(cfg_for(tmp_path, **six), "cat")
    assert [six.kind(i) for i in range(6, 18)] == (["perlin"] * 2 + ["spot"] * 2 + ["shade"] * 2 + ["structure"] * 2
                                                   + ["scratch"] * 2 + ["swap"] * 2)


def test_jitter_changes_every_image_globally_and_leaves_every_other_draw(tmp_path):
    """synthesis.jitter: each sample's image is jitter_image of the sample made without it, drawn from its own
    stream (the same kinds, sources and masks as without it); a fraction outside [0, 1) is refused."""
    from prnet.datasets import JITTER_STREAM
    from prnet.datasets.synthesis import jitter_image
    from prnet.utils import numpy_rng

    plain, ds = _without_and_with(tmp_path, {}, "synthesis.jitter", 0.2)
    assert len(ds) == len(plain) and ds.n_extended > 0
    moved = []
    for i in range(len(ds)):
        item, ref = ds[i], plain[i]
        assert item["kind"] == ref["kind"] and item["source"] == ref["source"] and item["label"] == ref["label"]
        assert torch.equal(item["mask"], ref["mask"])
        want = jitter_image(ref["image"].numpy().transpose(1, 2, 0), numpy_rng(ds.seed, 0, i, JITTER_STREAM), 0.2)
        assert torch.allclose(item["image"], torch.from_numpy(want.transpose(2, 0, 1)), atol=1e-6)
        moved.append(float((item["image"] - ref["image"]).abs().mean()))
    assert min(moved) > 0 and max(moved) > 0.01  # every image changed, some visibly
    from prnet.config import ConfigError
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match="synthesis.jitter"):
            cfg_for(tmp_path, **{"synthesis.jitter": bad})


def test_held_out_exact_gives_each_sample_its_clean_source_image_and_leaves_every_draw(tmp_path):
    """prototypes.held_out_exact: each sample also carries the normal training image it was made from, unchanged
    (before jitter); the samples themselves are drawn as without it. Without leave_one_out there is nothing to
    hold out, and no clean image."""
    plain, ds = _without_and_with(tmp_path, {"synthesis.jitter": 0.2}, "prototypes.held_out_exact", True)
    kinds = set()
    for i in range(len(ds)):
        item, ref = ds[i], plain[i]
        assert "clean" not in ref
        assert torch.equal(item["image"], ref["image"]) and torch.equal(item["mask"], ref["mask"])
        assert item["source"] == ref["source"] and item["kind"] == ref["kind"]
        clean = torch.from_numpy(ds.normal.image(item["source"]).transpose(2, 0, 1))  # the training pixels
        assert torch.equal(item["clean"], clean)
        assert not torch.equal(item["clean"], item["image"])  # the sample was jittered (and maybe changed)
        kinds.add(item["kind"])
    assert {"normal", "perlin", "extended"} <= kinds
    off = build_train_dataset(cfg_for(tmp_path, **{"data.num_anomalies": 2, "prototypes.held_out_exact": True,
                                                   "prototypes.leave_one_out": False}), "cat")
    assert "clean" not in off[0]


def test_extended_scale_shrinks_only_the_pasted_defects(tmp_path):
    """synthesis.extended_scale reaches the extended samples (a fixed 0.5 pastes smaller defects than the default
    range, summed over all of them); every other sample keeps its draw; an empty or inverted range is refused."""
    plain, ds = _without_and_with(tmp_path, {}, "synthesis.extended_scale", "[0.5,0.5]")
    kinds = [ds.kind(i) for i in range(len(ds))]
    assert kinds.count("extended") == 2 and len(ds) == len(plain)
    area = {"plain": 0.0, "shrunk": 0.0}
    for i, kind in enumerate(kinds):
        if kind == "extended":
            area["plain"] += float(plain[i]["mask"].sum())
            area["shrunk"] += float(ds[i]["mask"].sum())
        else:
            assert torch.equal(ds[i]["image"], plain[i]["image"]) and torch.equal(ds[i]["mask"], plain[i]["mask"])
    assert 0 < area["shrunk"] < 0.6 * area["plain"]
    from prnet.config import ConfigError
    for bad in ("[0.5]", "[1.0,0.5]", "[0,1]"):
        with pytest.raises(ConfigError, match="extended_scale"):
            cfg_for(tmp_path, **{"synthesis.extended_scale": bad})


def _has_colour(item):
    img = item["image"]
    return float((img.max(0).values - img.min(0).values).max()) > 2 / 255


def test_perlin_textures_are_grey_for_a_greyscale_category(tmp_path):
    make_category(tmp_path / "g", n_train=6, grey=True)
    make_category(tmp_path / "c", n_train=6)
    over = {"data.num_anomalies": 2, "synthesis.perlin_ratio": 2.0}  # 12 Perlin samples; DTD absent: coloured
    assert not build_train_dataset(cfg_for(tmp_path / "g", **over), "cat").grey_textures  # default: rgb (DRAEM)
    over["synthesis.texture_colour"] = "auto"
    grey_auto = build_train_dataset(cfg_for(tmp_path / "g", **over), "cat")  # procedural textures
    assert grey_auto.grey_textures
    perlin = [i for i in range(len(grey_auto)) if grey_auto.kind(i) in ("perlin", "scratch")]  # both textured
    assert len(perlin) == 12 and grey_auto.n_scratch == 3
    assert not any(_has_colour(grey_auto[i]) for i in range(len(grey_auto)))  # normal, Perlin and extended
    forced_rgb = build_train_dataset(cfg_for(tmp_path / "g", **{**over, "synthesis.texture_colour": "rgb"}), "cat")
    assert not forced_rgb.grey_textures
    assert any(_has_colour(forced_rgb[i]) for i in perlin)  # the colour cue a real grey defect never has
    # same draws either way: the same masks, the same pixels outside them
    for i in perlin:
        a, b = grey_auto[i], forced_rgb[i]
        assert torch.equal(a["mask"], b["mask"]) and a["source"] == b["source"]
        assert torch.equal(a["image"][:, a["mask"][0] == 0], b["image"][:, b["mask"][0] == 0])
    colour_auto = build_train_dataset(cfg_for(tmp_path / "c", **over), "cat")
    assert not colour_auto.grey_textures
    forced_grey = build_train_dataset(cfg_for(tmp_path / "c", **{**over, "synthesis.texture_colour": "grey"}), "cat")
    assert forced_grey.grey_textures


def test_unsupervised_has_no_extended_samples(tmp_path):
    make_category(tmp_path)
    ds = build_train_dataset(cfg_for(tmp_path, **{"data.num_anomalies": 0}), "cat")
    assert ds.n_extended == 0 and ds.real_anomalies == []
    assert len(build_test_dataset(cfg_for(tmp_path, **{"data.num_anomalies": 0}), "cat")) == 8


def test_samples_depend_on_seed_epoch_index_only(tmp_path):
    make_category(tmp_path, n_train=4)
    cfg = cfg_for(tmp_path, **{"data.num_anomalies": 2})
    ds = build_train_dataset(cfg, "cat")
    a = ds[5]
    assert torch.equal(a["image"], ds[(0, 5)]["image"]) and torch.equal(a["mask"], ds[(0, 5)]["mask"])
    ds.set_epoch(1)
    b = ds[5]
    assert torch.equal(b["image"], ds[(1, 5)]["image"])
    assert not torch.equal(a["image"], b["image"])
    ds.set_epoch(0)

    def collect(workers):
        loader = DataLoader(ds, batch_size=3, shuffle=False, num_workers=workers)
        return [batch for batch in loader]

    zero, two = collect(0), collect(2)
    assert len(zero) == len(two)
    for x, y in zip(zero, two):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
        assert x["kind"] == y["kind"]
    sampler = EpochSampler(len(ds), seed=0, shuffle=False)
    sampler.set_epoch(1)
    tuples = next(iter(DataLoader(ds, batch_size=len(ds), sampler=sampler, num_workers=0)))
    ds.set_epoch(1)
    assert torch.equal(tuples["image"], torch.stack([ds[i]["image"] for i in range(len(ds))]))


def test_ensure_data_writes_missing_demo_category(tmp_path, caplog):
    cfg = load_config(None, [f"data.root={tmp_path}", "data.classes=[tiny]", "data.generate_demo=false",
                             "data.image_size=32"])
    assert ensure_data(cfg) == [] and not (tmp_path / "tiny").exists()
    cfg.data.generate_demo = True
    with caplog.at_level(logging.INFO):
        written = ensure_data(cfg)
    assert written == [str(tmp_path / "tiny")]
    assert len(MVTEC(str(tmp_path), "tiny", "train")) == 80
    assert ensure_data(cfg) == []  # present now: nothing written


def test_a_mask_lost_at_the_run_size_is_named_and_its_pixels_count_as_defect_free(tmp_path, caplog):
    """A defect between the rows the nearest-neighbour resize keeps: the check names its mask, and the pixel metrics
    count that image's pixels as defect-free, as the warning says (its image label still counts)."""
    from prnet.datasets.checks import check_samples
    from prnet.metrics import compute_metrics

    cat = make_category(tmp_path, defects=(("crack", 2),))  # 40×48 images, read at 32×32
    thin = np.zeros((40, 48), np.uint8)
    thin[4] = 255  # row 4 of 40: the resize to 32 rows keeps rows 3 and 5
    cv2.imwrite(os.path.join(cat, "ground_truth/crack/001_mask.png"), thin)
    test = MVTEC(str(tmp_path), "cat", "test", image_size=32)
    lost = [i for i, s in enumerate(test.samples) if s.mask_path and s.mask_path.endswith("001_mask.png")]
    assert len(lost) == 1 and test.mask(lost[0]).sum() == 0 and load_mask(test.samples[lost[0]].mask_path).sum() > 0
    with caplog.at_level(logging.WARNING):
        check_samples(test.samples, 32)
    assert "001_mask.png" in caplog.text and "all their pixels as defect-free for the pixel metrics" in caplog.text
    labels = np.array([s.label for s in test.samples])
    masks = np.stack([test.mask(i) for i in range(len(test))])
    maps = masks * 0.9 + 0.1 * np.random.default_rng(0).random(masks.shape)  # defects found, the lost one unmarked
    low = compute_metrics(labels.astype(float), labels, maps, masks)
    maps[lost[0]] = 1.0  # the lost image marked everywhere: as negatives, its pixels now outrank every defect pixel
    high = compute_metrics(labels.astype(float), labels, maps, masks)
    assert low["pixel_auroc"] == 1.0 and high["pixel_auroc"] < 0.85 and high["image_auroc"] == low["image_auroc"]


def test_masks_with_many_grey_levels_are_named(tmp_path, caplog):
    """A JPEG mask (compression noise around the defect) is named once; a 0/255 PNG and a class-id mask are not."""
    from prnet.datasets.checks import check_samples

    cat = make_category(tmp_path, defects=(("crack", 3),))
    square = np.zeros((40, 48), np.uint8)
    square[10:30, 12:36] = 255
    cv2.imwrite(os.path.join(cat, "ground_truth/crack/000_mask.jpg"), square, [cv2.IMWRITE_JPEG_QUALITY, 90])
    os.remove(os.path.join(cat, "ground_truth/crack/000_mask.png"))
    ids = np.zeros((40, 48), np.uint8)
    ids[5:15, 5:15], ids[20:30, 20:30] = 1, 2  # a class-id mask: two labels, exact
    cv2.imwrite(os.path.join(cat, "ground_truth/crack/001_mask.png"), ids)
    test = MVTEC(str(tmp_path), "cat", "test", image_size=32)
    jpeg = load_mask(os.path.join(cat, "ground_truth/crack/000_mask.jpg"))
    assert jpeg.sum() > (square > 0).sum()  # the fringe the warning is about
    with caplog.at_level(logging.WARNING):
        check_samples(test.samples, 32)
    named = [r.getMessage() for r in caplog.records if "grey levels" in r.getMessage()]
    assert len(named) == 1 and named[0].startswith("1 mask files") and "000_mask.jpg" in named[0]
    assert "001_mask.png" not in named[0] and "002_mask.png" not in named[0]


def test_a_mask_with_transparency_marks_only_where_it_is_drawn(tmp_path):
    """An overlay exported on a transparent background: colour everywhere, the defect in the alpha channel. Before,
    every pixel counted as defective; an opaque RGBA mask still reads by its colour."""
    overlay = np.zeros((10, 12, 4), np.uint8)
    overlay[..., 0] = 255  # red everywhere
    overlay[2:5, 3:7, 3] = 255  # drawn (opaque) only on the defect
    Image.fromarray(overlay, "RGBA").save(tmp_path / "overlay.png")
    want = np.zeros((10, 12), np.float32)
    want[2:5, 3:7] = 1
    assert np.array_equal(load_mask(str(tmp_path / "overlay.png")), want)
    opaque = np.zeros((10, 12, 4), np.uint8)
    opaque[..., 3] = 255
    opaque[2:5, 3:7, :3] = 255
    Image.fromarray(opaque, "RGBA").save(tmp_path / "opaque.png")
    assert np.array_equal(load_mask(str(tmp_path / "opaque.png")), want)
    grey = np.zeros((10, 12, 2), np.uint8)  # grey + alpha, the same overlay
    grey[..., 0], grey[2:5, 3:7, 1] = 200, 255
    Image.fromarray(grey, "LA").save(tmp_path / "grey.png")
    assert np.array_equal(load_mask(str(tmp_path / "grey.png")), want)


def test_an_image_and_its_mask_with_different_exif_orientations_are_named(tmp_path, caplog):
    """A JPEG turned 180° by its EXIF tag with a mask that has none: both are read upright, so a mask drawn on the
    stored pixels would be misaligned; the check names the pair. Turned 90°, the size check stops and says why."""
    from prnet.datasets.checks import check_samples

    cat = make_category(tmp_path, defects=(("crack", 2),), ext=".jpg")
    exif = Image.new("L", (1, 1)).getexif()
    exif[0x0112] = 3
    path = os.path.join(cat, "test/crack/000.jpg")
    Image.open(path).save(path, exif=exif.tobytes(), quality=95)
    test = MVTEC(str(tmp_path), "cat", "test", image_size=32)
    with caplog.at_level(logging.WARNING):
        check_samples(test.samples, 32)
    named = [r.getMessage() for r in caplog.records if "EXIF orientations" in r.getMessage()]
    assert len(named) == 1 and named[0].startswith("1 defective images") and "000.jpg (3) with" in named[0]
    exif[0x0112] = 6
    Image.open(path).save(path, exif=exif.tobytes(), quality=95)
    with pytest.raises(DatasetError, match="expected the same size; the image carries EXIF orientation 6"):
        check_samples(MVTEC(str(tmp_path), "cat", "test", image_size=32).samples, 32)
