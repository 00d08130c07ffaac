import math

import numpy as np
import pytest
import torch
from skimage.measure import label as sk_label
from sklearn.metrics import average_precision_score, roc_auc_score

from prnet.metrics import (METRIC_KEYS, aupro, aupro_counts, compute_metrics, image_ap, image_auroc,
                           paired_aupro_difference, paired_auroc_difference, paired_pixel_auroc_difference, pixel_ap,
                           pixel_auroc, pixel_pair_counts, pooled_aupro, pooled_pixel_auroc, subset_aupro_counts,
                           subset_pixel_counts)


def reference_aupro(maps, masks, fpr_limit=0.3):
    """Brute force: every distinct score is a threshold; FPR and PRO counted directly at each one."""
    maps = np.asarray(maps, np.float64)
    masks = np.asarray(masks) > 0.5
    regions = []
    for m, g in zip(maps, masks):
        lab = sk_label(g, connectivity=2)  # 8-connectivity
        regions += [m[lab == r] for r in range(1, lab.max() + 1)]
    normal = maps[~masks]
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        xs.append(np.mean(normal >= t))
        ys.append(np.mean([np.mean(r >= t) for r in regions]))
    area = 0.0
    for i in range(1, len(xs)):
        x0, y0, x1, y1 = xs[i - 1], ys[i - 1], xs[i], ys[i]
        if x1 <= fpr_limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_lim = y0 + (fpr_limit - x0) / (x1 - x0) * (y1 - y0)
            area += (fpr_limit - x0) * (y0 + y_lim) / 2
            break
    return area / fpr_limit


def random_case(seed, n=4, h=16, w=16, decimals=2):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w), np.uint8)
    for i in range(n - 1):  # the last image stays normal
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
            masks[i, y:y + rng.integers(1, 5), x:x + rng.integers(1, 5)] = 1
    maps = rng.random((n, h, w)) * 0.7 + masks * rng.random((n, h, w)) * 0.6
    maps = np.round(maps, decimals).astype(np.float32)  # many ties
    return maps, masks


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("limit", [0.05, 0.3, 0.77, 1.0])
def test_aupro_matches_brute_force_with_ties(seed, limit):
    maps, masks = random_case(seed)
    assert abs(aupro(maps, masks, limit) - reference_aupro(maps, masks, limit)) <= 1e-6
    got = compute_metrics(maps.reshape(4, -1).max(1), masks.reshape(4, -1).max(1), maps, masks, limit)["aupro"]
    assert abs(got - reference_aupro(maps, masks, limit)) <= 1e-6


def test_aupro_coarse_ties_and_limit_on_a_step():
    # one decimal: few thresholds, so FPR often lands exactly on the limit or jumps far beyond it
    for seed in range(5):
        maps, masks = random_case(seed, n=3, h=10, w=10, decimals=1)
        for limit in (0.1, 0.2, 0.5):
            assert abs(aupro(maps, masks, limit) - reference_aupro(maps, masks, limit)) <= 1e-6


def test_aupro_hand_computed():
    # 1×4×4, one 2-pixel region (a, b), 14 normal pixels: 0.9 (one), 0.4 (two), 0.1 (eleven)
    #   a = 0.8, b = 0.4 (tied with two normal pixels)
    # thresholds, descending: 0.9 -> (FPR 1/14, PRO 0);  0.8 -> (1/14, 1/2);  0.4 -> (3/14, 1);  0.1 -> (1, 1)
    # area up to 0.3: 0 on [0, 1/14]; the vertical step adds nothing; from (1/14, 1/2) to (3/14, 1):
    #   (2/14)·(1/2 + 1)/2 = 3/28; then PRO = 1 from 3/14 to 0.3: 0.3 − 3/14 = 3/35
    # AUPRO = (3/28 + 3/35) / 0.3 = (27/140) / 0.3 = 9/14
    m = np.full((1, 4, 4), 0.1)
    g = np.zeros((1, 4, 4))
    m[0, 0, 0] = 0.9
    m[0, 3, 3] = m[0, 3, 2] = 0.4
    g[0, 1, 1] = g[0, 1, 2] = 1
    m[0, 1, 1], m[0, 1, 2] = 0.8, 0.4
    assert aupro(m, g, 0.3) == pytest.approx(9 / 14, abs=1e-12)
    # limit inside the first diagonal segment: interpolation at the limit (FPR 1/7 ⇒ PRO 3/4)
    # area = (1/14)·(1/2 + 3/4)/2 = 5/112, divided by 1/7: 5/16
    assert aupro(m, g, 1 / 7) == pytest.approx(5 / 16, abs=1e-12)


