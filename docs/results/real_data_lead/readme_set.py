"""The image AUROC, pixel AUROC and AUPRO leads of a `real_data.py` record, recomputed on the test images of another
record (the README's).

A record of `real_data.py --methods prnet0,patchcore` scores every test image; the README's record, made with
prnet10 in the same run, scores the test split minus the 10-shot runs' real anomalies (its `common_test` excluded
list, which must hold the record's own). Runs whose epoch fingerprints agree are the same weights, so their
per-image scores on the README's images are the README runs' scores. This script:

1. rebuilds the names of the record's test images (and of its control's) in the order its per-image scores are kept;
2. keeps those the reference record scored (the control: by file stem, as `real_data.py` matches them);
3. checks, per run, that the image AUROC on the kept images equals the reference record's row of the same data set,
   method and seed (the runs reproduce; a failure stops the script), and the pixel AUROC too where the record's
   pixel counts are there (`eval-*.pixels.npz` beside its runs' records; taken for the kept images exactly), and the
   AUPRO on the grid of thresholds of the AUPRO counts (`eval-*.pro.npz`) against the reference's exact AUPRO,
   within AUPRO_GRID_TOLERANCE (the distance is recorded in `checks`);
4. gives each PRNet method's image AUROC, pixel AUROC and AUPRO lead over the baseline on them, mean over the seeds
   with the paired bootstrap interval over the images (`real_data.paired_leads`; a lead n/a without its counts).

    PYTHONPATH=.:benchmarks python docs/results/real_data_lead/readme_set.py --record OUT/real_data.json \
        --reference docs/results/real_data_control/real_data.json --data DATA --out readme_set.json

DATA: the folder holding the record's categories. The control's images are read from the folder the record names
(`--record-out OUT` stands for `$OUT` in a committed record; its runs' folders are read there too). Nothing is
trained or scored again.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from prnet.datasets.mvtec import MVTEC
from prnet.metrics import image_auroc, pooled_aupro, pooled_pixel_auroc, subset_aupro_counts, subset_pixel_counts
from real_data import BASELINE, aupro_counts_of, markdown_leads, paired_leads, pixel_counts, write_json

AUPRO_GRID_TOLERANCE = 1e-3  # a run's AUPRO on the grid against the reference's exact one (the grid's step is 2.5e-4)


def kept(names: list[str], excluded: list[str], by_stem: bool) -> np.ndarray:
    """Indices of `names` not in `excluded` (compared by file stem when `by_stem`)."""
    key = (lambda n: os.path.splitext(n)[0]) if by_stem else (lambda n: n)
    out = {key(n) for n in excluded}
    return np.array([i for i, n in enumerate(names) if key(n) not in out], dtype=int)


def subset(scored: dict, idx: np.ndarray, run: str, names: list[str]) -> dict:
    """The per-image scores of the kept images, and their pixel and AUPRO counts where the run's folder has them."""
    out = {"image_scores": [scored["image_scores"][i] for i in idx],
           "image_labels": [scored["image_labels"][i] for i in idx]}
    counts = pixel_counts(run, scored)
    if counts is not None:
        if counts["names"].tolist() != names:
            raise SystemExit(f"{run}: its pixel counts were made on other images than its scores")
        out["pixel_counts"] = subset_pixel_counts(counts, idx)
    pro = aupro_counts_of(run, scored)
    if pro is not None:
        if pro["names"].tolist() != names:
            raise SystemExit(f"{run}: its AUPRO counts were made on other images than its scores")
        out["aupro_counts"] = {"names": pro["names"][idx], **subset_aupro_counts(pro, idx)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--record", required=True, help="real_data.json of the runs to score")
    p.add_argument("--reference", required=True, help="real_data.json whose test images are kept")
    p.add_argument("--data", required=True, help="the folder holding the record's categories")
    p.add_argument("--record-out", help="the record's --out folder, where its control folder reads $OUT")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    record = json.load(open(args.record, encoding="utf-8"))
    reference = json.load(open(args.reference, encoding="utf-8"))
    size = record["size"]
    hw = tuple(size) if isinstance(size, list) else (size, size)
    rows, checks = [], []
    for ds in record["data"]:
        label, category = ds["label"], ds["category"]
        left_out = record["common_test"][label]["excluded"]
        excluded = reference["common_test"][label]["excluded"]
        if not set(left_out) <= set(excluded):
            raise SystemExit(f"{args.record}: {label}'s test set leaves out images the reference scores: "
                             f"{sorted(set(left_out) - set(excluded))}")
        names = [s.name for s in MVTEC(args.data, category, "test", hw, exclude=left_out).samples]
        idx = {"test": kept(names, excluded, by_stem=False)}
        if label in record.get("control", {}):
            control_root = record["control"][label]["folder"]
            if control_root.startswith("$OUT"):  # a committed record: its output folder is given
                if not args.record_out:
                    raise SystemExit(f"{args.record}: its control folder is {control_root}; name $OUT with "
                                     "--record-out")
                control_root = args.record_out + control_root[len("$OUT"):]
            control_names = [s.name for s in MVTEC(control_root, category, "test", hw).samples]
            control_names = [control_names[i] for i in kept(control_names, left_out, by_stem=True)]
            idx["control"] = kept(control_names, excluded, by_stem=True)
        for r in (r for r in record["rows"] if r["dataset"] == label):
            run = r["run"]
            if run.startswith("$OUT"):
                run = (args.record_out or "$OUT") + run[len("$OUT"):]
            if len(r["image_scores"]) != len(names):
                raise SystemExit(f"{args.record}: {label} seed {r['seed']} {r['method']}: {len(r['image_scores'])} "
                                 f"scores for {len(names)} test images under {args.data}")
            row = {"dataset": label, "method": r["method"], "seed": r["seed"], "run": r["run"],
                   **subset(r, idx["test"], run, names)}
            if "control" in idx and r.get("control"):
                if len(r["control"]["image_scores"]) != len(control_names):
                    raise SystemExit(f"{args.record}: {label} seed {r['seed']} {r['method']}: "
                                     f"{len(r['control']['image_scores'])} control scores for {len(control_names)} "
                                     f"control images under {control_root}")
                row["control"] = subset(r["control"], idx["control"], run, control_names)
            rows.append(row)
            ref = [x for x in reference["rows"]
                   if (x["dataset"], x["method"], x["seed"]) == (label, r["method"], r["seed"])]
            if not ref:
                raise SystemExit(f"{args.reference}: no row for {label} seed {r['seed']} {r['method']} to check the "
                                 "run against")
            for on in ("test", "control"):
                part = row if on == "test" else row.get("control")
                if part is None:
                    continue
                reference_part = ref[0] if on == "test" else (ref[0].get("control") or {})
                check = {"dataset": label, "method": r["method"], "seed": r["seed"], "on": on,
                         "images": len(part["image_scores"])}
                got = {"image_auroc": image_auroc(np.array(part["image_scores"]), np.array(part["image_labels"]))}
                if "pixel_counts" in part:
                    got["pixel_auroc"] = pooled_pixel_auroc(part["pixel_counts"])
                if "aupro_counts" in part:
                    got["aupro"] = pooled_aupro(part["aupro_counts"])
                for metric, value in got.items():
                    want = reference_part.get(metric)
                    check.update({metric: value, f"reference_{metric}": want})
                    tolerance = AUPRO_GRID_TOLERANCE if metric == "aupro" else 1e-9
                    if want is None or abs(value - want) > tolerance:
                        raise SystemExit(f"{label} seed {r['seed']} {r['method']} ({on}): {metric} {value:.6f} on "
                                         f"the reference's images, the reference has {want}: not the same runs")
                checks.append(check)
    leads = paired_leads(rows)
    result = {"record": os.path.basename(args.record), "reference": os.path.basename(args.reference),
              "baseline": BASELINE, "checks": checks, "leads": leads, "table": markdown_leads(leads)}
    write_json(args.out, result)
    for c in checks:
        pixel = f", pixel AUROC {c['pixel_auroc']:.4f}" if "pixel_auroc" in c else ""
        if "aupro" in c:
            pixel += f", AUPRO on the grid {c['aupro']:.4f} (exact {c['reference_aupro']:.4f})"
        print(f"{c['dataset']} {c['method']} seed {c['seed']} {c['on']}: image AUROC {c['image_auroc']:.4f}{pixel} on "
              f"{c['images']} images = the reference's")
    print(f"\n{result['table']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
