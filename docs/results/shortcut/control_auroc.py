"""Image AUROC of trained PRNet runs on a control data set written by `benchmarks/shortcut_check.py --write-control`
(each defect's pixels pasted into a normal test image: the defective and normal images differ only by the defects),
with the runs' own image score (prnet.load_detector, the stored settings, so every default read as in evaluation),
and next to it the PatchCore-style baseline of real_data.py (its settings, the run's seed and image size, fitted on
the control's linked training images) on the same images.
A run's few-shot anomalies (results.json, `real_anomalies_used_for_training`) are left out, as their controls hold
defects the run was trained on; the normal test images are the originals.

    PYTHONPATH=.:benchmarks python docs/results/shortcut/control_auroc.py --control CTL/<category> --runs RUN ... \
        [--out F.json]

RUN: a real_data.py run folder (holding <category>/last.pt and <category>/results.json).
"""
import argparse
import json
import os
import sys

from sklearn.metrics import roc_auc_score

import prnet
from patchcore import PatchCore
from prnet.datasets.mvtec import MVTEC, scan_split
from torch.utils.data import DataLoader


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--control", required=True, help="the control's category folder")
    ap.add_argument("--runs", nargs="+", required=True)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    root, category = os.path.split(os.path.normpath(args.control))
    names = [s.name for s in scan_split(root, category, "test")]
    out = {"control": args.control, "runs": {}}
    for run in args.runs:
        results = json.load(open(os.path.join(run, category, "results.json")))
        cfg, seen = results["config"], {os.path.splitext(n)[0] for n in results["real_anomalies_used_for_training"]}
        left_out = [n for n in names if os.path.splitext(n)[0] in seen]
        test_set = MVTEC(root, category, "test", cfg["data"]["image_size"], exclude=left_out)
        labels = [s.label for s in test_set.samples]
        detector = prnet.load_detector(os.path.join(run, category, "last.pt"), device="cpu")
        scores = [r.score for r in detector.predict([s.path for s in test_set.samples], batch_size=16)]
        base = PatchCore("tf_efficientnet_lite0", "package", sigma=4.0, seed=cfg["seed"])
        base.fit(DataLoader(MVTEC(root, category, "train", cfg["data"]["image_size"]), batch_size=16, num_workers=0))
        b_scores = [float(x) for b in DataLoader(test_set, batch_size=16, num_workers=0) for x in base.predict(b)[1]]
        auroc, b_auroc = float(roc_auc_score(labels, scores)), float(roc_auc_score(labels, b_scores))
        out["runs"][run] = {"image_auroc": auroc, "baseline_image_auroc": b_auroc, "normal": labels.count(0),
                            "defective": sum(labels), "left_out": len(left_out)}
        print(f"{run}: control image AUROC PRNet {auroc:.4f}, baseline {b_auroc:.4f} ({sum(labels)} defective, "
              f"{labels.count(0)} normal, {len(left_out)} left out)", flush=True)
    if args.out:
        json.dump(out, open(args.out, "w"), indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
