"""Real-data benchmark: PRNet (10 and 0 real anomalies) next to a PatchCore-style baseline, per data set and seed.

    python benchmarks/real_data.py --data ../shared/data/magnetic_tile ../shared/data/bsdata \
        --dtd ../shared/data/dtd --out bench --seeds 0,1,2

`--data` takes one or more folders: a category folder in the MVTec AD layout (train/good, test/<defect>,
ground_truth/<defect>), or a root holding such category folders (each becomes a data set of its own; `--categories`
picks some, and names them where the folders have no train/ of their own, e.g. with `--set data.format=...`).
Every method uses the same backbone (tf_efficientnet_lite0, offline ImageNet weights) and image size (`--size 256`
or `--size H,W`, multiples of 32) and is evaluated with prnet.metrics on the same test images per data set: the test
split minus the real anomalies any PRNet method trains on (so no method is scored on an image one was trained on).

Seeds: every PRNet method runs once per seed (`--seeds 0,1,2`). The baseline runs once per seed too: its coreset
draws (random projection, start point, patch cap) depend on the seed (same seed, same result). The table gives the
mean ± the sample standard deviation (ddof 1) over the seeds per data set, method and metric; <out>/real_data.json
holds every per-seed row and min/max as well. `--set key=value` (repeatable) passes config overrides to every PRNet
run (e.g. `--set data.format=visa --set eval.topk=50`).

Runs are kept under <out>/runs/<data set>/<method>-seed<S>-<key>, the key a hash of the run's resolved config (the
defaults included; eval.*, train.workers and the output folders aside: they change no trained weight; an option
added later keeps the key of the runs made before it while it behaves as they did, config.ADDED_KEYS). A finished
run is reused, an interrupted one resumes from its last epoch. train.py does not score its own test split
(eval.score_test=false): the run is scored once, on the common test set; that evaluation is stored next to it, keyed
by the evaluation settings and the test images, and reused as well. Changing a setting gives a new run
folder, never a mixed one.

Every record (each run's train.json and eval-*.json, the baseline's rows, real_data.json) carries `provenance`: the
git commit and a hash of any uncommitted changes to tracked files, package versions, the CPU or GPU
(prnet.provenance). A run whose code changed while it trained says so in its train.json (`code_changed_during_run`).
A run or evaluation reused from a record made with code that differs from this checkout's in the files that train
or score (CODE_PATHS) is reused as it is, named in a warning and listed in real_data.json (`records_of_other_code`,
with the files): delete its folder to train it again, or its eval-*.json to score it again.

Each record keeps its per-image scores on the common test set, and beside it the counts from which the pooled pixel
AUROC of any resampling of its images follows exactly (eval-<key>.pixels.npz, prnet.metrics.pixel_pair_counts) and
its AUPRO on a grid of 2000 thresholds (eval-<key>.pro.npz, prnet.metrics.aupro_counts; within about 1e-4 of the
exact AUPRO, and the report says by how much), so the report also gives each PRNet method's image AUROC, pixel AUROC
and AUPRO lead over the baseline (mean over the seeds of PRNet − the baseline of the same seed) with a 95 % interval
over the test images: a paired, stratified bootstrap (prnet.metrics.paired_auroc_difference,
paired_pixel_auroc_difference and paired_aupro_difference, the same image draws), which says how much the lead
depends on which images were tested (the ± columns say how much it depends on the seed). A stored
evaluation made before records kept these is made again where its checkpoint is there (the baseline is fitted
again); a kept record without a checkpoint gets `n/a` there. With `--control` the table has the same leads on the
control, from what the control's records keep (made again in the same way where missing).

`--rescore` trains no PRNet: it evaluates the finished PRNet runs of the settings given with the evaluation settings
given now (`--set eval.sigma=4`) and writes <out>/real_data_rescore.json.

`--control` also scores every run (PRNet and the baseline, all five metrics) on a control of each data set: each
defective test image's pixels inside its mask pasted into a normal test image (benchmarks/shortcut_check.py), so
that the defective and normal images differ only by the defects. Where a test split's defective images also differ
from its normal ones elsewhere (later shots, dirt, lighting), the test image AUROC rewards that as well; the
control's does not (on Magnetic Tile and BSData a statistic that never looks at a defect reaches 0.975 on the test
split: docs/experiments.md). The table gets a column "control image AUROC". The control is written once per data set
under <out>/controls/ (MVTec layout only; defective images without a mask are left out, the runs' real anomalies
too) and its scores are stored next to each run like its test scores.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import time
from typing import NamedTuple

import numpy as np
import torch

from prnet.utils import atomic_write

log = logging.getLogger("real_data")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro")
HEADERS = ("image AUROC", "image AP", "pixel AUROC", "pixel AP", "AUPRO")
BASELINE = "PatchCore-style baseline"
BASELINE_SETTINGS = "stages 2-3, 3x3 avg, greedy coreset 10 % of 200k randomly drawn patches, sigma 4, max"
CONTROL_SEED = 0  # the draw of the normal test image each defect is pasted into (shortcut_check.write_control)
CONTROL_COLUMN = "control_image_auroc"
LEAD_RESAMPLES, LEAD_LEVEL = 2000, 0.95  # the bootstrap of each lead's interval over the images (paired_leads)
LEAD_PARTS = {"test": "test split", "control": "control"}  # what a lead was scored on, as the lead table names it
# each lead's metric, as the table names it
LEAD_METRICS = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AUPRO"}
_TRAIN_SCRIPT = None


class DataSet(NamedTuple):
    label: str  # the name in the table and the runs folder
    root: str  # data.root
    category: str


def parse_size(text: str):
    """'256' -> 256, '256,512' (or 256x512) -> [256, 512]; every side a multiple of 32 (>= 32)."""
    parts = [p.strip() for p in text.lower().replace("x", ",").split(",")]
    try:
        sides = [int(p) for p in parts]
    except ValueError:
        sides = []
    if len(sides) not in (1, 2) or any(s < 32 or s % 32 for s in sides):
        raise argparse.ArgumentTypeError(f"--size: expected one int or H,W, multiples of 32 (>= 32), got {text!r}")
    return sides[0] if len(sides) == 1 else sides


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2] (distinct, in the order given)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds: expected distinct integers separated by commas, got {text!r}")
    return seeds


def value(v) -> str:
    """A value for a key=value override: JSON, which YAML reads back unchanged ('01' stays a string, a path with
    ': ' stays a path)."""
    return json.dumps(v)


def short_hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def find_datasets(folders: list[str], categories: list[str] | None) -> list[DataSet]:
    """The data sets of --data: a folder with train/ is one category; any other folder is a root whose categories
    are `categories` (or, without them, its subfolders that hold train/)."""
    out = []
    for folder in folders:
        path = os.path.abspath(folder.rstrip("/"))
        if not os.path.isdir(path):
            raise SystemExit(f"--data {folder}: no such folder (expected a category folder or a root of them)")
        if os.path.isdir(os.path.join(path, "train")) and not categories:
            out.append(DataSet(os.path.basename(path), os.path.dirname(path), os.path.basename(path)))
            continue
        cats = categories or sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d, "train")))
        if not cats:
            raise SystemExit(f"--data {folder}: neither a category folder (train/, test/, ground_truth/) nor a root "
                             f"holding such folders; name the categories with --categories")
        for c in cats:
            if not os.path.isdir(os.path.join(path, c)):
                raise SystemExit(f"--categories: no folder {c} in {path}")
            out.append(DataSet(f"{os.path.basename(path)}/{c}", path, c))
    labels = [d.label for d in out]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise SystemExit(f"--data: data set {', '.join(dup)} given twice")
    return out


def method_shots(method: str) -> int | None:
    """'prnet10' -> 10, 'patchcore' -> None; anything else is an error."""
    if method == "patchcore":
        return None
    if method.startswith("prnet") and method[5:].isdigit():
        return int(method[5:])
    raise SystemExit(f"--methods: unknown method {method!r} (prnet<real anomalies>, e.g. prnet10 or prnet0, "
                     f"or patchcore)")


def prnet_overrides(args, ds: DataSet, shots: int, seed: int, run_dir: str | None = None) -> list[str]:
    """The config overrides of one PRNet run (output_dir and prototypes.dir inside `run_dir` when given)."""
    ov = [f"data.root={value(ds.root)}", f"data.classes={value([ds.category])}",
          f"data.image_size={value(args.size)}", f"data.dtd_root={value(args.dtd)}", f"data.num_anomalies={shots}",
          "model.backbone=tf_efficientnet_lite0", "model.backbone_weights=package",
          f"model.head_widths={args.widths}", f"train.epochs={args.epochs}", f"train.batch_size={args.batch}",
          f"train.lr={args.lr}", f"train.workers={args.workers}", f"train.device={args.device}", f"seed={seed}",
          *args.set]
    if run_dir is not None:
        ov += [f"output_dir={value(run_dir)}", f"prototypes.dir={value(os.path.join(run_dir, 'prototypes'))}"]
    return ov


def training_config(overrides: list[str]) -> dict:
    """The resolved config of a run as plain types, without what changes no trained weight (the run key)."""
    from prnet.config import config_to_dict, load_config, without_added_keys_at_earlier_values

    # options added later, at the value that behaves as before they existed, leave the key as it was
    cfg = without_added_keys_at_earlier_values(config_to_dict(load_config(None, overrides)))
    del cfg["eval"], cfg["output_dir"], cfg["prototypes"]["dir"]
    for key in ("workers", "resume", "overwrite"):
        del cfg["train"][key]
    return cfg


def run_dir_for(args, ds: DataSet, method: str, seed: int, settings: dict) -> str:
    return os.path.join(os.path.abspath(args.out), "runs", ds.label.replace("/", "__"),
                        f"{method}-seed{seed}-{short_hash(settings)}")


def claim_run_dir(path: str, settings: dict) -> None:
    """Create the run folder with its settings.json, or check that an existing one was made with `settings`."""
    info = os.path.join(path, "settings.json")
    if os.path.exists(info):
        have = json.load(open(info, encoding="utf-8"))
        if have != settings:
            raise SystemExit(f"{info}: made with other settings than this run's (a hash collision?): remove {path}")
        return
    os.makedirs(path, exist_ok=True)
    write_json(info, settings)


CODE_PATHS = ("prnet", "train.py", "benchmarks/real_data.py", "benchmarks/patchcore.py", "benchmarks/shortcut_check.py")


def records_of_other_code(rows: list[dict]) -> list[dict]:
    """The rows' training and evaluation records made with code that differs from this checkout's in CODE_PATHS:
    [{run, record, commit, files}]; a record whose code cannot be told (no commit, another clone) is listed with
    files None."""
    from prnet.provenance import code_differences

    out = []
    for r in rows:
        for record, origin in (("evaluation", r.get("provenance")), ("training", r.get("train_provenance"))):
            if record == "training" and "train_provenance" not in r:
                continue  # the baseline: fitted with its evaluation
            files = code_differences(origin, CODE_PATHS)
            if files != []:
                out.append({"run": r["run"], "record": record, "commit": (origin or {}).get("git_commit"),
                            "files": files})
    return out


def write_json(path: str, obj) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2)

    atomic_write(path, write)


def stored_or_made(path: str, make, remake_incomplete: bool = False) -> dict:
    """The JSON stored at `path`, or make() written there first (a run's scores on the control). With
    `remake_incomplete`, a stored one without what paired_leads needs (made before records kept it) is made
    again."""
    if os.path.exists(path):
        stored = json.load(open(path, encoding="utf-8"))
        missing = incomplete(stored, os.path.dirname(path))
        if not missing or not remake_incomplete:
            return stored
        log.info("%s was stored without its %s: scoring again", path, missing)
    made = make()
    write_json(path, made)
    return made


def incomplete(stored: dict, folder: str) -> str | None:
    """What a stored evaluation lacks of what paired_leads compares (None: nothing): the per-image scores, the pixel
    counts file or the AUPRO counts file (`pixel_pairs` and `pro_counts` name them beside the record; None there: the
    test set has no pixel metric)."""
    if "image_scores" not in stored:
        return "per-image scores"
    for key, what in (("pixel_pairs", "pixel counts"), ("pro_counts", "AUPRO counts")):
        if key not in stored or (stored[key] is not None and not os.path.exists(os.path.join(folder, stored[key]))):
            return what
    return None


def pixel_pairs(record_path: str, maps, masks, test) -> dict:
    """Writes the pixel counts of an evaluation beside its record `record_path` (eval-<key>.json ->
    eval-<key>.pixels.npz: prnet.metrics.pixel_pair_counts and the test images' names, from which paired_leads
    gets the pixel AUROC of any resampling of the images exactly); returns the record's entry {pixel_pairs: the
    file's name}, None where the test set has no pixel metric (no defect or no anomaly-free pixel)."""
    from prnet.metrics import pixel_pair_counts

    counts = pixel_pair_counts(maps, masks)
    if counts["rows"].size == 0 or not counts["neg"].any():
        return {"pixel_pairs": None}
    path = os.path.splitext(record_path)[0] + ".pixels.npz"
    atomic_write(path, lambda tmp: np.savez_compressed(tmp, names=np.array([s.name for s in test.samples]),
                                                       **counts))
    return {"pixel_pairs": os.path.basename(path)}


def pro_counts(record_path: str, maps, masks, test) -> dict:
    """Writes the AUPRO counts of an evaluation beside its record (eval-<key>.json -> eval-<key>.pro.npz:
    prnet.metrics.aupro_counts, `pro_` before each name, and the test images' names), from which paired_leads gets
    the AUPRO of any resampling of the images on their grid of thresholds; returns the record's entry
    {pro_counts: the file's name}, None where the test set has no AUPRO (no anomalous region or anomaly-free pixel)."""
    from prnet.metrics import aupro_counts

    g = np.asarray(masks) > 0.5
    if not g.any() or g.all():
        return {"pro_counts": None}
    counts = aupro_counts(maps, masks)
    path = os.path.splitext(record_path)[0] + ".pro.npz"
    atomic_write(path, lambda tmp: np.savez_compressed(tmp, names=np.array([s.name for s in test.samples]),
                                                       **{f"pro_{k}": v for k, v in counts.items()}))
    return {"pro_counts": os.path.basename(path)}


def train_script():
    """train.py of this checkout (a top-level script, not part of the prnet package), loaded from its path."""
    global _TRAIN_SCRIPT
    if _TRAIN_SCRIPT is None:
        spec = importlib.util.spec_from_file_location("prnet_train_script", os.path.join(REPO, "train.py"))
        _TRAIN_SCRIPT = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_TRAIN_SCRIPT)
    return _TRAIN_SCRIPT


