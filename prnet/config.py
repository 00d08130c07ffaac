"""One schema of every option, merged from a YAML file and `key=value` overrides.

    cfg = load_config("configs/demo.yaml", ["train.epochs=3", "data.classes=[demo]"])
    cfg.train.epochs   # 3

Every key is declared below with its type and default; an unknown key or a value of the wrong type is a
`ConfigError` that names the key. `config_to_dict` / `config_from_dict` round-trip a config through plain
Python types (checkpoints store it that way).
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import yaml


NULL_WORDS = ("none", "null", "~")


class _Loader(yaml.SafeLoader):
    """YAML as safe_load reads it, except that a number written with leading zeros stays a string: category names
    such as BTAD's 01, 02, 03 (safe_load would read 01 as the integer 1)."""


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.yaml_implicit_resolvers["0"].insert(0, ("tag:yaml.org,2002:str", re.compile(r"^0[0-9_]+$")))


def _yaml(text: Any) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


class ConfigError(ValueError):
    """A bad config file, key or value. The message names the key and what was expected."""


DATA_FORMATS = ("mvtec", "visa", "btad", "mpdd", "ksdd2", "dagm", "loco", "folder")


@dataclass
class FolderConfig:
    """data.format folder: folders under <data.root>/<category> (or absolute paths); prnet/datasets/formats.py."""
    normal: str = "normal"  # normal images (training, and the held-out share for testing)
    abnormal: Optional[str] = "abnormal"  # defective test images, flat or in <type>/ sub-folders; null: none
    mask: Optional[str] = None  # masks paired by stem (<stem>.<ext> or <stem>_mask.<ext>); null: image labels only
    test_normal: Optional[str] = None  # normal test images; null: hold out test_fraction of `normal`
    test_fraction: float = 0.2  # share of `normal` held out for testing (seeded by data.split_seed)


@dataclass
class DataConfig:
    # the data set's own top folder; for mvtec: <root>/<category>/{train,test,ground_truth}
    root: str = "/data/mvtec_anomaly_detection"
    format: str = "mvtec"  # the layout under root: mvtec | visa | btad | mpdd | ksdd2 | dagm | loco | folder
    folder: FolderConfig = field(default_factory=FolderConfig)  # what format folder reads
    classes: Optional[list[str]] = None  # None: MVTEC.CLASSNAMES for mvtec, else the format's own categories
    image_size: Union[int, list[int]] = 256  # int or [h, w]
    dtd_root: Optional[str] = "/data/dtd"  # DTD root (images/<class>/*.jpg or <class>/*.jpg); missing: fallback
    num_anomalies: int = 10  # real defective images per category used for training (0: unsupervised)
    split_seed: int = 0  # seed of the few-shot draw
    few_shot: Optional[list[str]] = None  # explicit real anomalies '<defect>/<file>' instead of the draw (one class)
    generate_demo: bool = False  # write the procedural demo category under root if it is missing
    # share of the normal training images held out of training and prototypes, to set the decision threshold
    # (eval.threshold=holdout_fpr); drawn with split_seed
    holdout_normal: float = 0.0
    cache_images: bool = True  # keep decoded, resized training images (8-bit either way) in memory


