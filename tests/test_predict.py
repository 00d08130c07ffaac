"""predict.py: one picture per input whatever the input set, scores.csv names each picture, unreadable files."""
import csv
import os

import cv2
import numpy as np
import pytest
import torch

import predict as predict_script
import prnet
from tiny_checkpoint import make_tiny_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "tiny.pt"), threshold=0.5)


def _write(path, seed, size=(40, 56)):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image)
    return str(path)


def _run(ckpt, inputs, out):
    code = predict_script.main(["--checkpoint", ckpt, "--input", *inputs, "--output", str(out)])
    with open(out / "scores.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return code, rows


def _pictures(out):
    return sorted(os.path.relpath(os.path.join(d, f), out).replace(os.sep, "/")
                  for d, _, names in os.walk(out) for f in names if f.endswith(".png"))


def _check_one_picture_per_row(rows, out):
    figures = [r["figure"] for r in rows]
    assert len(set(figures)) == len(rows)
    assert _pictures(out) == sorted(figures)


def test_glob_over_several_folders_gives_one_picture_per_row(ckpt, tmp_path):
    src = tmp_path / "test"
    for k, defect in enumerate(["good", "hole", "crack", "cut"]):
        _write(src / defect / "000.png", k)
        _write(src / defect / "001.png", 10 + k)
    out = tmp_path / "out"
    code, rows = _run(ckpt, [str(src / "*" / "000.png")], out)
    assert code == 0 and len(rows) == 4
    _check_one_picture_per_row(rows, out)
    assert sorted(r["figure"] for r in rows) == [f"{d}/000.png.png" for d in sorted(["good", "hole", "crack", "cut"])]
    # scores are the API's
    detector = prnet.load_detector(ckpt, "cpu")
    for r in rows:
        assert float(r["score"]) == pytest.approx(detector.predict(r["path"]).score, abs=2e-6)
        assert r["anomalous"] == ("yes" if float(r["score"]) >= 0.5 else "no")


def test_same_stem_other_extension_and_flattened_names_stay_apart(ckpt, tmp_path):
    src = tmp_path / "in"
    paths = [_write(src / "img.png", 1), _write(src / "img.jpg", 2), _write(src / "a" / "b.png", 3),
             _write(src / "a__b.png", 4), _write(src / "a" / "b.png.png", 5)]
    out = tmp_path / "out"
    code, rows = _run(ckpt, [str(src)], out)  # a folder: names mirror its tree
    assert code == 0 and len(rows) == len(paths)
    _check_one_picture_per_row(rows, out)
    by_path = {os.path.relpath(r["path"], src).replace(os.sep, "/"): r["figure"] for r in rows}
    assert by_path == {"img.png": "img.png.png", "img.jpg": "img.jpg.png", "a/b.png": "a/b.png.png",
                       "a__b.png": "a__b.png.png", "a/b.png.png": "a/b.png.png.png"}
    # the same files given one by one: names relative to their common parent folder
    out2 = tmp_path / "out2"
    code, rows2 = _run(ckpt, paths, out2)
    assert code == 0 and sorted(r["figure"] for r in rows2) == sorted(by_path.values())
    _check_one_picture_per_row(rows2, out2)
    # a file given twice (directly and through a glob) is scored once
    out3 = tmp_path / "out3"
    code, rows3 = _run(ckpt, [paths[0], str(src / "img.*")], out3)
    assert code == 0 and sorted(r["figure"] for r in rows3) == ["img.jpg.png", "img.png.png"]


def test_a_folder_is_walked_as_a_recursive_glob_is(tmp_path):
    """Linked folders followed (a cycle once), hidden folders and the output folder inside the input left out."""
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    for path, seed in (("a/1.png", 0), (".ipynb_checkpoints/1.png", 0), ("out/good/1.png.png", 0), ("top.png", 0)):
        _write(data / path, seed)
    _write(elsewhere / "2.png", 1)
    os.symlink(elsewhere, data / "linked")
    os.symlink(data, data / "a" / "loop")  # a cycle: walked once
    files, root = predict_script.collect_all([str(data)], str(data / "out"))
    assert sorted(os.path.relpath(f, data) for f in files) == ["a/1.png", "linked/2.png", "top.png"]
    assert root == os.path.abspath(data)
    with pytest.raises(ValueError, match="matches files"):  # the output's own pictures: left out of a pattern too
        predict_script.collect_all([str(data / "out" / "**" / "*.png")], str(data / "out"))


def test_names_differing_only_in_case_get_distinct_pictures():
    names = predict_script.figure_names(["/d/A.png", "/d/a.png", "/d/a.png~2"], "/d")
    assert len({n.casefold() for n in names}) == 3 and names[0] == "A.png.png"


def test_unreadable_file_exit_1_listed_and_the_rest_scored(ckpt, tmp_path, capsys):
    src = tmp_path / "in"
    _write(src / "ok.png", 1)
    _write(src / "sub" / "ok2.jpg", 2, size=(70, 30))
    (src / "broken.png").write_bytes(b"not an image")
    (src / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    code, rows = _run(ckpt, [str(src)], out)
    assert code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]  # not tqdm's
    assert len(err) == 1 and "2 file(s) could not be read" in err[0]
    assert "broken.png" in err[0] and "empty.jpg" in err[0]
    assert sorted(r["figure"] for r in rows) == ["ok.png.png", "sub/ok2.jpg.png"]
    _check_one_picture_per_row(rows, out)


def test_bad_arguments_exit_2(ckpt, tmp_path, capsys):
    img = _write(tmp_path / "x.png", 1)
    assert predict_script.main(["--checkpoint", ckpt, "--input", img, str(tmp_path / "none*.png"),
                                "--output", str(tmp_path / "o")]) == 2
    assert "none*.png" in capsys.readouterr().err
    assert predict_script.main(["--checkpoint", ckpt, "--input", img, "--output", str(tmp_path / "o"),
                                "--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err
    state = torch.load(ckpt, weights_only=True)
    state["threshold"] = None
    bare = str(tmp_path / "bare.pt")
    torch.save(state, bare)
    assert predict_script.main(["--checkpoint", bare, "--input", img, "--output", str(tmp_path / "o")]) == 2
    assert "stores no decision threshold" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")


def test_the_region_is_outlined_only_where_the_threshold_is_a_map_value():
    """The figures outline map >= threshold only when the image score is the top-k mean of the head's map: a fused
    score (map_residual_knn), map × √distance (map_residual) or a lifted map (head_knn) is on another scale."""
    from prnet.report import region_threshold

    assert region_threshold("map", "head", 0.4) == 0.4
    assert region_threshold("map_residual", "head", 0.4) is None
    assert region_threshold("map_residual_knn", "head_knn", 2.5) is None
    assert region_threshold("map", "head_knn", 0.4) is None
