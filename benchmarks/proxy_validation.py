"""Choose settings without the test set: a validation category made only of training data.

    python benchmarks/proxy_validation.py --data ../shared/data/magnetic_tile --dtd ../shared/data/dtd \
        --out val_mt --variant base --variant wide "model.head_widths=[64,128,256]"

The proxy category (written once under <out>/proxy, symlinks where possible):
- train/good: the normal training images minus a seeded hold-out (`--holdout`, default 15 %);
- test/good: the held-out normal images (never trained on, never in the prototypes);
- test/perlin_unseen_textures: one Perlin anomaly per held-out image, filled with textures of DTD classes the
  proxy runs never train with (`--val-texture-classes` of them, seeded);
- test/extended_unseen_defects: one extended anomaly per held-out image, cut from the *second* half of the real
  few-shot anomalies; the proxy runs train on the first half only (so these defects are unseen too);
- test/<defect>: the first half of the few-shot anomalies, which the proxy runs train on (excluded from scoring);
- test/swap_unseen_shapes (added to an existing proxy when missing): per held-out image, a band across the
  image (one side of a line within ±15° of horizontal, 10–40 % of the image, the shape of the `uneven` few-shot
  anomalies) taken from *another held-out* image at opacity U(0.2, 1). Training's region swaps
  (synthesis.swap_fraction) are Perlin blobs from training images: these shapes and images are unseen. Scored
  on its own; "all" keeps its first meaning (normals, Perlin, extended), so older rows stay comparable.
- test/extended_in_context (added to an existing proxy when missing): the same pastes as
  extended_unseen_defects (same defect, same random draws, same mask), each shifted to the level of its new
  surroundings (`synthesis.extended_anomaly(..., match_context=True)`): the defect keeps its contrast to its own
  surface, as a real one in place does, where the plain paste carries the brightness of the tile it was cut from
  (dark cracks from a bright tile pasted bright on a dark one). Scored on its own, like the swaps.
The few-shot anomalies are the ones the real benchmark trains on (same `select_few_shot` rule and seed), so the
real test set is never read beyond them.

Every variant is trained on the proxy with train.py's code path, then scored on the proxy test split, per
subset (held-out normals vs each synthetic kind) and for several image-score rules (Gaussian σ × top-k mean).
Prints one table per variant and writes <out>/proxy_validation.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import cv2
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

log = logging.getLogger("proxy_validation")

PERLIN = "perlin_unseen_textures"
EXTENDED = "extended_unseen_defects"
SWAP = "swap_unseen_shapes"
IN_CONTEXT = "extended_in_context"
APART = (SWAP, IN_CONTEXT)  # subsets added later: scored on their own, never part of "all"
SIGMAS = (0.0, 2.0, 4.0, 8.0)
TOPKS = (1, 10, 100, 1000)


def _link(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if not os.path.lexists(dst):
        os.symlink(os.path.abspath(src), dst)


def _save_rgb(path: str, image: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, cv2.cvtColor((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), cv2.COLOR_RGB2BGR))


def _save_mask(path: str, mask: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, (mask > 0).astype(np.uint8) * 255)


def texture_classes(dtd: str) -> tuple[str, list[str]]:
    """(folder holding the class folders, sorted class names): DTD's images/<class> or <class> directly."""
    base = os.path.join(dtd, "images") if os.path.isdir(os.path.join(dtd, "images")) else dtd
    classes = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)) and not d.startswith("."))
    if len(classes) < 2:
        raise SystemExit(f"{base}: expected at least 2 texture class folders, found {classes}")
    return base, classes