@dataclass
class SynthesisConfig:
    perlin_ratio: float = 0.5  # Perlin samples per epoch, as a fraction of the normal training images
    extended_ratio: float = 0.5  # extended (real cut-and-paste) samples per epoch, same unit
    # shift each pasted real defect so that its own surroundings match the new image's there (synthesis.
    # context_offset): it keeps its contrast to the surface instead of the brightness of the tile it was cut from
    extended_match_context: bool = True
    # the pasted real defect's scale, drawn per paste from U(min, max) in the random affine warp (linear: its area
    # changes by the square); below 1 it is shrunk
    extended_scale: list[float] = field(default_factory=lambda: [0.75, 1.25])
    foreground: bool = False  # restrict Perlin masks to the estimated object foreground
    beta_max: float = 0.8  # DRAEM's beta ~ U(0, beta_max): the original image's weight inside the Perlin mask
    perlin_scale_max: int = 5  # Perlin scale 2^k per axis, k in 0..perlin_scale_max
    # colour of the Perlin textures: rgb (DRAEM) | grey (their luminance) | auto (grey when the category's normal
    # training images are all greyscale, e.g. MVTec grid/screw/zipper, Magnetic Tile; rgb otherwise)
    texture_colour: str = "rgb"
    # share of the Perlin samples that are region swaps instead: a large region (swap_area of the image, as
    # fractions) taken from another normal training image (synthesis.swap_anomaly); 0: DRAEM's anomalies only
    swap_fraction: float = 0.0
    swap_area: list[float] = field(default_factory=lambda: [0.05, 0.3])  # a minority of the image
    swap_beta_max: float = 0.0  # the swapped region's opacity is 1 - U(0, swap_beta_max): 0 replaces it fully
    # share of the Perlin samples that are thin curves instead (scratches, cracks: synthesis.scratch_anomaly), filled
    # with DTD textures like the Perlin blobs; 0: none
    scratch_fraction: float = 0.25
    # share of the Perlin samples whose mask is filled with the image's own surface, its blocks moved, flipped and
    # turned (structural anomalies, synthesis.structure_anomaly) instead of a DTD texture; 0: none
    structure_fraction: float = 0.0
    # share of the Perlin samples whose mask holds the image itself, its level made darker or brighter and/or its
    # fine texture stronger or weaker (photometric anomalies, synthesis.shade_anomaly) instead of a DTD texture; 0:
    # none
    shade_fraction: float = 0.0
    # share of the Perlin samples that are one small blob instead (0.005-0.5 % of the image: a pit, a speck, a tiny
    # chip; synthesis.spot_anomaly), filled with DTD textures like the Perlin blobs; 0: none
    spot_fraction: float = 0.0
    # every training sample's whole image (normal, synthetic and pasted alike) gets its brightness and contrast
    # changed at random by up to this fraction (synthesis.jitter_image, as ColorJitter(brightness=j, contrast=j));
    # its mask and label stay; 0: none
    jitter: float = 0.0


@dataclass
class ModelConfig:
    backbone: str = "wide_resnet50_2"  # any timm CNN with features_only
    backbone_weights: str = "hub"  # hub | package | none | path to a .pth/.safetensors state dict
    stages: list[int] = field(default_factory=lambda: [1, 2, 3])  # timm feature indices for features/residuals
    bottleneck_stage: int = 4  # timm feature index used as the decoder's bottleneck
    head_widths: list[int] = field(default_factory=lambda: [64, 128, 256])  # head channels per scale
    attn_patch_divisors: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # patch sizes H/d per scale
    attn_blocks: int = 1  # multi-size self-attention blocks per scale


@dataclass
class PrototypeConfig:
    dir: str = "prototypes"  # <dir>/<run key>/<category>.pt
    ratio: float = 0.25  # K = max(1, round(ratio * N normal training images)) per scale (reimplementation: 0.1)
    residual: str = "squared"  # squared: (f - p)^2 | abs: |f - p|
    kmeans_iters: int = 50
    # a training image's residual is taken against its k-means cluster's mean without that image (held out),
    # as a test image's would be; false: against the bank as it is (the image is part of its own prototype)
    leave_one_out: bool = True
    # with leave_one_out: a synthetic sample's held-out residual made with the features of the clean training image
    # it was changed from (exact; one more backbone pass for those samples); false: the image's held-out gain
    # n/(n - 1) applied to the sample's whole residual, its change included (prnet.models.prototypes)
    held_out_exact: bool = False
    batch_size: int = 16  # feature-extraction batch
    # > 0: also keep a memory of this many normal training patches (greedy coreset) and give the head each patch's
    # distance to the nearest of them as one more input channel (prnet.models.patch_memory); 0: off
    patch_memory: int = 0


@dataclass
class LossConfig:
    focal_weight: float = 5.0  # total = smooth_l1 + focal_weight * focal
    focal_gamma: float = 2.0  # chosen on validation data (benchmarks/proxy_validation.py); 4 scored worse
    focal_alpha: Optional[float] = None  # weight of the anomalous class; None: no class weighting
    area_balance: float = 0.0  # > 0: each sample's anomalous pixels weighed by (1 / its anomalous area)^this


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    # the share of the last optimisation steps whose weights are averaged into the final model (0: none;
    # prnet.engine.averaging: dense stochastic weight averaging, the same training trajectory)
    average_last: float = 0.0
    device: str = "auto"  # auto (cuda, else mps, else cpu) | cpu | cuda | cuda:1 | mps
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    workers: int = -1  # DataLoader workers; -1: min(8, CPUs)
    eval_every: int = 0  # evaluate every n epochs for monitoring only (0: only at the end)
    resume: bool = False  # continue <output_dir>/<category>/last.pt
    overwrite: bool = False  # start over even if outputs exist
    channels_last: bool = True
    compile: bool = False


