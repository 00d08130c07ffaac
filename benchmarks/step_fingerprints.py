"""Where do two trainings of the same config part? Fingerprints of the first training steps, step by step.

    python benchmarks/step_fingerprints.py --config runs/x/<category>/config.yaml --steps 150 --out a.json
    python benchmarks/step_fingerprints.py --config runs/x/<category>/config.yaml --steps 150 --out b.json
    python benchmarks/step_fingerprints.py --compare a.json b.json

The first two commands build the run as train.py does (the prototype file is loaded, or built into the config's
`prototypes.dir` if it is missing; model, optimiser, schedule and loader seeded the same way) and train the first
`--steps` steps of epoch 1 (at most one epoch) in this process, writing nothing into `output_dir`. For each step the
JSON holds a hash of the batch (images and masks), the loss as Python prints it, and a hash of the weights after
the step (train.py's own step, `trainer.train_step`). `--compare` names the first step where two files differ and
what differs first: the inputs (the data pipeline) or only the arithmetic (same inputs, another loss or other
weights); it exits 1 if they differ, 0 if not. `results.json` gives the same per epoch (`epoch_fingerprints`) for
whole runs.

Single process only (no torchrun). Key=value overrides follow the options, as for train.py.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FIELDS = ("batch", "loss", "weights")  # in the order a step makes them


def _sha1(arrays) -> str:
    digest = hashlib.sha1()
    for a in arrays:
        digest.update(np.ascontiguousarray(a.detach().cpu().numpy()))
    return digest.hexdigest()[:16]


def fingerprint_steps(cfg, steps: int, device: torch.device, progress: bool = True) -> list[dict]:
    """Train the first `steps` steps of epoch 1 of `cfg`'s first category; one dict of fingerprints per step."""
    from prnet.datasets import build_train_dataset
    from prnet.engine.trainer import DistContext, build_run, close_loader, prepare_prototypes, train_step

    category = cfg.data.classes[0]
    ctx = DistContext()
    bank, backbone = prepare_prototypes(cfg, category, device, ctx)
    train_set = build_train_dataset(cfg, category)
    run = build_run(cfg, bank, backbone, train_set, device, ctx)
    params = [p for p in run.model.parameters() if p.requires_grad]
    train_set.set_epoch(0)
    run.sampler.set_epoch(0)
    run.model.train()
    rows: list[dict] = []
    t0 = time.time()
    try:
        for step, batch in enumerate(run.loader):
            if step >= steps:
                break
            loss, _ = train_step(cfg, run, batch, device)  # train.py's step, AMP and channels_last included
            rows.append({"step": step, "batch": batch["digest"].hex()[:16], "loss": repr(loss.item()),
                         "weights": _sha1(params)})
            if progress:
                print(f"step {step}: loss {rows[-1]['loss']}, {time.time() - t0:.0f} s", flush=True)
    finally:
        close_loader(run.loader)
    return rows


def first_difference(a: list[dict], b: list[dict]) -> tuple[int, str] | None:
    """(step, field) of the first step and field (in FIELDS order) where two fingerprint lists differ; None if the
    shorter list agrees with the start of the longer."""
    for x, y in zip(a, b):
        for field in FIELDS:
            if x[field] != y[field]:
                return x["step"], field
    return None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config, e.g. a run's <category>/config.yaml")
    p.add_argument("--steps", type=int, default=50, help="steps of epoch 1 to fingerprint (default 50)")
    p.add_argument("--out", help="JSON file to write")
    p.add_argument("--compare", nargs=2, metavar="JSON", help="compare two files written by --out")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.compare:
        a, b = (json.load(open(f, encoding="utf-8")) for f in args.compare)
        where = first_difference(a["steps"], b["steps"])
        n = min(len(a["steps"]), len(b["steps"]))
        if where is None:
            print(f"identical over the {n} steps both files hold")
            return 0
        step, field = where
        cause = "the inputs (data pipeline)" if field == "batch" else f"the arithmetic (same inputs; {field} differs)"
        print(f"they part at step {step}, in {cause}")
        return 1
    if not args.out:
        print("error: --out (or --compare) is required", file=sys.stderr)
        return 2
    from prnet.config import ConfigError, load_config
    from prnet.provenance import provenance

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from prnet.utils import atomic_write, resolve_device

    device = resolve_device(cfg.train.device)
    rows = fingerprint_steps(cfg, args.steps, device)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"config": args.config, "overrides": args.overrides,
                       "provenance": provenance(device), "steps": rows}, fh, indent=1)

    atomic_write(args.out, write)
    print(f"{len(rows)} steps -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