def test_aupro_eight_connectivity():
    # normal pixels score 0.5, found anomalous pixels 1.0, missed ones 0.0 (below every normal pixel), so PRO
    # is constant from FPR 0 to FPR 1 and AUPRO equals it
    m = np.full((2, 5, 5), 0.5)
    g = np.zeros((2, 5, 5))
    g[0, 1, 1] = g[0, 2, 2] = 1  # diagonal neighbours: one region
    m[0, 1, 1], m[0, 2, 2] = 1.0, 0.0  # half found
    g[1, 3, 3] = 1
    m[1, 3, 3] = 1.0  # found
    # 8-connected: regions {(1,1),(2,2)} and {(3,3)}: PRO = (1/2 + 1)/2 = 3/4
    # (4-connected it would be three regions: (1 + 0 + 1)/3 = 2/3)
    assert aupro(m, g, 0.3) == pytest.approx(0.75, abs=1e-12)
    assert aupro(m, g, 0.3) == pytest.approx(reference_aupro(m, g, 0.3), abs=1e-12)


def test_aupro_regions_do_not_cross_images():
    m = np.full((2, 3, 3), 0.5)
    g = np.zeros((2, 3, 3))
    g[:, 1, 1] = 1  # same position in both images: two regions, one found, one missed
    m[0, 1, 1], m[1, 1, 1] = 1.0, 0.0
    assert aupro(m, g, 0.3) == pytest.approx(0.5, abs=1e-12)


def test_perfect_maps_give_one():
    maps, masks = random_case(3, decimals=3)
    perfect = masks + 0.01 * maps  # every anomalous pixel above every normal one
    labels = masks.reshape(4, -1).max(1)
    scores = perfect.reshape(4, -1).max(1)
    res = compute_metrics(scores, labels, perfect, masks)
    for k in METRIC_KEYS:
        assert res[k] == pytest.approx(1.0, abs=1e-12), k


def test_undefined_cases_are_nan():
    m = np.random.default_rng(0).random((2, 8, 8))
    assert math.isnan(aupro(m, np.zeros((2, 8, 8))))
    assert math.isnan(aupro(m, np.ones((2, 8, 8))))
    assert math.isnan(pixel_auroc(m, np.zeros((2, 8, 8))))
    assert math.isnan(image_auroc([0.1, 0.2], [1, 1]))


@pytest.mark.parametrize("seed", [0, 1])
def test_pixel_and_image_metrics_equal_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    maps, masks = random_case(seed, n=6, h=20, w=20)
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-9)
    assert pixel_ap(maps, masks) == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-9)
    scores = np.round(rng.random(300), 1)  # heavy ties
    labels = (rng.random(300) < 0.3 + 0.4 * scores).astype(int)
    assert image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert image_ap(scores, labels) == pytest.approx(average_precision_score(labels, scores), abs=1e-9)


def test_compute_metrics_keys_values_and_torch_input():
    maps, masks = random_case(5, n=6)
    labels = masks.reshape(6, -1).max(1)
    scores = maps.reshape(6, -1).mean(1)
    res = compute_metrics(scores, labels, maps, masks)
    assert list(res) == ["image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro"]
    assert res["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert res["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-9)
    assert res["aupro"] == pytest.approx(aupro(maps, masks), abs=1e-12)
    # N×1×H×W torch tensors (half precision maps included) give the same numbers as numpy
    res_t = compute_metrics(torch.from_numpy(scores), torch.from_numpy(labels),
                            torch.from_numpy(maps)[:, None], torch.from_numpy(masks).float()[:, None])
    assert res_t == pytest.approx(res, abs=1e-12)
    half = torch.from_numpy(maps).half()
    assert aupro(half, masks) == pytest.approx(aupro(half.float().numpy(), masks), abs=1e-12)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="same N×H×W shape"):
        aupro(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="NaN"):
        pixel_auroc(np.full((1, 2, 2), np.nan), np.eye(2)[None])
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(np.zeros((1, 2, 2)), np.eye(2)[None], fpr_limit=0)
    with pytest.raises(ValueError, match="same length"):
        image_auroc([0.1, 0.2], [0, 1, 1])


