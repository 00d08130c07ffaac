"""benchmarks/prepare_magnetic_tile.py on a tiny fake source tree."""
import importlib.util
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "prepare_magnetic_tile.py"
_spec = importlib.util.spec_from_file_location("prepare_magnetic_tile", SCRIPT)
pmt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pmt)

DEFECTS = {"Blowhole": 2, "Break": 2, "Crack": 3, "Fray": 1, "Uneven": 2}


def _jpg(path: Path, rng: np.random.Generator, size=(24, 16)) -> None:
    Image.fromarray(rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)).save(path, quality=90)


def make_source(root: Path, n_free: int = 10, masks_next_to_jpg: bool = True, seed: int = 0) -> Path:
    """MT_Free/Imgs with n_free jpgs (+ black pngs), MT_<Name>/Imgs jpgs with noisy grey masks (values 0..255)."""
    rng = np.random.default_rng(seed)
    free = root / "MT_Free" / "Imgs"
    free.mkdir(parents=True)
    for i in range(n_free):
        _jpg(free / f"exp{i % 2}_num_{i * 37}.jpg", rng)
        Image.new("L", (24, 16), 0).save(free / f"exp{i % 2}_num_{i * 37}.png")
    for name, n in DEFECTS.items():
        imgs = root / f"MT_{name}" / "Imgs"
        imgs.mkdir(parents=True)
        for i in range(n):
            stem = f"exp1_num_{name.lower()}{i}"
            _jpg(imgs / f"{stem}.jpg", rng)
            mask = rng.integers(0, 256, (16, 24), dtype=np.uint8)
            mask[0, :3] = [127, 128, 255]  # the threshold's edge: 127 -> 0, 128 -> 255
            Image.fromarray(mask).save((imgs if masks_next_to_jpg else imgs.parent) / f"{stem}.png")
    return root


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_split_counts_layout_and_copies(tmp_path):
    src = make_source(tmp_path / "src", n_free=13)
    out = tmp_path / "out"
    counts = pmt.prepare(src, out, progress=False)
    n_train = round(0.8 * 13)  # 10
    assert counts == {"train/good": n_train, "test/good": 13 - n_train,
                      **{f"test/{k.lower()}": v for k, v in DEFECTS.items()}}
    train = sorted(p.name for p in (out / "train" / "good").iterdir())
    test = sorted(p.name for p in (out / "test" / "good").iterdir())
    assert len(train) == n_train and len(test) == 13 - n_train
    free_names = sorted(p.name for p in (src / "MT_Free" / "Imgs").glob("*.jpg"))
    assert sorted(train + test) == free_names  # a partition of the normal images, pngs ignored
    # the documented split rule
    order = sorted(free_names)
    random.Random(0).shuffle(order)
    assert sorted(order[:n_train]) == train
    # images byte-identical
    for name in train:
        assert (out / "train" / "good" / name).read_bytes() == (src / "MT_Free" / "Imgs" / name).read_bytes()
    for name in DEFECTS:
        jpgs = sorted((src / f"MT_{name}" / "Imgs").glob("*.jpg"))
        got = sorted((out / "test" / name.lower()).iterdir())
        assert [p.name for p in got] == [p.name for p in jpgs]
        assert all(a.read_bytes() == b.read_bytes() for a, b in zip(got, jpgs))
        masks = sorted(p.name for p in (out / "ground_truth" / name.lower()).iterdir())
        assert masks == [f"{p.stem}_mask.png" for p in jpgs]
    assert sorted(p.name for p in out.iterdir()) == ["ground_truth", "test", "train"]


@pytest.mark.parametrize("next_to_jpg", [True, False])
def test_masks_are_binarised(tmp_path, next_to_jpg):
    src = make_source(tmp_path / "src", masks_next_to_jpg=next_to_jpg)
    out = tmp_path / "out"
    pmt.prepare(src, out, progress=False)
    checked = 0
    for name in DEFECTS:
        for jpg in (src / f"MT_{name}" / "Imgs").glob("*.jpg"):
            raw = np.asarray(Image.open(pmt.find_mask(jpg)).convert("L"))
            with Image.open(out / "ground_truth" / name.lower() / f"{jpg.stem}_mask.png") as im:
                assert im.mode == "L" and im.format == "PNG"
                got = np.asarray(im)
            assert got.shape == raw.shape
            assert set(np.unique(got)) <= {0, 255}
            np.testing.assert_array_equal(got == 255, raw > 127)
            assert got[0, 0] == 0 and got[0, 1] == 255 and got[0, 2] == 255
            checked += 1
    assert checked == sum(DEFECTS.values())


def test_deterministic(tmp_path):
    src = make_source(tmp_path / "src", n_free=10)
    pmt.prepare(src, tmp_path / "a", progress=False)
    pmt.prepare(src, tmp_path / "b", progress=False)
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert a == b and len(a) == 10 + 2 * sum(DEFECTS.values())


def test_split_uses_the_actual_count():
    names = [f"n{i:04d}.jpg" for i in range(952)]
    train, test = pmt.split_normal(names)
    assert (len(train), len(test)) == (762, 190)
    train7, test7 = pmt.split_normal(names[:7])
    assert (len(train7), len(test7)) == (round(0.8 * 7), 7 - round(0.8 * 7))
    assert pmt.split_normal(list(reversed(names)))[0] == train  # order of the input does not matter


def test_missing_folder_is_an_error(tmp_path):
    src = make_source(tmp_path / "src")
    (src / "MT_Crack").rename(tmp_path / "elsewhere")
    with pytest.raises(pmt.PrepareError, match="MT_Crack"):
        pmt.prepare(src, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_missing_mask_is_an_error_before_writing(tmp_path):
    src = make_source(tmp_path / "src")
    next(iter((src / "MT_Fray" / "Imgs").glob("*.png"))).unlink()
    with pytest.raises(pmt.PrepareError, match="no mask for"):
        pmt.prepare(src, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_refuses_non_empty_out_unless_force(tmp_path):
    src = make_source(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    (out / "train" / "good").mkdir(parents=True)
    (out / "train" / "good" / "stale.jpg").write_bytes(b"x")
    cmd = [sys.executable, str(SCRIPT), str(src), str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "--force" in r.stderr and "not empty" in r.stderr
    r = subprocess.run(cmd + ["--force"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "train/good" in r.stdout and " 8 " in r.stdout  # counts printed: 8 of 10 normal images in train
    assert not (out / "train" / "good" / "stale.jpg").exists()  # the owned folders were replaced
    assert (out / "keep.txt").read_text() == "mine"
    assert len(list((out / "train" / "good").iterdir())) == 8


def test_cli_missing_source_folder(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nope"), str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert str(tmp_path / "nope") in r.stderr and "Traceback" not in r.stderr