def train_prnet(ov: list[str], run_dir: str, category: str, rescore: bool) -> dict:
    """Train one PRNet run with train.py's code path unless it finished before: {train_min, resumed, provenance,
    epoch_fingerprints}. An interrupted run (a checkpoint, no train.json) resumes from its last epoch. `provenance`
    and `epoch_fingerprints` are the trainer's (results.json): the code and machine, and per epoch hashes of the
    training batches and the weights; `code_changed_during_run` and `code_at_start` are repeated at the top when the
    trainer found the code changed while it trained."""
    done = os.path.join(run_dir, "train.json")
    ckpt = os.path.join(run_dir, category, "last.pt")
    if os.path.exists(done) and os.path.exists(ckpt):
        log.info("reusing the finished run %s", run_dir)
        return json.load(open(done, encoding="utf-8"))
    if rescore and os.path.exists(done):
        raise SystemExit(f"--rescore: {ckpt} is missing (a kept record of a run holds only its evaluations); "
                         "train it again without --rescore")
    if rescore:
        raise SystemExit(f"--rescore: no finished run in {run_dir} (run without --rescore first)")
    resume = os.path.exists(ckpt)
    # train.json and the evaluations stored here describe the weights trained before (a kept record copied in
    # without its checkpoint); these weights are new (a fresh run) or finished anew (a resume). None of them may
    # stand for the run that comes out, nor mark a run interrupted from here on as finished
    # escaped: --out may contain [ ] * ?; the records and their pixel counts
    stale_records = glob.glob(os.path.join(glob.escape(run_dir), "eval-*"))
    for stale in stale_records + ([done] if os.path.exists(done) else []):
        log.info("removing %s: a record of this run's earlier training", stale)
        os.remove(stale)
    t0 = time.time()
    # train.py does not score its own test split: the run is scored below on the common test set (and the control)
    if train_script().main([*ov, "eval.score_test=false",
                            "train.resume=true" if resume else "train.overwrite=true"]) != 0:
        raise SystemExit(f"PRNet training failed: {run_dir}")
    info = {"train_min": (time.time() - t0) / 60.0, "resumed": resume,
            "train_minutes_includes": "prototypes + training + the threshold and nearest-neighbour calibration"
                                      + (" (only the part after the resume)" if resume else "")}
    results = json.load(open(os.path.join(run_dir, category, "results.json"), encoding="utf-8"))
    origin = results["provenance"]
    info.update(provenance=origin, **{k: origin[k] for k in ("code_changed_during_run", "code_at_start")
                                      if k in origin})
    info["epoch_fingerprints"] = results.get("epoch_fingerprints")  # kept records: compare a re-training with them
    write_json(done, info)
    return info


