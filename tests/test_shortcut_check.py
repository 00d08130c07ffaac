"""benchmarks/shortcut_check.py: image AUROC with the defects hidden, defect-blind, and the pasted control."""
import json
import os

import numpy as np
import pytest
from PIL import Image

import shortcut_check
from shortcut_check import dilated, hidden_topk, outside_mean


def test_hidden_topk_outside_mean_and_dilation_by_hand():
    maps = np.array([[[1.0, 5.0, 2.0], [0.0, 4.0, 3.0]]], np.float32)  # 1 × 2 × 3
    hide = np.array([[[False, True, False], [False, True, False]]])
    assert hidden_topk(maps, hide, 1).tolist() == [3.0]  # the 5 and the 4 are hidden
    assert hidden_topk(maps, hide, 2).tolist() == [2.5]
    assert hidden_topk(maps, np.zeros_like(hide), 2).tolist() == [4.5]
    assert outside_mean(maps, hide).tolist() == [1.5]  # (1 + 2 + 0 + 3) / 4
    point = np.zeros((1, 5, 5), bool)
    point[0, 2, 2] = True
    assert dilated(point, 0).sum() == 1 and dilated(point, 1).sum() == 9 and dilated(point, 2).sum() == 25


def smooth_field(rng: np.random.Generator, size: int) -> np.ndarray:
    low = rng.uniform(0.35, 0.55, (6, 6, 3))
    up = Image.fromarray((low * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    return np.asarray(up).astype(np.float32) / 255.0


def write_category(root: str, grain_on_defective: bool, size: int = 256) -> str:
    """Smooth normal surfaces; each defective test image a normal surface with one 6-px white square (its mask).
    `grain_on_defective`: the defective images are also darker and grainy all over (a shortcut)."""
    rng = np.random.default_rng(0)
    cat = os.path.join(root, "spots")
    for d in ("train/good", "test/good", "test/spot", "ground_truth/spot"):
        os.makedirs(os.path.join(cat, d))
    save = lambda a, path: Image.fromarray((np.clip(a, 0, 1) * 255).astype(np.uint8)).save(path)  # noqa: E731
    for i in range(16):
        save(smooth_field(rng, size), os.path.join(cat, "train/good", f"{i:03d}.png"))
    for i in range(10):
        save(smooth_field(rng, size), os.path.join(cat, "test/good", f"{i:03d}.png"))
    for i in range(10):
        image, mask = smooth_field(rng, size), np.zeros((size, size), np.uint8)
        y, x = rng.integers(48, size - 54, 2)
        image[y:y + 6, x:x + 6] = 1.0
        mask[y:y + 6, x:x + 6] = 255
        if grain_on_defective:
            image = 0.8 * image + 0.12 * rng.standard_normal(image.shape)
            image[y:y + 6, x:x + 6] = 1.0
        save(image, os.path.join(cat, "test/spot", f"{i:03d}.png"))
        Image.fromarray(mask).save(os.path.join(cat, "ground_truth/spot", f"{i:03d}_mask.png"))
    return cat


@pytest.mark.parametrize("grain", [False, True])
def test_the_check_flags_a_difference_outside_the_defects_and_only_that(tmp_path, grain, capsys):
    root = str(tmp_path / "data")
    write_category(root, grain)
    out = str(tmp_path / "check.json")
    assert shortcut_check.main(["--data", root, "--category", "spots", "--size", "256", "--dilate", "0,40",
                                "--out", out]) == 0
    r = json.load(open(out))
    assert (r["normal"], r["defective"], r["defective_without_mask"]) == (10, 10, 0)
    assert r["baseline"]["all"] > 0.95  # the white squares are found
    assert set(r["blind"]) == set(r["control_blind"]) == {"0", "40"}
    # hidden with a margin beyond the features' reach (stride-16 features averaged 3×3, σ 4 smoothing)
    blind, control = r["blind"]["40"]["all"], r["control_blind"]["40"]["all"]
    assert control < 0.75  # everything outside the pasted squares is normal surface
    assert r["control"]["all"] > 0.95  # ... and the squares are found there too
    if grain:
        assert blind > 0.95 and r["shortcut"] is True
        assert "SHORTCUT" in capsys.readouterr().out
    else:  # the defective images are normal surface outside their squares, as the control
        assert blind < 0.75 and r["shortcut"] is False
        assert "SHORTCUT" not in capsys.readouterr().out


def test_a_test_split_without_normal_images_is_refused(tmp_path):
    root = str(tmp_path / "data")
    cat = write_category(root, False)
    for f in os.listdir(os.path.join(cat, "test/good")):
        os.remove(os.path.join(cat, "test/good", f))
    os.rmdir(os.path.join(cat, "test/good"))
    with pytest.raises(ValueError, match="only defective"):
        shortcut_check.check(root, "spots", 256, [0])


def test_the_control_written_as_a_data_set(tmp_path):
    """--write-control: the defects' pixels inside their masks, every other pixel a normal test image's, lossless;
    train/ and the normal test images linked; the baseline on it finds the squares and no shortcut."""
    root, out = str(tmp_path / "data"), str(tmp_path / "control")
    cat = write_category(root, grain_on_defective=True)  # the grain stays behind: only the squares are pasted
    assert shortcut_check.main(["--data", root, "--category", "spots", "--size", "256", "--dilate", "40",
                                "--write-control", out]) == 0
    ctl = os.path.join(out, "spots")
    assert os.path.realpath(os.path.join(ctl, "train")) == os.path.realpath(os.path.join(cat, "train"))
    assert sorted(os.listdir(os.path.join(ctl, "test/good"))) == sorted(os.listdir(os.path.join(cat, "test/good")))
    names = sorted(os.listdir(os.path.join(ctl, "test/spot")))
    assert names == [f"{i:03d}.png" for i in range(10)]
    normals = [np.asarray(Image.open(os.path.join(cat, "test/good", f))) for f in sorted(os.listdir(
        os.path.join(cat, "test/good")))]
    for n in names:
        pasted = np.asarray(Image.open(os.path.join(ctl, "test/spot", n)))
        defect = np.asarray(Image.open(os.path.join(cat, "test/spot", n)))
        mask = np.asarray(Image.open(os.path.join(ctl, "ground_truth/spot", n.replace(".png", "_mask.png")))) > 0
        assert mask.sum() == 36 and np.array_equal(pasted[mask], defect[mask])
        assert any(np.array_equal(pasted[~mask], h[~mask]) for h in normals)  # one normal image, pixel for pixel
    r = shortcut_check.check(out, "spots", 256, [40])
    assert r["baseline"]["all"] > 0.95 and r["blind"]["40"]["all"] < 0.75 and r["shortcut"] is False
    with pytest.raises(FileExistsError, match="already exists"):
        shortcut_check.write_control(root, "spots", out)
