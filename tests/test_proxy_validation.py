"""benchmarks/proxy_validation.py: the validation category is made of training data only, and nothing leaks."""
import argparse
import os

import cv2
import numpy as np
import pytest

from proxy_validation import (EXTENDED, FAINT_OPACITY, FAINT_REAL, IN_CONTEXT, PERLIN, REAL, SMALL, SPOTS, SWAP,
                              TINY, TINY_REAL, TINY_REAL_AREA, add_faint_real_subset, add_in_context_subset,
                              add_real_subset, add_spots_subset, add_swap_subset, add_tiny_real_subset, band_mask,
                              build_proxy, extended_sources, other_settings, overrides, run_name, score_table,
                              seed_summary, shrunk_paste, spots_mask, train_args)
from prnet.config import load_config
from prnet.datasets import (build_test_dataset, build_train_dataset, few_shot_names, load_mask,
                            load_rgb, make_demo_category, scan_split, select_few_shot)


def _textures(root, classes=("a", "b", "c", "d")):
    rng = np.random.default_rng(0)
    for c in classes:
        os.makedirs(os.path.join(root, c))
        for i in range(2):
            cv2.imwrite(os.path.join(root, c, f"{i}.jpg"), rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))


def _proxy(tmp_path, n_train, n_test_bad, shots):
    """A demo category, 4 texture classes and its proxy (a quarter held out): (data, out, info)."""
    data = make_demo_category(str(tmp_path / "data"), "demo", seed=0, size=64, n_train=n_train, n_test_good=4,
                              n_test_bad=n_test_bad)
    _textures(str(tmp_path / "dtd"))
    out = str(tmp_path / "out")
    info = build_proxy(data, str(tmp_path / "dtd"), out, holdout=0.25, val_classes=1, shots=shots, split_seed=0,
                       seed=0, size=64)
    return data, out, info


def _subset_images(proxy, name, max_share):
    """[(image, its held-out normal image, mask)] of a proxy subset at 64 px: one per held-out image, in order,
    each mask non-empty and under max_share of the image, the image equal to its normal one outside the mask."""
    held = sorted(os.listdir(os.path.join(proxy, "test", "good")))
    files = sorted(os.listdir(os.path.join(proxy, "test", name)))
    assert files == [f"{k:04d}.png" for k in range(len(held))]
    out = []
    for k, f in enumerate(files):
        image = load_rgb(os.path.join(proxy, "test", name, f), 64)
        normal = load_rgb(os.path.join(proxy, "test", "good", held[k]), 64)
        mask = load_mask(os.path.join(proxy, "ground_truth", name, f"{k:04d}_mask.png"), 64) > 0
        assert mask.any() and mask.mean() < max_share
        assert np.abs(image - normal)[~mask].max() <= 1.5 / 255  # its own held-out image outside the mask
        out.append((image, normal, mask))
    return out


def _written_once(proxy, name, add):
    """Calling `add` again leaves the subset's files as they are."""
    first = os.path.join(proxy, "test", name, "0000.png")
    before = os.path.getmtime(first)
    add()
    assert os.path.getmtime(first) == before