def build_proxy(data: str, dtd: str, out: str, holdout: float, val_classes: int, shots: int, split_seed: int,
                seed: int, size: int) -> dict:
    """Write the proxy category, the training and validation texture folders; returns their description."""
    from prnet.datasets import TextureSource, load_mask, load_rgb, scan_split, select_few_shot
    from prnet.datasets.synthesis import extended_anomaly, perlin_anomaly
    from prnet.utils import numpy_rng

    data = os.path.abspath(data.rstrip("/"))
    root, category = os.path.split(data)
    proxy_root = os.path.join(os.path.abspath(out), "proxy")
    cat = os.path.join(proxy_root, category)
    info_path = os.path.join(proxy_root, "proxy.json")
    if os.path.exists(info_path):
        info = json.load(open(info_path))
        log.info("reusing the proxy category in %s", proxy_root)
        return {**info, "root": proxy_root, "dtd_fit": os.path.join(proxy_root, "dtd_fit")}
    if os.path.exists(cat):
        raise SystemExit(f"{cat} exists but has no proxy.json (an interrupted build?): remove it and rerun")
    hw = (size, size)
    normals = scan_split(root, category, "train")
    order = numpy_rng(seed, 0x401D).permutation(len(normals))
    n_hold = max(1, int(round(holdout * len(normals))))
    held = sorted(order[:n_hold].tolist())
    fit = sorted(order[n_hold:].tolist())
    for i in fit:
        _link(normals[i].path, os.path.join(cat, "train", "good", os.path.basename(normals[i].path)))
    for i in held:
        _link(normals[i].path, os.path.join(cat, "test", "good", os.path.basename(normals[i].path)))

    base, classes = texture_classes(dtd)
    perm = numpy_rng(seed, 0x7E87).permutation(len(classes))
    val_tex = sorted(classes[j] for j in perm[:val_classes])
    fit_tex = sorted(c for c in classes if c not in val_tex)
    for c in fit_tex:
        _link(os.path.join(base, c), os.path.join(proxy_root, "dtd_fit", c))
    for c in val_tex:
        _link(os.path.join(base, c), os.path.join(proxy_root, "dtd_val", c))

    real = select_few_shot(scan_split(root, category, "test"), shots, split_seed)
    half = (len(real) + 1) // 2
    train_shots, val_shots = real[:half], real[half:]
    if not val_shots:
        raise SystemExit(f"{data}: need at least 2 defective test images for the proxy, found {len(real)}")
    for s in train_shots:
        stem = os.path.splitext(os.path.basename(s.path))[0]
        _link(s.path, os.path.join(cat, "test", s.defect, os.path.basename(s.path)))
        _link(s.mask_path, os.path.join(cat, "ground_truth", s.defect, stem + "_mask" +
                                        os.path.splitext(s.mask_path)[1]))
    defects = [(load_rgb(s.path, hw), load_mask(s.path if s.mask_path is None else s.mask_path, hw))
               for s in val_shots]
    textures = TextureSource(os.path.join(proxy_root, "dtd_val"))
    for k, i in enumerate(held):
        image = load_rgb(normals[i].path, hw)
        stem = f"{k:04d}"
        img, mask = perlin_anomaly(image, textures, numpy_rng(seed, 0xBE41, k))
        _save_rgb(os.path.join(cat, "test", PERLIN, stem + ".png"), img)
        _save_mask(os.path.join(cat, "ground_truth", PERLIN, stem + "_mask.png"), mask)
        d_img, d_mask = defects[k % len(defects)]
        img, mask = extended_anomaly(image, d_img, d_mask, numpy_rng(seed, 0xE47D, k))
        _save_rgb(os.path.join(cat, "test", EXTENDED, stem + ".png"), img)
        _save_mask(os.path.join(cat, "ground_truth", EXTENDED, stem + "_mask.png"), mask)
    info = {"category": category, "seed": seed, "fit_normals": len(fit), "held_out_normals": len(held),
            "fit_textures": fit_tex, "val_textures": val_tex,
            "train_shots": [s.name for s in train_shots], "val_shots": [s.name for s in val_shots]}
    with open(info_path, "w", encoding="utf-8") as fh:
        json.dump(info, fh, indent=2)
    info = {**info, "root": proxy_root, "dtd_fit": os.path.join(proxy_root, "dtd_fit")}
    log.info("proxy category: %d fit normals, %d held out; textures fit %s / val %s; shots train %s / val %s",
             len(fit), len(held), fit_tex, val_tex, info["train_shots"], info["val_shots"])
    return info


def band_mask(hw: tuple[int, int], rng: np.random.Generator, area: tuple[float, float] = (0.1, 0.4),
              max_angle: float = 15.0) -> np.ndarray:
    """float32 {0,1} H×W: the pixels above (or below) a line at U(-max_angle°, max_angle°) from horizontal placed
    so that a fraction a ~ U(area) of the image is inside (never empty)."""
    h, w = hw
    a = float(rng.uniform(*area))
    slope = np.tan(np.deg2rad(rng.uniform(-max_angle, max_angle)))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    signed = yy - slope * (xx - w / 2.0)  # constant along the line
    if rng.random() < 0.5:
        signed = -signed  # the band at the bottom
    mask = signed <= np.quantile(signed, a)
    return mask.astype(np.float32)


