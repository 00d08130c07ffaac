"""What train.py refuses before any heavy work, and what it guarantees about the run folder: resume only with the
same settings, one run per category folder (a lock), no leftover temporary files, files readable as the umask says,
every documented config value settable from the command line."""
import os
import stat

import pytest
import torch

import train as train_script
from prnet.config import CHOICES, ConfigError, get_key, load_config
from prnet.utils import RunLock
from tiny_run import tiny_overrides


def _snapshot(folder):
    """name -> (size, mtime_ns, bytes) of every file below `folder`."""
    out = {}
    for d, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(d, n)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = (os.path.getsize(p), os.stat(p).st_mtime_ns, fh.read())
    return out


@pytest.fixture(scope="module")
def one_epoch(tiny_data, tmp_path_factory):
    """A one-epoch run made under umask 002, into a category folder holding a stale lock of a dead process and a
    temporary file left by a killed write."""
    work = tmp_path_factory.mktemp("safety")
    out, protos = str(work / "out"), str(work / "protos")
    os.makedirs(os.path.join(out, "tiny"))
    with open(os.path.join(out, "tiny", ".lock"), "w") as fh:
        fh.write("999999\n")  # no process holds its flock any more
    with open(os.path.join(out, "tiny", ".tmp-0123456789ab.pt"), "wb") as fh:
        fh.write(b"half a checkpoint")
    old = os.umask(0o002)
    try:
        code = train_script.main(tiny_overrides(tiny_data, out, protos, epochs=1))
    finally:
        os.umask(old)
    assert code == 0
    return {"root": tiny_data, "out": out, "protos": protos}


def test_stale_lock_is_taken_over_and_leftover_temporaries_removed(one_epoch):
    names = os.listdir(os.path.join(one_epoch["out"], "tiny"))
    assert "last.pt" in names and "results.json" in names
    assert not [n for n in names if n.startswith(".tmp-")]


def test_written_files_follow_the_umask(one_epoch):
    files = [os.path.join(one_epoch["out"], "tiny", n) for n in ("last.pt", "results.json", "config.yaml",
                                                                 "train_log.csv", "loss.png", "examples.png")]
    files += [os.path.join(one_epoch["out"], n) for n in ("results.csv", "results.md", "config.yaml")]
    for d, _, names in os.walk(one_epoch["protos"]):
        files += [os.path.join(d, n) for n in names if n.endswith(".pt")]
    assert len(files) > 9
    for f in files:
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o664, f


@pytest.mark.parametrize("change, key", [
    ("seed=1", "seed: 0 -> 1"),
    ("data.num_anomalies=2", "data.num_anomalies: 3 -> 2"),
    ("model.head_widths=[8, 16, 32]", "model.head_widths"),
    ("prototypes.ratio=0.5", "prototypes.ratio: 0.25 -> 0.5"),
])
def test_resume_with_other_settings_is_refused_before_anything_is_written(one_epoch, change, key, capsys):
    before = _snapshot(one_epoch["out"])
    args = tiny_overrides(one_epoch["root"], one_epoch["out"], one_epoch["protos"], epochs=1,
                          extra=["train.resume=true", change])
    assert train_script.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot resume" in err[0] and key in err[0], err
    assert _snapshot(one_epoch["out"]) == before


def test_resume_with_another_number_of_processes_is_refused(one_epoch):
    """The checkpoint records its training processes; torchrun with another count would change the global batch and
    the schedule's steps per epoch, so check_outputs refuses it (train.py calls it with its WORLD_SIZE)."""
    from prnet.engine.trainer import TrainingError, check_outputs

    state = torch.load(os.path.join(one_epoch["out"], "tiny", "last.pt"), weights_only=True)
    assert state["world_size"] == 1
    cfg = load_config(None, tiny_overrides(one_epoch["root"], one_epoch["out"], one_epoch["protos"], epochs=1,
                                           extra=["train.resume=true"]))
    check_outputs(cfg, "tiny", 1)
    with pytest.raises(TrainingError, match=r"cannot resume .*processes: 1 -> 2"):
        check_outputs(cfg, "tiny", 2)


