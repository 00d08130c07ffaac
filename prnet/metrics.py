"""Anomaly detection metrics: image/pixel AUROC and AP, and AUPRO (MVTec AD definition). Exact, no binning; only
the AUPRO of resampled images (aupro_counts, for an interval over the images) is read on a grid of thresholds.

Pure functions of arrays (numpy, or torch tensors which are converted). Everything is computed from sorted
arrays: one `np.sort` of the normal scores and one of the anomalous scores give AUROC (Mann-Whitney with ties
counted one half), AP (sklearn's step definition) and AUPRO.

AUPRO (Bergmann et al., MVTec AD, IJCV 2021):
  * regions: connected components of each ground-truth mask, 8-connectivity, never across images;
  * PRO(t): mean over all regions (of all images) of the fraction of the region's pixels with map >= t;
  * FPR(t): fraction of all anomaly-free pixels (mask == 0, all images) with map >= t;
  * the curve visits every distinct score value as one step (ties are one step), starting at (0, 0);
  * integrated with the trapezoid rule up to FPR = fpr_limit, the last segment linearly interpolated at
    exactly fpr_limit, and divided by fpr_limit.
Only pixels scoring at or above t*, the normal score at which FPR first exceeds the limit, can affect the value:
t* is read off the sorted normal scores (one SIMD np.sort of 13 M float32 values takes about 0.1 s, the same as
np.partition plus sorting the tail), and only the anomalous pixels at or above it are argsorted to build the
curve; between two distinct anomalous values the curve is flat, so two points per anomalous value suffice.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

METRIC_KEYS = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro")
# at the stored decision threshold (an image is anomalous when its score >= the threshold)
DECISION_KEYS = ("defect_recall", "false_positive_rate")


# ----------------------------------------------------------------------------------------------- inputs
def _to_numpy(x: Any, name: str) -> np.ndarray:
    """numpy array from a numpy array, a torch tensor (any device, half precision included) or a sequence."""
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach()
        if x.is_floating_point() and x.element_size() < 4:
            x = x.float()
        x = x.cpu().numpy()
    a = np.asarray(x)
    if a.dtype == object:
        raise ValueError(f"{name}: expected a numeric array, got dtype object")
    return a


def _float_values(a: np.ndarray, name: str) -> np.ndarray:
    """float32/float64 array (float16 and integers converted); NaN is an error."""
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float32 if a.dtype == np.float16 else np.float64)
    if np.isnan(a).any():
        raise ValueError(f"{name}: contains NaN")
    return a


def _scores_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = _float_values(_to_numpy(scores, "scores").reshape(-1), "scores")
    y = _to_numpy(labels, "labels").reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels: expected the same length, got {s.shape[0]} and {y.shape[0]}")
    return s, y > 0.5


def _maps_masks(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    """maps N×H×W (or N×1×H×W, or H×W) as float, masks of the same shape as bool (mask > 0.5)."""
    m = _to_numpy(maps, "maps")
    g = _to_numpy(masks, "masks")
    for name, a in (("maps", m), ("masks", g)):
        if a.ndim not in (2, 3, 4) or (a.ndim == 4 and a.shape[1] != 1):
            raise ValueError(f"{name}: expected N×H×W, N×1×H×W or H×W, got shape {a.shape}")
    m = m.reshape((-1,) + m.shape[-2:])
    g = g.reshape((-1,) + g.shape[-2:])
    if m.shape != g.shape:
        raise ValueError(f"maps and masks: expected the same N×H×W shape, got {m.shape} and {g.shape}")
    return _float_values(m, "maps"), g > 0.5


# ------------------------------------------------------------------------------------- sorted-array core
def _runs(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start index and length of each run of equal values in an ascending array."""
    n = sorted_values.shape[0]
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.concatenate(([0], np.flatnonzero(sorted_values[1:] != sorted_values[:-1]) + 1))
    return starts, np.diff(np.append(starts, n))