def eval_settings(eval_cfg) -> dict:
    """The evaluation settings a stored evaluation is keyed by: all of eval.*, but eval.knn_weight only where it is
    used (eval.image_score=map_residual_knn), eval.anomaly_map and eval.knn_lift only with the map head_knn, and
    eval.second_read and eval.second_weight only with a second read, so that evaluations stored before they existed
    keep their key."""
    settings = dataclasses.asdict(eval_cfg)
    if settings["image_score"] != "map_residual_knn":
        del settings["knn_weight"]
    if settings["second_read"] == "none" or settings["image_score"] != "map_residual_knn":
        del settings["second_read"], settings["second_weight"]
    if settings["anomaly_map"] == "head":
        del settings["anomaly_map"], settings["knn_lift"]
    return settings


def run_prnet(args, ds: DataSet, shots: int, seed: int, common_test, device: torch.device, control=None) -> dict:
    """One PRNet run (trained or reused), scored on the common test set (or that score reused), and on the control
    test set when one is given (stored the same way)."""
    from prnet.config import load_config
    from prnet.engine.checkpoint import model_from_checkpoint
    from prnet.engine.evaluator import evaluate
    from prnet.engine.knn_calibration import attach_knn_score
    from prnet.engine.second_read import attach_second_read, with_second_read
    from prnet.models.prnet import needs_knn
    from prnet.engine.prototypes import attach_residual_means
    from prnet.provenance import provenance

    method = f"prnet{shots}"
    settings = {"method": method, "data": ds._asdict(), "config": training_config(prnet_overrides(args, ds, shots,
                                                                                                 seed))}
    run_dir = run_dir_for(args, ds, method, seed, settings)
    claim_run_dir(run_dir, settings)
    ov = prnet_overrides(args, ds, shots, seed, run_dir)
    # the evaluation settings asked for now, eval.second_read=auto resolved for this data set as when the run started
    # (auto that resolves to none keys the evaluation as none does)
    eval_cfg = with_second_read(load_config(None, ov), ds.category).eval
    eval_key = short_hash({"eval": eval_settings(eval_cfg), "test": test_key(common_test)})
    eval_path = os.path.join(run_dir, f"eval-{eval_key}.json")
    ckpt = os.path.join(run_dir, ds.category, "last.pt")
    loaded: list = []

    def model_and_config():
        """The run's model with the evaluation settings asked for now (loaded once)."""
        if not loaded:
            if not os.path.exists(ckpt):
                raise SystemExit(f"--control: {ckpt} is missing (a kept record of a run holds only its "
                                 "evaluations); train the run again to score it on the control")
            model, cfg, _ = model_from_checkpoint(ckpt, device)
            cfg.eval = eval_cfg
            attach_second_read(model, cfg, ds.category, device)  # a run trained with other evaluation settings
            if cfg.eval.image_score != "map":
                attach_residual_means(model, cfg, ds.category, device)  # a run trained before they were stored
            if needs_knn(cfg):
                attach_knn_score(model, cfg, ds.category, device)  # a run trained with other evaluation settings
            loaded.append((model, cfg))
        return loaded[0]

    done = os.path.join(run_dir, "train.json")
    stored = None
    if os.path.exists(done) and os.path.exists(eval_path):
        stored = json.load(open(eval_path, encoding="utf-8"))
    missing = incomplete(stored, run_dir) if stored is not None else None
    if missing and os.path.exists(ckpt):
        log.info("%s was stored without its %s: evaluating the run again", eval_path, missing)
        stored = None
    if stored is not None:
        # finished and scored with these settings before: no checkpoint needed (a kept record has only the JSONs)
        log.info("reusing the stored evaluation of the finished run %s", run_dir)
        trained = json.load(open(done, encoding="utf-8"))
        scored = stored
    else:
        trained = train_prnet(ov, run_dir, ds.category, args.rescore)
        model, cfg = model_and_config()
        t1 = time.time()
        metrics, raw = evaluate(model, common_test, cfg, device)
        results = json.load(open(os.path.join(run_dir, ds.category, "results.json"), encoding="utf-8"))
        scored = {**metrics, "eval_sigma": cfg.eval.sigma, "eval_topk": cfg.eval.topk,
                  "eval_image_score": cfg.eval.image_score, "eval_anomaly_map": cfg.eval.anomaly_map,
                  "eval_settings": eval_settings(cfg.eval),  # all that keys it, the second read's size resolved
                  "test_ms_per_image": 1000.0 * (time.time() - t1) / len(common_test),
                  "real_anomalies": results["real_anomalies_used_for_training"],
                  "per_defect": per_defect(raw["scores"], raw["labels"], raw["maps"], raw["masks"], common_test),
                  **image_scores(raw["scores"], raw["labels"]),
                  **pixel_pairs(eval_path, raw["maps"], raw["masks"], common_test),
                  **pro_counts(eval_path, raw["maps"], raw["masks"], common_test), "provenance": provenance(device)}
        write_json(eval_path, scored)
    row = {"dataset": ds.label, "method": f"PRNet, {shots} real anomalies", "seed": seed, **scored,
           "train_min": trained["train_min"], "train_minutes_includes": trained["train_minutes_includes"],
           # None for runs recorded before records carried it
           "train_provenance": trained.get("provenance"), "run": run_dir}
    if control is not None:
        key = short_hash({"eval": eval_settings(eval_cfg), "test": test_key(control), "control": CONTROL_SEED})
        path = os.path.join(run_dir, f"eval-control-{key}.json")  # eval-*: removed with the others on retraining

        def scored_control():
            model, cfg = model_and_config()
            metrics, raw = evaluate(model, control, cfg, device)
            return {**metrics, "images": len(control), **image_scores(raw["scores"], raw["labels"]),
                    **pixel_pairs(path, raw["maps"], raw["masks"], control),
                    **pro_counts(path, raw["maps"], raw["masks"], control), "provenance": provenance(device)}

        row.update(control_row(stored_or_made(path, scored_control, remake_incomplete=os.path.exists(ckpt))))
    return row


