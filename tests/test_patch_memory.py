"""Patch memory (prnet/models/patch_memory.py): nearest distances, held-out rows, the build, the prototype file, and
PRNet with the distance as a head input, end to end through train.py, a checkpoint and the ONNX export."""
import json
import os

import numpy as np
import pytest
import torch

import export as export_script
import train as train_script
from prnet.config import ConfigError, load_config
from prnet.engine.prototypes import (PrototypeMismatchError, build_patch_memory, load_prototypes, save_prototypes)
from prnet.models.patch_memory import PatchMemory, memory_inputs, nearest_distances, patch_embedding
from prnet.models.prototypes import PrototypeBank
from tiny_run import tiny_overrides


def brute_force(queries, memory, query_owner=None, memory_owner=None):
    d = torch.cdist(queries.double(), memory.double())
    if query_owner is not None:
        d[query_owner[:, None] == memory_owner[None]] = float("inf")
    return d.min(dim=1).values.float()


def test_nearest_distances_match_brute_force_and_leave_own_rows_out():
    g = torch.Generator().manual_seed(0)
    memory, queries = torch.randn(300, 12, generator=g), torch.randn(70, 12, generator=g)
    got = nearest_distances(queries, memory, query_chunk=16, memory_chunk=64)
    assert torch.allclose(got, brute_force(queries, memory), atol=1e-4)
    # a query equal to a memory row is at 0, unless that row is its own image's
    queries[:5] = memory[:5]
    mem_owner, q_owner = torch.arange(300) % 7, torch.full((70,), 99)
    q_owner[:5] = mem_owner[:5]
    held = nearest_distances(queries, memory, query_owner=q_owner, memory_owner=mem_owner)
    assert torch.allclose(held, brute_force(queries, memory, q_owner, mem_owner), atol=1e-4)
    assert (held[:5] > 0.5).all()
    assert float(nearest_distances(queries, memory)[:5].max()) < 1e-2  # (the sqrt of float rounding)


def test_patch_memory_distance_map_is_normalised_and_held_out():
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 6, 4, 4, generator=g)]
    e = patch_embedding(feats)
    assert e.shape == (2, 10, 8, 8)
    rows = e.permute(0, 2, 3, 1).reshape(-1, 10)
    source = torch.arange(2).repeat_interleave(64)
    memory = PatchMemory(rows, source, mean=2.0)
    plain = memory(feats[:0] + feats)  # memory_inputs takes the last two maps
    assert plain.shape == (2, 1, 8, 8) and float(plain.abs().max()) < 1e-2  # every patch is in the memory
    held = memory(feats, torch.tensor([0, 1]))
    expect = brute_force(rows, rows, source, source).view(2, 1, 8, 8) / 2.0
    assert torch.allclose(held, expect, atol=1e-4) and float(held.min()) > 0
    # a third, finer map in front changes nothing: the memory is made of the last two
    assert torch.equal(memory_inputs([torch.zeros(1)] + feats)[0], feats[0])
    with pytest.raises(ValueError, match="source indices"):
        memory(feats, torch.tensor([0]))
    with pytest.raises(RuntimeError, match="mean"):
        PatchMemory(rows, source)(feats)
    with pytest.raises(ValueError, match="channels"):
        memory([torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 4, 4)])


def test_patch_memory_exports_to_onnx_for_any_batch_size(monkeypatch):
    """Traced with a batch of 2, run on 3: the eager chunk loop (16 queries here) must not be frozen into the
    graph."""
    import io

    import onnxruntime as ort

    monkeypatch.setattr(PatchMemory, "QUERY_CHUNK", 16)
    g = torch.Generator().manual_seed(4)
    memory = PatchMemory(torch.randn(50, 9, generator=g), mean=2.0)

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.memory = memory

        def forward(self, a, b):
            return self.memory([a, b])

    make = lambda n: (torch.randn(n, 4, 8, 8, generator=g), torch.randn(n, 5, 4, 4, generator=g))  # noqa: E731
    buf = io.BytesIO()
    torch.onnx.export(Wrap(), make(2), buf, input_names=["a", "b"], output_names=["d"], dynamo=False,
                      dynamic_axes={"a": {0: "n"}, "b": {0: "n"}, "d": {0: "n"}})
    a, b = make(3)
    got = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"]).run(
        None, {"a": a.numpy(), "b": b.numpy()})[0]
    with torch.no_grad():
        want = memory([a, b]).numpy()
    assert got.shape == want.shape == (3, 1, 8, 8)
    assert np.abs(got - want).max() < 1e-4