def test_resume_with_a_rebuilt_prototype_file_is_refused(one_epoch, caplog):
    """A prototype file rebuilt with the same metadata can hold other prototypes (k-means may split the images
    otherwise, and the held-out residuals follow its split): the resume compares the prototypes themselves."""
    from prnet.engine.prototypes import load_prototypes, save_prototypes

    (path,) = [os.path.join(d, n) for d, _, names in os.walk(one_epoch["protos"]) for n in names if n.endswith(".pt")]
    with open(path, "rb") as fh:
        original = fh.read()
    before = _snapshot(os.path.join(one_epoch["out"], "tiny"))
    try:
        bank = load_prototypes(path)
        bank.proto_0.add_(1e-3)
        save_prototypes(bank, path)
        args = tiny_overrides(one_epoch["root"], one_epoch["out"], one_epoch["protos"], epochs=2,
                              extra=["train.resume=true"])
        assert train_script.main(args) == 1
    finally:
        with open(path, "wb") as fh:
            fh.write(original)
    assert "cannot resume" in caplog.text and "bank.proto_0" in caplog.text and "not the one it was trained with" in \
        caplog.text
    after = _snapshot(os.path.join(one_epoch["out"], "tiny"))
    assert after["last.pt"] == before["last.pt"]


def test_a_finished_run_resumed_for_more_epochs_keeps_no_stale_calibration(one_epoch, monkeypatch, tmp_path):
    """The nearest-neighbour statistics and map table are made for the head of the last epoch: resumed for more
    epochs, the checkpoints written before they are made again carry none, so prediction and export refuse them."""
    import shutil

    import export as export_script
    from prnet.engine import trainer
    from prnet.engine.checkpoint import CheckpointError, model_from_checkpoint

    folder = os.path.join(one_epoch["out"], "tiny")
    kept = str(tmp_path / "kept")
    shutil.copytree(folder, kept)
    before, _, _ = model_from_checkpoint(os.path.join(folder, "last.pt"), torch.device("cpu"))
    assert before.knn.is_calibrated

    def stop(*args, **kwargs):
        raise KeyboardInterrupt  # killed after the new epoch's checkpoint, before the calibration
    monkeypatch.setattr(trainer, "evaluate_and_report", stop)
    try:
        args = tiny_overrides(one_epoch["root"], one_epoch["out"], one_epoch["protos"], epochs=2,
                              extra=["train.resume=true"])
        with pytest.raises(KeyboardInterrupt):
            train_script.main(args)
        state = torch.load(os.path.join(folder, "last.pt"), weights_only=True)
        model, _, _ = model_from_checkpoint(os.path.join(folder, "last.pt"), torch.device("cpu"))
        assert state["epoch"] == 2 and not model.knn.is_calibrated
        with pytest.raises(CheckpointError, match="not made for eval.topk"):
            export_script.export_onnx(os.path.join(folder, "last.pt"), str(tmp_path / "m.onnx"))
    finally:
        shutil.rmtree(folder)
        shutil.copytree(kept, folder)


def test_the_results_tables_cover_the_run_folders_categories_trained_by_other_calls(one_epoch, tmp_path, caplog):
    """One process per category and GPU writes into one run folder: each call's tables take the other categories'
    results.json made with the same settings (their mean covers the folder), never one made with other settings."""
    import json
    import shutil

    out = str(tmp_path / "run")
    with open(os.path.join(one_epoch["out"], "tiny", "results.json")) as fh:
        results = json.load(fh)
    for category, change in (("tiny", {}), ("other", {}), ("odd", {"seed": 7})):
        os.makedirs(os.path.join(out, category))
        with open(os.path.join(out, category, "results.json"), "w") as fh:
            json.dump({**results, "config": {**results["config"], **change,
                                             "data": {**results["config"]["data"], "classes": [category]}}}, fh)
    os.makedirs(os.path.join(out, "no_results"))
    cfg = load_config(None, tiny_overrides(one_epoch["root"], out, one_epoch["protos"], epochs=1))
    rows = train_script.other_rows(cfg, out, ["tiny"])
    assert [r["category"] for r in rows] == ["other"]
    assert rows[0] == {**train_script.table_row("other", results)}
    text = caplog.text.replace(os.sep, "/")
    assert "odd/results.json was trained with other settings (its -> this call's: seed: 7 -> 0)" in text
    shutil.rmtree(out)