def control_row(scored: dict) -> dict:
    """The entries a run's row gets from its scores on the control."""
    return {CONTROL_COLUMN: scored["image_auroc"],
            "control": {k: scored[k] for k in (*COLUMNS, "images", "image_scores", "image_labels", "pixel_pairs",
                                               "pro_counts") if k in scored}}


def run_patchcore(args, ds: DataSet, seed: int, common_test, device: torch.device, control=None) -> dict:
    """The baseline fitted on the normal training images, scored on the common test set (or its stored row), and on
    the control test set when one is given (stored the same way)."""
    from torch.utils.data import DataLoader

    from patchcore import PatchCore
    from prnet.config import load_config
    from prnet.datasets.mvtec import MVTEC, format_args
    from prnet.metrics import compute_metrics
    from prnet.provenance import provenance

    settings = {"method": "patchcore", "data": ds._asdict(), "size": args.size, "seed": seed,
                "baseline": BASELINE_SETTINGS, "device": args.device}
    run_dir = run_dir_for(args, ds, "patchcore", seed, settings)
    claim_run_dir(run_dir, settings)
    fitted: list = []

    def model_and_minutes():
        """The baseline fitted on the normal training images (once) and the minutes that took."""
        if not fitted:
            # the same reader as PRNet's runs (data.format and its options from --set)
            reader = format_args(load_config(None, prnet_overrides(args, ds, 0, seed)))
            train = MVTEC(ds.root, ds.category, "train", args.size, **reader)
            t0 = time.time()
            model = PatchCore("tf_efficientnet_lite0", "package", sigma=4.0, seed=seed, device=device)
            model.fit(DataLoader(train, batch_size=16, num_workers=0))
            fitted.append((model, (time.time() - t0) / 60.0))
        return fitted[0]

    def scores_of(test):
        model, _ = model_and_minutes()
        maps, scores, labels, masks = [], [], [], []
        for batch in DataLoader(test, batch_size=16, num_workers=0):
            m, s = model.predict(batch["image"])
            maps.append(m)
            scores.append(s)
            labels.append(batch["label"].numpy())
            masks.append(batch["mask"][:, 0].numpy())
        return tuple(np.concatenate(x) for x in (scores, labels, maps, masks))

    row_path = os.path.join(run_dir, f"eval-{short_hash(test_key(common_test))}.json")
    stored = json.load(open(row_path, encoding="utf-8")) if os.path.exists(row_path) else None
    missing = incomplete(stored, run_dir) if stored is not None else None
    if missing:
        log.info("%s was stored without its %s: fitting and scoring the baseline again", row_path, missing)
        stored = None
    if stored is not None:
        log.info("reusing the baseline's scores in %s", row_path)
        row = {**stored, "run": run_dir}  # where it lies now
    else:
        _, train_min = model_and_minutes()
        t1 = time.time()
        scores, labels, maps, masks = scores_of(common_test)
        test_ms = 1000.0 * (time.time() - t1) / len(common_test)
        metrics = compute_metrics(scores, labels, maps, masks)
        row = {"dataset": ds.label, "method": BASELINE, "seed": seed, **{k: float(v) for k, v in metrics.items()},
               "train_min": train_min, "test_ms_per_image": test_ms,
               "per_defect": per_defect(scores, labels, maps, masks, common_test), "baseline": BASELINE_SETTINGS,
               **image_scores(scores, labels), **pixel_pairs(row_path, maps, masks, common_test),
               **pro_counts(row_path, maps, masks, common_test), "provenance": provenance(device), "run": run_dir}
        write_json(row_path, row)
    if control is not None:
        path = os.path.join(run_dir, f"eval-control-{short_hash({'test': test_key(control), 'control': CONTROL_SEED})}"
                                     ".json")

        def scored_control():
            scores, labels, maps, masks = scores_of(control)
            metrics = compute_metrics(scores, labels, maps, masks)
            return {**{k: float(v) for k, v in metrics.items()}, "images": len(control),
                    **image_scores(scores, labels), **pixel_pairs(path, maps, masks, control),
                    **pro_counts(path, maps, masks, control), "provenance": provenance(device)}

        row.update(control_row(stored_or_made(path, scored_control, remake_incomplete=True)))
    return row