def test_proxy_category_uses_training_data_only(tmp_path):
    data, out, info = _proxy(tmp_path, n_train=20, n_test_bad=12, shots=6)
    proxy = os.path.join(info["root"], "demo")

    train_names = {os.path.basename(s.path) for s in scan_split(data.rsplit("/", 1)[0], "demo", "train")}
    fit = set(os.listdir(os.path.join(proxy, "train", "good")))
    held = set(os.listdir(os.path.join(proxy, "test", "good")))
    assert len(held) == 5 and not fit & held and fit | held == train_names

    assert len(info["val_textures"]) == 1 and not set(info["val_textures"]) & set(info["fit_textures"])
    assert sorted(os.listdir(info["dtd_fit"])) == sorted(info["fit_textures"])

    real = [s.name for s in select_few_shot(scan_split(os.path.dirname(data), "demo", "test"), 6, 0)]
    assert info["train_shots"] + info["val_shots"] == real and len(info["train_shots"]) == 3
    shots_in_proxy = {f"{d}/{f}" for d in os.listdir(os.path.join(proxy, "test")) if d not in ("good", PERLIN, EXTENDED)
                      for f in os.listdir(os.path.join(proxy, "test", d))}
    assert shots_in_proxy == set(info["train_shots"])  # the other real defects only appear pasted, as EXTENDED

    held_sorted = sorted(held)
    for kind in (PERLIN, EXTENDED):
        files = sorted(os.listdir(os.path.join(proxy, "test", kind)))
        assert len(files) == len(held)
        for f in files:
            mask = load_mask(os.path.join(proxy, "ground_truth", kind, f[:-4] + "_mask.png"))
            assert mask.any()
    # an extended anomaly changes its held-out normal image only inside its mask
    normal = load_rgb(os.path.join(proxy, "test", "good", held_sorted[0]), 64)
    image = load_rgb(os.path.join(proxy, "test", EXTENDED, "0000.png"), 64)
    mask = load_mask(os.path.join(proxy, "ground_truth", EXTENDED, "0000_mask.png"), 64) > 0
    assert np.abs(image - normal)[~mask].max() <= 1.5 / 255 and np.abs(image - normal)[mask].max() > 0.05

    # the runs train on the fit split with the first half of the shots, and score everything else
    args = argparse.Namespace(out=out, size=64, backbone="resnet18", weights="package", widths="[8, 8, 8]", epochs=1,
                              batch=4, lr=1e-3, workers=0, device="cpu", seed=0)
    cfg = load_config(None, overrides(args, info, "v", ["eval.topk=5"]))
    assert few_shot_names(cfg, "demo") == info["train_shots"] and cfg.eval.topk == 5
    test = build_test_dataset(cfg, "demo")
    assert {s.defect for s in test.samples} == {"good", PERLIN, EXTENDED} and len(test) == 3 * len(held)
    assert len(build_train_dataset(cfg, "demo").normal) == len(fit)
    assert build_proxy(data, str(tmp_path / "dtd"), out, 0.25, 1, 6, 0, 0, 64)["train_shots"] == info["train_shots"]


def test_grey_perlin_set_repeats_the_proxy_draws_in_grey(tmp_path):
    from proxy_grey_perlin import GREY, build_grey_perlin

    from prnet.datasets.synthesis import is_greyscale

    data = make_demo_category(str(tmp_path / "data"), "demo", seed=0, size=64, n_train=12, n_test_good=2,
                              n_test_bad=4)
    for name in os.listdir(os.path.join(data, "train", "good")):  # a greyscale category
        path = os.path.join(data, "train", "good", name)
        cv2.imwrite(path, cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2GRAY))
    _textures(str(tmp_path / "dtd"))
    out = str(tmp_path / "out")
    build_proxy(data, str(tmp_path / "dtd"), out, holdout=0.25, val_classes=2, shots=2, split_seed=0, seed=0, size=64)
    root, category = build_grey_perlin(out, seed=0, size=64)
    proxy = os.path.join(out, "proxy", "demo")
    assert category == "demo"
    held = sorted(os.listdir(os.path.join(proxy, "test", "good")))
    assert sorted(os.listdir(os.path.join(root, "demo", "test", "good"))) == held and len(held) == 3
    coloured = 0
    for k in range(len(held)):
        mask = load_mask(os.path.join(root, "demo", "ground_truth", GREY, f"{k:04d}_mask.png"))
        assert np.array_equal(mask, load_mask(os.path.join(proxy, "ground_truth", PERLIN, f"{k:04d}_mask.png")))
        grey = (load_rgb(os.path.join(root, "demo", "test", GREY, f"{k:04d}.png")) * 255).round().astype(np.uint8)
        colour = (load_rgb(os.path.join(proxy, "test", PERLIN, f"{k:04d}.png")) * 255).round().astype(np.uint8)
        assert is_greyscale(grey) and np.array_equal(grey[mask == 0], colour[mask == 0])
        coloured += not is_greyscale(colour)
    assert coloured > 0  # the proxy's own Perlin images carry the DTD colours
    assert build_grey_perlin(out, seed=0, size=64) == (root, category)  # written once, then reused


