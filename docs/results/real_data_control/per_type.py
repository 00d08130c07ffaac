"""The README's Magnetic Tile runs per defect type: each method's image AUROC / pixel AUROC / AUPRO on each type's
defective test images against all normal test images (`per_defect` of real_data.json's rows), mean over the seeds,
and PRNet minus the baseline. Test figures read after every decision; nothing is chosen on them.

    python docs/results/real_data_control/per_type.py [real_data.json] [--data magnetic_tile]
"""
import json
import os
import sys

import numpy as np

METRICS = ("image_auroc", "pixel_auroc", "aupro")
BASELINE = "PatchCore-style baseline"


def per_type(rows: list, dataset: str) -> dict:
    """{method: {type: {metric: mean over the seeds, 'images': n, 'seeds': k}}}."""
    out: dict = {}
    for r in rows:
        if r["dataset"] != dataset:
            continue
        for t, v in r["per_defect"].items():
            cell = out.setdefault(r["method"], {}).setdefault(t, {"images": v["images"], "values": []})
            cell["values"].append([v[k] for k in METRICS])
    return {m: {t: {**dict(zip(METRICS, np.mean(c["values"], axis=0).tolist())), "images": c["images"],
                    "seeds": len(c["values"])} for t, c in sorted(types.items())} for m, types in out.items()}


def main(argv) -> int:
    data = "magnetic_tile"
    if "--data" in argv:
        i = argv.index("--data")
        data, argv = argv[i + 1], argv[:i] + argv[i + 2:]
    path = argv[0] if argv else os.path.join(os.path.dirname(os.path.abspath(__file__)), "real_data.json")
    with open(path) as f:
        table = per_type(json.load(f)["rows"], data)
    types = list(next(iter(table.values())))
    print("| method | " + " | ".join(f"{t} ({table[BASELINE][t]['images']})" for t in types) + " |")
    print("|:---|" + "---:|" * len(types))
    for m, cells in table.items():
        print(f"| {m} | " + " | ".join(" / ".join(f"{cells[t][k]:.3f}" for k in METRICS) for t in types) + " |")
    for m, cells in table.items():
        if m != BASELINE:
            print(f"| {m} − baseline | " + " | ".join(
                " / ".join(f"{cells[t][k] - table[BASELINE][t][k]:+.3f}".replace("-", "−") for k in METRICS)
                for t in types) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
