"""The tiny generated category and the config overrides of the short training runs that several test files share."""
from prnet.datasets.demo import make_demo_category


def tiny_overrides(root, out, protos, epochs=2, extra=()):
    """train.py overrides of a short CPU run on the tiny category (lite0 offline weights, 64 px)."""
    return [
        f"data.root={root}", "data.classes=[tiny]", "data.image_size=64", "data.dtd_root=null",
        "data.num_anomalies=3", f"output_dir={out}", f"prototypes.dir={protos}",
        "model.backbone=tf_efficientnet_lite0", "model.backbone_weights=package", "model.head_widths=[16, 32, 64]",
        f"train.epochs={epochs}", "train.batch_size=8", "train.workers=0", "train.lr=0.003", "train.warmup_epochs=0",
        "eval.topk=10", "eval.sigma=1.0", "eval.examples=4", "eval.batch_size=16", *extra,
    ]


def make_tiny_data(tmp_path_factory):
    """Write the tiny category under a new temporary folder; returns the data root."""
    root = tmp_path_factory.mktemp("data")
    make_demo_category(str(root), "tiny", seed=1, size=64, n_train=24, n_test_good=8, n_test_bad=12)
    return str(root)


def train_tiny_run(root, tmp, extra=()):
    """Train a 1-epoch tiny run (tiny_overrides plus `extra`) under the folder `tmp`; returns (checkpoint path, its
    results.json as a dict)."""
    import json
    import os

    import train as train_script

    out, protos = os.path.join(str(tmp), "out"), os.path.join(str(tmp), "protos")
    assert train_script.main(tiny_overrides(root, out, protos, epochs=1, extra=list(extra))) == 0
    return os.path.join(out, "tiny", "last.pt"), json.load(open(os.path.join(out, "tiny", "results.json")))


def train_killed_after_first_epoch(monkeypatch, args):
    """train.py with `args`, stopped (KeyboardInterrupt) right after it wrote its first checkpoint: the run folder as
    a kill after the first epoch leaves it."""
    import pytest

    import train as train_script
    from prnet.engine import trainer

    real_save = trainer.save_checkpoint

    def save_then_die(path, **kwargs):
        real_save(path, **kwargs)
        raise KeyboardInterrupt("killed after the first epoch")

    with monkeypatch.context() as m:
        m.setattr(trainer, "save_checkpoint", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            train_script.main(args)