@dataclass
class EvalConfig:
    topk: int = 25  # image score = mean of the top-k pixels (of the map, or of map × sqrt(distance)); round 23
    # map: the mean of the top-k map pixels (the paper's rule); map_residual: the top-k mean of the map times the
    # square root of the prototype distance map (each scale's distance to its nearest prototype over the normal
    # training images' mean, averaged; chosen on validation data, docs/experiments.md). The map is the head's.
    # map_residual_knn: map_residual's score combined with the baseline's nearest-neighbour distance to the normal
    # training patches, z(log s_m) + knn_weight · z(log s_knn), each standardised on the normal training images
    # (prnet.models.knn_score; its memory and statistics are made after training and stored in the checkpoint)
    image_score: str = "map_residual_knn"
    knn_weight: float = 0.25  # map_residual_knn: the distance's weight (chosen on validation data, round 13)
    # the anomaly map (pixel metrics, predict.py, the Python API, ONNX): head_knn: the head's map p lifted by the
    # baseline's nearest-neighbour distance within the head's range on normal surface, (p + q·F(d)) / (1 + q), F the
    # distance's distribution over the normal training pixels, q the knn_lift percentile of p over them
    # (prnet.models.knn_score; chosen on validation data, rounds 21-22); head: the head's map alone. The image score
    # is the head's either way.
    anomaly_map: str = "head_knn"
    knn_lift: float = 0.99  # head_knn: the percentile of the head's map on normal training pixels that bounds the lift
    # map_residual_knn: the head's second read of each image at another size [h, w] (prnet.models.second_read),
    # added to the score as second_weight · z(log s_w); auto: when data.image_size is square and the normal training
    # images' median aspect is at least 1.5:1, the same short side and the long side from that aspect (a multiple of
    # 32), otherwise none. Resolved when training starts; the checkpoint's config holds the size. Chosen on validation
    # data, round 31 (docs/experiments.md).
    second_read: Union[list[int], str] = "auto"
    second_weight: float = 1.0  # the second read's weight (chosen on validation data, round 31)
    sigma: float = 0.0  # Gaussian smoothing of the map before scoring (0: none; see configs/default.yaml)
    batch_size: int = 16
    examples: int = 12  # images in examples.png (0: no figure)
    # the decision threshold stored with the model (predict.py, the Python API, ONNX metadata):
    # train_max: the highest image score of the normal training images; holdout_fpr: the lowest threshold that
    # flags at most target_fpr of the normal images held out of training (data.holdout_normal > 0)
    threshold: str = "train_max"
    target_fpr: float = 0.01
    # a test split without defective images is refused before training; false: a training-only run (no metrics)
    require_defective: bool = True
    # false: after training, the threshold, the nearest-neighbour memory and the checkpoint are made as usual but
    # the test split is not scored (results.json holds no metrics); for scripts that score the checkpoint on test
    # sets of their own (benchmarks/real_data.py)
    score_test: bool = True