def add_swap_subset(info: dict, seed: int, size: int) -> None:
    """Write test/swap_unseen_shapes into the proxy if it is missing (see the module docstring)."""
    from prnet.datasets import load_rgb
    from prnet.datasets.synthesis import blend
    from prnet.utils import numpy_rng

    cat = os.path.join(info["root"], info["category"])
    if os.path.isdir(os.path.join(cat, "test", SWAP)):
        return
    good = os.path.join(cat, "test", "good")
    held = sorted(os.listdir(good))  # k = 0.. as build_proxy numbers the held-out images
    if len(held) < 2:
        raise SystemExit(f"{good}: region swaps need at least 2 held-out normal images")
    hw = (size, size)
    tmp = os.path.join(cat, "test", SWAP + ".tmp"), os.path.join(cat, "ground_truth", SWAP + ".tmp")
    for k, f in enumerate(held):
        rng = numpy_rng(seed, 0x5A4B, k)
        j = int(rng.integers(0, len(held) - 1))
        j += j >= k  # another held-out image
        image, other = load_rgb(os.path.join(good, f), hw), load_rgb(os.path.join(good, held[j]), hw)
        mask = band_mask(hw, rng)
        img = blend(image, other, mask, 1.0 - float(rng.uniform(0.0, 0.8)))
        _save_rgb(os.path.join(tmp[0], f"{k:04d}.png"), img)
        _save_mask(os.path.join(tmp[1], f"{k:04d}_mask.png"), mask)
    os.replace(tmp[1], os.path.join(cat, "ground_truth", SWAP))  # the masks first: a test folder implies its masks
    os.replace(tmp[0], os.path.join(cat, "test", SWAP))
    log.info("proxy: %d region swaps (bands from other held-out images) in %s", len(held), SWAP)


def add_in_context_subset(info: dict, data: str, seed: int, size: int) -> None:
    """Write test/extended_in_context into the proxy if it is missing (see the module docstring); `data` is the
    real category folder the proxy was made from (the validation few-shot anomalies are read from it)."""
    from prnet.datasets import load_mask, load_rgb, scan_split
    from prnet.datasets.synthesis import extended_anomaly
    from prnet.utils import numpy_rng

    cat = os.path.join(info["root"], info["category"])
    if os.path.isdir(os.path.join(cat, "test", IN_CONTEXT)):
        return
    good = os.path.join(cat, "test", "good")
    held = sorted(os.listdir(good))  # k = 0.. as build_proxy numbers the held-out images
    hw = (size, size)
    root, category = os.path.split(os.path.abspath(data.rstrip("/")))
    found = {s.name: s for s in scan_split(root, category, "test")}
    missing = [n for n in info["val_shots"] if n not in found]
    if missing:
        raise SystemExit(f"{data}: the proxy's validation anomalies {missing} are not in its test split")
    shots = [(load_rgb(found[n].path, hw), load_mask(found[n].path if found[n].mask_path is None
                                                      else found[n].mask_path, hw)) for n in info["val_shots"]]
    tmp = os.path.join(cat, "test", IN_CONTEXT + ".tmp"), os.path.join(cat, "ground_truth", IN_CONTEXT + ".tmp")
    for k, f in enumerate(held):
        d_img, d_mask = shots[k % len(shots)]
        img, mask = extended_anomaly(load_rgb(os.path.join(good, f), hw), d_img, d_mask, numpy_rng(seed, 0xE47D, k),
                                     match_context=True)  # build_proxy's draws for extended image k
        _save_rgb(os.path.join(tmp[0], f"{k:04d}.png"), img)
        _save_mask(os.path.join(tmp[1], f"{k:04d}_mask.png"), mask)
    os.replace(tmp[1], os.path.join(cat, "ground_truth", IN_CONTEXT))
    os.replace(tmp[0], os.path.join(cat, "test", IN_CONTEXT))
    log.info("proxy: %d pastes at the level of their new surroundings in %s", len(held), IN_CONTEXT)