def test_paired_auroc_difference_is_the_mean_lead_with_an_interval_over_the_images():
    rng = np.random.default_rng(3)
    y = np.r_[np.zeros(60), np.ones(90)]
    a = rng.normal(size=(3, 150)) + 1.6 * y  # three paired runs; a separates the classes better than b
    b = rng.normal(size=(3, 150)) + 0.6 * y
    r = paired_auroc_difference(a, b, y, resamples=500)
    lead = np.mean([roc_auc_score(y, a[i]) - roc_auc_score(y, b[i]) for i in range(3)])
    assert r["difference"] == pytest.approx(lead, abs=1e-12)
    assert 0 < r["low"] < lead < r["high"] < 1 and (r["runs"], r["normal"], r["defective"]) == (3, 60, 90)
    assert paired_auroc_difference(a, b, y, resamples=500) == r  # seeded
    assert paired_auroc_difference(b, a, y, resamples=500)["high"] == pytest.approx(-r["low"])  # the same draws
    # the pairing: b is a plus a little noise, so the lead is small and its interval narrow, although each
    # detector's own AUROC would move much more with the images drawn
    close = paired_auroc_difference(a[0], a[0] + 0.05 * rng.normal(size=150), y, resamples=500)
    assert close["runs"] == 1 and close["high"] - close["low"] < 0.02 and close["low"] <= 0 <= close["high"]
    same = paired_auroc_difference(a, a, y, resamples=50)
    assert same["difference"] == same["low"] == same["high"] == 0.0
    wider = paired_auroc_difference(a, b, y, resamples=500, level=0.99)
    assert wider["low"] < r["low"] and wider["high"] > r["high"]


def test_paired_auroc_difference_refuses_what_it_cannot_pair():
    y = np.r_[np.zeros(5), np.ones(5)]
    with pytest.raises(ValueError, match="one shape"):
        paired_auroc_difference(np.zeros((2, 10)), np.zeros((3, 10)), y)
    with pytest.raises(ValueError, match="the 10 labels"):
        paired_auroc_difference(np.zeros(9), np.zeros(9), y)
    with pytest.raises(ValueError, match="0 normal and 10 defective"):
        paired_auroc_difference(np.zeros(10), np.zeros(10), np.ones(10))
    with pytest.raises(ValueError, match="resamples >= 1"):
        paired_auroc_difference(np.zeros(10), np.zeros(10), y, resamples=0)


def _defect_maps(rng, n_normal, n_defective, strength, size=12):
    """Maps quantised to 1/20 (many ties) and masks of n_normal normal and n_defective defective images; each
    defect's size and place vary, its pixels score `strength` higher on average."""
    n = n_normal + n_defective
    maps = rng.random((n, size, size))
    masks = np.zeros((n, size, size))
    for i in range(n_normal, n):
        r, c, h, w = rng.integers(0, size - 4), rng.integers(0, size - 4), rng.integers(1, 5), rng.integers(1, 5)
        masks[i, r:r + h, c:c + w] = 1
    maps = np.round((maps + strength * masks) * 20) / 20
    return maps.astype(np.float32), masks, np.r_[np.zeros(n_normal), np.ones(n_defective)]


def test_pixel_pair_counts_give_the_pooled_pixel_auroc_of_any_resampling_exactly():
    rng = np.random.default_rng(5)
    maps, masks, _ = _defect_maps(rng, 7, 9, 0.6)
    masks[-1] = 1  # an image with no anomaly-free pixel, and one all anomaly-free but in a defective's place
    counts = pixel_pair_counts(maps, masks)
    assert counts["rows"].tolist() == list(range(7, 16)) and counts["twice_u"].shape == (9, 16)
    assert (counts["pos"] + counts["neg"] == 144).all() and counts["twice_u"].dtype == np.int64
    assert pooled_pixel_auroc(counts) == pixel_auroc(maps, masks)  # the same integers: equal, not approximately
    for _ in range(5):  # each image counted as often as a bootstrap draw takes it: the maps repeated, exactly
        w = rng.integers(0, 3, 16)
        if not masks[np.repeat(np.arange(16), w)].any():
            continue
        assert pooled_pixel_auroc(counts, w) == pixel_auroc(maps[np.repeat(np.arange(16), w)],
                                                            masks[np.repeat(np.arange(16), w)])
    assert math.isnan(pooled_pixel_auroc(counts, np.r_[np.ones(7), np.zeros(9)]))  # no defect pixel drawn
    none = pixel_pair_counts(maps[:7], masks[:7])
    assert none["rows"].size == 0 and math.isnan(pooled_pixel_auroc(none))
    # the counts of some of the images, in another order: those of their maps
    keep = [12, 3, 8, 15, 0, 9]
    part = subset_pixel_counts({**counts, "names": np.arange(16) * 10}, keep)
    direct = pixel_pair_counts(maps[keep], masks[keep])
    assert all(np.array_equal(part[k], direct[k]) for k in direct)
    assert part["names"].tolist() == [120, 30, 80, 150, 0, 90]
    assert pooled_pixel_auroc(part) == pixel_auroc(maps[keep], masks[keep])


