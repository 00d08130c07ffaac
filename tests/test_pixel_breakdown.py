"""benchmarks/pixel_breakdown.py: the pooled pixel AUROC split by where its normal pixels come from."""
import numpy as np
import pytest

from pixel_breakdown import breakdown
from prnet.metrics import pixel_auroc


def _split():
    """Two normal images, two defective ones; every defect pixel 0.9; normal images' pixels 0.1; the defective
    images' normal pixels 0.95 in the first (its whole surface scored high), 0.1 in the second."""
    masks = np.zeros((4, 4, 4), np.uint8)
    masks[2, :2, :2] = masks[3, :2, :2] = 1
    maps = np.full((4, 4, 4), 0.1, np.float32)
    maps[2] = 0.95
    maps[masks.astype(bool)] = 0.9
    return maps, masks, ["good", "good", "crack", "uneven"]


def test_breakdown_separates_normal_images_from_defect_backgrounds():
    maps, masks, defects = _split()
    r = breakdown(maps, masks, defects)
    assert r["vs_normal_images"] == 1.0
    assert r["vs_defect_backgrounds"] == pytest.approx(12 / 24)  # below the 12 background pixels at 0.95
    assert r["pooled"] == pytest.approx(pixel_auroc(maps, masks))
    assert r["background_above_q99"] == pytest.approx(12 / 24)
    assert r["per_type"]["crack"]["background_above_q99"] == 1.0
    uneven = r["per_type"]["uneven"]
    assert (uneven["vs_normal_images"], uneven["background_above_q99"], uneven["defect_pixels"]) == (1.0, 0.0, 4)
    assert np.isnan(uneven["above_q99_median_distance"])  # nothing of its background is above the percentile


def test_breakdown_tells_a_halo_from_a_raised_surface():
    """A defect in the corner of two 64×64 images: in one the map is raised in a 3-px ring around it (a halo), in
    the other on the far half of the image (the surface)."""
    masks = np.zeros((4, 64, 64), np.uint8)
    masks[2:, :8, :8] = 1
    maps = np.zeros((4, 64, 64), np.float32)
    maps[masks.astype(bool)] = 1.0
    maps[2, :11, :11][~masks[2, :11, :11].astype(bool)] = 0.5
    maps[3, :, 32:] = 0.5
    r = breakdown(maps, masks, ["good", "good", "halo", "surface"])
    halo, surface = r["per_type"]["halo"], r["per_type"]["surface"]
    assert 1 <= halo["above_q99_median_distance"] <= 3 and halo["above_q99_beyond_24px"] == 0.0
    assert surface["above_q99_median_distance"] > 24 and surface["above_q99_beyond_24px"] > 0.8
    assert surface["above_q99_per_image_median"] == pytest.approx(64 * 32 / (64 * 64 - 64))
    assert r["above_q99_beyond_24px"] == pytest.approx((surface["above_q99_beyond_24px"] * 64 * 32) / (57 + 64 * 32))


def test_breakdown_needs_both_kinds_of_image():
    maps, masks, defects = _split()
    with pytest.raises(ValueError, match="normal and defective"):
        breakdown(maps[:2], masks[:2], defects[:2])


def test_the_released_map_is_the_one_the_evaluation_scores(tiny_data, tmp_path):
    """A 1-epoch run with the default anomaly map (head_knn): pixel_breakdown.py reads the head's map, the released
    map and the baseline's; the released map's pooled pixel AUROC is the run's own evaluation's."""
    import json
    import os

    import pixel_breakdown
    from tiny_run import tiny_overrides

    import train as train_script

    out, protos = str(tmp_path / "out"), str(tmp_path / "protos")
    assert train_script.main(tiny_overrides(tiny_data, out, protos, epochs=1)) == 0
    ckpt, result = os.path.join(out, "tiny", "last.pt"), str(tmp_path / "breakdown.json")
    assert pixel_breakdown.main(["--checkpoint", ckpt, "--out", result]) == 0
    got = json.load(open(result))["maps"]
    assert set(got) == {"head", "head_knn", "knn"}
    metrics = json.load(open(os.path.join(out, "tiny", "results.json")))["metrics"]
    assert got["head_knn"]["pooled"] == pytest.approx(metrics["pixel_auroc"], abs=1e-6)
    assert got["head"]["pooled"] != pytest.approx(got["head_knn"]["pooled"], abs=1e-9)