def image_scores(scores, labels) -> dict:
    """The per-image scores and labels a record keeps, in the common test set's order (test_key's names), so that
    two methods can be compared image by image (paired_leads)."""
    return {"image_scores": [float(v) for v in np.asarray(scores).reshape(-1)],
            "image_labels": [int(v) for v in np.asarray(labels).reshape(-1)]}


def test_key(test) -> dict:
    """What a stored evaluation was made on: the test images (by name) and their size."""
    return {"images": [s.name for s in test.samples], "size": list(test.hw)}


def common_test_set(args, ds: DataSet, shots: list[int]):
    """The test split of `ds` minus the real anomalies of every PRNet method (the union of their few-shot draws)."""
    from prnet.config import load_config
    from prnet.datasets import build_test_dataset, few_shot_names

    excluded: list[str] = []
    for n in sorted(set(shots)):
        if n > 0:
            excluded += [x for x in few_shot_names(load_config(None, prnet_overrides(args, ds, n, 0)), ds.category)
                         if x not in excluded]
    ov = prnet_overrides(args, ds, len(excluded), 0) + ([f"data.few_shot={value(excluded)}"] if excluded else [])
    return build_test_dataset(load_config(None, ov), ds.category)


def control_test_set(args, ds: DataSet, common_test):
    """The control of `ds` (shortcut_check.write_control: each defect's pixels in a normal test image), written
    once under <out>/controls/<data set>/ and checked against its source when it exists, as a test set without the
    real anomalies of the common test set (matched by file stem: the control's images are PNGs)."""
    from prnet.config import load_config
    from prnet.datasets.mvtec import MVTEC, scan_split
    from shortcut_check import write_control  # here: shortcut_check imports this module

    if load_config(None, prnet_overrides(args, ds, 0, 0)).data.format != "mvtec":
        raise SystemExit(f"--control: {ds.label} is not in the MVTec layout (data.format); the control is written "
                         "in that layout from one")
    root = os.path.join(os.path.abspath(args.out), "controls", ds.label.replace("/", "__"))
    source = {"data": os.path.join(ds.root, ds.category), "seed": CONTROL_SEED,
              "test_images": [s.name for s in scan_split(ds.root, ds.category, "test")]}
    info = os.path.join(root, "control.json")
    if os.path.exists(info):
        if json.load(open(info, encoding="utf-8")) != source:
            raise SystemExit(f"{root}: a control written from other data than {source['data']} (or other test "
                             f"images); remove it to write it again")
    elif os.path.exists(root):
        raise SystemExit(f"{root}: a folder without control.json, not a control this script wrote; remove it")
    else:
        partial = root + ".partial"  # an interrupted write leaves only this, which the next run starts over
        if os.path.exists(partial):
            shutil.rmtree(partial)
        log.info("%s: writing the control (each defect pasted into a normal test image) to %s", ds.label, root)
        write_control(ds.root, ds.category, partial, seed=CONTROL_SEED)
        write_json(os.path.join(partial, "control.json"), source)
        os.rename(partial, root)
    stems = {os.path.splitext(n)[0] for n in common_test.excluded}
    left_out = [s.name for s in scan_split(root, ds.category, "test") if os.path.splitext(s.name)[0] in stems]
    return MVTEC(root, ds.category, "test", args.size, exclude=left_out)