class TinyBackbone(torch.nn.Module):
    """A fixed random conv stack with the Backbone interface: (three feature maps, bottleneck)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = torch.nn.Conv2d(3, 4, 3, stride=4, padding=1)
        self.c2 = torch.nn.Conv2d(4, 5, 3, stride=2, padding=1)
        self.c3 = torch.nn.Conv2d(5, 6, 3, stride=2, padding=1)

    def forward(self, x):
        f1 = self.c1(x)
        f2 = self.c2(f1)
        f3 = self.c3(f2)
        return [f1, f2, f3], f3


def test_build_patch_memory_is_seeded_and_its_mean_is_the_held_out_level():
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    backbone = TinyBackbone().eval()
    a = build_patch_memory(backbone, list(images), "cpu", 40, seed=3, batch_size=4)
    b = build_patch_memory(backbone, list(images), "cpu", 40, seed=3, batch_size=4)
    c = build_patch_memory(backbone, list(images), "cpu", 40, seed=4, batch_size=4)
    assert a.memory.shape == (40, 11) and torch.equal(a.memory, b.memory) and torch.equal(a.source, b.source)
    assert not torch.equal(a.memory, c.memory)
    assert set(a.source.tolist()) <= set(range(6))
    with torch.no_grad():
        feats, _ = backbone(images)
        held = a.raw_distances(memory_inputs(feats), torch.arange(6))
        plain = a.raw_distances(memory_inputs(feats))
    assert float(a.mean) == pytest.approx(float(held.mean()), rel=1e-5)
    assert float(plain.mean()) < float(held.mean())  # in-sample patches find themselves
    with pytest.raises(ValueError, match="candidate patches"):
        build_patch_memory(backbone, list(images), "cpu", 10_000)


def test_prototype_file_keeps_the_memory_and_settings_must_agree(tmp_path):
    protos = [torch.randn(2, 3, 4, 4)]
    memory = PatchMemory(torch.randn(10, 5), torch.arange(10) % 3, mean=1.5)
    bank = PrototypeBank(protos, {"k": [2]}, assignments=[torch.tensor([0, 1, 0])], patch_memory=memory)
    path = str(tmp_path / "p.pt")
    save_prototypes(bank, path)
    back = load_prototypes(path)
    assert torch.equal(back.patch_memory.memory, memory.memory)
    assert torch.equal(back.patch_memory.source, memory.source) and float(back.patch_memory.mean) == 1.5
    with pytest.raises(PrototypeMismatchError, match="do not ask for"):
        load_prototypes(path, {"k": [2]})
    save_prototypes(PrototypeBank(protos, {"k": [2]}, assignments=[torch.tensor([0, 1, 0])]), path)
    assert load_prototypes(path).patch_memory is None
    with pytest.raises(PrototypeMismatchError, match="patch_memory"):
        load_prototypes(path, {"k": [2], "patch_memory": 10})


def test_negative_patch_memory_is_a_config_error():
    with pytest.raises(ConfigError, match="patch_memory"):
        load_config(None, ["prototypes.patch_memory=-1"])


def test_train_with_a_patch_memory_end_to_end(tiny_data, tmp_path, caplog, monkeypatch):
    from prnet.engine.checkpoint import model_from_checkpoint
    from prnet.engine.evaluator import predict_maps

    out, protos = str(tmp_path / "out"), str(tmp_path / "protos")
    assert train_script.main(tiny_overrides(tiny_data, out, protos, epochs=2,
                                            extra=["prototypes.patch_memory=300"])) == 0
    results = json.load(open(os.path.join(out, "tiny", "results.json")))
    assert results["metrics"]["image_auroc"] > 0.6  # it trains and is scored (not an exact figure)
    ckpt = os.path.join(out, "tiny", "last.pt")
    model, cfg, _ = model_from_checkpoint(ckpt, torch.device("cpu"))
    assert cfg.prototypes.patch_memory == 300 and model.bank.patch_memory.memory.shape[0] == 300
    assert model.bank.patch_memory.has_mean
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats, residuals, bottleneck, patch = model.encode(x)
        assert patch.shape == (2, 1, 8, 8)  # stride 8 at 64 px
        logits = model(x)
        assert torch.allclose(logits, model.head(feats, residuals, bottleneck, (64, 64), patch))
        # the distance is an input the head uses: another distance map gives another map
        assert not torch.allclose(logits, model.head(feats, residuals, bottleneck, (64, 64), patch * 3))
        with pytest.raises(ValueError, match="missing"):
            model.head(feats, residuals, bottleneck, (64, 64))
    # ONNX: the memory match is inside the graph, for any batch size (eager mode matches in chunks of 16 queries
    # here; the trace must not keep a chunk loop of the trace's batch)
    import onnxruntime as ort

    monkeypatch.setattr(PatchMemory, "QUERY_CHUNK", 16)
    onnx_path = str(tmp_path / "model.onnx")
    assert export_script.main(["--checkpoint", ckpt, "--out", onnx_path]) == 0
    maps, scores = predict_maps(model, x, topk=cfg.eval.topk, sigma=cfg.eval.sigma, image_score=cfg.eval.image_score,
                                knn_weight=cfg.eval.knn_weight, anomaly_map=cfg.eval.anomaly_map,
                                knn_lift=cfg.eval.knn_lift)
    onnx_maps, onnx_scores = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"]).run(
        None, {"image": x.numpy()})
    assert np.abs(onnx_maps - maps.numpy()).max() < 1e-3 and np.abs(onnx_scores - scores.numpy()).max() < 1e-3
    # the same prototype folder without the memory: the file is rebuilt, with the reason
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert train_script.main(tiny_overrides(tiny_data, str(tmp_path / "out0"), protos, epochs=1)) == 0
    assert any("patch memory" in r.getMessage() for r in caplog.records)


def test_held_out_masking_by_pairs_equals_the_broadcast_mask(monkeypatch):
    """A query chunk from a few owners masks only its own pairs; the result is bit for bit the broadcast mask's."""
    import prnet.models.patch_memory as pm

    g = torch.Generator().manual_seed(3)
    memory, queries = torch.randn(900, 16, generator=g), torch.randn(300, 16, generator=g)
    mem_owner = torch.randint(0, 5, (900,), generator=g)
    few = torch.arange(300) // 100  # three images of 100 patches, in order (calibration, training)
    few[-7:] = -1  # not a training image: nothing left out
    many = torch.randint(0, 40, (300,), generator=g)  # more owners per chunk than the pairs path takes
    queries[:3] = memory[mem_owner == few[0]][:3]  # own rows that would be at distance 0
    for owners in (few, many):
        got = nearest_distances(queries, memory, query_chunk=128, memory_chunk=256, query_owner=owners,
                                memory_owner=mem_owner)
        monkeypatch.setattr(pm, "OWN_PAIRS_MAX_OWNERS", 0)  # the broadcast mask only
        want = nearest_distances(queries, memory, query_chunk=128, memory_chunk=256, query_owner=owners,
                                 memory_owner=mem_owner)
        monkeypatch.undo()
        assert torch.equal(got, want)
        assert torch.allclose(got, brute_force(queries, memory, owners, mem_owner), atol=1e-4)
    assert pm._own_pairs(few[:128], mem_owner) is not None and pm._own_pairs(many[:128], mem_owner) is None
    assert (nearest_distances(queries, memory, query_owner=few, memory_owner=mem_owner)[:3] > 0.5).all()


def test_bench_nearest_runs_and_restores_the_limit(capsys):
    import bench_nearest

    import prnet.models.patch_memory as pm

    limit = pm.OWN_PAIRS_MAX_OWNERS
    assert bench_nearest.main(["--images", "2", "--patches", "16", "--memory", "64", "--dim", "4",
                               "--owners", "3"]) == 0
    out = capsys.readouterr().out
    assert "held out, own pairs masked" in out and "broadcast mask" in out
    assert pm.OWN_PAIRS_MAX_OWNERS == limit
