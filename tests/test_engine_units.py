"""Units of the training engine that need no data: sampler, schedule, smoothing, scores, checkpoint errors."""
import numpy as np
import pytest
import torch

from prnet.config import load_config
from prnet.engine.checkpoint import CheckpointError, load_checkpoint
from prnet.engine.evaluator import gaussian_smooth, image_scores
from prnet.datasets import EpochSampler
from prnet.engine.trainer import make_scheduler, run_name


def test_epoch_sampler_is_seeded_per_epoch_and_shards_disjointly():
    a = EpochSampler(10, seed=3)
    a.set_epoch(1)
    first = list(a)
    assert all(e == 1 for e, _ in first) and sorted(i for _, i in first) == list(range(10))
    b = EpochSampler(10, seed=3)
    b.set_epoch(1)
    assert list(b) == first
    b.set_epoch(2)
    assert [i for _, i in b] != [i for _, i in first]
    shards = [EpochSampler(10, seed=3, rank=r, world_size=3) for r in range(3)]
    for s in shards:
        s.set_epoch(1)
    parts = [[i for _, i in s] for s in shards]
    assert all(len(p) == 3 for p in parts)
    flat = sum(parts, [])
    assert len(set(flat)) == 9 and set(flat) <= set(range(10))


def test_scheduler_warms_up_then_decays():
    cfg = load_config(None, ["train.epochs=4", "train.warmup_epochs=1", "train.lr=0.1"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = make_scheduler(opt, cfg, steps_per_epoch=5)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[4] == pytest.approx(0.1)
    assert all(x >= y for x, y in zip(lrs[5:], lrs[6:]))
    assert lrs[-1] < 0.02


def test_gaussian_smooth_preserves_mass_and_constant_maps():
    const = torch.full((2, 1, 32, 40), 0.3)
    assert torch.allclose(gaussian_smooth(const, 4.0), const, atol=1e-6)
    spike = torch.zeros(1, 1, 65, 65)
    spike[0, 0, 32, 32] = 1.0
    out = gaussian_smooth(spike, 2.0)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-4)
    assert out[0, 0, 32, 32] == out.max() and out[0, 0, 32, 33] == pytest.approx(out[0, 0, 33, 32].item())
    assert torch.equal(gaussian_smooth(spike, 0.0), spike)


def test_image_score_is_mean_of_top_k():
    maps = torch.from_numpy(np.arange(2 * 16, dtype=np.float32).reshape(2, 1, 4, 4))
    s = image_scores(maps, topk=3)
    assert s.tolist() == pytest.approx([14.0, 30.0])
    assert image_scores(maps, topk=1000).tolist() == pytest.approx([7.5, 23.5])


def test_run_name_encodes_backbone_size_and_shots():
    cfg = load_config(None, ["model.backbone=resnet18", "data.image_size=[64, 96]", "data.num_anomalies=0"])
    assert run_name(cfg) == "resnet18_64x96_0shot"


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(str(tmp_path / "missing.pt"))
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt.pt could not be read"):
        load_checkpoint(str(bad))
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not a PRNet checkpoint"):
        load_checkpoint(str(other))
    old = tmp_path / "old.pt"
    torch.save({"format": "prnet-checkpoint", "version": 0}, old)
    with pytest.raises(CheckpointError, match="version 0"):
        load_checkpoint(str(old))


def test_resume_counts_a_key_added_later_at_its_earlier_value():
    from prnet.config import config_to_dict
    from prnet.engine.trainer import config_differences

    stored = config_to_dict(load_config())
    del stored["synthesis"]["structure_fraction"]  # a checkpoint made before the key existed
    assert config_differences(stored, config_to_dict(load_config())) == []
    assert config_differences(stored, config_to_dict(load_config(None, ["synthesis.structure_fraction=0.25"]))) == [
        "synthesis.structure_fraction: 0.0 -> 0.25"]
    assert "structure_fraction" not in stored["synthesis"]  # the stored dict is not modified