@dataclass
class Config:
    seed: int = 0
    output_dir: Optional[str] = None  # None: outputs/<run name>
    data: DataConfig = field(default_factory=DataConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prototypes: PrototypeConfig = field(default_factory=PrototypeConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# The documented values of every key that takes a word, in one place: validate() checks them and the tests set each
# one from the command line. OPEN_CHOICES: keys that also take a free-form value (a path, a device index).
CHOICES: dict[str, tuple[str, ...]] = {
    "data.format": DATA_FORMATS,
    "model.backbone_weights": ("hub", "package", "none"),
    "prototypes.residual": ("squared", "abs"),
    "synthesis.texture_colour": ("auto", "rgb", "grey"),
    "train.device": ("auto", "cpu", "cuda", "mps"),
    "eval.threshold": ("train_max", "holdout_fpr"),
    "eval.image_score": ("map", "map_residual", "map_residual_knn"),
    "eval.anomaly_map": ("head", "head_knn"),
}
SECOND_READ_WORDS = ("auto", "none")  # eval.second_read's words; otherwise [h, w]
OPEN_CHOICES: dict[str, Callable[[Any], bool]] = {
    "model.backbone_weights": lambda v: isinstance(v, str) and ("/" in v or "." in v),
    "train.device": lambda v: isinstance(v, str) and v.split(":")[0] in ("cuda", "mps") and v.count(":") == 1
    and v.split(":")[1].isdigit(),
}
OPEN_DESCRIPTIONS = {"model.backbone_weights": "the path of a .pth/.safetensors state dict",
                     "train.device": "cuda:<index>"}


def get_key(cfg: Any, key: str) -> Any:
    """cfg.<a>.<b> for key 'a.b'."""
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _or(words: typing.Sequence[str]) -> str:
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]


def _check(value: Any, tp: Any, key: str) -> Any:
    """Return `value` converted to the annotated type `tp`, or raise a ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union:
        # null, or the words none/null as a string: `key=none` on the command line means null for a key that may
        # be null, and stays the string "none" for a string key (model.backbone_weights=none)
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in NULL_WORDS)):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        names = " or ".join("null" if a is type(None) else _name(a) for a in args)
        raise ConfigError(f"config key '{key}': expected {names}, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        return [_check(v, args[0], key) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads '1e-3' as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
    raise ConfigError(f"config key '{key}': unsupported type {tp}")  # pragma: no cover


def _name(tp: Any) -> str:
    if typing.get_origin(tp) is list:
        return "a list"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(tp, str(tp))


def _merge(obj: Any, values: dict, prefix: str = "") -> None:
    """Set the fields of dataclass `obj` from the nested dict `values`, checking keys and types."""
    if not isinstance(values, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<top>'}': expected a mapping, got {values!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        full = prefix + str(key)
        if key not in names:
            raise ConfigError(f"unknown config key '{full}' (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, full + ".")
        else:
            setattr(obj, key, _check(value, hints[key], full))


def parse_override(text: str) -> dict:
    """'train.epochs=3' -> {'train': {'epochs': 3}}; the value is parsed as YAML ('[a, b]', 'null', '1e-3')."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value, e.g. train.epochs=3")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}': empty key")
    try:
        value = _yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': value is not valid YAML ({e})") from None
    out: dict = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_config(path: Optional[str] = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Defaults, then the YAML file at `path`, then each `key=value` override, in order."""
    cfg = Config()
    if path is not None:
        if not os.path.isfile(path):
            raise ConfigError(f"config file {path} does not exist")
        with open(path, encoding="utf-8") as fh:
            try:
                values = _yaml(fh) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        _merge(cfg, values)
    for text in overrides:
        _merge(cfg, parse_override(text))
    validate(cfg)
    return cfg


# Numeric keys checked by their range alone: key -> (low, high, the low end allowed, the high end allowed); None: open.
# Outside these a run would go on with a meaningless setting (a texture weight below 0, a learning rate of 0, ...).
RANGES = {
    "synthesis.perlin_ratio": (0.0, None, True, False),
    "synthesis.extended_ratio": (0.0, None, True, False),
    "synthesis.beta_max": (0.0, 1.0, True, True),
    "synthesis.perlin_scale_max": (0, None, True, False),
    "prototypes.kmeans_iters": (1, None, True, False),
    "prototypes.batch_size": (1, None, True, False),
    "loss.focal_weight": (0.0, None, True, False),
    "loss.focal_gamma": (0.0, None, True, False),
    "loss.focal_alpha": (0.0, 1.0, True, True),
    "loss.area_balance": (0.0, 1.0, True, True),
    "train.lr": (0.0, None, False, False),
    "train.weight_decay": (0.0, None, True, False),
    "train.warmup_epochs": (0, None, True, False),
    "eval.topk": (1, None, True, False),
    "eval.sigma": (0.0, None, True, False),
    "eval.batch_size": (1, None, True, False),
    "eval.examples": (0, None, True, False),
}


def _check_ranges(cfg: Config) -> None:
    for key, (low, high, low_in, high_in) in RANGES.items():
        v = get_key(cfg, key)
        if v is None:  # an optional key left unset (loss.focal_alpha)
            continue
        below = low is not None and (v < low if low_in else v <= low)
        above = high is not None and (v > high if high_in else v >= high)
        if below or above:
            lo = "" if low is None else ("[" if low_in else "(") + f"{low:g}"
            hi = "" if high is None else f"{high:g}" + ("]" if high_in else ")")
            want = f"a value in {lo}, {hi}" if low is not None and high is not None else (
                f"{'>=' if low_in else '>'} {low:g}" if low is not None else f"{'<=' if high_in else '<'} {high:g}")
            raise ConfigError(f"config key '{key}': expected {want}, got {v}")


def validate(cfg: Config) -> None:
    """Value checks that types alone cannot express."""
    _check_ranges(cfg)
    size = cfg.data.image_size
    if isinstance(size, list) and len(size) != 2:
        raise ConfigError(f"config key 'data.image_size': expected an int or [h, w], got {size!r}")
    sizes = size if isinstance(size, list) else [size]
    if any(s < 32 or s % 32 for s in sizes):
        raise ConfigError(f"config key 'data.image_size': every side must be a multiple of 32 (>= 32), got {size!r}")
    folder = cfg.data.folder
    if cfg.data.format == "folder":
        if not folder.normal:
            raise ConfigError("config key 'data.folder.normal': expected the folder of normal images")
        if folder.mask and not folder.abnormal:
            raise ConfigError("config key 'data.folder.mask': masks need data.folder.abnormal (the defective images)")
        if folder.test_normal is None and not 0.0 < folder.test_fraction < 1.0:
            raise ConfigError(f"config key 'data.folder.test_fraction': expected a share in (0, 1) (or set "
                              f"data.folder.test_normal), got {folder.test_fraction}")
    if not 0.0 <= cfg.data.holdout_normal < 1.0:
        raise ConfigError(f"config key 'data.holdout_normal': expected a share in [0, 1), got {cfg.data.holdout_normal}")
    if not 0.0 < cfg.eval.target_fpr < 1.0:
        raise ConfigError(f"config key 'eval.target_fpr': expected a rate in (0, 1), got {cfg.eval.target_fpr}")
    if not (cfg.eval.knn_weight >= 0.0 and math.isfinite(cfg.eval.knn_weight)):
        raise ConfigError(f"config key 'eval.knn_weight': expected a finite weight >= 0, got {cfg.eval.knn_weight}")
    second = cfg.eval.second_read
    if isinstance(second, str) and second not in SECOND_READ_WORDS:
        raise ConfigError(f"config key 'eval.second_read': expected {_or(list(SECOND_READ_WORDS))} or [h, w], "
                          f"got {second!r}")
    if isinstance(second, list):
        if len(second) != 2 or any(s < 32 or s % 32 for s in second):
            raise ConfigError(f"config key 'eval.second_read': expected [h, w] with sides that are multiples of 32 "
                              f"(>= 32), got {second!r}")
        if cfg.eval.image_score != "map_residual_knn":
            raise ConfigError(f"config key 'eval.second_read': a size needs eval.image_score=map_residual_knn (the "
                              f"score it joins), got {cfg.eval.image_score}")
        if cfg.prototypes.patch_memory > 0:
            raise ConfigError("config key 'eval.second_read': a size cannot be combined with prototypes.patch_memory "
                              "(the second read has no patch memory); set eval.second_read=none")
    if not (cfg.eval.second_weight >= 0.0 and math.isfinite(cfg.eval.second_weight)):
        raise ConfigError(f"config key 'eval.second_weight': expected a finite weight >= 0, got "
                          f"{cfg.eval.second_weight}")
    if not 0.0 < cfg.eval.knn_lift < 1.0:
        raise ConfigError(f"config key 'eval.knn_lift': expected a percentile level in (0, 1), got {cfg.eval.knn_lift}")
    if cfg.eval.threshold == "holdout_fpr" and cfg.data.holdout_normal <= 0:
        raise ConfigError("config key 'eval.threshold': holdout_fpr needs normal images held out of training: set "
                          "data.holdout_normal, e.g. 0.1")
    if not 0.0 <= cfg.train.average_last <= 1.0:
        raise ConfigError(f"config key 'train.average_last': expected a share in [0, 1], got {cfg.train.average_last}")
    if cfg.data.num_anomalies < 0:
        raise ConfigError("config key 'data.num_anomalies': expected >= 0")
    if cfg.data.few_shot is not None and len(cfg.data.few_shot) != cfg.data.num_anomalies:
        raise ConfigError(f"config key 'data.few_shot': lists {len(cfg.data.few_shot)} images but "
                          f"data.num_anomalies is {cfg.data.num_anomalies}: expected the same count")
    if not 0 < cfg.prototypes.ratio <= 1:
        raise ConfigError("config key 'prototypes.ratio': expected 0 < ratio <= 1")
    if cfg.prototypes.patch_memory < 0:
        raise ConfigError(f"config key 'prototypes.patch_memory': expected 0 (off) or a number of memory patches, "
                          f"got {cfg.prototypes.patch_memory}")
    if len(cfg.model.head_widths) != len(cfg.model.stages):
        raise ConfigError(
            f"config keys 'model.head_widths' and 'model.stages': expected one width per stage, "
            f"got {cfg.model.head_widths} for {cfg.model.stages}")
    for key in ("perlin_ratio", "extended_ratio"):
        if getattr(cfg.synthesis, key) < 0:
            raise ConfigError(f"config key 'synthesis.{key}': expected >= 0")
    if not 0.0 <= cfg.synthesis.swap_fraction <= 1.0:
        raise ConfigError(f"config key 'synthesis.swap_fraction': expected a share in [0, 1], "
                          f"got {cfg.synthesis.swap_fraction}")
    if not 0.0 <= cfg.synthesis.scratch_fraction <= 1.0 - cfg.synthesis.swap_fraction:
        raise ConfigError(f"config key 'synthesis.scratch_fraction': expected a share in [0, 1 - swap_fraction] "
                          f"(both are shares of the Perlin samples), got {cfg.synthesis.scratch_fraction} with "
                          f"swap_fraction {cfg.synthesis.swap_fraction}")
    shares = cfg.synthesis.swap_fraction + cfg.synthesis.scratch_fraction + cfg.synthesis.structure_fraction
    if not 0.0 <= cfg.synthesis.structure_fraction or shares > 1.0 + 1e-9:
        raise ConfigError(f"config key 'synthesis.structure_fraction': expected a share in [0, 1 - swap_fraction - "
                          f"scratch_fraction] (all three are shares of the Perlin samples), got "
                          f"{cfg.synthesis.structure_fraction} with swap_fraction {cfg.synthesis.swap_fraction} and "
                          f"scratch_fraction {cfg.synthesis.scratch_fraction}")
    if not 0.0 <= cfg.synthesis.shade_fraction or shares + cfg.synthesis.shade_fraction > 1.0 + 1e-9:
        raise ConfigError(f"config key 'synthesis.shade_fraction': expected a share in [0, 1 - swap_fraction - "
                          f"scratch_fraction - structure_fraction] (all four are shares of the Perlin samples), got "
                          f"{cfg.synthesis.shade_fraction} with the other three summing to {shares:g}")
    shares += cfg.synthesis.shade_fraction
    if not 0.0 <= cfg.synthesis.spot_fraction or shares + cfg.synthesis.spot_fraction > 1.0 + 1e-9:
        raise ConfigError(f"config key 'synthesis.spot_fraction': expected a share in [0, 1 - swap_fraction - "
                          f"scratch_fraction - structure_fraction - shade_fraction] (all five are shares of the Perlin "
                          f"samples), got {cfg.synthesis.spot_fraction} with the other four summing to {shares:g}")
    if not 0.0 <= cfg.synthesis.jitter < 1.0:
        raise ConfigError(f"config key 'synthesis.jitter': expected a fraction in [0, 1), got {cfg.synthesis.jitter}")
    if not 0.0 <= cfg.synthesis.swap_beta_max < 1.0:
        raise ConfigError(f"config key 'synthesis.swap_beta_max': expected a value in [0, 1), "
                          f"got {cfg.synthesis.swap_beta_max}")
    scale = cfg.synthesis.extended_scale
    if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
        raise ConfigError(f"config key 'synthesis.extended_scale': expected [min, max] with 0 < min <= max, "
                          f"got {scale}")
    area = cfg.synthesis.swap_area
    if len(area) != 2 or not 0.0 < area[0] <= area[1] < 1.0:
        raise ConfigError(f"config key 'synthesis.swap_area': expected [min, max] with 0 < min <= max < 1, got {area}")
    if cfg.train.epochs < 1:
        raise ConfigError(f"config key 'train.epochs': expected >= 1, got {cfg.train.epochs}")
    if cfg.train.batch_size < 1:
        raise ConfigError(f"config key 'train.batch_size': expected >= 1, got {cfg.train.batch_size}")
    if cfg.data.classes is not None and not cfg.data.classes:
        raise ConfigError("config key 'data.classes': the list is empty (null: every category of MVTEC.CLASSNAMES)")
    for key, choices in CHOICES.items():
        value = get_key(cfg, key)
        if value not in choices and not (key in OPEN_CHOICES and OPEN_CHOICES[key](value)):
            raise ConfigError(f"config key '{key}': expected {_or(choices)}"
                              f"{' or ' + OPEN_DESCRIPTIONS[key] if key in OPEN_CHOICES else ''}, got {value!r}")


def image_hw(cfg: Config) -> tuple[int, int]:
    """data.image_size as (h, w)."""
    size = cfg.data.image_size
    return (size[0], size[1]) if isinstance(size, list) else (size, size)


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


# Keys that configs stored in older checkpoints carry and the schema no longer has, with the one value that
# behaves as the code does now (any other value is refused).
RETIRED_KEYS = {("prototypes", "match"): "image"}


# Keys added to the schema after runs were made without them, with the value that does what the code did before
# they existed. A stored config that lacks one reads as that value (not today's default, which may come to differ),
# and a run key (benchmarks/real_data.py) leaves one out while it has that value: adding an option orphans no
# finished run and refuses no resume. Register each new option here with the value that reproduces the code
# before it.
ADDED_KEYS = {("synthesis", "structure_fraction"): 0.0, ("eval", "anomaly_map"): "head", ("eval", "knn_lift"): 0.99,
              ("synthesis", "extended_scale"): [0.75, 1.25], ("eval", "second_read"): "none",
              ("eval", "second_weight"): 0.5, ("synthesis", "shade_fraction"): 0.0,
              ("train", "average_last"): 0.0, ("eval", "score_test"): True,
              ("synthesis", "jitter"): 0.0, ("synthesis", "spot_fraction"): 0.0,
              ("prototypes", "held_out_exact"): False, ("loss", "area_balance"): 0.0}


def with_added_keys(values: dict) -> dict:
    """A copy of a stored config dict in which every ADDED_KEYS key it lacks has its earlier behaviour's value."""
    values = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    for (section, key), earlier in ADDED_KEYS.items():
        if isinstance(values.get(section), dict):
            values[section].setdefault(key, earlier)
    return values


def without_added_keys_at_earlier_values(values: dict) -> dict:
    """A copy of a config dict without the ADDED_KEYS keys that hold their earlier behaviour's value: the same
    dict as a config made before those keys existed."""
    values = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    for (section, key), earlier in ADDED_KEYS.items():
        if isinstance(values.get(section), dict) and key in values[section] and values[section][key] == earlier:
            del values[section][key]
    return values


def config_from_dict(values: dict) -> Config:
    values = with_added_keys(values)
    for (section, key), kept in RETIRED_KEYS.items():
        stored = values.get(section, {})
        if isinstance(stored, dict) and key in stored:
            if stored.pop(key) != kept:
                raise ConfigError(f"config key '{section}.{key}': this code supports only {kept!r} "
                                  f"(other values were removed)")
    cfg = Config()
    _merge(cfg, values)
    validate(cfg)
    return cfg


def dump_config(cfg: Config, path: str) -> None:
    """Write the resolved config as YAML, atomically."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".tmp-{os.getpid()}-{os.path.basename(path)}")
    with open(tmp, "w", encoding="utf-8") as fh:
        yaml.safe_dump(config_to_dict(cfg), fh, sort_keys=False)
    os.replace(tmp, path)
