"""Reports: results tables, the training log, loss curves, heat-map overlays and example grids.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend state, no
display needed); overlays are plain numpy/OpenCV and are RGB uint8. Every file is written atomically except
the training log, which is appended to and flushed row by row.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
from typing import Any, Optional, Sequence

import cv2
import numpy as np

from prnet.metrics import DECISION_KEYS, METRIC_KEYS
from prnet.utils import atomic_write

log = logging.getLogger(__name__)

# the results table: the threshold-free metrics, then the rates at the stored decision threshold
TABLE_KEYS = METRIC_KEYS + DECISION_KEYS
PRED_COLOUR = (255, 255, 255)  # outline of the predicted region (map >= threshold): white, visible on jet
GT_COLOUR = (0, 255, 0)  # outline of the ground truth


# ---------------------------------------------------------------------------------------------- tables
def write_results_tables(rows: list[dict], out_dir: str, metric_keys: Sequence[str] = METRIC_KEYS) -> str:
    """Write out_dir/results.csv (full precision) and out_dir/results.md (3 decimals): one row per category
    and a final 'mean' row (mean over the categories; nan if a category's value is nan). A value None is a
    metric the category's test set cannot define (metrics.compute_metrics): an empty cell in the csv, 'n/a' in
    the markdown, and the mean of that column is n/a too. Returns the markdown."""
    if not rows:
        raise ValueError(f"write_results_tables: no rows to write to {out_dir}")
    table: list[list[Any]] = []
    for row in rows:
        if "category" not in row:
            raise ValueError(f"write_results_tables: a row has no 'category' key (keys: {sorted(row)})")
        missing = [k for k in metric_keys if k not in row]
        if missing:
            raise ValueError(f"write_results_tables: category {row['category']!r} lacks {missing}")
        table.append([str(row["category"])] + [None if row[k] is None else _as_float(row[k]) for k in metric_keys])
    columns = [[r[i + 1] for r in table] for i in range(len(metric_keys))]
    means = [None if None in col else float(np.mean(col)) for col in columns]
    table.append(["mean"] + means)

    header = ["category"] + list(metric_keys)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([r[0]] + ["" if v is None else repr(v) for v in r[1:]] for r in table)
    lines = ["| " + " | ".join(header) + " |", "|:---|" + "---:|" * len(metric_keys)]
    lines += ["| " + " | ".join([r[0]] + ["n/a" if v is None else f"{v:.3f}" for v in r[1:]]) + " |" for r in table]
    markdown = "\n".join(lines) + "\n"
    _write_text(os.path.join(out_dir, "results.csv"), buf.getvalue())
    _write_text(os.path.join(out_dir, "results.md"), markdown)
    return markdown


def append_csv_row(path: str, row: dict) -> None:
    """Append `row` to the CSV at `path` (header = the row's keys, written when the file is created) and flush
    it to disk. A header that differs from the keys is an error; a partial last line left by a crash is cut."""
    fields = [str(k) for k in row]
    exists = os.path.exists(path) and os.path.getsize(path) > 0
    if exists:
        with open(path, newline="") as f:
            header = next(csv.reader(f), None)
        if header != fields:
            raise ValueError(f"{path}: the CSV header {header} differs from the row's keys {fields}")
        with open(path, "rb+") as f:
            data = f.read()
            if not data.endswith(b"\n"):
                cut = data.rfind(b"\n") + 1
                log.warning("%s: dropping a partial last line (%d bytes) left by an interrupted write",
                            path, len(data) - cut)
                f.truncate(cut)
    else:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        if not exists:
            writer.writerow(fields)
        writer.writerow([_csv_cell(row[k]) for k in row])
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------- plots
NOT_LOSS_COLUMNS = ("epoch", "lr", "images_per_s", "seconds", "time", "step", "wall_s")


def loss_columns(records: list[dict]) -> list[str]:
    """The columns plot_loss draws by default: numeric ones except epoch, lr, throughput and time."""
    header = list(records[0]) if records else []
    return [c for c in header if c not in NOT_LOSS_COLUMNS and "per_s" not in c and _numeric(records, c)]


def plot_loss(train_log_csv: str, png_path: str, columns: Optional[Sequence[str]] = None) -> None:
    """Plot the loss columns against 'epoch' ('loss', the total, drawn thicker) and 'lr' in a second panel if
    present. Default columns: every numeric column but epoch, lr, throughput and time (NOT_LOSS_COLUMNS)."""
    with open(train_log_csv, newline="") as f:
        records = list(csv.DictReader(f))
    if not records:
        raise ValueError(f"{train_log_csv}: no rows to plot")
    header = list(records[0])
    if "epoch" not in header:
        raise ValueError(f"{train_log_csv}: expected an 'epoch' column, found {header}")
    if columns is None:
        loss_cols = loss_columns(records)
    else:
        loss_cols = list(columns)
        missing = [c for c in loss_cols if c not in header]
        if missing:
            raise ValueError(f"{train_log_csv}: no column(s) {missing}, found {header}")
    if not loss_cols:
        raise ValueError(f"{train_log_csv}: no loss column to plot, found {header}")
    epoch = np.array([_as_float(r["epoch"]) for r in records])
    fig = _new_figure((10 if "lr" in header else 6, 4))
    ax = fig.add_subplot(1, 2 if "lr" in header else 1, 1)
    for c in loss_cols:
        total = c.lower() in ("loss", "total", "total_loss", "loss_total")
        ax.plot(epoch, [_as_float(r[c]) for r in records], marker="." if len(records) < 30 else None,
                linewidth=2.2 if total else 1.2, label=c)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if "lr" in header:
        ax2 = fig.add_subplot(1, 2, 2)
        ax2.plot(epoch, [_as_float(r["lr"]) for r in records], color="tab:gray")
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("learning rate")
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    _save_figure(fig, png_path)


def region_threshold(image_score: str, anomaly_map: str, threshold: float) -> Optional[float]:
    """The map value whose region the figures outline: the decision threshold where it is a value of the map (the
    image score is the top-k mean of the head's map), else None (no outline: a fused or weighted score is not on
    the map's scale)."""
    return threshold if (image_score, anomaly_map) == ("map", "head") else None


def heatmap_overlay(image: Any, amap: Any, vmin: Optional[float] = None, vmax: Optional[float] = None,
                    alpha: float = 0.5, threshold: Optional[float] = None) -> np.ndarray:
    """Blend a jet-coloured anomaly map onto the image: H×W×3 RGB uint8. The map is scaled to [vmin, vmax]
    (default: its own range) and resized to the image; with `threshold`, the outline of map >= threshold is
    drawn in white."""
    img = _image_hwc(image)
    a = _map_hw(amap, img.shape[:2])
    lo = float(a.min()) if vmin is None else float(vmin)
    hi = float(a.max()) if vmax is None else float(vmax)
    norm = np.clip((a - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(a)
    heat = cv2.applyColorMap(np.round(norm * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    out = np.clip(np.round((1.0 - alpha) * img * 255.0 + alpha * heat), 0, 255).astype(np.uint8)
    if threshold is not None:
        _draw_outline(out, a >= threshold, PRED_COLOUR)
    return out


def save_prediction_figure(path: str, image: Any, amap: Any, threshold: Optional[float], score: float,
                           title: str = "") -> None:
    """PNG with three panels: the image, the anomaly map with a colour bar, and the overlay with the predicted
    region (map >= threshold) outlined."""
    img = _image_hwc(image)
    a = _map_hw(amap, img.shape[:2])
    fig = _new_figure((12, 4.4))
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    axes[0].imshow(img)
    axes[0].set_title("image")
    im = axes[1].imshow(a, cmap="jet")
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04)
    axes[1].set_title("anomaly map")
    axes[2].imshow(heatmap_overlay(img, a, threshold=threshold))
    axes[2].set_title("overlay" + (f", region >= {threshold:.3g}" if threshold is not None else ""))
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"{title}  score {score:.4f}".strip())
    fig.tight_layout()
    _save_figure(fig, path)


def select_examples(scores: Any, labels: Any, n: int) -> np.ndarray:
    """Indices of up to n images to show: the worst false positives (normal images with the highest scores),
    the worst false negatives (defective images with the lowest scores), then true positives (defective images
    with the highest scores), about a third each; a group that runs short is filled from the others."""
    s = np.asarray(_numpy(scores), np.float64).reshape(-1)
    y = np.asarray(_numpy(labels)).reshape(-1) > 0.5
    if s.shape != y.shape:
        raise ValueError(f"select_examples: {s.size} scores but {y.size} labels")
    n = min(int(n), s.size)
    normal = np.flatnonzero(~y)
    defect = np.flatnonzero(y)
    normal_desc = normal[np.argsort(-s[normal], kind="stable")]
    defect_asc = defect[np.argsort(s[defect], kind="stable")]
    q_fp = math.ceil(n / 3)
    q_fn = math.ceil((n - q_fp) / 2)
    chosen = list(normal_desc[:q_fp]) + list(defect_asc[:q_fn])
    taken = set(chosen)
    # true positives, then anything left (defective by descending score, then normal by descending score)
    for i in list(defect_asc[::-1]) + list(normal_desc):
        if len(chosen) >= n:
            break
        if i not in taken:
            chosen.append(i)
            taken.add(i)
    return np.array(chosen, dtype=np.int64)


def examples_grid(path: str, images: Any, masks: Any, maps: Any, scores: Any, labels: Any, n: int = 12,
                  threshold: Optional[float] = None) -> np.ndarray:
    """PNG grid of `select_examples` images (`images`: N×3×H×W / N×H×W×3 array or tensor, or any sequence of
    images indexed lazily; masks N×1×H×W or N×H×W; maps N×H×W or N×1×H×W): per image, the image with the ground truth outlined (green) above
    the heat-map overlay (one common vmin/vmax over the shown maps; predicted region outlined in white if
    `threshold`). Titles give score and label. Returns the indices shown."""
    idx = select_examples(scores, labels, n)
    if idx.size == 0:
        raise ValueError(f"examples_grid: no images to draw into {path}")
    s = np.asarray(_numpy(scores), np.float64).reshape(-1)
    y = np.asarray(_numpy(labels)).reshape(-1) > 0.5
    # index one image at a time: `images` may be a lazy sequence (e.g. a dataset wrapper)
    shown_maps = [_map_hw(maps[int(i)], None) for i in idx]
    vmin = float(min(m.min() for m in shown_maps))
    vmax = float(max(m.max() for m in shown_maps))
    ncols = min(idx.size, 6)
    nblocks = math.ceil(idx.size / ncols)
    fig = _new_figure((2.2 * ncols, 4.6 * nblocks))
    for j, i in enumerate(idx):
        r, c = divmod(j, ncols)
        img = _image_hwc(images[int(i)])
        with_gt = np.round(img * 255).astype(np.uint8)
        _draw_outline(with_gt, _map_hw(masks[int(i)], img.shape[:2]) > 0.5, GT_COLOUR)
        top = fig.add_subplot(2 * nblocks, ncols, 2 * r * ncols + c + 1)
        top.imshow(with_gt)
        top.set_title(f"#{i} {'defective' if y[i] else 'normal'}\nscore {s[i]:.3f}", fontsize=8)
        bottom = fig.add_subplot(2 * nblocks, ncols, (2 * r + 1) * ncols + c + 1)
        bottom.imshow(heatmap_overlay(img, shown_maps[j], vmin=vmin, vmax=vmax, threshold=threshold))
        for ax in (top, bottom):
            ax.axis("off")
    fig.suptitle(f"worst false positives, worst false negatives, top true positives (maps in [{vmin:.3g}, "
                 f"{vmax:.3g}])", fontsize=9)
    fig.tight_layout()
    _save_figure(fig, path)
    return idx


# -------------------------------------------------------------------------------------------- helpers
def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach()
        if x.is_floating_point() and x.element_size() < 4:
            x = x.float()
        x = x.cpu().numpy()
    return np.asarray(x)


def _image_hwc(image: Any) -> np.ndarray:
    """H×W×3 float in [0,1] from H×W×3, 3×H×W, H×W or 1×H×W (uint8 scaled by 1/255)."""
    a = _numpy(image)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3):
        raise ValueError(f"image: expected H×W×3, 3×H×W or H×W, got shape {a.shape}")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
    return np.ascontiguousarray(np.clip(a, 0.0, 1.0))


def _map_hw(amap: Any, hw: Optional[tuple[int, int]]) -> np.ndarray:
    """H×W float32 map from H×W or 1×H×W, resized (bilinear) to hw if given and different."""
    a = _numpy(amap).astype(np.float32)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"anomaly map: expected H×W or 1×H×W, got shape {a.shape}")
    if hw is not None and a.shape != tuple(hw):
        a = cv2.resize(a, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
    return a


def _draw_outline(rgb: np.ndarray, region: np.ndarray, colour: tuple[int, int, int]) -> None:
    """Draw the boundary of the boolean `region` onto the uint8 RGB image in place."""
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    thickness = max(1, round(min(rgb.shape[:2]) / 200))
    cv2.drawContours(rgb, contours, -1, colour, thickness)


def _new_figure(figsize: tuple[float, float]):
    """A matplotlib Figure on an Agg canvas (no pyplot, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save_figure(fig, path: str) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def _write_text(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            f.write(text)
    atomic_write(path, write)


def _as_float(v: Any) -> float:
    if v is None or (isinstance(v, str) and v.strip() == ""):
        return math.nan
    return float(_numpy(v)) if hasattr(v, "detach") else float(v)


def _numeric(records: list[dict], column: str) -> bool:
    """Whether every non-empty value of the column parses as a number."""
    try:
        [_as_float(r[column]) for r in records]
    except (TypeError, ValueError):
        return False
    return True


def _csv_cell(v: Any) -> Any:
    """Floats at full precision (repr), numpy/torch scalars as Python numbers, the rest as is."""
    if hasattr(v, "item") and np.ndim(_numpy(v)) == 0:
        v = _numpy(v).item()
    return repr(v) if isinstance(v, float) else v
