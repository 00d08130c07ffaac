"""train.average_last: the running mean of the head's weights over the last steps (prnet.engine.averaging), alone
and in training runs (the same trajectory as without it, resumable, refused with another schedule)."""
import json
import os

import pytest
import torch
from torch import nn

import train as train_script
from prnet.config import ConfigError, load_config
from prnet.engine.averaging import WeightAverage
from tiny_run import tiny_overrides, train_killed_after_first_epoch


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(2, 2)  # frozen, as the real backbone: never averaged
        self.backbone.requires_grad_(False)
        self.head = nn.Linear(2, 1)
        self.norm = nn.BatchNorm1d(1)


def set_step(model: Toy, value: float) -> None:
    """Weights after a made-up step: every averaged tensor holds `value`."""
    with torch.no_grad():
        model.head.weight.fill_(value)
        model.head.bias.fill_(-value)
        model.norm.running_mean.fill_(2 * value)
        model.norm.num_batches_tracked.fill_(int(value))
        model.backbone.weight.fill_(value)


def test_the_mean_covers_exactly_the_last_share_of_the_steps():
    model = Toy()
    avg = WeightAverage(model, share=0.5, total_steps=6)
    assert (avg.steps, avg.first_step) == (3, 4)
    for step, value in enumerate([1.0, 2.0, 3.0, 10.0, 20.0, 60.0], start=1):
        set_step(model, value)
        avg.update(model, step)
    assert avg.count == 3
    set_step(model, -1.0)
    avg.apply_to(model)
    assert model.head.weight.eq(30.0).all() and model.head.bias.eq(-30.0).all()  # (10 + 20 + 60) / 3
    assert model.norm.running_mean.eq(60.0).all()  # BatchNorm statistics are averaged too
    assert model.norm.num_batches_tracked.item() == -1  # an integer counter is not
    assert model.backbone.weight.eq(-1.0).all()  # the frozen part is left as it is
    avg.update(model, 7)  # a step past the schedule changes nothing
    assert avg.count == 3


def test_a_stored_average_resumes_only_into_the_same_schedule():
    model = Toy()
    avg = WeightAverage(model, share=0.5, total_steps=6)
    for step in range(1, 6):
        set_step(model, float(step))
        avg.update(model, step)
    again = WeightAverage(Toy(), share=0.5, total_steps=6)
    again.load_state_dict(avg.state_dict())
    set_step(model, 6.0)
    avg.update(model, 6)
    again.update(model, 6)
    assert again.count == avg.count == 3
    assert all(torch.equal(again.mean[k], avg.mean[k]) for k in avg.mean)
    with pytest.raises(ValueError, match="last 3 of 6 steps, this run's the last 4 of 8"):
        WeightAverage(Toy(), share=0.5, total_steps=8).load_state_dict(avg.state_dict())


def test_bad_shares_and_an_empty_average_are_refused():
    with pytest.raises(ValueError, match="share"):
        WeightAverage(Toy(), share=0.0, total_steps=5)
    with pytest.raises(RuntimeError, match="window starts at step 5 of 5"):
        WeightAverage(Toy(), share=0.1, total_steps=5).apply_to(Toy())
    with pytest.raises(ConfigError, match="train.average_last"):
        load_config(None, ["train.average_last=1.5"])


def _head(state: dict) -> dict:
    return {k: v for k, v in state.items()
            if not k.startswith(("backbone.", "bank.", "knn.", "second.")) and v.dtype.is_floating_point}


def _run(root, out, protos, epochs, extra):
    assert train_script.main(tiny_overrides(root, out, protos, epochs=epochs, extra=extra)) == 0
    state = torch.load(os.path.join(out, "tiny", "last.pt"), weights_only=True)
    return state, json.load(open(os.path.join(out, "tiny", "results.json")))


def test_training_with_an_average_follows_the_same_trajectory(tiny_data, tmp_path):
    protos = str(tmp_path / "protos")
    plain, plain_res = _run(tiny_data, str(tmp_path / "plain"), protos, 2, ["train.device=cpu"])
    # the smallest share averages the last step alone: the final weights are the plain run's
    last, last_res = _run(tiny_data, str(tmp_path / "last"), protos, 2, ["train.device=cpu", "train.average_last=1e-6"])
    half, half_res = _run(tiny_data, str(tmp_path / "half"), protos, 2, ["train.device=cpu", "train.average_last=0.5"])
    assert plain_res["epoch_fingerprints"] == last_res["epoch_fingerprints"] == half_res["epoch_fingerprints"]
    assert plain_res["weight_average"] is None
    total = half_res["weight_average"]["total_steps"]
    assert last_res["weight_average"] == {"steps_averaged": 1, "total_steps": total}
    assert half_res["weight_average"] == {"steps_averaged": round(total / 2), "total_steps": total}
    a, b, c = _head(plain["model"]), _head(last["model"]), _head(half["model"])
    assert a.keys() == b.keys() == c.keys() and a
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    # the checkpoint's fingerprint is the averaged model's, the last epoch's the trajectory's
    assert half_res["weights_fingerprints"] != [half_res["epoch_fingerprints"][-1]["weights_sha256"]]
    assert last_res["weights_fingerprints"] == [last_res["epoch_fingerprints"][-1]["weights_sha256"]]


def test_an_averaged_run_resumes_to_the_same_weights_and_keeps_its_schedule(tiny_data, tmp_path, monkeypatch,
                                                                            capsys):
    protos = str(tmp_path / "protos")
    extra = ["train.device=cpu", "train.average_last=0.75"]
    full, _ = _run(tiny_data, str(tmp_path / "full"), protos, 2, extra)
    cut_out = str(tmp_path / "cut")
    train_killed_after_first_epoch(monkeypatch, tiny_overrides(tiny_data, cut_out, protos, epochs=2, extra=extra))
    stored = torch.load(os.path.join(cut_out, "tiny", "last.pt"), weights_only=True)
    assert stored["epoch"] == 1 and stored["average"]["count"] > 0  # the window began in the first epoch
    resumed, _ = _run(tiny_data, cut_out, protos, 2, [*extra, "train.resume=true"])
    a, b = _head(full["model"]), _head(resumed["model"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    args = tiny_overrides(tiny_data, cut_out, protos, epochs=3, extra=[*extra, "train.resume=true"])
    assert train_script.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.epochs: 2 -> 3" in err[0] and "train.average_last" in err[0], err