def _auroc_sorted(neg: np.ndarray, pos: np.ndarray) -> float:
    """AUROC = P(pos > neg) + P(pos == neg)/2 from ascending normal (neg) and anomalous (pos) scores."""
    if neg.size == 0 or pos.size == 0:
        return math.nan
    starts, counts = _runs(pos)
    values = pos[starts]
    below = np.searchsorted(neg, values, side="left").astype(np.int64)
    equal = np.searchsorted(neg, values, side="right").astype(np.int64) - below
    twice_u = 2 * int(np.dot(counts, below)) + int(np.dot(counts, equal))  # exact integers
    return twice_u / (2.0 * pos.size * neg.size)


def _ap_sorted(neg: np.ndarray, pos: np.ndarray) -> float:
    """Average precision (sklearn's definition: sum over thresholds of Δrecall × precision) from sorted scores."""
    if pos.size == 0:
        return math.nan
    starts, counts = _runs(pos)
    values = pos[starts]
    tp = pos.size - starts  # anomalous scores >= each distinct anomalous value
    fp = neg.size - np.searchsorted(neg, values, side="left")  # normal scores >= it
    return float(np.sum(counts * (tp / (tp + fp))) / pos.size)


def _label_regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """AUPRO's regions of N×H×W masks: labels 1..n, 8-connectivity inside each image, nothing across images."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True
    return ndimage.label(masks, structure=structure)


def _region_weights(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Weight 1/(region size · number of regions) of each anomalous pixel, in the order of `maps[masks]`."""
    labels, n_regions = _label_regions(masks)
    if n_regions == 0:
        return np.zeros(0, np.float64), 0
    region_of_pixel = labels[masks]
    sizes = np.bincount(region_of_pixel, minlength=n_regions + 1).astype(np.float64)
    return 1.0 / (sizes[region_of_pixel] * n_regions), int(n_regions)


def _limit_threshold(neg_count: int, fpr_limit: float) -> int:
    """Rank k (0-based, ascending) of the normal score t* at which FPR first exceeds fpr_limit; -1: never."""
    allowed = math.floor(fpr_limit * neg_count)  # most false positives with FPR <= limit
    return neg_count - allowed - 1


