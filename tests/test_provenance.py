"""prnet.provenance: the code and machine a result was made with, and a run told when its code changed under it."""
import json
import logging
import os
import subprocess

import torch

import train as train_script
from prnet.engine import trainer
from prnet.provenance import code_changed, code_differences, device_name, git_state, provenance
from tiny_run import tiny_overrides

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(repo, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=repo, check=True,
                   capture_output=True)


def test_git_state_names_the_commit_and_each_change(tmp_path):
    outside = git_state(str(tmp_path))
    assert outside == {"git_commit": None, "git_modified": None, "git_diff_sha1": None}
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 1\n")
    _git(tmp_path, "add", "a.py", "b.py")
    _git(tmp_path, "commit", "-qm", "one")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    clean = git_state(str(tmp_path))
    assert clean == {"git_commit": head, "git_modified": [], "git_diff_sha1": None}
    (tmp_path / "out.txt").write_text("an output, not code\n")  # untracked: not a change of the code
    assert git_state(str(tmp_path)) == clean
    (tmp_path / "b.py").write_text("y = 2\n")
    edited = git_state(str(tmp_path))
    assert edited["git_commit"] == head and edited["git_modified"] == ["b.py"] and edited["git_diff_sha1"]
    assert code_changed(clean, edited)
    (tmp_path / "b.py").write_text("y = 3\n")  # the same file changed again: another diff
    again = git_state(str(tmp_path))
    assert again["git_modified"] == ["b.py"] and again["git_diff_sha1"] != edited["git_diff_sha1"]
    assert code_changed(edited, again) and not code_changed(again, git_state(str(tmp_path)))
    _git(tmp_path, "commit", "-qam", "two")
    assert code_changed(again, git_state(str(tmp_path)))
    # a folder inside the checkout (where an installed package would lie) is not the checkout's code
    (tmp_path / "site").mkdir()
    assert git_state(str(tmp_path / "site")) == outside


def test_code_differences_name_the_files_a_record_was_made_without(tmp_path):
    """A stored record's code against the checkout's, below the given paths: committed changes since its commit, the
    checkout's uncommitted ones and the record's own; [] for the same code, None where it cannot be told."""
    repo = str(tmp_path)
    assert code_differences({"git_commit": "a" * 40}, ("lib",), repo) is None  # not a checkout
    _git(tmp_path, "init", "-q")
    (tmp_path / "lib").mkdir()
    for name in ("lib/a.py", "lib/b.py", "notes.md"):
        (tmp_path / name).write_text("1\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "one")
    made = git_state(repo)
    assert code_differences(made, ("lib",), repo) == []
    (tmp_path / "notes.md").write_text("2\n")  # outside the paths
    assert code_differences(made, ("lib",), repo) == []
    (tmp_path / "lib/b.py").write_text("2\n")  # uncommitted, in the checkout now
    assert code_differences(made, ("lib",), repo) == ["lib/b.py"]
    _git(tmp_path, "commit", "-qam", "two")
    assert code_differences(made, ("lib",), repo) == ["lib/b.py"]
    assert code_differences(git_state(repo), ("lib",), repo) == []
    (tmp_path / "lib/a.py").write_text("2\n")
    dirty = git_state(repo)  # a record made with an uncommitted change, which the checkout then drops
    assert code_differences(dirty, ("lib",), repo) == []
    _git(tmp_path, "checkout", "-q", "--", "lib/a.py")
    assert code_differences(dirty, ("lib",), repo) == ["lib/a.py"]
    assert code_differences({"git_commit": "f" * 40}, ("lib",), repo) is None  # a commit this clone lacks
    assert code_differences(None, ("lib",), repo) is None  # a record made before records named their code


def test_provenance_names_packages_and_machine(monkeypatch):
    monkeypatch.delenv("MKL_CBWR", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    p = provenance(torch.device("cpu"))
    assert p["numeric_env"].get("OMP_NUM_THREADS") == "3" and "MKL_CBWR" not in p["numeric_env"]
    assert p["versions"]["torch"] == torch.__version__ and p["device"] == "cpu"
    assert p["device_name"] == device_name(torch.device("cpu")) and p["device_name"]
    assert p["torch_threads"] == torch.get_num_threads() and p["cpu_count"] == os.cpu_count()
    assert p["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    if os.path.exists("/proc/cpuinfo"):  # Linux: the first processor's family and model, as numbers
        assert p["cpu_family"].isdigit() and p["cpu_model"].isdigit()
    json.dumps(p)  # plain JSON types


def test_arithmetic_differences_name_what_changes_the_floats():
    from prnet.provenance import arithmetic_differences
    a = provenance(torch.device("cpu"))
    b = json.loads(json.dumps(a))
    assert arithmetic_differences(a, b) == []
    b["git_commit"], b["cpu_count"] = "0" * 40, 64  # the code and the core count are not the arithmetic's
    assert arithmetic_differences(a, b) == []
    b["cpu_capability"], b["torch_threads"] = "OTHER", 7
    diffs = arithmetic_differences(a, b)
    assert len(diffs) == 2 and any(d.startswith("cpu_capability:") and "'OTHER'" in d for d in diffs)
    gpu = {**a, "device": "cuda:0", "device_name": "NVIDIA H100"}
    assert [d.split(":")[0] for d in arithmetic_differences(a, gpu)] == ["device", "device_name"]
    assert arithmetic_differences(a, {"git_commit": "x"}) is None and arithmetic_differences(None, a) is None


def test_a_run_records_its_code_and_says_when_it_changed_under_it(tiny_data, tmp_path, monkeypatch, caplog):
    out, protos = str(tmp_path / "out"), str(tmp_path / "protos")
    assert train_script.main(tiny_overrides(tiny_data, out, protos, epochs=1)) == 0
    results = json.load(open(os.path.join(out, "tiny", "results.json")))["provenance"]
    assert {k: results[k] for k in ("git_commit", "git_modified", "git_diff_sha1")} == git_state()
    assert results["versions"]["torch"] == torch.__version__ and results["device_name"]
    assert "code_changed_during_run" not in results
    # the code at the start of the run differs from the code at its end (an edit or a checkout meanwhile)
    before = {"git_commit": "f" * 40, "git_modified": [], "git_diff_sha1": None}
    monkeypatch.setattr(trainer, "git_state", lambda: dict(before))
    out2 = str(tmp_path / "out2")
    with caplog.at_level(logging.WARNING):
        assert train_script.main(tiny_overrides(tiny_data, out2, protos, epochs=1)) == 0
    results = json.load(open(os.path.join(out2, "tiny", "results.json")))["provenance"]
    assert results["code_changed_during_run"] is True and results["code_at_start"] == before
    assert "the code changed while this run was using it" in caplog.text