def test_band_masks_and_the_swap_subset_use_held_out_images_only(tmp_path):
    for k in range(20):
        m = band_mask((40, 60), np.random.default_rng(k), area=(0.1, 0.4))
        assert 0.09 <= m.mean() <= 0.41
        rows = m.mean(axis=1)
        assert max(rows[0], rows[-1]) > 0.5 and min(rows[0], rows[-1]) == 0.0  # along the top or the bottom edge
        assert (np.diff(rows) <= 0).all() or (np.diff(rows) >= 0).all()  # one side of a line
    _, out, info = _proxy(tmp_path, n_train=16, n_test_bad=5, shots=4)
    add_swap_subset(info, seed=0, size=64)
    proxy = os.path.join(info["root"], "demo")
    held = sorted(os.listdir(os.path.join(proxy, "test", "good")))
    files = sorted(os.listdir(os.path.join(proxy, "test", SWAP)))
    assert files == [f"{k:04d}.png" for k in range(len(held))] and len(held) == 4
    normals = [load_rgb(os.path.join(proxy, "test", "good", f), 64) for f in held]
    for k, f in enumerate(files):
        image = load_rgb(os.path.join(proxy, "test", SWAP, f), 64)
        mask = load_mask(os.path.join(proxy, "ground_truth", SWAP, f"{k:04d}_mask.png"), 64) > 0
        assert 0.09 <= mask.mean() <= 0.41
        assert np.abs(image - normals[k])[~mask].max() <= 1.5 / 255  # its own held-out image outside the band
        # inside: a blend with another held-out image (never a training image)
        best = min(np.abs((image - normals[k])[mask] - t * (normals[j] - normals[k])[mask]).mean()
                   for j in range(len(held)) if j != k for t in np.linspace(0.2, 1.0, 81))
        assert best < 3 / 255 and np.abs(image - normals[k])[mask].mean() > 0.01
    before = os.path.getmtime(os.path.join(proxy, "test", SWAP, files[0]))
    add_swap_subset(info, seed=0, size=64)  # written once
    assert os.path.getmtime(os.path.join(proxy, "test", SWAP, files[0])) == before

    # the runs see it as one more defect type; "all" keeps its old meaning, the swaps are scored on their own
    args = argparse.Namespace(out=out, size=64, backbone="resnet18", weights="package", widths="[8, 8, 8]", epochs=1,
                              batch=4, lr=1e-3, workers=0, device="cpu", seed=0)
    test = build_test_dataset(load_config(None, overrides(args, info, "v", [])), "demo")
    defects = np.array([s.defect for s in test.samples])
    assert {"good", PERLIN, EXTENDED, SWAP} == set(defects)
    labels = np.array([s.label for s in test.samples])
    masks = np.stack([test[i]["mask"][0].numpy() for i in range(len(test))])
    maps = masks.astype(np.float32).copy()
    maps[defects == SWAP] = 0.0  # a model that finds every anomaly but the swaps
    sources = extended_sources([s.name for s in test.samples], info["val_shots"])
    assert set(sources[defects == EXTENDED]) == {n.split("/")[0] for n in info["val_shots"]}
    assert (sources[defects != EXTENDED] == "").all()
    import torch
    table = score_table(maps, labels, masks, defects, torch.device("cpu"), sources)
    assert table["metrics"]["all|sigma=0"]["pixel_auroc"] == 1.0 and table["metrics"]["all|sigma=0"]["aupro"] > 0.99
    assert table["metrics"][f"{SWAP}|sigma=0"]["pixel_auroc"] <= 0.5
    for src in set(sources) - {""}:
        assert table["metrics"][f"{EXTENDED}:{src}|sigma=0"]["pixel_auroc"] == 1.0