def test_resume_may_extend_the_schedule(one_epoch, capsys):
    args = tiny_overrides(one_epoch["root"], one_epoch["out"], one_epoch["protos"], epochs=2,
                          extra=["train.resume=true", "eval.topk=5"])
    assert train_script.main(args) == 0
    state = torch.load(os.path.join(one_epoch["out"], "tiny", "last.pt"), weights_only=True)
    assert state["epoch"] == 2 and len(state["history"]) == 2


def test_a_second_run_into_a_locked_folder_is_refused(one_epoch, capsys):
    before = _snapshot(os.path.join(one_epoch["out"], "tiny"))
    lock = RunLock(os.path.join(one_epoch["out"], "tiny")).acquire()  # another live run
    try:
        args = tiny_overrides(one_epoch["root"], one_epoch["out"], one_epoch["protos"], epochs=3,
                              extra=["train.resume=true"])
        assert train_script.main(args) == 2
    finally:
        lock.release()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "in use by another run" in err[0] and f"pid {os.getpid()}" in err[0], err
    after = _snapshot(os.path.join(one_epoch["out"], "tiny"))
    assert {k: v for k, v in after.items() if k != ".lock"} == {k: v for k, v in before.items() if k != ".lock"}


def test_a_run_that_fails_stops_its_data_workers(tiny_data, tmp_path, monkeypatch):
    """A run with persistent DataLoader workers that fails (here in evaluation) stops them before the error leaves
    train_category: left to the end of the process, with the traceback still holding the loader, their shutdown
    hung on a CUDA machine."""
    import prnet.engine.trainer as trainer

    workers = []

    def failing_evaluation(cfg, category, run, *args):
        workers.extend(run.loader._iterator._workers)
        assert workers and all(w.is_alive() for w in workers)  # persistent: alive after the last epoch
        raise RuntimeError("planted failure in evaluation")

    monkeypatch.setattr(trainer, "evaluate_and_report", failing_evaluation)
    args = tiny_overrides(tiny_data, str(tmp_path / "out"), str(tmp_path / "protos"), epochs=1,
                          extra=["train.workers=2"])
    with pytest.raises(RuntimeError, match="planted failure in evaluation") as failure:
        train_script.main(args)
    assert failure.tb is not None  # the traceback, and with it the run's frames, still held (as at process exit)
    assert len(workers) == 2 and not any(w.is_alive() for w in workers)


@pytest.mark.parametrize("extra, fragment", [
    (["train.epochs=0"], "'train.epochs': expected >= 1"),
    (["data.classes=[]"], "'data.classes': the list is empty"),
    (["model.backbone=no_such_net"], "no_such_net"),
    (["model.backbone_weights=BROKEN"], "weights.pth"),
    (["train.device=gpu"], "'train.device': expected auto, cpu, cuda or mps or cuda:<index>"),
])
def test_bad_runs_are_one_line_and_exit_2_before_any_output(tiny_data, tmp_path, extra, fragment, capsys):
    broken = tmp_path / "weights.pth"
    broken.write_bytes(b"these are not weights")
    extra = [e.replace("BROKEN", str(broken)) for e in extra]
    out = tmp_path / "out"
    args = tiny_overrides(tiny_data, str(out), str(tmp_path / "protos"), epochs=1)
    args = [a for a in args if a.split("=")[0] not in {e.split("=")[0] for e in extra}] + extra
    assert train_script.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and fragment in err[0], err
    assert not out.exists()


# values that are only valid together with another key
COMPANIONS = {("eval.threshold", "holdout_fpr"): ["data.holdout_normal=0.1"]}


@pytest.mark.parametrize("key, value", [(k, v) for k, values in CHOICES.items() for v in values])
def test_every_documented_value_can_be_set_from_the_command_line(key, value):
    for spelled in (value, f"'{value}'", f'"{value}"'):
        cfg = load_config(None, [*COMPANIONS.get((key, value), []), f"{key}={spelled}"])
        assert get_key(cfg, key) == value


def test_none_means_null_only_for_keys_that_may_be_null():
    cfg = load_config(None, ["data.dtd_root=none", "output_dir=None", "model.backbone_weights=none"])
    assert cfg.data.dtd_root is None and cfg.output_dir is None and cfg.model.backbone_weights == "none"
    with pytest.raises(ConfigError, match="'train.epochs': expected an integer"):
        load_config(None, ["train.epochs=none"])
