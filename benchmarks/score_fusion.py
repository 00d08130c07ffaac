"""Image scores that combine PRNet's learned map with its prototype residual, scored on a trained run.

    python benchmarks/score_fusion.py --checkpoint RUN/<category>/last.pt [--data ROOT | --test-data ROOT] \
        [--out fusion.json]

The checkpoint brings its config (data root, category, image size, few-shot draw) and its model: backbone,
prototype bank and head. For the test split (minus the few-shot anomalies, as the evaluation) and for the normal
training images it computes

- the learned map p (sigmoid of the head, `eval.sigma` as trained) and its image score s_p (top-k mean, `eval.topk`);
- the prototype residual r: per scale, the squared distance of each feature to its nearest prototype map summed
  over channels, upsampled bilinearly to the image size and divided by that scale's mean over the normal training
  images; the scales averaged. Training images get their held-out residual (`prototypes.leave_one_out`), so their
  statistics are those of unseen normal images. Its image score s_r: the top-k mean of r.

- the nearest-neighbour score s_knn: the image score of real_data.py's PatchCore-style baseline (its settings on the
  run's backbone and seed), its memory made from the run's normal training images; each training image is scored
  without the memory rows taken from itself (`PatchCore.predict(..., held_out=...)`), as an unseen normal image.

and scores these rules (no test label is used by any of them; the normal-image statistics are the training images'):

- prnet: s_p (the released rule);  top10: the top-10 mean of p;  residual: s_r;  knn: s_knn (the baseline's);
- prod<a>: log s_p + a·log s_r, a in 0.5, 1, 2 (the product s_p · s_r^a: invariant to the scale of either);
- zlog: the sum of log s_p and log s_r, each standardised by the mean and std over the normal training images;
- map<a>: the top-k mean of the pixel-wise product p · r^a (a in 0.5, 1), also scored at pixel level;
- zknn: the sum of log s_p and log s_knn, each standardised by the mean and std over the normal training images;
- zsum / zmax: the same standardisation applied to the released score (s_m, the top-k mean of map0.5's p · r^0.5)
  and to s_knn, then summed (zsum) or the larger of the two taken (zmax: an image is as anomalous as the detector
  that finds it most unusual); zsum<w> (w in KNN_WEIGHTS): z(log s_m) + w·z(log s_knn), the distance's part
  weighed down;
- zsum0.25k<k> (k in TOPK_RULES, round 23): zsum0.25 with s_m the top-k mean of map0.5's p · r^0.5 for a smaller k
  than eval.topk (its training statistics with the same k): a defect of a few pixels is averaged with fewer normal
  ones;
- pz<w> (w in PIXEL_WEIGHTS; a pixel-level candidate, round 14): the head's map fused with the baseline's
  nearest-neighbour map pixel by pixel, z(log p) + w·z(log d_knn), each log standardised by the mean and std over
  every pixel of the normal training images' maps (p: the plain forward pass, as for the image scores' statistics;
  d_knn: held out, as s_knn); scored at pixel level (its image score, the top-k mean of the fused map, is not a
  candidate);
- pmed, map0.5med, knnmed (pixel-level candidates, round 17): the head's map p, map0.5's p · r^0.5 and the
  baseline's map (knnmed, with the nearest-neighbour rules), each minus its own median over the image's pixels, so
  that a map raised over a whole image outlines only what stands out within it; scored at pixel level (their image
  scores, the top-k mean of the shifted map, are not candidates);
- prank, map0.5rank, knnrank (pixel-level candidates, round 18; need the nearest-neighbour memory): the head's map
  p, map0.5's p · r^0.5 and the baseline's map, each times the image's rank among the normal training images,
  F(s) = (1 + #{training images with a held-out score below s}) / (n + 1), where s is the released image score
  (map_residual_knn: z(log s_m) + eval.knn_weight · z(log s_knn)) for prank and map0.5rank and the baseline's own
  score for knnrank; scored at pixel level;
- pq99rank (a pixel-level candidate, round 33; needs the nearest-neighbour memory): pq99's map (the library's
  default anomaly map, head_knn, up to a constant factor) times the same rank F(s) of the released image score as
  prank: an image the score finds as ordinary as a normal training image has its whole map pulled down, one it ranks
  above every normal training image keeps it; scored at pixel level;
- pq99, pq999 (pixel-level candidates, round 21; need the nearest-neighbour memory): p + q · F(d_knn), the head's
  map plus the baseline's map put through F, the empirical distribution function of its values over every pixel of
  the normal training images' held-out maps (a seeded sample of CDF_SAMPLE pixels), weighed by q, the 99th (pq99)
  or 99.9th (pq999) percentile of p over every pixel of the normal training images' maps. The distance can lift a
  pixel by at most q, the head's own upper range on normal surface: it reorders the pixels the head leaves within
  that range and cannot pass a pixel the head marks well above it; scored at pixel level;
- pqmax (a pixel-level candidate, round 39; needs the nearest-neighbour memory): max(p, Q_p(F(d_knn))), the head's
  map or the baseline's map put on the head's scale, whichever is higher: F as for pq99, Q_p the quantile function
  of p over the same normal training pixels (a seeded sample of CDF_SAMPLE of them), so that on normal surface both
  terms have the head's distribution. A pixel either map finds far from normal stands out; unlike pq99's sum, a
  pixel the head marks is not pulled below normal pixels by a distance that misses it; scored at pixel level;
- with --knn-size H,W (round 28): knns, the nearest-neighbour score s_knn read at H×W instead of the run's image
  size (its own memory of the normal training images read at that size, each training image held out as above), and
  zsum0.25k25s, the default image score (zsum0.25k25) with that score in place of s_knn: the distance to normal
  reads the image at its own aspect, the head as trained;
- with --flips, flip2 / flip4: the head run on its inputs mirrored left-right (flip2) or also up-down and both
  (flip4), each map mirrored back and the probabilities averaged (p̄), scored as map0.5 (top-k mean of p̄ · r^0.5);
  their pixel metrics are p̄'s. The backbone and the prototype match run once (PRNet.encode), the head per mirror.

Prints image AUROC per rule (per test defect type too) and the five metrics of prnet, residual, map<a>, flip* and
knn (the baseline's own map); `--pixel-groups` adds every map's pixel AUROC and AUPRO per group;
`--out` writes them as JSON (`--per-image`: with every test image's scores, and the fused rules' raw parts for the
test and the held-out training images, `raw_parts`). `--subsets` groups defect types as
proxy_validation.py does and adds `real_defects`: the normals and every real defect image of the proxy that the run
did not train on (its `real_unseen_defects`, and for a run without real anomalies the other half too), pooled.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from prnet.config import image_hw
from prnet.datasets import build_test_dataset, normal_train_set
from prnet.engine.checkpoint import load_checkpoint, model_from_checkpoint
from prnet.engine.evaluator import gaussian_smooth
from prnet.engine.prototypes import PrototypeMismatchError, expected_meta, load_prototypes, prototype_path
from prnet.metrics import compute_metrics, image_auroc
from prnet.provenance import provenance
from prnet.utils import atomic_write, resolve_device, setup_logging
from proxy_validation import EXTENDED, PERLIN, SYNTHETIC
from real_data import parse_size

log = logging.getLogger("score_fusion")

EPS = 1e-8
KNN_WEIGHTS = (0.25, 0.5)  # the zsum<w> rules: the released score's z plus w times the distance's z
PER_IMAGE_RULES = ("pmed", "map0.5med", "knnmed", "prank", "map0.5rank", "knnrank", "pq99rank")  # per_image_maps' maps
TOPK_RULES = {"zsum0.25k10": (0.25, 10), "zsum0.25k25": (0.25, 25)}  # name -> (distance weight, top-k of s_m)
SIZED_RULES = {"zsum0.25k25s": (0.25, 25)}  # --knn-size: as TOPK_RULES, s_knn read at that size
PIXEL_WEIGHTS = (0.25, 0.5, 1.0)  # the pz<w> maps: the head map's pixel z plus w times the distance map's
CDF_QUANTILES = {"pq99": 0.99, "pq999": 0.999}  # the pq<q> maps: p + (this percentile of normal p) · F(d_knn)
CDF_SAMPLE = 1_000_000  # training pixels sampled (seed 0) for the distance's distribution function


# --flips: the head run on its inputs (features, residuals, bottleneck, patch distance) mirrored along these dims, each
# map mirrored back, the probabilities averaged; the backbone and the prototype match run once
FLIPS = {"flip2": [(), (-1,)], "flip4": [(), (-1,), (-2,), (-2, -1)]}


REAL_POOLED = "real_defects"  # --subsets: the proxy's real defect images (any folder it did not make), pooled


def score_groups(defects: np.ndarray, subsets: bool) -> dict:
    """{group: boolean selection of the test images}: "all", then each defect type with the normals; with `subsets`
    (a proxy's test split) "all" is the normals, Perlin and extended images as proxy_validation.py scores them, and
    REAL_POOLED gathers the normals and every real defect image (any type the proxy did not make)."""
    normal = defects == "good"
    groups = {"all": np.isin(defects, ["good", PERLIN, EXTENDED]) if subsets else np.ones(len(defects), bool)}
    for d in sorted(set(defects) - {"good"}):
        groups[d] = normal | (defects == d)
    real = ~np.isin(defects, ("good", *SYNTHETIC))
    if subsets and real.any():
        groups[REAL_POOLED] = normal | real
    return groups


def head_probability(model, feats, residuals, bottleneck, hw, dims: tuple, patch=None) -> torch.Tensor:
    """sigmoid of the head on encode's outputs mirrored along `dims`, mirrored back (dims=(): the plain head)."""
    if not dims:
        return torch.sigmoid(model.head(feats, residuals, bottleneck, hw, patch).float())
    flip = lambda t: torch.flip(t, dims)  # noqa: E731
    logits = model.head([flip(f) for f in feats], [flip(r) for r in residuals], flip(bottleneck), hw,
                        None if patch is None else flip(patch))
    return torch.flip(torch.sigmoid(logits.float()), dims)


def flip_averages(model, feats, residuals, bottleneck, hw, names: Sequence[str], patch=None) -> dict:
    """{name: N×1×H×W head probability} for "plain" (the head as it is) and the FLIPS rules (the head's mirrored
    maps averaged); each mirrored run is made once for all rules."""
    by_dims: dict = {}
    out = {}
    for name in names:
        group = [()] if name == "plain" else FLIPS[name]
        for dims in group:
            if dims not in by_dims:
                by_dims[dims] = head_probability(model, feats, residuals, bottleneck, hw, dims, patch)
        out[name] = by_dims[()] if len(group) == 1 else torch.stack([by_dims[d] for d in group]).mean(0)
    return out


@torch.no_grad()
def maps_of(model, dataset, *, sigma: float, batch: int, device: torch.device, leave_one_out: bool,
            desc: str, flips: Sequence[str] = ()) -> tuple[np.ndarray, list[np.ndarray], dict]:
    """(N×H×W learned maps, per scale the N×H×W residual maps, {flip rule: N×H×W averaged maps}) of a dataset;
    `leave_one_out`: the dataset is the bank's training set in its order, each image gets its held-out residual (the
    learned map is the plain forward pass's). The backbone and the prototype match run once per batch (the match
    twice for held-out residuals)."""
    maps, res = [], [[] for _ in range(model.bank.num_scales)]
    flipped = {name: [] for name in flips}
    loader = DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=0)
    start = 0
    for b in tqdm(loader, desc=desc, leave=False):
        x = b["image"].to(device)
        n, hw = x.shape[0], (x.shape[-2], x.shape[-1])
        feats, residuals, bottleneck, patch = model.encode(x)
        probs = flip_averages(model, feats, residuals, bottleneck, hw, ["plain", *flips], patch)
        maps.append(gaussian_smooth(probs["plain"], sigma)[:, 0].cpu().numpy())
        for name in flips:
            flipped[name].append(gaussian_smooth(probs[name], sigma)[:, 0].cpu().numpy())
        if leave_one_out:  # the held-out residuals; a test image's are the ones the head was given
            residuals = model.bank(feats, torch.arange(start, start + n))
        start += n
        for i, d in enumerate(model.bank.distances(residuals, hw)):
            res[i].append(d[:, 0].cpu().numpy())
    return (np.concatenate(maps), [np.concatenate(r) for r in res],
            {name: np.concatenate(m) for name, m in flipped.items()})