def test_in_context_subset_repeats_the_extended_pastes_at_the_new_level(tmp_path):
    data, out, info = _proxy(tmp_path, n_train=16, n_test_bad=5, shots=4)
    add_in_context_subset(info, data, seed=0, size=64)
    proxy = os.path.join(info["root"], "demo")
    held = sorted(os.listdir(os.path.join(proxy, "test", "good")))
    files = sorted(os.listdir(os.path.join(proxy, "test", IN_CONTEXT)))
    assert files == sorted(os.listdir(os.path.join(proxy, "test", EXTENDED))) and len(files) == len(held)
    shifted = 0
    for k, f in enumerate(files):
        stem = os.path.splitext(f)[0]
        m = load_mask(os.path.join(proxy, "ground_truth", IN_CONTEXT, stem + "_mask.png"), 64) > 0
        assert np.array_equal(m, load_mask(os.path.join(proxy, "ground_truth", EXTENDED, stem + "_mask.png"), 64) > 0)
        a = load_rgb(os.path.join(proxy, "test", IN_CONTEXT, f), 64)
        b = load_rgb(os.path.join(proxy, "test", EXTENDED, f), 64)
        normal = load_rgb(os.path.join(proxy, "test", "good", held[k]), 64)
        assert np.abs(a - normal)[~m].max() <= 1.5 / 255 and np.abs(b - normal)[~m].max() <= 1.5 / 255
        shifted += np.abs(a - b)[m].mean() > 2 / 255  # same defect, another level
    assert shifted >= len(files) // 2
    before = os.path.getmtime(os.path.join(proxy, "test", IN_CONTEXT, files[0]))
    add_in_context_subset(info, data, seed=0, size=64)  # written once
    assert os.path.getmtime(os.path.join(proxy, "test", IN_CONTEXT, files[0])) == before
    # scored on its own: "all" never includes it
    import torch
    defects = np.array(["good"] * 2 + [EXTENDED] * 2 + [IN_CONTEXT] * 2)
    labels = (defects != "good").astype(int)
    masks = np.zeros((6, 8, 8), np.uint8)
    masks[2:, 2:4, 2:4] = 1
    maps = masks.astype(np.float32)
    maps[defects == IN_CONTEXT] = 0.0  # found every plain paste, none in context
    table = score_table(maps, labels, masks, defects, torch.device("cpu"))
    assert table["metrics"]["all|sigma=0"]["pixel_auroc"] == 1.0
    assert table["metrics"][f"{IN_CONTEXT}|sigma=0"]["pixel_auroc"] <= 0.5


def test_any_category_name_and_size_and_seeds(tmp_path):
    """A category named like BTAD's '01', a non-square size, --set and several seeds; the proxy keeps its settings."""

    data = make_demo_category(str(tmp_path / "data"), "01", seed=0, size=64, n_train=12, n_test_good=2, n_test_bad=5)
    _textures(str(tmp_path / "dtd"))
    out = str(tmp_path / "out")
    info = build_proxy(data, str(tmp_path / "dtd"), out, holdout=0.25, val_classes=1, shots=4, split_seed=0, seed=0,
                       size=[64, 96])
    add_swap_subset(info, seed=0, size=[64, 96])
    add_in_context_subset(info, data, seed=0, size=[64, 96])
    proxy = os.path.join(info["root"], "01")
    for kind in (PERLIN, EXTENDED, SWAP, IN_CONTEXT):
        assert cv2.imread(os.path.join(proxy, "test", kind, "0000.png")).shape == (64, 96, 3), kind
        assert cv2.imread(os.path.join(proxy, "ground_truth", kind, "0000_mask.png")).shape[:2] == (64, 96), kind
    with pytest.raises(SystemExit, match="other settings: size"):
        build_proxy(data, str(tmp_path / "dtd"), out, 0.25, 1, 4, 0, 0, 64)
    with pytest.raises(SystemExit, match="val-texture-classes"):
        build_proxy(data, str(tmp_path / "dtd"), str(tmp_path / "out2"), 0.25, 4, 4, 0, 0, 64)

    args = argparse.Namespace(out=out, size=[64, 96], backbone="resnet18", weights="package", widths="[8, 8, 8]",
                              epochs=1, batch=4, lr=1e-3, workers=0, device="cpu", seed=1,
                              set=["eval.topk=7", "train.lr=0.01"])
    cfg = load_config(None, overrides(args, info, "v", ["train.lr=0.02"]))
    assert cfg.data.classes == ["01"] and cfg.data.image_size == [64, 96] and cfg.seed == 1
    assert cfg.eval.topk == 7 and cfg.train.lr == 0.02  # --set for every variant, the variant's own last
    assert not cfg.eval.score_test  # train.py leaves the proxy test split to this script's own scoring
    assert cfg.output_dir == os.path.join(os.path.abspath(out), "runs", "v-seed1") and run_name("v", 0) == "v"
    assert few_shot_names(cfg, "01") == info["train_shots"]

    rows = [{"variant": "v", "seed": s, "metrics": {"all|sigma=0": {"image_auroc": a, "aupro": 0.5}}}
            for s, a in ((0, 0.8), (1, 0.9), (2, 1.0))] + [{"variant": "w", "metrics": {"all|sigma=0": {
                "image_auroc": 0.7, "aupro": 0.4}}}]
    summary = seed_summary(rows)
    assert summary["v"]["seeds"] == [0, 1, 2] and summary["w"]["seeds"] == [0]
    assert summary["v"]["metrics"]["all|sigma=0"]["image_auroc"]["mean"] == pytest.approx(0.9)
    assert summary["v"]["metrics"]["all|sigma=0"]["image_auroc"]["std"] == pytest.approx(0.1)
    assert summary["w"]["metrics"]["all|sigma=0"]["aupro"] == {"mean": 0.4, "std": 0.0, "min": 0.4, "max": 0.4}
    # a variant's seeds are averaged together, so a seed run with other settings under its name is refused
    kept = [{"variant": "v", "seed": 0, "overrides": ["train.lr=0.02"], "common_overrides": args.set,
             "train_args": train_args(args)}]
    assert other_settings(kept, "v", 1, ["train.lr=0.02"], args) is None
    assert other_settings(kept, "v", 0, ["train.lr=0.05"], args) is None  # the same seed: replaced, not averaged
    longer = argparse.Namespace(**{**vars(args), "epochs": 2})
    assert "epochs: 1 -> 2" in other_settings(kept, "v", 1, ["train.lr=0.02"], longer)
    assert "overrides" in other_settings(kept, "v", 1, ["train.lr=0.05"], args)
    assert other_settings(kept, "w", 1, ["train.lr=0.05"], longer) is None