def _trapezoid_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Area under the piecewise linear curve (x non-decreasing, from x[0]) up to x_max, interpolating at x_max."""
    inside = int(np.searchsorted(x, x_max, side="right"))  # points with x <= x_max
    xi, yi = x[:inside], y[:inside]
    area = float(np.sum(np.diff(xi) * (yi[1:] + yi[:-1])) / 2.0)
    if inside < x.shape[0] and xi[-1] < x_max:
        x0, y0, x1, y1 = xi[-1], yi[-1], x[inside], y[inside]
        y_max = y0 + (x_max - x0) / (x1 - x0) * (y1 - y0)
        area += (x_max - x0) * (y0 + y_max) / 2.0
    return area


def _aupro_core(neg_tail: np.ndarray, neg_count: int, pos: np.ndarray, weights: np.ndarray,
                fpr_limit: float) -> float:
    """AUPRO from the ascending normal scores >= t* (`neg_tail`), the number of all normal pixels, and the
    anomalous scores >= t* with their PRO weights (any order)."""
    order = np.argsort(pos)  # order inside a tie group does not matter
    pos_sorted = pos[order]
    starts, _ = _runs(pos_sorted)
    values = pos_sorted[starts]
    # PRO(>= v) for each distinct anomalous value v: weights of the anomalous pixels at or above v
    w_above = np.cumsum(weights[order][::-1])[::-1]
    pro_at = w_above[starts] if starts.size else np.zeros(0)
    pro_above = np.append(pro_at[1:], 0.0)  # PRO(> v): the next larger distinct value's PRO(>=)
    fp_at = neg_tail.size - np.searchsorted(neg_tail, values, side="left")  # FP(>= v)
    fp_above = neg_tail.size - np.searchsorted(neg_tail, values, side="right")  # FP(> v)
    # descending thresholds: (0,0), then per distinct anomalous value the corner before its step
    # (normal-only values in between are collinear) and the point after it, then the point at t*
    fp = np.empty(2 * values.size + 2, np.float64)
    pro = np.empty_like(fp)
    fp[0] = pro[0] = 0.0
    fp[1:-1:2], fp[2:-1:2] = fp_above[::-1], fp_at[::-1]
    pro[1:-1:2], pro[2:-1:2] = pro_above[::-1], pro_at[::-1]
    fp[-1], pro[-1] = neg_tail.size, (pro_at[0] if pro_at.size else 0.0)
    return _trapezoid_to(fp / neg_count, pro, fpr_limit) / fpr_limit


def _check_limit(fpr_limit: float) -> float:
    fpr_limit = float(fpr_limit)
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit: expected a value in (0, 1], got {fpr_limit}")
    return fpr_limit


def _aupro_sorted(neg: np.ndarray, pos: np.ndarray, weights: np.ndarray, n_regions: int,
                  fpr_limit: float) -> float:
    """AUPRO from all normal scores (ascending) and the anomalous scores with their PRO weights."""
    if n_regions == 0 or neg.size == 0:
        return math.nan
    k = _limit_threshold(neg.size, fpr_limit)
    t_star = -np.inf if k < 0 else neg[k]  # FPR(t*) > fpr_limit >= FPR(t) for every larger t
    neg_tail = neg[np.searchsorted(neg, t_star, side="left"):]  # the tie group at t* included
    keep = pos >= t_star
    return _aupro_core(neg_tail, neg.size, pos[keep], weights[keep], fpr_limit)


# ------------------------------------------------------------------------------------------- public API
def image_auroc(scores: Any, labels: Any) -> float:
    """Image-level AUROC (as sklearn.metrics.roc_auc_score); nan if only one class is present."""
    s, y = _scores_labels(scores, labels)
    return _auroc_sorted(np.sort(s[~y]), np.sort(s[y]))


def image_ap(scores: Any, labels: Any) -> float:
    """Image-level average precision (as sklearn.metrics.average_precision_score); nan without anomalies."""
    s, y = _scores_labels(scores, labels)
    return _ap_sorted(np.sort(s[~y]), np.sort(s[y]))


def pixel_auroc(maps: Any, masks: Any) -> float:
    """Pixel-level AUROC over every pixel of all maps; nan if the masks hold only one class."""
    m, g = _maps_masks(maps, masks)
    return _auroc_sorted(np.sort(m[~g]), np.sort(m[g]))


def pixel_ap(maps: Any, masks: Any) -> float:
    """Pixel-level average precision over every pixel of all maps; nan if the masks are all zero."""
    m, g = _maps_masks(maps, masks)
    return _ap_sorted(np.sort(m[~g]), np.sort(m[g]))


def aupro(maps: Any, masks: Any, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to FPR = fpr_limit (MVTec AD definition, exact; see the module
    docstring). nan if the masks hold no anomalous region or no anomaly-free pixel."""
    fpr_limit = _check_limit(fpr_limit)
    m, g = _maps_masks(maps, masks)
    weights, n_regions = _region_weights(g)
    neg = np.sort(m[~g])  # a full SIMD sort costs about what np.partition plus sorting the tail costs
    return _aupro_sorted(neg, m[g], weights, n_regions, fpr_limit)