def per_defect(scores, labels, maps, masks, test) -> dict:
    """Metrics of each defect type against all normal test images: {defect: {image_auroc, pixel_auroc, ...}}."""
    from prnet.metrics import compute_metrics

    defects = np.array([s.defect for s in test.samples])
    out = {}
    for d in sorted(set(defects) - {"good"}):
        sel = (defects == "good") | (defects == d)
        m = compute_metrics(np.asarray(scores)[sel], np.asarray(labels)[sel], np.asarray(maps)[sel],
                            np.asarray(masks)[sel])
        out[d] = {"images": int((defects == d).sum()), **{k: float(v) for k, v in m.items()}}
    return out


def spread(values) -> dict:
    """mean, std (sample standard deviation, ddof 1; 0 for one value), min and max of `values`."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "min": float(v.min()),
            "max": float(v.max())}


def aggregate(rows: list[dict]) -> list[dict]:
    """One entry per (data set, method), in the order first seen: the seeds, and mean, std (sample, ddof 1; 0 for
    one seed), min and max of each metric, of train_min and test_ms_per_image."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["method"]), []).append(r)
    out = []
    for (dataset, method), rs in groups.items():
        entry = {"dataset": dataset, "method": method, "seeds": [r["seed"] for r in rs]}
        for k in (*COLUMNS, "train_min", "test_ms_per_image"):
            entry[k] = spread([r[k] for r in rs])
        if all(CONTROL_COLUMN in r for r in rs):
            entry[CONTROL_COLUMN] = spread([r[CONTROL_COLUMN] for r in rs])
        defects = sorted({d for r in rs for d in r.get("per_defect", {})})
        entry["per_defect"] = {d: {k: float(np.mean([r["per_defect"][d][k] for r in rs if d in r["per_defect"]]))
                                   for k in ("images", "image_auroc", "pixel_auroc")} for d in defects}
        out.append(entry)
    return out


def paired_leads(rows: list[dict], resamples: int = LEAD_RESAMPLES, level: float = LEAD_LEVEL) -> list[dict]:
    """Each PRNet method's image AUROC, pixel AUROC and AUPRO lead over the baseline per data set (`metric`), on the
    test split (`on`: "test") and, where the rows were scored there, on the control ("control"): the mean over the
    seeds both ran of (PRNet − baseline of the same seed), with its interval over the images (a paired, stratified
    bootstrap, the same image draw for every seed, both methods and all metrics: prnet.metrics.
    paired_auroc_difference, paired_pixel_auroc_difference from the pixel counts each record keeps beside it, and
    paired_aupro_difference from its AUPRO counts). The AUPRO lead, interval and point alike, is that of the
    counts' grid of thresholds; `grid_error` is the largest difference between a run's AUPRO on the grid and its
    exact AUPRO where the record holds the exact one for the same images. An entry without what it needs for every
    seed (records stored before they kept it, without a checkpoint to score again) says so in `missing` instead;
    there are no pixel entries where the images have no pixel metric."""
    from prnet.metrics import paired_auroc_difference

    parts = {"test": lambda r: r, "control": lambda r: r.get("control")}
    baseline = {(r["dataset"], r["seed"]): r for r in rows if r["method"] == BASELINE}
    out = []
    for dataset, method in dict.fromkeys((r["dataset"], r["method"]) for r in rows if r["method"] != BASELINE):
        pairs = [(r, baseline[(dataset, r["seed"])]) for r in rows
                 if (r["dataset"], r["method"]) == (dataset, method) and (dataset, r["seed"]) in baseline]
        for on, part in parts.items():
            if not pairs or any(part(r) is None for pair in pairs for r in pair):
                continue
            scored = [(part(r), part(b)) for r, b in pairs]
            head = {"dataset": dataset, "method": method, "on": on, "seeds": [r["seed"] for r, _ in pairs]}
            entry = {**head, "metric": "image_auroc"}
            without = [r["run"] for pair, s in zip(pairs, scored) for r, x in zip(pair, s) if "image_scores" not in x]
            if without:
                entry["missing"] = "no per-image scores in the stored records of " + ", ".join(without)
            elif any(x["image_labels"] != scored[0][0]["image_labels"] for s in scored for x in s):
                raise ValueError(f"paired_leads: the runs of {dataset} were scored on different {on} images")
            else:
                entry.update(paired_auroc_difference([a["image_scores"] for a, _ in scored],
                                                     [b["image_scores"] for _, b in scored],
                                                     scored[0][0]["image_labels"], resamples=resamples, level=level))
            out.append(entry)
            if "missing" in entry:
                continue  # no per-image labels to draw by
            if all(x.get("pixel_pairs", "") is not None for s in scored for x in s):  # None: no pixel metric
                out.append(pixel_lead(head, pairs, scored, resamples, level))
            if all(x.get("pro_counts", "") is not None for s in scored for x in s):
                out.append(aupro_lead(head, pairs, scored, resamples, level))
    return out


def counted_lead(head: dict, pairs, scored, metric: str, what: str, load, paired_difference, resamples: int,
                 level: float) -> tuple[dict, list | None]:
    """paired_leads' entry of one data set, method, test set and pixel metric, from the counts `load(run, record)`
    gives for each run (`what` they are, for the messages) and `paired_difference` (prnet.metrics); also the counts,
    None where some are missing."""
    entry = {**head, "metric": metric}
    counts = [[load(r["run"], x) for r, x in zip(pair, s)] for pair, s in zip(pairs, scored)]
    without = [r["run"] for pair, cs in zip(pairs, counts) for r, c in zip(pair, cs) if c is None]
    if without:
        entry["missing"] = f"no {what} beside the stored records of " + ", ".join(without)
        return entry, None
    if any(list(c["names"]) != list(counts[0][0]["names"]) for cs in counts for c in cs):
        raise ValueError(f"paired_leads: the {what} of {head['dataset']} were made on different {head['on']} images")
    entry.update(paired_difference([a for a, _ in counts], [b for _, b in counts], scored[0][0]["image_labels"],
                                   resamples=resamples, level=level))
    return entry, counts