@pytest.mark.parametrize("name, share", [(SMALL, (0.001, 0.004)), (TINY, (0.0001, 0.0006))])
def test_spot_subsets_cover_a_small_share_with_validation_textures_only(tmp_path, name, share):
    area, max_spots, _ = SPOTS[name]
    for k in range(30):
        m = spots_mask((256, 256), np.random.default_rng(k), area, max_spots)
        assert 0 < m.mean() <= 2 * area[1] and set(np.unique(m)) <= {0.0, 1.0}
    shares = [spots_mask((256, 256), np.random.default_rng(k), area, max_spots).mean() for k in range(200)]
    assert share[0] < np.median(shares) < share[1]  # about U(area): small defects, not Perlin blobs
    _, out, info = _proxy(tmp_path, n_train=16, n_test_bad=5, shots=4)
    proxy = os.path.join(info["root"], "demo")
    # the validation texture classes are uniform colours here: the spots must take them, not a training class
    for c in os.listdir(os.path.join(info["root"], "dtd_val")):
        target = os.path.realpath(os.path.join(info["root"], "dtd_val", c))
        for f in os.listdir(target):
            cv2.imwrite(os.path.join(target, f), np.full((48, 48, 3), (10, 200, 30), np.uint8))
    add_spots_subset(info, seed=0, size=64, name=name)
    for image, normal, mask in _subset_images(proxy, name, max_share=0.05):
        # inside: moved towards the validation colour by an opacity of 0.5..1
        colour = np.array([30, 200, 10], np.float32) / 255  # RGB of the BGR file above
        t = ((image - normal)[mask] / (colour - normal[mask] + 1e-6)).mean()
        assert 0.45 <= t <= 1.05
    _written_once(proxy, name, lambda: add_spots_subset(info, seed=0, size=64, name=name))


def test_shrunk_paste_keeps_the_defects_contrast_at_a_few_pixels():
    normal = np.full((256, 256, 3), 0.5, np.float32)
    defect = np.full((256, 256, 3), 0.7, np.float32)
    mask = np.zeros((256, 256), np.float32)
    mask[100:130, 80:120] = 1  # 1200 pixels, 0.3 lower than their surroundings
    defect[mask > 0] = 0.4
    areas = []
    for k in range(20):
        image, m = shrunk_paste(normal, defect, mask, np.random.default_rng(k))
        inside = m > 0
        areas.append(inside.sum())
        assert inside.any() and set(np.unique(m)) <= {0.0, 1.0}
        assert np.array_equal(image[~inside], normal[~inside])  # the normal image outside the mask
        # at the new level (0.5 around it), 0.3 darker: 0.2, lighter at the edges where area averaging mixed in the ring
        assert 0.15 <= image[inside].mean() <= 0.35
    lo, hi = (a * 256 * 256 for a in TINY_REAL_AREA)
    assert 0.5 * lo <= np.median(areas) <= 1.5 * hi and max(areas) <= 2 * hi
    # never enlarged: a 2×2 defect stays about that size
    small = np.zeros((256, 256), np.float32)
    small[50:52, 60:62] = 1
    _, m = shrunk_paste(normal, defect, small, np.random.default_rng(0))
    assert 1 <= m.sum() <= 4
    with pytest.raises(ValueError, match="empty"):
        shrunk_paste(normal, defect, np.zeros((256, 256), np.float32), np.random.default_rng(0))


