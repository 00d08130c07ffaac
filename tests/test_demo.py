"""The procedural demo category and the training-sample preview."""
import os

import cv2
import numpy as np
import pytest

from prnet.datasets import MVTEC
from prnet.datasets.demo import make_demo_category
from prnet.datasets.preview import main as preview_main


def _files(path):
    out = {}
    for d, _, files in os.walk(path):
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, path)] = cv2.imread(p, cv2.IMREAD_UNCHANGED)
    return out


def test_demo_category_is_seeded_with_the_right_counts(tmp_path):
    kw = dict(size=64, n_train=5, n_test_good=3, n_test_bad=7)
    a = make_demo_category(str(tmp_path / "a"), "demo", seed=1, **kw)
    b = make_demo_category(str(tmp_path / "b"), "demo", seed=1, **kw)
    c = make_demo_category(str(tmp_path / "c"), "demo", seed=2, **kw)
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)
    assert any(not np.array_equal(fa[k], fc[k]) for k in fa)
    train = MVTEC(str(tmp_path / "a"), "demo", "train", image_size=64)
    test = MVTEC(str(tmp_path / "a"), "demo", "test", image_size=64)
    assert len(train) == 5
    counts = {}
    for s in test.samples:
        counts[s.defect] = counts.get(s.defect, 0) + 1
    assert counts == {"good": 3, "hole": 3, "scratch": 2, "stain": 2}
    for i, s in enumerate(test.samples):
        item = test[i]
        assert (item["mask"].sum() > 0) == (s.label == 1)
    # normal images are textured, not flat, and differ from one another
    imgs = [train.image(i) for i in range(5)]
    assert all(x.std() > 0.01 for x in imgs) and not np.allclose(imgs[0], imgs[1])
    # a defect changes the image inside its mask far more than the normal variation outside it
    hole = test[[s.defect for s in test.samples].index("hole")]
    img, m = hole["image"].numpy(), hole["mask"][0].numpy() > 0
    assert img[:, m].mean() < img[:, ~m].mean() - 0.1
    assert not [n for n in os.listdir(tmp_path / "a") if n.startswith(".")]  # no temporary folder left
    with pytest.raises(FileExistsError):
        make_demo_category(str(tmp_path / "a"), "demo", seed=1, **kw)


def test_preview_writes_a_png(tmp_path):
    out = tmp_path / "p.png"
    make_demo_category(str(tmp_path / "data"), "demo", seed=0, size=64, n_train=4, n_test_good=1, n_test_bad=3)
    rc = preview_main(["--out", str(out), "--n", "6", f"data.root={tmp_path / 'data'}", "data.classes=[demo]",
                       "data.image_size=64", "data.dtd_root=null", "data.num_anomalies=2"])
    assert rc == 0
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 100 and img.std() > 1
    assert preview_main(["--out", str(tmp_path / "q.png"), f"data.root={tmp_path / 'none'}",
                         "data.classes=[demo]", "data.image_size=64"]) == 2  # missing data: an error, no file
    assert not (tmp_path / "q.png").exists()


def test_the_demo_folder_follows_the_umask(tmp_path):
    """Written in a temporary folder and renamed: the category folder gets the umask's mode, not mkdtemp's 0700."""
    import stat

    old = os.umask(0o002)
    try:
        path = make_demo_category(str(tmp_path), "demo", seed=0, size=32, n_train=1, n_test_good=1, n_test_bad=1)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o775