def compute_metrics(scores: Any, labels: Any, maps: Any, masks: Any, fpr_limit: float = 0.3) -> dict[str, float]:
    """The five metrics {image_auroc, image_ap, pixel_auroc, pixel_ap, aupro}; the pixel ones share one sort.

    Metrics that the test set cannot define are left out (never NaN), with one log line saying why: without a
    defective image, all five; without a normal image, the image metrics; when no defective image has a mask
    pixel (image-level labels only), the pixel metrics."""
    fpr_limit = _check_limit(fpr_limit)
    s, y = _scores_labels(scores, labels)
    m, g = _maps_masks(maps, masks)
    if s.shape[0] != m.shape[0]:
        raise ValueError(f"scores and maps: expected one score per map, got {s.shape[0]} scores "
                         f"and {m.shape[0]} maps")
    out: dict[str, float] = {}
    if not y.any():
        log.warning("the test set has no defective image: image and pixel metrics omitted (a normal-only test set)")
        return out
    if y.all():
        log.warning("the test set has no normal image: image metrics omitted")
    else:
        s_neg, s_pos = np.sort(s[~y]), np.sort(s[y])
        out["image_auroc"] = _auroc_sorted(s_neg, s_pos)
        out["image_ap"] = _ap_sorted(s_neg, s_pos)
    if not g[y].any():
        log.info("no defective test image has a mask: pixel metrics omitted (image metrics only)")
        return out
    neg = np.sort(m[~g])
    pos = m[g]
    pos_sorted = np.sort(pos)
    weights, n_regions = _region_weights(g)
    out["pixel_auroc"] = _auroc_sorted(neg, pos_sorted)
    out["pixel_ap"] = _ap_sorted(neg, pos_sorted)
    out["aupro"] = _aupro_sorted(neg, pos, weights, n_regions, fpr_limit)
    return out


def _stratified_draws(labels: np.ndarray, resamples: int, seed: int):
    """The paired bootstrap's image draws: `resamples` times the normal and the defective images each drawn again with
    replacement (numpy seed `seed`), as (normal indices, defective indices); every paired difference below uses the
    same draws for the same labels and seed."""
    neg, pos = np.flatnonzero(~labels), np.flatnonzero(labels)
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        yield rng.choice(neg, neg.size), rng.choice(pos, pos.size)


def _check_pairing(name: str, neg: int, pos: int, resamples: int, level: float) -> None:
    if neg == 0 or pos == 0:
        raise ValueError(f"{name}: needs normal and defective images, got {neg} normal and {pos} defective")
    if resamples < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"{name}: expected resamples >= 1 and level in (0, 1), got {resamples} and {level}")


def _check_runs(name: str, counts_a: list[dict], counts_b: list[dict], labels: Any, size_key: str, what: str,
                resamples: int, level: float) -> tuple[np.ndarray, int, int]:
    """The image labels as bool, and the numbers of normal and defective images, of a paired difference of counts:
    as many runs of a as of b, each counted on the labelled images (`size_key` holds one entry per image)."""
    y = _to_numpy(labels, "labels").reshape(-1) > 0.5
    if len(counts_a) != len(counts_b) or not counts_a:
        raise ValueError(f"{name}: expected as many runs of a as of b, at least one, got {len(counts_a)} and "
                         f"{len(counts_b)}")
    if any(c[size_key].size != y.size for c in (*counts_a, *counts_b)):
        raise ValueError(f"{name}: expected {what} of the {y.size} labelled images, got "
                         f"{sorted({c[size_key].size for c in (*counts_a, *counts_b)})}")
    neg, pos = int((~y).sum()), int(y.sum())
    _check_pairing(name, neg, pos, resamples, level)
    return y, neg, pos