def pixel_lead(head: dict, pairs, scored, resamples: int, level: float) -> dict:
    """paired_leads' pixel AUROC entry of one data set, method and test set."""
    from prnet.metrics import paired_pixel_auroc_difference

    return counted_lead(head, pairs, scored, "pixel_auroc", "pixel counts", pixel_counts,
                        paired_pixel_auroc_difference, resamples, level)[0]


def aupro_lead(head: dict, pairs, scored, resamples: int, level: float) -> dict:
    """paired_leads' AUPRO entry of one data set, method and test set, with its grid error where known."""
    from prnet.metrics import paired_aupro_difference, pooled_aupro

    entry, counts = counted_lead(head, pairs, scored, "aupro", "AUPRO counts", aupro_counts_of,
                                 paired_aupro_difference, resamples, level)
    if counts is not None:
        exact = [abs(pooled_aupro(c) - x["aupro"]) for cs, s in zip(counts, scored) for c, x in zip(cs, s)
                 if "aupro" in x and "aupro_counts" not in x]  # in-memory counts are of some of the images only
        entry["grid_error"] = float(max(exact)) if exact else None
    return entry


def pixel_counts(run: str, scored: dict) -> dict | None:
    """The pixel counts of a stored evaluation: given in memory (`pixel_counts`, e.g. those of some of its images:
    prnet.metrics.subset_pixel_counts), or read from the file its `pixel_pairs` names in the run's folder; None
    where neither is there."""
    if "pixel_counts" in scored:
        return scored["pixel_counts"]
    path = os.path.join(run, scored["pixel_pairs"]) if scored.get("pixel_pairs") else None
    return dict(np.load(path)) if path and os.path.isfile(path) else None


def aupro_counts_of(run: str, scored: dict) -> dict | None:
    """The AUPRO counts of a stored evaluation: given in memory (`aupro_counts`, e.g. those of some of its images:
    prnet.metrics.subset_aupro_counts), or read from the file its `pro_counts` names in the run's folder (with the
    images' `names`); None where neither is there."""
    if "aupro_counts" in scored:
        return scored["aupro_counts"]
    path = os.path.join(run, scored["pro_counts"]) if scored.get("pro_counts") else None
    if not (path and os.path.isfile(path)):
        return None
    stored = dict(np.load(path))
    return {"names": stored["names"], **{k[len("pro_"):]: v for k, v in stored.items() if k.startswith("pro_")}}


def markdown_leads(leads: list[dict]) -> str:
    """The image AUROC, pixel AUROC and AUPRO leads over the baseline, one row per data set, PRNet method, metric and
    test set (an AUPRO row with its grid error where known)."""
    lines = ["| data set | method | metric | scored on | seeds | lead over the baseline | interval over the images |",
             "|:---|:---|:---|:---|:---|---:|:---|"]
    for e in leads:
        seeds, on = ",".join(map(str, e["seeds"])), LEAD_PARTS[e.get("on", "test")]
        metric = LEAD_METRICS[e.get("metric", "image_auroc")]
        if "missing" in e:
            lines.append(f"| {e['dataset']} | {e['method']} | {metric} | {on} | {seeds} | n/a | {e['missing']} |")
        else:
            grid = f"; grid error {e['grid_error']:.5f}" if e.get("grid_error") is not None else ""
            lines.append(f"| {e['dataset']} | {e['method']} | {metric} | {on} | {seeds} | {e['difference']:+.4f} | "
                         f"[{e['low']:+.4f}, {e['high']:+.4f}] ({100 * e['level']:g} %{grid}) |")
    return "\n".join(lines)


def markdown(summary: list[dict]) -> str:
    """The results table: mean ± std over the seeds (just the mean for one seed) per data set and method; with a
    column of the image AUROC on the control where any entry has one."""
    keys, headers = list(COLUMNS), list(HEADERS)
    if any(CONTROL_COLUMN in e for e in summary):
        keys.append(CONTROL_COLUMN)
        headers.append("control image AUROC")
    head = "| data set | method | seeds | " + " | ".join(headers) + " | train min | test ms/image |"
    lines = [head, "|:---|:---|:---|" + "---:|" * (len(keys) + 2)]
    for e in summary:
        n = len(e["seeds"])
        cells = [(f"{e[k]['mean']:.3f}" + (f" ± {e[k]['std']:.3f}" if n > 1 else "")) if k in e else "n/a"
                 for k in keys]
        seeds = ",".join(map(str, e["seeds"]))
        lines.append(f"| {e['dataset']} | {e['method']} | {seeds} | " + " | ".join(cells)
                     + f" | {e['train_min']['mean']:.1f} | {e['test_ms_per_image']['mean']:.0f} |")
    return "\n".join(lines)