def test_tiny_real_subset_pastes_the_validation_defects_shrunk(tmp_path):
    data, out, info = _proxy(tmp_path, n_train=16, n_test_bad=5, shots=4)
    add_tiny_real_subset(info, data, seed=0, size=64)
    proxy = os.path.join(info["root"], "demo")
    assert len(_subset_images(proxy, TINY_REAL, max_share=0.01)) == len(os.listdir(os.path.join(proxy, "test", "good")))
    _written_once(proxy, TINY_REAL, lambda: add_tiny_real_subset(info, data, seed=0, size=64))


def test_faint_real_subset_keeps_a_share_of_the_tiny_pastes(tmp_path):
    data, out, info = _proxy(tmp_path, n_train=16, n_test_bad=5, shots=4)
    add_tiny_real_subset(info, data, seed=0, size=64)
    add_faint_real_subset(info, data, seed=0, size=64)
    proxy = os.path.join(info["root"], "demo")
    tiny, faint = (_subset_images(proxy, n, max_share=0.01) for n in (TINY_REAL, FAINT_REAL))
    assert len(faint) == len(tiny) == len(os.listdir(os.path.join(proxy, "test", "good")))
    shares = []
    for (t_img, normal, t_mask), (f_img, _, f_mask) in zip(tiny, faint):
        assert np.array_equal(t_mask, f_mask)  # the same draws: place, size and defect
        full = (t_img - normal)[t_mask]
        strong = np.abs(full) > 20 / 255  # pixels whose share survives 8-bit rounding well
        if strong.any():
            shares.append(float(np.median((f_img - normal)[t_mask][strong] / full[strong])))
    assert shares and all(FAINT_OPACITY[0] - 0.05 <= b <= FAINT_OPACITY[1] + 0.05 for b in shares)
    _written_once(proxy, FAINT_REAL, lambda: add_faint_real_subset(info, data, seed=0, size=64))


def test_real_subset_links_the_validation_anomalies_whole(tmp_path):
    data, out, info = _proxy(tmp_path, n_train=16, n_test_bad=6, shots=4)
    add_real_subset(info, data)
    proxy = os.path.join(info["root"], "demo")
    found = {s.name: s for s in scan_split(os.path.dirname(data), "demo", "test")}
    test = build_test_dataset(load_config(None, [f"data.root={info['root']}", "data.classes=[demo]",
                                                 "data.image_size=64", "data.num_anomalies=0"]), "demo")
    real = [s for s in test.samples if s.defect == REAL]
    assert len(real) == len(info["val_shots"]) == 2 and all(s.mask_path for s in real)
    for k, name in enumerate(info["val_shots"]):  # the originals, in order, their masks with them
        s = next(r for r in real if os.path.basename(r.path).startswith(f"{k:02d}_"))
        assert os.path.realpath(s.path) == os.path.realpath(found[name].path)
        assert np.array_equal(load_mask(s.mask_path, 64), load_mask(found[name].mask_path, 64))
    assert not set(info["train_shots"]) & {os.path.basename(s.path) for s in real}
    before = os.path.getmtime(os.path.join(proxy, "test", REAL))
    add_real_subset(info, data)  # written once
    assert os.path.getmtime(os.path.join(proxy, "test", REAL)) == before
    # scored on its own: "all" never includes it, nor a first-half shot a 0-shot run keeps under test/<defect>
    import torch
    defects = np.array(["good"] * 2 + [EXTENDED] * 2 + [REAL] * 2 + ["crack"])
    masks = np.zeros((7, 8, 8), np.uint8)
    masks[2:, 2:4, 2:4] = 1
    maps = masks.astype(np.float32)
    maps[np.isin(defects, (REAL, "crack"))] = 0.0
    table = score_table(maps, (defects != "good").astype(int), masks, defects, torch.device("cpu"))
    assert table["metrics"]["all|sigma=0"]["pixel_auroc"] == 1.0
    assert table["metrics"][f"{REAL}|sigma=0"]["pixel_auroc"] <= 0.5