def _interval(point: float, draws: np.ndarray, level: float, resamples: int, runs: int, neg: int, pos: int) -> dict:
    low, high = np.quantile(draws, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return {"difference": point, "low": float(low), "high": float(high), "level": float(level),
            "resamples": int(resamples), "runs": int(runs), "normal": int(neg), "defective": int(pos)}


def paired_auroc_difference(scores_a: Any, scores_b: Any, labels: Any, resamples: int = 2000, level: float = 0.95,
                            seed: int = 0) -> dict[str, float]:
    """Image AUROC of detector a minus detector b on the same test images, with a percentile interval over the
    test images.

    scores_a, scores_b: N scores, or R×N for R paired runs (e.g. seeds; row r of a is compared with row r of b), all
    on the same N images in the same order; labels: N. The difference is the mean over the runs of
    AUROC(a) − AUROC(b). The interval is a stratified, paired bootstrap: `resamples` times the normal and the
    defective images are each drawn again with replacement (numpy seed `seed`), the same draw for every run and both
    detectors, and the difference is recomputed; its (1 − level)/2 and (1 + level)/2 quantiles are the interval. It
    measures how much the difference depends on which images of the same kind were tested, not on training seeds
    (the runs' spread).

    Returns {difference, low, high, level, resamples, runs, normal, defective}."""
    a = _float_values(np.atleast_2d(_to_numpy(scores_a, "scores_a")), "scores_a")
    b = _float_values(np.atleast_2d(_to_numpy(scores_b, "scores_b")), "scores_b")
    y = _to_numpy(labels, "labels").reshape(-1) > 0.5
    if a.ndim != 2 or a.shape != b.shape or a.shape[1] != y.size:
        raise ValueError(f"paired_auroc_difference: expected scores_a and scores_b of one shape, N or R×N with N the "
                         f"{y.size} labels, got {a.shape} and {b.shape}")
    neg, pos = np.flatnonzero(~y), np.flatnonzero(y)
    _check_pairing("paired_auroc_difference", neg.size, pos.size, resamples, level)

    def difference(i_neg: np.ndarray, i_pos: np.ndarray) -> float:
        return float(np.mean([_auroc_sorted(np.sort(a[r, i_neg]), np.sort(a[r, i_pos]))
                              - _auroc_sorted(np.sort(b[r, i_neg]), np.sort(b[r, i_pos])) for r in range(a.shape[0])]))

    draws = np.array([difference(i_neg, i_pos) for i_neg, i_pos in _stratified_draws(y, resamples, seed)])
    return _interval(difference(neg, pos), draws, level, resamples, a.shape[0], neg.size, pos.size)


def pixel_pair_counts(maps: Any, masks: Any) -> dict[str, np.ndarray]:
    """What the pooled pixel AUROC of any resampling of the images is made of, per pair of images, exactly.

    Returns {rows, pos, neg, twice_u}: `pos` and `neg` the N images' counts of defect and anomaly-free pixels,
    `rows` the images with defect pixels, and twice_u[k, j] = 2 × (defect pixels of image rows[k] scoring above
    anomaly-free pixels of image j) + (those scoring equal), counted over all pairs of the two pixels (integers).
    Summed over every pair of images it is the numerator of pixel_auroc: pixel_auroc(maps, masks) ==
    twice_u.sum() / (2 · pos.sum() · neg.sum()) (pooled_pixel_auroc), and with each image counted w[i] times (a
    bootstrap draw) both sides are weighed by w, so a resampled pixel AUROC needs no map."""
    m, g = _maps_masks(maps, masks)
    n = m.shape[0]
    m, g = m.reshape(n, -1), g.reshape(n, -1)
    pos_counts = g.sum(1).astype(np.int64)
    neg_counts = g.shape[1] - pos_counts
    rows = np.flatnonzero(pos_counts)
    values = m[g]  # image by image, in the order of `rows`
    owner = np.repeat(np.arange(rows.size), pos_counts[rows])
    order = np.argsort(values, kind="stable")
    values, owner = values[order], owner[order]
    twice_u = np.zeros((rows.size, n), np.int64)
    if rows.size == 0:
        return {"rows": rows, "pos": pos_counts, "neg": neg_counts, "twice_u": twice_u}
    for j in np.flatnonzero(neg_counts):
        neg = np.sort(m[j][~g[j]])
        # the k-th smallest defect pixel lies above the normal pixels q with (defect pixels <= q) <= k and at or
        # above those with (defect pixels < q) <= k: counting both per k and summing up gives 2·below + equal
        hits = (np.bincount(np.searchsorted(values, neg, side="right"), minlength=values.size + 1)
                + np.bincount(np.searchsorted(values, neg, side="left"), minlength=values.size + 1))
        per_pixel = np.cumsum(hits[:-1])
        twice_u[:, j] = np.bincount(owner, weights=per_pixel, minlength=rows.size).round().astype(np.int64)
    return {"rows": rows, "pos": pos_counts, "neg": neg_counts, "twice_u": twice_u}


def subset_pixel_counts(counts: dict, keep: Any) -> dict:
    """pixel_pair_counts of the images `keep` (indices, in that order) taken from the counts of all: exactly what
    pixel_pair_counts of their maps gives. Other entries of `counts` indexed per image (e.g. `names`) follow."""
    keep = np.asarray(keep, dtype=np.int64).reshape(-1)
    n = counts["pos"].size
    row_of = np.full(n, -1, np.int64)
    row_of[counts["rows"]] = np.arange(counts["rows"].size)
    kept_rows = row_of[keep]
    out = {k: np.asarray(v)[keep] for k, v in counts.items()
           if k not in ("rows", "twice_u") and np.ndim(v) >= 1 and len(v) == n}
    out["rows"] = np.flatnonzero(kept_rows >= 0)
    out["twice_u"] = counts["twice_u"][kept_rows[kept_rows >= 0]][:, keep]
    return out


def pooled_pixel_auroc(counts: dict, weights: Any = None) -> float:
    """The pooled pixel AUROC from pixel_pair_counts, each image counted weights[i] times (default once: equal to
    pixel_auroc of the maps); nan without defect or anomaly-free pixels."""
    w = np.ones(counts["pos"].size, np.int64) if weights is None else np.asarray(weights, np.int64)
    pairs = int(w @ counts["pos"]) * int(w @ counts["neg"])
    if pairs == 0:
        return math.nan
    return int(w[counts["rows"]] @ counts["twice_u"] @ w) / (2.0 * pairs)


def paired_pixel_auroc_difference(counts_a: list[dict], counts_b: list[dict], labels: Any, resamples: int = 2000,
                                  level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Pixel AUROC of detector a minus detector b on the same test images, with a percentile interval over the
    test images: paired_auroc_difference's bootstrap (the same image draws for the same labels and seed) with the
    pooled pixel AUROC of the drawn images, each counted as often as drawn, in place of the image AUROC.

    counts_a, counts_b: pixel_pair_counts of each of R paired runs (row r of a with row r of b), all on the same N
    images in the same order; labels: the N image labels (the strata). Returns paired_auroc_difference's keys."""
    y, neg, pos = _check_runs("paired_pixel_auroc_difference", counts_a, counts_b, labels, "pos", "pixel counts",
                              resamples, level)

    def difference(w: Any) -> float:
        return float(np.mean([pooled_pixel_auroc(a, w) - pooled_pixel_auroc(b, w) for a, b in zip(counts_a, counts_b)]))

    draws = np.array([difference(np.bincount(np.concatenate([i_neg, i_pos]), minlength=y.size))
                      for i_neg, i_pos in _stratified_draws(y, resamples, seed)])
    return _interval(difference(None), draws, level, resamples, len(counts_a), neg, pos)


AUPRO_GRID = 2000  # thresholds of aupro_counts: FPR steps of 0.00025 over its span
AUPRO_GRID_SPAN = 0.5  # FPR the grid reaches on all the images; a resampling must still reach the FPR limit


def aupro_counts(maps: Any, masks: Any, thresholds: int = AUPRO_GRID, span: float = AUPRO_GRID_SPAN) -> dict:
    """What the AUPRO of any resampling of the images is made of, on a grid of thresholds.

    The grid: the anomaly-free pixels' scores at the ranks where the FPR of all images steps by span/thresholds,
    from the highest such score down to FPR `span` (distinct values, descending; every distinct score there when
    steps are finer than its ties), and before them one point above the highest (FPR 0). Per grid threshold t the
    counts are: anomaly-free pixels of each image scoring >= t (`fp`, N × points), and pixels of each anomalous
    region (aupro's regions, in image order) scoring >= t (`region_hits`); the first point counts scores > the
    highest anomaly-free score instead. pooled_aupro joins the grid points by straight lines, so it equals aupro
    wherever no anomalous score lies strictly between two neighbouring grid values (e.g. scores on a lattice whose
    every value the anomaly-free pixels take); otherwise the lines cut across the curve's steps between grid points,
    by less the finer the grid (at most 1.3e-4 on the runs of docs/benchmarks.md, 2000 thresholds).

    Returns {grid, neg (anomaly-free pixels per image), fp, region_image, region_size, region_hits} (integers)."""
    if thresholds < 1 or not 0.0 < span <= 1.0:
        raise ValueError(f"aupro_counts: expected thresholds >= 1 and span in (0, 1], got {thresholds} and {span}")
    m, g = _maps_masks(maps, masks)
    n = m.shape[0]
    neg_sorted = np.sort(m[~g])
    if neg_sorted.size == 0:
        raise ValueError("aupro_counts: the masks leave no anomaly-free pixel")
    ranks = neg_sorted.size - np.ceil(neg_sorted.size * span * np.arange(thresholds + 1) / thresholds)
    grid = np.unique(neg_sorted[np.clip(ranks.astype(np.int64), 0, neg_sorted.size - 1)])[::-1]
    neg_counts = (~g).reshape(n, -1).sum(1).astype(np.int64)

    def at_or_above(values: np.ndarray) -> np.ndarray:
        v = np.sort(values)
        return np.concatenate(([v.size - np.searchsorted(v, grid[0], side="right")],
                               v.size - np.searchsorted(v, grid, side="left")))

    fp = np.stack([at_or_above(m[i][~g[i]]) for i in range(n)])
    labels, n_regions = _label_regions(g)
    objects = ndimage.find_objects(labels)
    region_image = np.array([o[0].start for o in objects], np.int64) if n_regions else np.zeros(0, np.int64)
    hits, sizes = [], []
    for r, o in enumerate(objects, start=1):
        values = m[o][labels[o] == r]
        hits.append(at_or_above(values))
        sizes.append(values.size)
    return {"grid": grid, "neg": neg_counts, "fp": fp, "region_image": region_image,
            "region_size": np.array(sizes, np.int64),
            "region_hits": np.stack(hits) if hits else np.zeros((0, grid.size + 1), np.int64)}


def subset_aupro_counts(counts: dict, keep: Any) -> dict:
    """aupro_counts of the images `keep` (distinct indices, in that order) taken from the counts of all, on the
    grid of all: the regions follow their images."""
    keep = np.asarray(keep, dtype=np.int64).reshape(-1)
    if np.unique(keep).size != keep.size:
        raise ValueError("subset_aupro_counts: expected distinct image indices")
    position = np.full(counts["neg"].size, -1, np.int64)
    position[keep] = np.arange(keep.size)
    new_image = position[counts["region_image"]]
    order = np.argsort(new_image[new_image >= 0], kind="stable")
    regions = np.flatnonzero(new_image >= 0)[order]
    return {"grid": counts["grid"], "neg": counts["neg"][keep], "fp": counts["fp"][keep],
            "region_image": new_image[regions], "region_size": counts["region_size"][regions],
            "region_hits": counts["region_hits"][regions]}


def _pooled_aupro_curves(counts: dict, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FPR and PRO at every grid point for each row of image weights (D × N), and whether each row defines them."""
    w = weights.astype(np.float64)
    neg = w @ counts["neg"]
    region_w = w[:, counts["region_image"]]
    regions = region_w.sum(1)
    ok = (neg > 0) & (regions > 0)
    fpr = (w @ counts["fp"]) / np.where(ok, neg, 1.0)[:, None]
    pro = (region_w @ (counts["region_hits"] / counts["region_size"][:, None])) / np.where(ok, regions, 1.0)[:, None]
    return fpr, pro, ok


def _grid_aupro(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float) -> float:
    if fpr[-1] < fpr_limit:
        raise ValueError(f"pooled_aupro: the grid reaches FPR {fpr[-1]:.3f} on these images, below the limit "
                         f"{fpr_limit}; make the counts with a larger span")
    return _trapezoid_to(np.append(0.0, fpr), np.append(0.0, pro), fpr_limit) / fpr_limit


def pooled_aupro(counts: dict, weights: Any = None, fpr_limit: float = 0.3) -> float:
    """AUPRO from aupro_counts, each image counted weights[i] times (each of its regions as often; default once),
    the grid points joined by straight lines; nan without an anomalous region or an anomaly-free pixel."""
    fpr_limit = _check_limit(fpr_limit)
    w = np.ones(counts["neg"].size) if weights is None else np.asarray(weights, np.float64)
    fpr, pro, ok = _pooled_aupro_curves(counts, w[None, :])
    return _grid_aupro(fpr[0], pro[0], fpr_limit) if ok[0] else math.nan


def paired_aupro_difference(counts_a: list[dict], counts_b: list[dict], labels: Any, resamples: int = 2000,
                            level: float = 0.95, seed: int = 0, fpr_limit: float = 0.3) -> dict[str, float]:
    """AUPRO of detector a minus detector b on the same test images, with a percentile interval over the test
    images: paired_auroc_difference's bootstrap (the same image draws for the same labels and seed) with
    pooled_aupro of the drawn images, each counted as often as drawn.

    counts_a, counts_b: aupro_counts of each of R paired runs (row r of a with row r of b), all on the same N images
    in the same order; labels: the N image labels (the strata). Returns paired_auroc_difference's keys; the
    difference too is pooled_aupro's (on the grid)."""
    fpr_limit = _check_limit(fpr_limit)
    y, neg, pos = _check_runs("paired_aupro_difference", counts_a, counts_b, labels, "neg", "AUPRO counts", resamples,
                              level)
    weights = np.stack([np.ones(y.size)] + [np.bincount(np.concatenate(draw), minlength=y.size)
                                            for draw in _stratified_draws(y, resamples, seed)])
    total = np.zeros(weights.shape[0])
    for a, b in zip(counts_a, counts_b):
        for sign, c in ((1.0, a), (-1.0, b)):
            fpr, pro, ok = _pooled_aupro_curves(c, weights)
            total += sign * np.array([_grid_aupro(f, p, fpr_limit) if k else math.nan
                                      for f, p, k in zip(fpr, pro, ok)])
    if np.isnan(total).any():
        raise ValueError("paired_aupro_difference: a draw holds no anomalous region (the defective images have "
                         "none)")
    total /= len(counts_a)
    return _interval(float(total[0]), total[1:], level, resamples, len(counts_a), neg, pos)


def decision_threshold(normal_scores: Any, rule: str, target_fpr: float = 0.01) -> float:
    """The decision threshold on the image score, from the scores of normal images only.

    train_max: the highest score (of the normal training images: no training image is missed as normal).
    holdout_fpr: the lowest threshold at which at most `target_fpr` of these normal images (held out of training)
    score >= it; when even one image is more than the target allows, just above the highest score."""
    s = _float_values(_to_numpy(normal_scores, "normal_scores").reshape(-1), "normal_scores")
    if s.size == 0:
        raise ValueError("decision_threshold: no normal image scores")
    if rule == "train_max":
        return float(s.max())
    if rule != "holdout_fpr":
        raise ValueError(f"decision_threshold: unknown rule {rule!r} (expected train_max or holdout_fpr)")
    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"decision_threshold: target_fpr must be in (0, 1), got {target_fpr}")
    values = np.unique(s)  # ascending; the share of scores >= values[i] falls as i grows
    share = (s.size - np.searchsorted(np.sort(s), values, side="left")) / s.size
    ok = np.nonzero(share <= target_fpr)[0]
    return float(values[ok[0]]) if ok.size else float(np.nextafter(s.max(), np.inf))


def decision_metrics(scores: Any, labels: Any, threshold: float) -> dict[str, float]:
    """Defect recall and false-positive rate of the decision score >= threshold; a rate without images to count
    is left out."""
    s, y = _scores_labels(scores, labels)
    flagged = s >= threshold
    out = {}
    if y.any():
        out["defect_recall"] = float(flagged[y].mean())
    if (~y).any():
        out["false_positive_rate"] = float(flagged[~y].mean())
    return out