def markdown_per_defect(summary: list[dict]) -> str:
    """Image AUROC / pixel AUROC of each defect type (against all normal test images, mean over the seeds), one
    table per data set, one row per method."""
    tables = []
    for dataset in dict.fromkeys(e["dataset"] for e in summary):
        entries = [e for e in summary if e["dataset"] == dataset]
        defects = sorted({d for e in entries for d in e["per_defect"]})
        counts = {d: int(e["per_defect"][d]["images"]) for e in entries for d in e["per_defect"]}
        lines = [f"| {dataset} | " + " | ".join(f"{d} ({counts[d]})" for d in defects) + " |",
                 "|:---|" + "---:|" * len(defects)]
        for e in entries:
            pd = e["per_defect"]
            cells = [f"{pd[d]['image_auroc']:.3f} / {pd[d]['pixel_auroc']:.3f}" if d in pd else "" for d in defects]
            lines.append(f"| {e['method']} | " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def report(summary: list[dict], seeds: list[int], leads: list[dict] | None = None) -> str:
    spread = "mean ± sample standard deviation (ddof 1) over the seeds" if len(seeds) > 1 else "one seed"
    lead_table = ("\n\nImage AUROC, pixel AUROC and AUPRO of each PRNet method minus the baseline's of the same seed, "
                  "mean over the seeds, with a paired bootstrap interval over the images scored (normal and defective "
                  f"images drawn again {LEAD_RESAMPLES} times; how much the lead depends on which images were tested, "
                  "not on the seeds), on the test split and, with --control, on the control (AUPRO on a grid of "
                  "thresholds: `grid error` is its largest distance from a run's exact AUPRO):\n\n"
                  + markdown_leads(leads)) if leads else ""
    control = (" Control image AUROC: on the test split's defects pasted into its normal test images (only the "
               "defects differ; benchmarks/shortcut_check.py)." if any(CONTROL_COLUMN in e for e in summary) else "")
    return (markdown(summary) + f"\n\n({spread}; the baseline runs per seed: its coreset draws depend on the seed, "
            f"same seed, same result.{control})\n\nPer defect type, image AUROC / pixel AUROC (each type against "
            "every normal test image, mean over the seeds; test images per type in brackets):\n\n"
            + markdown_per_defect(summary) + lead_table)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, nargs="+", action="extend",
                   help="category folders in the MVTec AD layout, or roots holding them")
    p.add_argument("--categories", type=lambda s: [c for c in s.split(",") if c],
                   help="comma-separated categories of every --data root (default: its subfolders with train/)")
    p.add_argument("--dtd", help="DTD folder (textures); none: procedural fallback")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=parse_size, default=256, help="256 or H,W (multiples of 32)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--widths", default="[32, 64, 128]")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto ... for PRNet and the baseline")
    p.add_argument("--seeds", "--seed", dest="seeds", type=parse_seeds, default=[0], help="e.g. 0,1,2")
    p.add_argument("--methods", default="prnet10,prnet0,patchcore",
                   help="comma-separated: prnet<real anomalies> (prnet10, prnet0, ...) and/or patchcore")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides for the PRNet runs (repeatable)")
    p.add_argument("--rescore", action="store_true",
                   help="no PRNet training: evaluate the finished runs of these settings with the eval settings "
                        "given now (e.g. --set eval.sigma=4)")
    p.add_argument("--control", action="store_true",
                   help="also score every run on a control of each data set: its defects pasted into its normal "
                        "test images (benchmarks/shortcut_check.py), a column 'control image AUROC'")
    args = p.parse_args(argv)

    from prnet.config import ConfigError
    from prnet.datasets.mvtec import DatasetError
    from prnet.provenance import git_state, provenance
    from prnet.utils import resolve_device, setup_logging

    setup_logging()
    methods = [m for m in args.methods.split(",") if m]
    shots = [method_shots(m) for m in methods]
    datasets = find_datasets(args.data, args.categories)
    device = resolve_device(args.device)
    os.makedirs(args.out, exist_ok=True)
    code = git_state()
    if code["git_modified"]:
        log.warning("uncommitted changes to %s: the runs' records name the commit and a hash of the changes, not "
                    "the changes themselves", ", ".join(code["git_modified"]))
    try:  # every data set readable and every override valid before any training
        tests = {ds.label: common_test_set(args, ds, [n for n in shots if n is not None]) for ds in datasets}
    except (ConfigError, DatasetError) as e:
        raise SystemExit(f"error: {e}") from None
    for ds in datasets:
        test = tests[ds.label]
        log.info("%s: common test set of %d images (%d excluded: %s)", ds.label, len(test), len(test.excluded),
                 ", ".join(test.excluded))
    try:
        controls = {ds.label: control_test_set(args, ds, tests[ds.label]) if args.control else None
                    for ds in datasets}
    except (ConfigError, DatasetError, ValueError) as e:  # ValueError: no normal test image to paste into
        raise SystemExit(f"error: --control: {e}") from None
    rows = []
    t0 = time.time()
    for ds in datasets:
        for seed in args.seeds:
            torch.manual_seed(seed)
            for method, n in zip(methods, shots):
                if n is None:
                    rows.append(run_patchcore(args, ds, seed, tests[ds.label], device, controls[ds.label]))
                else:
                    rows.append(run_prnet(args, ds, n, seed, tests[ds.label], device, controls[ds.label]))
                log.info("%s, seed %d, %s done after %.1f min", ds.label, seed, rows[-1]["method"],
                         (time.time() - t0) / 60)
    other_code = records_of_other_code(rows) if code["git_commit"] is not None else []  # outside a checkout: unknown
    if other_code:
        first = other_code[0]
        log.warning("%d records reused from code that differs from this checkout's (e.g. the %s of %s, commit %s: %s); "
                    "they stay as they were made: delete a run's folder to train it again, its eval-*.json to score "
                    "it again (all in real_data.json, records_of_other_code)", len(other_code), first["record"],
                    first["run"], first["commit"], ", ".join(first["files"] or ["not in this clone"]))
    summary = aggregate(rows)
    leads = paired_leads(rows)
    table = report(summary, args.seeds, leads)
    result = {"data": [ds._asdict() for ds in datasets], "dtd": args.dtd, "size": args.size, "epochs": args.epochs,
              "batch": args.batch, "lr": args.lr, "head_widths": args.widths, "seeds": args.seeds,
              "methods": methods, "overrides": args.set, "device": args.device, "rescore": args.rescore,
              "spread": "std: sample standard deviation (ddof 1) over the seeds; min, max",
              "common_test": {ds.label: {"images": len(tests[ds.label]), "excluded": list(tests[ds.label].excluded)}
                              for ds in datasets},
              "control": {ds.label: {"folder": controls[ds.label].root, "images": len(controls[ds.label]),
                                     "excluded": list(controls[ds.label].excluded)}
                          for ds in datasets if controls[ds.label] is not None},
              "total_minutes": (time.time() - t0) / 60.0, "threads": torch.get_num_threads(),
              "provenance": provenance(device), "records_of_other_code": other_code, "rows": rows,
              "summary": summary, "leads": leads, "table": table}
    write_json(os.path.join(args.out, "real_data_rescore.json" if args.rescore else "real_data.json"), result)
    print(f"\n{table}\n\n(total {result['total_minutes']:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
