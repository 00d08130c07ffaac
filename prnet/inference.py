"""Score images with a trained checkpoint from Python: the API that predict.py uses.

    import prnet
    detector = prnet.load_detector("outputs/demo/demo/last.pt")        # loads the model once; device "auto"
    r = detector.predict("part.png")                                      # or a PIL image, a numpy array
    print(r.score, r.anomalous, r.threshold, r.anomaly_map.shape)         # map at the input's own H×W
    results = detector.predict(["a.png", pil_image, array], batch_size=16)  # a list (or N×H×W×C array) → list

Inputs: a file path, a PIL image, or a numpy array (H×W, H×W×3, H×W×4 RGB(A), uint8 or float in [0, 1]), of
any size; grey and RGBA become RGB. Each image is resized to the training size (as the training and evaluation
data are), scored there (the image score is the one evaluation computes; a model with a second read,
eval.second_read, also reads it resized to that size), and its anomaly map is upsampled bilinearly to the input's
original resolution. The decision is `score >= threshold`, with the threshold stored in
the checkpoint at training time unless one is given; a checkpoint without one and no threshold given: decision
None.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from prnet.config import Config, image_hw
from prnet.datasets.mvtec import DatasetError, load_rgb, to_rgb
from prnet.engine.checkpoint import model_from_checkpoint
from prnet.engine.evaluator import predict_maps, second_weight_of
from prnet.utils import resolve_device

DEFAULT_THRESHOLD_RULE = "train_max"  # the rule of checkpoints that do not name theirs
GIVEN_THRESHOLD_RULE = "given"  # a threshold passed by the caller

ImageInput = Union[str, "os.PathLike[str]", np.ndarray, Any]  # Any: a PIL image


@dataclass
class Prediction:
    """The result for one image. `anomaly_map`: float32 H×W in [0, 1] at the input's original size;
    `anomalous`: score >= threshold, None without a threshold; `source`: the path, or '<array>' / '<PIL image>'."""
    score: float
    anomaly_map: np.ndarray
    anomalous: Optional[bool]
    threshold: Optional[float]
    threshold_rule: Optional[str]
    source: str


def _pil_to_array(image: Any) -> np.ndarray:
    """A PIL image as a numpy array that to_rgb understands (RGB(A) channel order), turned upright by its EXIF
    orientation as a file of it would be."""
    from PIL import ImageOps

    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode.startswith("I;16") or mode == "I":  # 16-bit greyscale (PIL reads 16-bit PNGs as I or I;16)
        return np.clip(np.asarray(image, dtype=np.int64), 0, 65535).astype(np.uint16)
    elif mode not in ("1", "L", "LA", "RGB", "RGBA", "F"):
        image = image.convert("RGB")
    return np.asarray(image)


def read_image(item: ImageInput) -> np.ndarray:
    """A path, PIL image or numpy array as RGB float32 H×W×3 in [0, 1] at its original size.

    DatasetError (a ValueError) names an unreadable file or an unusable array; TypeError for other objects."""
    if isinstance(item, (str, os.PathLike)):
        return load_rgb(os.fspath(item))
    if isinstance(item, np.ndarray):
        array, what = item, f"image array of shape {item.shape}"
    elif hasattr(item, "mode") and hasattr(item, "getbands"):  # a PIL image, without importing PIL here
        array, what = _pil_to_array(item), f"PIL image (mode {item.mode})"
    else:
        raise TypeError(f"expected a file path, a PIL image or a numpy array, got {type(item).__name__}")
    if array.ndim not in (2, 3) or (array.ndim == 3 and not 1 <= array.shape[2] <= 4):
        raise DatasetError(f"{what}: expected H×W or H×W×C with C in 1-4 (channels last), or a list or an N×H×W×C "
                           f"array for several images")
    if np.issubdtype(array.dtype, np.integer) and array.dtype not in (np.uint8, np.uint16):
        raise DatasetError(f"{what}: integer pixels of type {array.dtype}: pass uint8 (0-255), uint16 (0-65535) or "
                           f"float in [0, 1]")
    if np.issubdtype(array.dtype, np.floating) and array.size:
        lo, hi = float(np.min(array)), float(np.max(array))
        if not (lo >= -1e-3 and hi <= 1 + 1e-3):  # also catches NaN
            raise DatasetError(f"{what}: float pixels must lie in [0, 1], found [{lo:.4g}, {hi:.4g}] "
                               f"(pass uint8 for 0-255 data)")
    return to_rgb(array, None, what)


def _source(item: ImageInput) -> str:
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    return "<array>" if isinstance(item, np.ndarray) else "<PIL image>"


class Detector:
    """A PRNet model loaded once, in eval mode, with its evaluation settings and decision threshold.

    Build it with `load_detector(checkpoint)` (or `Detector(model, cfg, state)` for a model in memory).
    `threshold` overrides the stored one. `batch_size`: images per forward pass."""

    def __init__(self, model: torch.nn.Module, cfg: Config, state: dict, device: Union[str, torch.device] = "cpu",
                 threshold: Optional[float] = None, batch_size: int = 8) -> None:
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.model = model.to(self.device).eval()
        self.cfg = cfg
        self.image_size = image_hw(cfg)
        self.topk, self.sigma, self.amp = cfg.eval.topk, cfg.eval.sigma, cfg.train.amp
        self.image_score, self.knn_weight = cfg.eval.image_score, cfg.eval.knn_weight
        self.anomaly_map, self.knn_lift = cfg.eval.anomaly_map, cfg.eval.knn_lift
        self.channels_last = cfg.train.channels_last
        self.second_weight = second_weight_of(cfg)
        self.second_size = None if self.second_weight is None else tuple(cfg.eval.second_read)
        self.batch_size = int(batch_size)
        self.category = state.get("prototype_meta", {}).get("category")
        if threshold is not None:
            self.threshold, self.threshold_rule = float(threshold), GIVEN_THRESHOLD_RULE
        elif state.get("threshold") is not None:
            self.threshold = float(state["threshold"])
            self.threshold_rule = state.get("threshold_rule") or DEFAULT_THRESHOLD_RULE
        else:
            self.threshold, self.threshold_rule = None, None

    def predict(self, inputs: Union[ImageInput, Sequence[ImageInput]],
                batch_size: Optional[int] = None) -> Union[Prediction, list[Prediction]]:
        """One Prediction for one image; a list of them for a list/tuple of images or an N×H×W(×C) array."""
        single = not isinstance(inputs, (list, tuple)) and not (isinstance(inputs, np.ndarray) and inputs.ndim == 4)
        items = [inputs] if single else list(inputs)
        step = int(batch_size or self.batch_size)
        if step < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {step}")
        results: list[Prediction] = []
        for start in range(0, len(items), step):
            chunk = items[start:start + step]
            images = [read_image(item) for item in chunk]
            for item, (score, amap) in zip(chunk, self._score(images)):
                results.append(self._prediction(score, amap, _source(item)))
        return results[0] if single else results

    @torch.no_grad()
    def _score(self, images: list[np.ndarray]) -> list[tuple[float, np.ndarray]]:
        """(score, map at the image's own size) per RGB float32 image, in one forward pass."""
        x = self._tensor(images, self.image_size)
        x2 = None if self.second_size is None else self._tensor(images, self.second_size)
        maps, scores = predict_maps(self.model, x, topk=self.topk, sigma=self.sigma, amp=self.amp,
                                    image_score=self.image_score, knn_weight=self.knn_weight,
                                    anomaly_map=self.anomaly_map, knn_lift=self.knn_lift, second_images=x2,
                                    second_weight=self.second_weight)
        out = []
        for image, amap, score in zip(images, maps, scores):
            size = image.shape[:2]
            if tuple(amap.shape[-2:]) != size:
                amap = F.interpolate(amap[None], size=size, mode="bilinear", align_corners=False)[0]
            out.append((float(score), amap[0].cpu().numpy()))
        return out

    def _tensor(self, images: list[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
        """The RGB float32 images resized to `size`, as an N×3×H×W batch on the model's device."""
        batch = np.stack([to_rgb(image, size) for image in images])
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous().to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _prediction(self, score: float, amap: np.ndarray, source: str) -> Prediction:
        anomalous = None if self.threshold is None else bool(score >= self.threshold)
        return Prediction(score, amap, anomalous, self.threshold, self.threshold_rule, source)


def load_detector(checkpoint: str, device: Union[str, torch.device] = "auto", threshold: Optional[float] = None,
                  batch_size: int = 8) -> Detector:
    """A Detector from a checkpoint written by train.py (last.pt). device: auto (cuda, else mps, else cpu), cpu,
    cuda, ...; threshold: overrides the stored one. CheckpointError (a ValueError) names a bad file."""
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    model, cfg, state = model_from_checkpoint(checkpoint, dev)
    return Detector(model, cfg, state, dev, threshold=threshold, batch_size=batch_size)