def use_run_bank(model, cfg, category: str, checkpoint: str, device: torch.device) -> None:
    """Give `model` its run's prototype bank: the checkpoint holds the prototypes, the run's prototype file also each
    training image's cluster (held-out residuals need them); the file must be the one the checkpoint was trained
    with."""
    bank = run_prototypes(cfg, category).to(device)
    if any(a.shape != b.shape or not torch.equal(a, b) for a, b in zip(bank.prototypes, model.bank.prototypes)):
        raise SystemExit(f"{prototype_path(cfg, category)}: not the prototypes of {checkpoint}")
    model.bank = bank


def run_maps(model, train, test, *, sigma: float, batch: int, device: torch.device,
             flips: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
    """(p_train, r_train, p_test, r_test, {flip rule: test maps}): the learned maps and the prototype residual r of
    the normal training images (held out) and the test images (see the module docstring; r per scale over that
    scale's mean on the training images, the scales averaged)."""
    p_train, r_train, _ = maps_of(model, train, sigma=sigma, batch=batch, device=device, leave_one_out=True,
                                  desc="train normals")
    p_test, r_test, flipped = maps_of(model, test, sigma=sigma, batch=batch, device=device, leave_one_out=False,
                                      desc="test", flips=flips)
    scale = [r.mean() for r in r_train]
    return (p_train, np.mean([r / s for r, s in zip(r_train, scale)], axis=0), p_test,
            np.mean([r / s for r, s in zip(r_test, scale)], axis=0), flipped)


def topk_mean(maps: np.ndarray, k: int) -> np.ndarray:
    flat = torch.from_numpy(maps.reshape(len(maps), -1))
    return flat.topk(max(1, min(k, flat.shape[1])), dim=1).values.mean(1).numpy()


def fused_maps(p: np.ndarray, r: np.ndarray) -> dict:
    """The map<a> rules' pixel-wise products p · r^a."""
    return {"map0.5": p * np.sqrt(r), "map1": p * r}


def median_removed(maps: np.ndarray) -> np.ndarray:
    """Each N×H×W map minus its median over its own pixels (the *med rules)."""
    return maps - np.median(maps.reshape(len(maps), -1), axis=1).astype(maps.dtype)[:, None, None]


def rank_among(test: np.ndarray, train: np.ndarray) -> np.ndarray:
    """F(s) of the *rank rules for each test score: (1 + the number of training scores below it) / (n + 1)."""
    below = np.searchsorted(np.sort(train), test, side="left")
    return ((1.0 + below) / (len(train) + 1.0)).astype(np.float32)


def per_image_maps(p_test: np.ndarray, m_test: np.ndarray, p_train: np.ndarray, r_train: np.ndarray, k: int,
                   knn_weight: float, knn: tuple[np.ndarray, np.ndarray] | None = None,
                   knn_test_maps: np.ndarray | None = None, lifted: np.ndarray | None = None) -> dict:
    """The maps of rounds 17, 18 and 33 (module docstring): the head's map p and map0.5's `m_test` minus their
    median, and with the nearest-neighbour scores `knn` (test, held-out training) and the baseline's test maps also
    those times the image's rank by the released score (and the baseline's map minus its median and times its own
    rank); with `lifted` (pq99's test maps) also that map times the same rank (pq99rank)."""
    out = {"pmed": median_removed(p_test), "map0.5med": median_removed(m_test)}
    if knn is None or knn_test_maps is None:
        return out
    w = np.float32(knn_weight)
    sm_train = topk_mean(p_train * np.sqrt(r_train), k)
    released = (zscores(topk_mean(m_test, k), sm_train) + w * zscores(*knn),  # map_residual_knn, test and training
                zscores(sm_train, sm_train) + w * zscores(knn[1], knn[1]))
    rank = rank_among(*released)[:, None, None]
    out.update({"knnmed": median_removed(knn_test_maps), "prank": p_test * rank, "map0.5rank": m_test * rank,
                "knnrank": knn_test_maps * rank_among(*knn)[:, None, None]})
    if lifted is not None:
        out["pq99rank"] = lifted * rank
    return out


def zsum(*pairs: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Sum over (test scores, training-normal scores) pairs of log(test) standardised by the training logs."""
    return sum(zscores(test, train) for test, train in pairs)


def zscores(test: np.ndarray, train: np.ndarray) -> np.ndarray:
    """log(test) standardised by the mean and std of log(train) (the normal training images' scores)."""
    lt, ln = np.log(test + EPS), np.log(train + EPS)
    return (lt - ln.mean()) / (ln.std() + EPS)


def pixel_zscores(test: np.ndarray, train: np.ndarray) -> np.ndarray:
    """log(test maps) standardised by the mean and std of log over every pixel of the training maps (float64
    statistics; float32 result)."""
    ln = np.log(train.astype(np.float64) + EPS)
    mean, std = ln.mean(), ln.std()
    return ((np.log(test.astype(np.float64) + EPS) - mean) / (std + EPS)).astype(np.float32)


def pixel_fusions(p_test: np.ndarray, p_train: np.ndarray, k_test: np.ndarray, k_train: np.ndarray) -> dict:
    """The pz<w> maps: z(log p) + w·z(log d_knn) per pixel (see the module docstring)."""
    zp, zk = pixel_zscores(p_test, p_train), pixel_zscores(k_test, k_train)
    return {f"pz{w:g}": zp + np.float32(w) * zk for w in PIXEL_WEIGHTS}


def distribution_function(values: np.ndarray, train: np.ndarray, n: int = CDF_SAMPLE) -> np.ndarray:
    """F(values): the share of the training values at or below each value, from a seeded sample of n of them (all
    when there are fewer); float32, in [0, 1]."""
    ref = sorted_sample(train, n)
    return (np.searchsorted(ref, values.astype(np.float32), side="right") / ref.size).astype(np.float32)


def sorted_sample(train: np.ndarray, n: int) -> np.ndarray:
    """A seeded sample of n of the training values (all when there are fewer), sorted, float32."""
    flat = train.reshape(-1)
    if flat.size > n:
        flat = flat[np.random.default_rng(0).choice(flat.size, n, replace=False)]
    return np.sort(flat.astype(np.float32))


def quantile_lifts(p_test: np.ndarray, p_train: np.ndarray, k_test: np.ndarray, k_train: np.ndarray) -> dict:
    """The pq<q> maps: p + q · F(d_knn) per pixel (see the module docstring)."""
    f = distribution_function(k_test, k_train)
    return {name: p_test + np.float32(np.quantile(p_train, level)) * f for name, level in CDF_QUANTILES.items()}


def quantile_max(p_test: np.ndarray, p_train: np.ndarray, k_test: np.ndarray, k_train: np.ndarray,
                 n: int = CDF_SAMPLE) -> dict:
    """The pqmax map: max(p, Q_p(F(d_knn))) per pixel (see the module docstring); Q_p(u) is the smallest value of the
    seeded sample of n training pixels of p whose share at or below it is at least u."""
    ref_p, ref_k = sorted_sample(p_train, n), sorted_sample(k_train, n)
    below = np.searchsorted(ref_k, k_test.astype(np.float32), side="right").astype(np.int64)  # F = below / ref_k.size
    idx = np.maximum((below * ref_p.size + ref_k.size - 1) // ref_k.size - 1, 0)  # ceil(F · ref_p.size) - 1, exact
    return {"pqmax": np.maximum(p_test.astype(np.float32), ref_p[idx])}


def rules(p_test: np.ndarray, r_test: np.ndarray, p_train: np.ndarray, r_train: np.ndarray, k: int,
          fused: dict | None = None, knn: tuple[np.ndarray, np.ndarray] | None = None,
          knn_sized: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Image scores of every rule for the test images (see the module docstring); `fused`: fused_maps(p_test,
    r_test) when the caller has them already; `knn`: (test, held-out training) nearest-neighbour image scores;
    `knn_sized`: the same read at --knn-size."""
    sp, sr = topk_mean(p_test, k), topk_mean(r_test, k)
    tp, tr = topk_mean(p_train, k), topk_mean(r_train, k)
    lp, lr = np.log(sp + EPS), np.log(sr + EPS)
    out = {"prnet": sp, "top10": topk_mean(p_test, 10), "residual": sr}
    for a in (0.5, 1.0, 2.0):
        out[f"prod{a:g}"] = lp + a * lr
    out["zlog"] = zsum((sp, tp), (sr, tr))
    fused = fused if fused is not None else fused_maps(p_test, r_test)
    for name, m in fused.items():
        out[name] = topk_mean(m, k)
    m_train = p_train * np.sqrt(r_train)

    def z_m(k_m: int) -> np.ndarray:  # z(log s_m) with s_m the top-k_m mean of map0.5
        return zscores(topk_mean(fused["map0.5"], k_m), topk_mean(m_train, k_m))

    if knn is not None:
        out["knn"] = knn[0]
        out["zknn"] = zsum((sp, tp), knn)
        zm, zk = z_m(k), zscores(*knn)
        out["zsum"], out["zmax"] = zm + zk, np.maximum(zm, zk)
        for w in KNN_WEIGHTS:
            out[f"zsum{w:g}"] = zm + w * zk
        for name, (w, k_m) in TOPK_RULES.items():
            out[name] = z_m(k_m) + w * zk
    if knn_sized is not None:
        out["knns"] = knn_sized[0]
        for name, (w, k_m) in SIZED_RULES.items():
            out[name] = z_m(k_m) + w * zscores(*knn_sized)
    return out


def raw_parts(p_test: np.ndarray, r_test: np.ndarray, p_train: np.ndarray, r_train: np.ndarray, k: int,
              knn: tuple[np.ndarray, np.ndarray] | None = None,
              knn_sized: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """{part: (test values, held-out training values)}: s_m_k<k> (the top-k mean of map0.5's p · r^0.5, for the run's
    eval.topk `k` and the k of every TOPK_RULES and SIZED_RULES rule), s_r_k<k> (the top-k mean of the prototype
    residual r alone, the `residual` rule, for `k`) and the nearest-neighbour scores s_knn and, with --knn-size,
    s_knns; the zsum rules are z(log s_m_k<k>) + w · z(log s_knn[s]) with z from the training values (zscores)."""
    m_test, m_train = p_test * np.sqrt(r_test), p_train * np.sqrt(r_train)
    ks = sorted({k, *(k_m for _, k_m in TOPK_RULES.values()), *(k_m for _, k_m in SIZED_RULES.values())})
    out = {f"s_m_k{kk}": (topk_mean(m_test, kk), topk_mean(m_train, kk)) for kk in ks}
    out[f"s_r_k{k}"] = (topk_mean(r_test, k), topk_mean(r_train, k))
    if knn is not None:
        out["s_knn"] = knn
    if knn_sized is not None:
        out["s_knns"] = knn_sized
    return out


def sized_knn_scores(cfg, test_cfg, category: str, size, device: torch.device, batch: int,
                     names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """knn_scores with the normal training and test images read at `size` (an int or [h, w]) instead of the run's
    image size; the test images must be `names`, in that order (the run's own test set)."""
    cfg_k, test_k = copy.deepcopy(cfg), copy.deepcopy(test_cfg)
    cfg_k.data.image_size = test_k.data.image_size = size
    test, train = build_test_dataset(test_k, category), normal_train_set(cfg_k, category)
    if [s.name for s in test.samples] != list(names):
        raise SystemExit(f"--knn-size {size}: the test images read at that size are not the run's")
    scores_test, scores_train, _, _ = knn_scores(cfg_k, train, test, device, batch, train_maps=False)
    return scores_test, scores_train


def knn_scores(cfg, train, test, device: torch.device, batch: int,
               train_maps: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """(test, held-out training) image scores of the PatchCore-style baseline fitted on `train` (the run's backbone
    and seed), and its N×H×W anomaly maps of the test images and (held out; None unless `train_maps`) of the
    training images."""
    from patchcore import PatchCore

    model = PatchCore(cfg.model.backbone, cfg.model.backbone_weights, sigma=4.0, seed=cfg.seed, device=device)
    model.fit(DataLoader(train, batch_size=batch, shuffle=False, num_workers=0))
    maps_test, scores_test, maps_train, scores_train, start = [], [], [], [], 0
    for b in tqdm(DataLoader(test, batch_size=batch, shuffle=False, num_workers=0), desc="knn test", leave=False):
        m, sc = model.predict(b["image"])
        maps_test.append(m)
        scores_test.append(sc)
    for b in tqdm(DataLoader(train, batch_size=batch, shuffle=False, num_workers=0), desc="knn train", leave=False):
        n = b["image"].shape[0]
        m, sc = model.predict(b["image"], held_out=range(start, start + n))
        if train_maps:
            maps_train.append(m)
        scores_train.append(sc)
        start += n
    return (np.concatenate(scores_test), np.concatenate(scores_train), np.concatenate(maps_test),
            np.concatenate(maps_train) if train_maps else None)


def run_prototypes(cfg, category: str):
    """The run's prototype file, checked against the current training images. If only the digest of the training
    files differs (the same names in the same order: a file made when the digest was taken from modification times,
    or images edited since), the file is used with a warning. So is a file of an earlier format: its prototypes and
    clusters are what they were, and the residual means it lacks are computed here from the training images. The
    caller still compares its prototypes with the checkpoint's."""
    path, expected = prototype_path(cfg, category), expected_meta(cfg, category)
    tolerated = {"train_files": "the digest of the training files differs from when it was made (same names in the "
                                "same order)",
                 "format": "an earlier prototype file format"}
    try:
        return load_prototypes(path, expected)
    except PrototypeMismatchError as e:
        if not e.fields or set(e.fields) - set(tolerated):
            raise
        log.warning("%s: %s: using it", path, "; ".join(tolerated[f] for f in e.fields))
        return load_prototypes(path, {k: v for k, v in expected.items() if k not in tolerated})


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", help="data.root to read instead of the checkpoint's")
    p.add_argument("--test-data", metavar="ROOT",
                   help="read only the test images (same category) from this root; the normal training images "
                        "and the prototype file stay the checkpoint's, e.g. a run scored on another proxy's images")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--subsets", action="store_true",
                   help="proxy category: 'all' = normals + perlin_unseen_textures + extended_unseen_defects")
    p.add_argument("--test-as", metavar="CHECKPOINT",
                   help="take the test images of this run's evaluation (the test split minus its few-shot "
                        "anomalies), e.g. a 0-shot run on its 10-shot sibling's test set as real_data.py scores it")
    p.add_argument("--no-knn", dest="knn", action="store_false",
                   help="skip the nearest-neighbour rules (knn, zknn, zsum, zmax): no baseline memory is built")
    p.add_argument("--rules", type=lambda t: [r for r in t.split(",") if r],
                   help="score and report only these rules, e.g. prnet,map0.5 (a test split is scored with the rule "
                        "chosen on validation data and the released one, no other)")
    p.add_argument("--knn-size", type=parse_size, metavar="H,W",
                   help="also read the nearest-neighbour score at this size (rules knns and zsum0.25k25s)")
    p.add_argument("--flips", action="store_true",
                   help="add the rules flip2 and flip4: the head's map averaged over mirrored inputs (see FLIPS), "
                        "scored as map0.5; their pixel metrics are the averaged map's")
    p.add_argument("--pixel-groups", action="store_true",
                   help="also compute every map's pixel AUROC and AUPRO per group (defect type or proxy subset)")
    p.add_argument("--per-image", action="store_true",
                   help="also write every test image's name, defect type, label and score under each rule to --out")
    p.add_argument("--out")
    args = p.parse_args(argv)
    setup_logging()
    device = resolve_device(args.device)
    model, cfg, _ = model_from_checkpoint(args.checkpoint, device)
    if args.data:
        cfg.data.root = args.data
    category = cfg.data.classes[0]
    test_cfg = cfg
    if args.test_as:
        test_cfg = load_checkpoint(args.test_as)["config_obj"]
        if args.data:
            test_cfg.data.root = args.data
        if (test_cfg.data.root, test_cfg.data.classes[0], image_hw(test_cfg)) != (cfg.data.root, category,
                                                                                  image_hw(cfg)):
            raise SystemExit(f"--test-as {args.test_as}: another data set or image size than {args.checkpoint}")
    if args.test_data:
        test_cfg = copy.deepcopy(test_cfg)
        test_cfg.data.root = args.test_data
    test, train = build_test_dataset(test_cfg, category), normal_train_set(cfg, category)
    use_run_bank(model, cfg, category, args.checkpoint, device)
    p_train, r_train, p_test, r_test, flipped = run_maps(model, train, test, sigma=cfg.eval.sigma, batch=args.batch,
                                                         device=device, flips=list(FLIPS) if args.flips else [])
    fused = fused_maps(p_test, r_test)
    knn, knn_map = None, {}
    if args.knn:
        want_pz = not args.rules or any(r.startswith(("pz", "pq")) for r in args.rules)
        knn_test, knn_train, knn_map["knn"], knn_maps_train = knn_scores(cfg, train, test, device, args.batch,
                                                                         train_maps=want_pz)
        knn = (knn_test, knn_train)
        if want_pz:
            knn_map.update(pixel_fusions(p_test, p_train, knn_map["knn"], knn_maps_train))
            knn_map.update(quantile_lifts(p_test, p_train, knn_map["knn"], knn_maps_train))
            knn_map.update(quantile_max(p_test, p_train, knn_map["knn"], knn_maps_train))
        del knn_maps_train
    knn_sized = None
    if args.knn_size is not None:
        knn_sized = sized_knn_scores(cfg, test_cfg, category, args.knn_size, device, args.batch,
                                     [s.name for s in test.samples])
    scores = rules(p_test, r_test, p_train, r_train, cfg.eval.topk, fused, knn, knn_sized)
    shifted = {}  # seven more test-set maps: made only when a rule asks for them (or no --rules)
    if not args.rules or set(args.rules) & set(PER_IMAGE_RULES):
        shifted = per_image_maps(p_test, fused["map0.5"], p_train, r_train, cfg.eval.topk, cfg.eval.knn_weight,
                                 knn, knn_map.get("knn"), knn_map.get("pq99"))
    for name, m in shifted.items():  # pixel-level candidates, as pz<w>
        scores[name] = topk_mean(m, cfg.eval.topk)
    for name, m in knn_map.items():
        if name.startswith(("pz", "pq")):  # pixel-level candidates; their image score is only what compute_metrics asks
            scores[name] = topk_mean(m, cfg.eval.topk)
    for name, m in flipped.items():  # the averaged map, scored as the library's default (map0.5)
        scores[name] = topk_mean(fused_maps(m, r_test)["map0.5"], cfg.eval.topk)
    if args.rules:
        unknown = sorted(set(args.rules) - set(scores))
        if unknown:
            raise SystemExit(f"--rules: unknown {', '.join(unknown)} (known: {', '.join(scores)})")
        scores = {name: scores[name] for name in args.rules}

    labels = np.array([s.label for s in test.samples])
    defects = np.array([s.defect for s in test.samples])
    groups = score_groups(defects, args.subsets)
    result = {"checkpoint": args.checkpoint, "category": category, "test_images": len(test), "image_auroc": {},
              "metrics": {}, "provenance": provenance(device)}
    for name, s in scores.items():
        result["image_auroc"][name] = {g: float(image_auroc(s[sel], labels[sel])) for g, sel in groups.items()}
    masks = np.stack([test.mask(i) for i in range(len(test))]).astype(np.uint8)
    sel = groups["all"]
    pixel_maps = {name: m for name, m in {"prnet": p_test, "residual": r_test, **fused, **flipped, **knn_map,
                                          **shifted}.items()
                  if name in scores}
    for name, m in pixel_maps.items():
        met = compute_metrics(scores[name][sel], labels[sel], m[sel], masks[sel])
        result["metrics"][name] = {k: float(v) for k, v in met.items()}
    if args.pixel_groups:  # the maps' pixel AUROC and AUPRO on every group ("all" is computed above)
        pixel = ("pixel_auroc", "aupro")
        result["pixel_by_group"] = {}
        for name, m in pixel_maps.items():
            row = result["pixel_by_group"][name] = {}
            for g, gs in groups.items():
                met = result["metrics"][name] if g == "all" else compute_metrics(scores[name][gs], labels[gs], m[gs],
                                                                                 masks[gs])
                row[g] = {k: float(met[k]) for k in pixel if k in met}
    names = list(groups)
    print(f"{category}: image AUROC per rule; groups: {', '.join(names)}")
    for name, row in result["image_auroc"].items():
        print(f"  {name:<9} " + " ".join(f"{row[g]:.3f}" for g in names))
    for name, met in result["metrics"].items():
        print(f"  {name:<9} " + " ".join(f"{k} {v:.3f}" for k, v in met.items()))
    if args.per_image:
        result["images"] = [{"name": smp.name, "defect": smp.defect, "label": int(smp.label),
                             "scores": {name: float(s[i]) for name, s in scores.items()}}
                            for i, smp in enumerate(test.samples)]
        # the fused rules' raw parts, test and held-out training images: other weights can be scored from them
        parts = raw_parts(p_test, r_test, p_train, r_train, cfg.eval.topk, knn, knn_sized)
        result["raw_parts"] = {side: {name: [float(x) for x in v[i]] for name, v in parts.items()}
                               for i, side in enumerate(("test", "train"))}
    if args.out:
        atomic_write(args.out, lambda tmp: json.dump(result, open(tmp, "w", encoding="utf-8"), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