def overrides(args, info: dict, name: str, extra: list[str]) -> list[str]:
    run = os.path.join(os.path.abspath(args.out), "runs", name)
    return [
        f"data.root={info['root']}", f"data.classes=[{info['category']}]", f"data.image_size={args.size}",
        f"data.dtd_root={info['dtd_fit']}", f"data.num_anomalies={len(info['train_shots'])}",
        f"data.few_shot=[{', '.join(info['train_shots'])}]",
        f"output_dir={run}", f"prototypes.dir={os.path.join(run, 'prototypes')}",
        f"model.backbone={args.backbone}", f"model.backbone_weights={args.weights}",
        f"model.head_widths={args.widths}", f"train.epochs={args.epochs}", f"train.batch_size={args.batch}",
        f"train.lr={args.lr}", f"train.workers={args.workers}", f"train.device={args.device}", f"seed={args.seed}",
        "train.overwrite=true", *extra,
    ]


def extended_sources(names: list[str], val_shots: list[str]) -> np.ndarray:
    """The defect type each extended validation image was cut from ('' for other images): image k (file
    <k:04d>.png) took val_shots[k % len(val_shots)], as build_proxy made it."""
    out = []
    for n in names:
        d, f = n.split("/", 1)
        out.append(val_shots[int(os.path.splitext(f)[0]) % len(val_shots)].split("/")[0] if d == EXTENDED else "")
    return np.array(out)


def score_table(maps: np.ndarray, labels: np.ndarray, masks: np.ndarray, defects: np.ndarray,
                device: torch.device, sources: np.ndarray | None = None) -> dict:
    """Image AUROC per (subset, σ, top-k) and the five metrics per subset at each σ (top-100 mean image score);
    with `sources` (extended_sources), also the five metrics at σ = 0 of the extended images cut from each defect
    type, next to the held-out normals ('extended:<type>')."""
    from prnet.engine.evaluator import gaussian_smooth, image_scores
    from prnet.metrics import compute_metrics, image_auroc

    out: dict = {"image_auroc": {}, "metrics": {}}
    normal = defects == "good"
    subsets = {"all": ~np.isin(defects, APART), PERLIN: normal | (defects == PERLIN),
               EXTENDED: normal | (defects == EXTENDED)}
    for sub in APART:
        if (defects == sub).any():
            subsets[sub] = normal | (defects == sub)
    for sigma in SIGMAS:
        sm = torch.cat([gaussian_smooth(torch.from_numpy(maps[i:i + 64])[:, None].to(device), sigma).cpu()
                        for i in range(0, len(maps), 64)])
        for k in TOPKS:
            s = image_scores(sm, k).numpy()
            for sub, sel in subsets.items():
                out["image_auroc"][f"{sub}|sigma={sigma:g}|top{k}"] = float(image_auroc(s[sel], labels[sel]))
        s100 = image_scores(sm, 100).numpy()
        for sub, sel in subsets.items():
            m = compute_metrics(s100[sel], labels[sel], sm[:, 0].numpy()[sel], masks[sel])
            out["metrics"][f"{sub}|sigma={sigma:g}"] = {k: float(v) for k, v in m.items()}
        if sources is not None and sigma == 0.0:
            for src in sorted(set(sources) - {""}):
                sel = normal | (sources == src)
                m = compute_metrics(s100[sel], labels[sel], sm[:, 0].numpy()[sel], masks[sel])
                out["metrics"][f"{EXTENDED}:{src}|sigma=0"] = {k: float(v) for k, v in m.items()}
    return out


def run_variant(args, info: dict, name: str, extra: list[str], previous: dict | None = None) -> dict:
    import train as train_script
    from prnet.config import load_config
    from prnet.datasets import build_test_dataset
    from prnet.engine.checkpoint import model_from_checkpoint
    from prnet.engine.evaluator import run_inference
    from prnet.utils import resolve_device

    ov = overrides(args, info, name, extra)
    cfg = load_config(None, ov)
    ckpt = os.path.join(cfg.output_dir, info["category"], "last.pt")
    if args.rescore:
        if not os.path.exists(ckpt):
            raise SystemExit(f"--rescore: variant {name} has no trained model at {ckpt}")
        minutes = float((previous or {}).get("train_minutes", float("nan")))
        extra = list((previous or {}).get("overrides", extra))
    else:
        t0 = time.time()
        if train_script.main(ov) != 0:
            raise SystemExit(f"variant {name}: training failed")
        minutes = (time.time() - t0) / 60.0
    device = resolve_device(args.device)
    model, cfg, _ = model_from_checkpoint(ckpt, device)
    cfg.eval.sigma = 0.0  # raw maps: the σ / top-k rules are applied below
    test = build_test_dataset(cfg, info["category"])
    raw = run_inference(model, test, cfg, device, progress=False)
    defects = np.array([s.defect for s in test.samples])
    sources = extended_sources([s.name for s in test.samples], info["val_shots"])
    table = score_table(raw["maps"], raw["labels"], raw["masks"], defects, device, sources)
    return {"variant": name, "overrides": extra, "train_minutes": minutes, **table}


