"""benchmarks/real_data.py: per-defect-type metrics and the printed tables."""
import os
from types import SimpleNamespace

import numpy as np

from real_data import markdown, markdown_per_defect, per_defect
from prnet.metrics import compute_metrics


def test_per_defect_scores_each_type_against_all_normals():
    rng = np.random.default_rng(0)
    defects = ["good"] * 6 + ["crack"] * 3 + ["hole"] * 3
    labels = np.array([int(d != "good") for d in defects])
    masks = np.zeros((12, 16, 16), np.uint8)
    masks[6:, 4:8, 4:8] = 1
    maps = rng.random((12, 16, 16)).astype(np.float32) * 0.5
    maps[6:9] += masks[6:9] * 0.6  # cracks are found, holes are not
    scores = maps.reshape(12, -1).max(1)
    test = SimpleNamespace(samples=[SimpleNamespace(defect=d) for d in defects])
    out = per_defect(scores, labels, maps, masks, test)
    assert set(out) == {"crack", "hole"} and out["crack"]["images"] == 3
    assert out["crack"]["image_auroc"] == 1.0 and out["crack"]["pixel_auroc"] == 1.0
    assert out["hole"]["pixel_auroc"] < 0.9
    sel = np.array([d in ("good", "hole") for d in defects])
    assert out["hole"] == {"images": 3, **compute_metrics(scores[sel], labels[sel], maps[sel], masks[sel])}

    rows = [{"method": "m", "image_auroc": 0.9, "image_ap": 0.8, "pixel_auroc": 0.7, "pixel_ap": 0.6, "aupro": 0.5,
             "train_min": 1.25, "test_ms_per_image": 40.0, "per_defect": out}]
    assert "| m | 0.900 | 0.800 | 0.700 | 0.600 | 0.500 | 1.2 | 40 |" in markdown(rows)
    table = markdown_per_defect(rows)
    assert "| method | crack (3) | hole (3) |" in table and "| m | 1.000 / 1.000 | " in table
