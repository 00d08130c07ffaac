"""benchmarks/step_fingerprints.py: per-step fingerprints of a training, and where two trainings part."""
import json
import os

from step_fingerprints import first_difference, main
from tiny_run import tiny_overrides


def test_same_config_same_steps_and_another_seed_parts_at_its_first_batch(tiny_data, tmp_path, capsys):
    out, protos = str(tmp_path / "never_written"), str(tmp_path / "protos")
    base = tiny_overrides(tiny_data, out, protos, extra=["train.device=cpu"])
    a, b, c = (str(tmp_path / f"{n}.json") for n in "abc")
    assert main(["--steps", "3", "--out", a, *base]) == 0
    # the same config with two loader workers: the same samples in the same order, the same arithmetic
    assert main(["--steps", "3", "--out", b, *base, "train.workers=2"]) == 0
    assert main(["--steps", "3", "--out", c, *base, "seed=1"]) == 0
    assert not os.path.exists(out)  # nothing goes into the run folder
    steps = json.load(open(a))["steps"]
    assert [s["step"] for s in steps] == [0, 1, 2]
    assert len({s["weights"] for s in steps}) == 3 and len({s["batch"] for s in steps}) == 3
    capsys.readouterr()
    assert main(["--compare", a, b]) == 0
    assert "identical over the 3 steps" in capsys.readouterr().out
    assert main(["--compare", a, c]) == 1
    assert "step 0, in the inputs" in capsys.readouterr().out


def test_first_difference_names_the_first_step_and_field():
    a = [{"step": i, "batch": f"b{i}", "loss": "0.5", "weights": f"w{i}"} for i in range(4)]
    b = [dict(s) for s in a]
    b[2]["weights"], b[3]["batch"] = "other", "other"
    assert first_difference(a, b) == (2, "weights")
    assert first_difference(a, a[:2]) is None  # a shorter run that agrees so far
    b[1]["loss"] = "0.50000001"
    assert first_difference(a, b) == (1, "loss")