def summary_lines(row: dict) -> list[str]:
    lines = [f"== {row['variant']} ({' '.join(row['overrides']) or 'as given'}), {row['train_minutes']:.1f} min"]
    lines.append("  image AUROC (all / perlin / extended) by sigma, top-k:")
    for sigma in SIGMAS:
        cells = []
        for k in TOPKS:
            vals = [row["image_auroc"][f"{sub}|sigma={sigma:g}|top{k}"] for sub in ("all", PERLIN, EXTENDED)]
            cells.append(f"top{k}: " + "/".join(f"{v:.3f}" for v in vals))
        lines.append(f"    sigma={sigma:g}  " + "  ".join(cells))
    for sigma in SIGMAS:
        m = row["metrics"][f"all|sigma={sigma:g}"]
        lines.append(f"  all, sigma={sigma:g}: pixel AUROC {m['pixel_auroc']:.3f}  pixel AP {m['pixel_ap']:.3f}  "
                     f"AUPRO {m['aupro']:.3f}")
    for sub in APART:
        if f"{sub}|sigma=0" in row["metrics"]:
            m = row["metrics"][f"{sub}|sigma=0"]
            lines.append(f"  {sub}, sigma=0: image AUROC {m['image_auroc']:.3f}  pixel AUROC {m['pixel_auroc']:.3f}  "
                         f"pixel AP {m['pixel_ap']:.3f}  AUPRO {m['aupro']:.3f}")
    per_source = sorted(k for k in row["metrics"] if k.startswith(EXTENDED + ":"))
    if per_source:
        lines.append("  extended, by the defect type cut from (sigma=0): image AUROC / pixel AUROC / AUPRO")
        for k in per_source:
            m = row["metrics"][k]
            src = k.split("|")[0].split(":", 1)[1]
            lines.append(f"    {src:<10} {m['image_auroc']:.3f} / {m['pixel_auroc']:.3f} / {m['aupro']:.3f}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="category folder in the MVTec AD layout")
    p.add_argument("--dtd", required=True, help="DTD folder (class folders, or images/<class>)")
    p.add_argument("--out", required=True)
    p.add_argument("--variant", nargs="+", action="append", metavar=("NAME", "KEY=VALUE"),
                   help="a run: its name, then config overrides (repeat the flag for several runs)")
    p.add_argument("--holdout", type=float, default=0.15)
    p.add_argument("--val-texture-classes", type=int, default=3)
    p.add_argument("--shots", type=int, default=10, help="the real benchmark's few-shot count (split in halves)")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--weights", default="package")
    p.add_argument("--widths", default="[32, 64, 128]")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rescore", action="store_true",
                   help="score the variants' trained models again (current scoring), without training")
    args = p.parse_args(argv)

    from prnet.utils import atomic_write, setup_logging

    setup_logging()
    os.makedirs(args.out, exist_ok=True)
    info = build_proxy(args.data, args.dtd, args.out, args.holdout, args.val_texture_classes, args.shots,
                       args.split_seed, args.seed, args.size)
    add_swap_subset(info, int(info.get("seed", args.seed)), args.size)  # the proxy's own seed
    add_in_context_subset(info, args.data, int(info.get("seed", args.seed)), args.size)
    result_path = os.path.join(args.out, "proxy_validation.json")
    results = json.load(open(result_path)) if os.path.exists(result_path) else {"proxy": info, "rows": []}
    for spec in args.variant or [["base"]]:
        name, extra = spec[0], spec[1:]
        previous = next((r for r in results["rows"] if r["variant"] == name), None)
        row = run_variant(args, info, name, extra, previous)
        results["rows"] = [r for r in results["rows"] if r["variant"] != name] + [row]

        def write(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(results, fh, indent=2)

        atomic_write(result_path, write)  # after every variant: nothing lost if a later one fails
        print("\n".join(summary_lines(row)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