def test_aupro_counts_give_the_aupro_of_any_resampling():
    rng = np.random.default_rng(8)
    maps, masks, _ = _defect_maps(rng, 7, 9, 0.6)
    masks[10, :2, :2] = 1  # a second region in one image
    # on the 1/20 lattice every value up to the highest anomaly-free score is also an anomaly-free score, so the
    # grid holds each of them and the straight lines between its points are aupro's curve: equal up to rounding
    assert set(np.unique(maps[maps <= maps[masks < 0.5].max()])) <= set(np.unique(maps[masks < 0.5]))
    counts = aupro_counts(maps, masks)
    assert counts["fp"].shape == (16, counts["grid"].size + 1) and counts["fp"][:, 0].sum() == 0
    assert counts["region_image"].tolist() == sorted(counts["region_image"].tolist()) and 10 in counts["region_image"]
    assert (counts["region_hits"] <= counts["region_size"][:, None]).all()
    assert pooled_aupro(counts) == pytest.approx(aupro(maps, masks), abs=1e-12)
    for _ in range(5):  # each image counted as often as a bootstrap draw takes it: the maps repeated
        w = rng.integers(0, 3, 16)
        drawn = np.repeat(np.arange(16), w)
        if not masks[drawn].any() or masks[drawn].all():
            continue
        assert pooled_aupro(counts, w) == pytest.approx(aupro(maps[drawn], masks[drawn]), abs=1e-12)
    assert math.isnan(pooled_aupro(counts, np.r_[np.ones(7), np.zeros(9)]))  # no region drawn
    keep = [12, 3, 8, 15, 0, 10]
    part = subset_aupro_counts(counts, keep)
    assert part["region_image"].tolist() == sorted(part["region_image"].tolist())
    assert pooled_aupro(part) == pytest.approx(aupro(maps[keep], masks[keep]), abs=1e-12)
    with pytest.raises(ValueError, match="distinct"):
        subset_aupro_counts(counts, [3, 3, 12])
    # continuous scores: the grid's lines cut the curve's steps, by less the finer the grid
    smooth = np.random.default_rng(9).random((30, 32, 32)).astype(np.float32)
    gt = np.zeros_like(smooth)
    gt[15:, 8:20, 10:18] = 1
    smooth += 0.5 * gt
    assert pooled_aupro(aupro_counts(smooth, gt)) == pytest.approx(aupro(smooth, gt), abs=1e-4)
    coarse = aupro_counts(smooth, gt, thresholds=2)
    assert abs(pooled_aupro(coarse) - aupro(smooth, gt)) > 1e-3  # the grid is what sets the error
    with pytest.raises(ValueError, match="reaches FPR 0.2"):
        pooled_aupro(aupro_counts(smooth, gt, span=0.2))


@pytest.mark.parametrize("counts_of, metric, paired, seed", [
    (pixel_pair_counts, pixel_auroc, paired_pixel_auroc_difference, 10),
    (aupro_counts, aupro, paired_aupro_difference, 20)], ids=["pixel_auroc", "aupro"])
def test_a_paired_pixel_metric_difference_is_the_mean_lead_with_an_interval_over_the_images(counts_of, metric, paired,
                                                                                          seed):
    runs_a = [_defect_maps(np.random.default_rng(seed + r), 20, 30, 0.8) for r in range(2)]
    runs_b = [_defect_maps(np.random.default_rng(seed + r), 20, 30, 0.3) for r in range(2)]  # same masks, weaker maps
    y = runs_a[0][2]
    a = [counts_of(m, g) for m, g, _ in runs_a]
    b = [counts_of(m, g) for m, g, _ in runs_b]
    r = paired(a, b, y, resamples=300)
    lead = np.mean([metric(ma, ga) - metric(mb, gb) for (ma, ga, _), (mb, gb, _) in zip(runs_a, runs_b)])
    assert r["difference"] == pytest.approx(lead, abs=1e-12) and lead > 0.1
    assert 0 < r["low"] < lead < r["high"] < 1 and (r["runs"], r["normal"], r["defective"]) == (2, 20, 30)
    assert paired(a, b, y, resamples=300) == r  # seeded
    assert paired(b, a, y, resamples=300)["high"] == pytest.approx(-r["low"])
    same = paired(a, a, y, resamples=30)
    assert same["difference"] == same["low"] == same["high"] == 0.0
    # the interval is over the images: a lead that rests on one defective image is uncertain, one spread over
    # all of them much less
    m, g, _ = runs_b[0]
    one = m.copy()
    one[20][g[20] > 0.5] += 5.0
    rest = m + 0.08 * g
    r_one = paired([counts_of(one, g)], [b[0]], y, resamples=300)
    r_all = paired([counts_of(rest, g)], [b[0]], y, resamples=300)
    assert r_one["low"] <= 0.0 < r_one["high"] and r_all["low"] > 0.0
    with pytest.raises(ValueError, match="as many runs"):
        paired(a, b[:1], y)
    with pytest.raises(ValueError, match="50 labelled images"):
        paired([counts_of(m[:10], g[:10])], [b[0]], y)
    with pytest.raises(ValueError, match="0 normal and 50 defective"):
        paired(a, b, np.ones(50))
