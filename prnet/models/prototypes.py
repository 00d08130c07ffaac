"""Prototype bank: k-means prototypes of normal feature maps per scale, nearest lookup and residuals.

Choices where the paper is silent follow the public reimplementation: K = 10 % of the normal training
images per scale (cfg.prototypes.ratio), the nearest prototype is chosen per image over the whole
flattened feature map (C·h·w), and the residual is squared, (f − p)².

Held-out residuals for training images (`prototypes.leave_one_out`, our fix): a normal training image is part of
the k-means cluster whose mean is its prototype, so its residual is smaller than a new normal image's would be
(by the factor ((n−1)/n)² for a cluster of n images; a cluster of one gives a residual of zero). A head trained on
those residuals learns a normal level that test images never reach. The bank therefore keeps each training
image's cluster (`assign`) and, given the training image a sample was made from (`source`), takes the residual
against that cluster's mean without the image, (n·c − f)/(n − 1), whose difference to f is n/(n − 1)·(f − c);
a cluster of one is left out. Test images (no source) use the bank as it is.

Matching per position (`prototypes.match: position`, our option, off by default): instead of one prototype map
per image, every feature position takes the nearest of the K prototypes' vectors *at that position*, so the
residual compares a location with the normal appearances seen there rather than with one whole normal image. For
surfaces whose layout varies from image to image (textures, Magnetic Tile) one prototype map cannot match every
region of a new normal image at once; for objects whose anomaly is the arrangement itself (a missing or swapped
part), the whole-map match of the paper keeps that arrangement. Held-out residuals work the same way per position.
"""
from __future__ import annotations

import datetime
import logging
import os
from typing import Any, Iterable, Optional, Sequence

import torch
from torch import nn
from tqdm import tqdm

from prnet.config import Config, image_hw
from prnet.utils import torch_generator, torch_save_atomic

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
MATCHES = ("image", "position")  # one nearest prototype map per image (the paper) | the nearest per position
# Fields that must agree between a prototype file and the run that uses it.
CHECKED_FIELDS = ("backbone", "weights", "stages", "image_size", "category", "residual")


class PrototypeMismatchError(ValueError):
    """A prototype file built with other settings (backbone, stages, image size, ...) than expected."""


class PrototypeBank(nn.Module):
    """Per-scale prototypes as buffers `proto_<l>` (K_l×C_l×h_l×w_l); forward(feats) -> residuals.

    With `prototypes=None` the bank has `num_scales` empty buffers that take their shapes from the first
    state dict loaded into them (a checkpoint), so a model can be built before its prototypes are known.
    `meta` is not part of the state dict (ONNX tracing needs tensor-only state): save it beside it.
    """

    def __init__(self, prototypes: Optional[Sequence[torch.Tensor]] = None, meta: Optional[dict] = None,
                 residual: str = "squared", num_scales: Optional[int] = None,
                 assignments: Optional[Sequence[torch.Tensor]] = None, match: str = "image") -> None:
        super().__init__()
        if residual not in ("squared", "abs"):
            raise ValueError(f"residual: expected squared or abs, got {residual!r}")
        if match not in MATCHES:
            raise ValueError(f"match: expected one of {', '.join(MATCHES)}, got {match!r}")
        self.match = match
        if prototypes is None:
            if num_scales is None:
                raise ValueError("PrototypeBank: give prototypes or num_scales")
            prototypes = [torch.zeros(0, 0, 0, 0) for _ in range(num_scales)]
        self.num_scales = len(prototypes)
        for i, p in enumerate(prototypes):
            if p.dim() != 4:
                raise ValueError(f"prototypes[{i}]: expected K×C×h×w, got shape {tuple(p.shape)}")
            self.register_buffer(f"proto_{i}", p.detach().float().contiguous())
        # the k-means cluster of each training image, per scale (not in the state dict: training needs them,
        # a checkpoint or an ONNX export does not)
        if assignments is not None and len(assignments) != self.num_scales:
            raise ValueError(f"PrototypeBank: {len(assignments)} assignment vectors for {self.num_scales} scales")
        for i in range(self.num_scales):
            a = (torch.as_tensor(assignments[i]).long().reshape(-1) if assignments is not None
                 else torch.zeros(0, dtype=torch.long))
            k = prototypes[i].shape[0]
            if a.numel() and (int(a.min()) < 0 or int(a.max()) >= k):
                raise ValueError(f"PrototypeBank: scale {i} assigns images to clusters outside 0..{k - 1}")
            self.register_buffer(f"assign_{i}", a, persistent=False)
            self.register_buffer(f"count_{i}", torch.bincount(a, minlength=k) if a.numel() else a.clone(),
                                 persistent=False)
        self.meta: dict = dict(meta or {})
        self.meta.setdefault("residual", residual)
        self.residual = self.meta["residual"]

    @property
    def prototypes(self) -> list[torch.Tensor]:
        return [getattr(self, f"proto_{i}") for i in range(self.num_scales)]

    @property
    def assignments(self) -> Optional[list[torch.Tensor]]:
        """Per scale, the cluster of each training image (in build order); None if the bank has none."""
        if any(getattr(self, f"assign_{i}").numel() == 0 for i in range(self.num_scales)):
            return None
        return [getattr(self, f"assign_{i}") for i in range(self.num_scales)]

    @property
    def num_sources(self) -> int:
        """How many training images the bank can hold out (0 without assignments)."""
        return 0 if self.assignments is None else int(self.assign_0.numel())

    def check_sources(self, names: Sequence[str], path: str = "the prototype bank") -> None:
        """Raise PrototypeMismatchError unless the bank was built from exactly these training images, in this
        order (held-out residuals address training images by their index)."""
        stored = self.meta.get("train_images")
        if self.assignments is None or stored is None:
            raise PrototypeMismatchError(
                f"prototype file {path} has no per-image cluster assignments (built before prototypes.leave_one_out "
                f"existed): rebuild it (python create_proto_feature_maps.py --force) or set "
                f"prototypes.leave_one_out=false")
        if list(stored) != list(names):
            raise PrototypeMismatchError(
                f"prototype file {path} was built from {len(stored)} training images that are not the {len(names)} "
                f"training images found now: rebuild it (python create_proto_feature_maps.py --force)")

    @property
    def is_empty(self) -> bool:
        return any(p.numel() == 0 for p in self.prototypes)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):  # type: ignore[override]
        # Adopt the stored prototype shapes (K and map size are only known once prototypes exist).
        for i in range(self.num_scales):
            key = f"{prefix}proto_{i}"
            if key in state_dict:
                mine = getattr(self, f"proto_{i}")
                stored = state_dict[key]
                if mine.shape != stored.shape:
                    setattr(self, f"proto_{i}", torch.empty_like(stored, dtype=torch.float32, device=mine.device))
                    # assignments refer to the old prototypes: drop them
                    for name in (f"assign_{i}", f"count_{i}"):
                        setattr(self, name, torch.zeros(0, dtype=torch.long, device=mine.device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _flat(self, f: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
        """N×D features and K×D prototypes of `scale`; ValueError if their shapes disagree."""
        protos = getattr(self, f"proto_{scale}")
        flat = f.reshape(f.shape[0], -1).float()
        pflat = protos.reshape(protos.shape[0], -1)
        if flat.shape[1] != pflat.shape[1]:
            raise ValueError(f"prototype scale {scale}: features {tuple(f.shape[1:])} vs prototypes "
                             f"{tuple(protos.shape[1:])} (built for another backbone or image size?)")
        return flat, pflat

    def nearest(self, f: torch.Tensor, scale: int) -> torch.Tensor:
        """Index of the nearest prototype (squared L2 over C·h·w) for each of the N maps in `f` (N×C×h×w)."""
        flat, pflat = self._flat(f, scale)
        # ||f||² − 2 f·p + ||p||²; ||f||² is the same for every prototype, so it does not change the argmin.
        dist = (pflat * pflat).sum(1).unsqueeze(0) - 2.0 * flat @ pflat.t()
        return dist.argmin(dim=1)

    def _own_cluster(self, scale: int, source: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """For inputs made from training image source[r] (−1: not a training image): (known, the image's own
        cluster, its size n as float, the held-out gain n/(n − 1); 1 where unknown or n = 1)."""
        assign, count = getattr(self, f"assign_{scale}"), getattr(self, f"count_{scale}")
        known = source >= 0
        own = assign[source.clamp_min(0)]
        n = count[own].float()
        return known, own, n, torch.where(known & (n > 1), n / (n - 1).clamp_min(1), torch.ones_like(n))

    def nearest_held_out(self, f: torch.Tensor, scale: int, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest prototype when row r of `f` comes from training image source[r] (−1: not a training image),
        with that image held out of its own cluster. Returns (index, gain): the residual is gain·(f − p[index])
        (gain n/(n − 1) when the nearest is the image's own cluster of n, else 1)."""
        flat, pflat = self._flat(f, scale)
        dist = ((flat * flat).sum(1, keepdim=True) - 2.0 * flat @ pflat.t() + (pflat * pflat).sum(1)[None]).clamp_min(0)
        # masks rather than row selection: no host synchronisation on the training step's hot path
        rows = torch.arange(f.shape[0], device=f.device)
        known, own, n, held = self._own_cluster(scale, source)
        d_own = dist[rows, own]
        dist[rows, own] = torch.where(known & (n <= 1), torch.full_like(n, float("inf")), d_own * held * held)
        idx = dist.argmin(dim=1)
        # every prototype left out (one cluster of one image): fall back to the bank as it is
        idx = torch.where(torch.isinf(dist.min(1).values), own, idx)
        gain = torch.where(idx == own, held, torch.ones_like(n))
        return idx, gain

    def nearest_per_position(self, f: torch.Tensor, scale: int,
                             source: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per position, the nearest of the K prototype vectors at that position (squared L2 over C) for the N
        maps in `f` (N×C×h×w), with training image source[r] held out of its own cluster (−1 or None: not a
        training image). Returns (the chosen prototype vectors N×C×h×w, gain N×1×h×w: the residual is
        gain·(f − chosen), n/(n − 1) where the image's own cluster of n was chosen, else 1)."""
        protos = getattr(self, f"proto_{scale}")
        if f.shape[1:] != protos.shape[1:]:
            raise ValueError(f"prototype scale {scale}: features {tuple(f.shape[1:])} vs prototypes "
                             f"{tuple(protos.shape[1:])} (built for another backbone or image size?)")
        n_img, k = f.shape[0], protos.shape[0]
        dist = ((f * f).sum(1, keepdim=True) - 2.0 * torch.einsum("nchw,kchw->nkhw", f, protos)
                + (protos * protos).sum(1)[None]).clamp_min(0)  # N×K×h×w
        gain = torch.ones_like(dist[:, :1])
        if source is not None:
            known, own, n, held = self._own_cluster(scale, source)
            is_own = (torch.arange(k, device=f.device)[None] == own[:, None])[:, :, None, None]  # N×K×1×1
            left_out = is_own & (known & (n <= 1)).view(-1, 1, 1, 1)  # a cluster of one: the image itself
            dist = torch.where(is_own, dist * (held * held).view(-1, 1, 1, 1), dist)
            if k > 1:  # with a single prototype there is nothing else: keep the bank as it is (gain 1)
                dist = dist.masked_fill(left_out, float("inf"))
        idx = dist.argmin(dim=1, keepdim=True)  # N×1×h×w
        chosen = torch.gather(protos.unsqueeze(0).expand(n_img, -1, -1, -1, -1), 1,
                              idx.unsqueeze(2).expand(-1, -1, protos.shape[1], -1, -1)).squeeze(1)
        if source is not None:
            gain = torch.where(idx == own.view(-1, 1, 1, 1), held.view(-1, 1, 1, 1), gain)
        return chosen, gain

    def forward(self, feats: Sequence[torch.Tensor], source: Optional[torch.Tensor] = None) -> list[torch.Tensor]:
        """Residual between each feature map and its nearest prototype, per scale.

        `source` (N ints, optional): the training image each input was made from, −1 for others; those inputs get
        held-out residuals (see the module docstring). Needs a bank with assignments."""
        if len(feats) != self.num_scales:
            raise ValueError(f"PrototypeBank: {len(feats)} feature maps for {self.num_scales} scales")
        if self.is_empty:
            raise RuntimeError("PrototypeBank has no prototypes: build them (create_proto_feature_maps.py) "
                               "or load a checkpoint")
        if source is not None:
            if self.assignments is None:
                raise RuntimeError("PrototypeBank: held-out residuals (source=...) need a bank built with its "
                                   "training images' cluster assignments")
            source = torch.as_tensor(source).long().reshape(-1)
            # checked where it is given (the trainer passes the CPU batch tensor: no GPU synchronisation)
            if source.numel() != feats[0].shape[0] or int(source.max()) >= self.num_sources:
                raise ValueError(f"PrototypeBank: source must give one training-image index (< {self.num_sources}) "
                                 f"or -1 per input, got {source.tolist()}")
            source = source.to(feats[0].device, non_blocking=True)
        device_type = feats[0].device.type
        autocast_on = torch.is_autocast_enabled(device_type) if device_type in ("cuda", "cpu", "mps") else False
        out = []
        with torch.autocast(device_type, enabled=False) if autocast_on else _null():
            for i, f in enumerate(feats):
                f32 = f.float()
                if self.match == "position":
                    chosen, gain = self.nearest_per_position(f32, i, source)
                    diff = (f32 - chosen) * gain
                elif source is None:
                    idx = self.nearest(f32, i)
                    diff = f32 - torch.index_select(getattr(self, f"proto_{i}"), 0, idx)
                else:
                    idx, gain = self.nearest_held_out(f32, i, source)
                    diff = (f32 - torch.index_select(getattr(self, f"proto_{i}"), 0, idx)) * gain.view(-1, 1, 1, 1)
                out.append(diff * diff if self.residual == "squared" else diff.abs())
        return out


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: Any) -> None:
        return None


def _sq_dist_chunked(x: torch.Tensor, x_sq: torch.Tensor, centers: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """N×K squared distances via ||x||² − 2 x·c + ||c||², in row chunks (no N×K×D tensor)."""
    c_sq = (centers * centers).sum(1)
    out = torch.empty(x.shape[0], centers.shape[0], device=x.device, dtype=torch.float32)
    for s in range(0, x.shape[0], chunk):
        out[s:s + chunk] = x_sq[s:s + chunk, None] - 2.0 * (x[s:s + chunk] @ centers.t()) + c_sq[None]
    return out.clamp_min_(0.0)


def kmeans_pp(x: torch.Tensor, k: int, iters: int = 50, generator: Optional[torch.Generator] = None,
              seed: int = 0) -> torch.Tensor:
    """k-means++ initialisation, then Lloyd iterations; returns k×D float32 centers on x's device.

    Deterministic for a given generator/seed. Sampling draws from a CPU generator (`generator`, else one
    made from `seed`); distances are computed by matmul, so memory stays O(N·K + K·D) beyond x itself.
    """
    return kmeans(x, k, iters, generator, seed)[0]


def kmeans(x: torch.Tensor, k: int, iters: int = 50, generator: Optional[torch.Generator] = None,
           seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """kmeans_pp's centers and the cluster of each row of x, consistent: every non-empty center is exactly the
    mean of the rows assigned to it (what held-out residuals rely on)."""
    if x.dim() != 2:
        raise ValueError(f"kmeans_pp: expected N×D, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"kmeans_pp: k={k} must be between 1 and the number of points {n}")
    x = x if x.dtype == torch.float32 else x.float()
    gen = generator if generator is not None else torch_generator(seed)
    x_sq = (x * x).sum(1)
    idx = [int(torch.randint(n, (1,), generator=gen).item())]
    min_d = _sq_dist_chunked(x, x_sq, x[idx[0]][None])[:, 0]
    for _ in range(1, k):
        w = min_d.double().cpu()
        if float(w.sum()) <= 0:  # all remaining points coincide with a center: pick any unused one
            used = set(idx)
            nxt = next(i for i in range(n) if i not in used)
        else:
            nxt = int(torch.multinomial(w, 1, generator=gen).item())
        idx.append(nxt)
        min_d = torch.minimum(min_d, _sq_dist_chunked(x, x_sq, x[nxt][None])[:, 0])
    centers = x[torch.tensor(idx, device=x.device)].clone()
    prev: Optional[torch.Tensor] = None  # the assignment the current centers are the means of
    for _ in range(max(1, iters)):  # at least one update, so that centers are means of their clusters
        assign = _sq_dist_chunked(x, x_sq, centers).argmin(1)
        if prev is not None and torch.equal(assign, prev):
            break
        prev = assign
        onehot = torch.zeros(k, n, device=x.device, dtype=torch.float32)
        onehot[assign, torch.arange(n, device=x.device)] = 1.0
        counts = onehot.sum(1)
        sums = onehot @ x  # K×D, deterministic (no scatter-add)
        keep = counts > 0  # an empty cluster keeps its previous center
        centers[keep] = sums[keep] / counts[keep, None]
    assert prev is not None
    return centers, prev


def inertia(x: torch.Tensor, centers: torch.Tensor) -> float:
    """Sum of squared distances of each row of x to its nearest center."""
    x = x.float()
    return float(_sq_dist_chunked(x, (x * x).sum(1), centers.float()).min(1).values.double().sum())


def num_prototypes(n_images: int, ratio: float) -> int:
    """K = max(1, round(ratio · N)), never more than N."""
    return min(n_images, max(1, round(ratio * n_images)))


def _batches(images: Iterable) -> Iterable[torch.Tensor]:
    """Image batches N×3×H×W from a DataLoader of dicts/tensors or an iterable of single images."""
    pending: list[torch.Tensor] = []
    for item in images:
        x = item["image"] if isinstance(item, dict) else item
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected image tensors or dicts with 'image', got {type(x).__name__}")
        if x.dim() == 3:
            pending.append(x)
            if len(pending) == 16:
                yield torch.stack(pending)
                pending = []
        else:
            if pending:
                yield torch.stack(pending)
                pending = []
            yield x
    if pending:
        yield torch.stack(pending)


@torch.no_grad()
def build_prototypes(backbone: nn.Module, images: Iterable, cfg: Config, device: torch.device | str,
                     meta: Optional[dict] = None, num_images: Optional[int] = None) -> PrototypeBank:
    """Extract features of all `images` (a loader or iterable), run k-means per scale, return the bank.

    Features are kept on `device` in float32 in preallocated N×D tensors (one per scale).
    """
    device = torch.device(device)
    backbone = backbone.to(device).eval()
    if num_images is None:
        try:  # a DataLoader knows its dataset's length; other iterables may yield batches
            num_images = len(images.dataset) if hasattr(images, "dataset") else None  # type: ignore[attr-defined]
        except TypeError:
            num_images = None
    store: list[torch.Tensor] = []
    shapes: list[tuple[int, ...]] = []
    chunks: list[list[torch.Tensor]] = []  # used only when the number of images is unknown
    n = 0
    try:
        total: Optional[int] = len(images)  # type: ignore[arg-type]
    except TypeError:
        total = None
    for x in tqdm(_batches(images), desc="features", unit="batch", total=total, leave=False):
        feats, _ = backbone(x.to(device, non_blocking=True).float())
        if not shapes:
            shapes = [tuple(f.shape[1:]) for f in feats]
            if num_images is not None:
                store = [torch.empty(num_images, f[0].numel(), device=device, dtype=torch.float32) for f in feats]
            else:
                chunks = [[] for _ in feats]
        b = feats[0].shape[0]
        for i, f in enumerate(feats):
            flat = f.reshape(b, -1).float()
            if store:
                if n + b > num_images:  # type: ignore[operator]
                    raise ValueError(f"build_prototypes: more images than the announced {num_images}")
                store[i][n:n + b] = flat
            else:
                chunks[i].append(flat)
        n += b
    if n == 0:
        raise ValueError("build_prototypes: no images")
    if store:
        store = [s[:n] for s in store]
    else:
        store = [torch.cat(c) for c in chunks]
        chunks = []
    k = num_prototypes(n, cfg.prototypes.ratio)
    protos, assignments = [], []
    for i, feats_i in enumerate(store):
        gen = torch_generator(cfg.seed, i)
        centers, assign = kmeans(feats_i, k, cfg.prototypes.kmeans_iters, generator=gen)
        protos.append(centers.reshape(k, *shapes[i]).cpu())
        assignments.append(assign.cpu())
        store[i] = torch.empty(0)  # free this scale before the next one
        log.info("prototypes scale %d: %d images -> K=%d of %s", i, n, k, shapes[i])
    info = dict(meta or {})
    info.update({"num_images": n, "k": [k] * len(protos), "residual": cfg.prototypes.residual,
                 "date": datetime.datetime.now().isoformat(timespec="seconds"), "format": FORMAT_VERSION})
    return PrototypeBank(protos, info, residual=cfg.prototypes.residual, assignments=assignments)


def expected_meta(cfg: Config, category: str) -> dict:
    """The metadata fields a prototype file for `cfg` and `category` must carry."""
    h, w = image_hw(cfg)
    return {"backbone": cfg.model.backbone, "weights": cfg.model.backbone_weights,
            "stages": [int(s) for s in cfg.model.stages], "image_size": [h, w], "category": category,
            "residual": cfg.prototypes.residual}


def save_prototypes(bank: PrototypeBank, path: str) -> None:
    """Write the bank atomically as tensors plus plain-Python metadata (loadable with weights_only=True)."""
    assignments = bank.assignments
    payload = {"format": FORMAT_VERSION, "prototypes": [p.detach().cpu().contiguous() for p in bank.prototypes],
               "assign": None if assignments is None else [a.cpu().contiguous() for a in assignments],
               "meta": _plain(bank.meta)}
    torch_save_atomic(payload, path)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def check_meta(meta: dict, expected: dict, path: str) -> None:
    """Raise PrototypeMismatchError naming the first field whose file value differs from `expected`."""
    for key, want in expected.items():
        have = meta.get(key)
        norm = (lambda v: list(v) if isinstance(v, tuple) else v)
        if norm(have) != norm(want):
            raise PrototypeMismatchError(f"prototype file {path}: field '{key}' is {have!r} in the file, "
                                         f"expected {want!r}")


def load_prototypes(path: str, expected: Optional[dict] = None) -> PrototypeBank:
    """Load a prototype file (weights_only); check its metadata against `expected` (field -> value)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prototype file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt or foreign file
        raise RuntimeError(f"prototype file {path} cannot be read ({type(e).__name__}: {e}); "
                           f"delete it or rebuild with --force") from e
    if not (isinstance(payload, dict) and isinstance(payload.get("prototypes"), list)
            and isinstance(payload.get("meta"), dict)):
        raise RuntimeError(f"prototype file {path}: not a prototype file (expected keys 'prototypes', 'meta')")
    meta = payload["meta"]
    if expected:
        check_meta(meta, expected, path)
    return PrototypeBank(payload["prototypes"], meta, residual=meta.get("residual", "squared"),
                         assignments=payload.get("assign"))


def prototype_path(cfg: Config, category: str) -> str:
    """<prototypes.dir>/<backbone>_<H>x<W>/<category>.pt: the folder keeps settings from colliding."""
    h, w = image_hw(cfg)
    return os.path.join(cfg.prototypes.dir, f"{cfg.model.backbone}_{h}x{w}", f"{category}.pt")


def check_training_images(bank: PrototypeBank, cfg: Config, category: str, path: str) -> None:
    """With prototypes.leave_one_out, the bank must know the cluster of each of `category`'s current training
    images, in order (PrototypeMismatchError naming `path` otherwise)."""
    if cfg.prototypes.leave_one_out:
        from prnet.datasets.mvtec import format_args, scan_split  # here: the dataset package pulls in synthesis code
        bank.check_sources([s.name for s in scan_split(cfg.data.root, category, "train", **format_args(cfg))], path)


def ensure_prototypes(cfg: Config, category: str, device: torch.device | str, force: bool = False,
                      backbone: Optional[nn.Module] = None) -> PrototypeBank:
    """Load the matching prototype file of `category`, or build it from the normal training images and save it.

    A file built with other settings is an error unless `force` (then it is rebuilt with a warning).
    """
    path = prototype_path(cfg, category)
    expected = expected_meta(cfg, category)
    if os.path.isfile(path):
        try:
            bank = load_prototypes(path, expected)
            check_training_images(bank, cfg, category, path)
            log.info("prototypes for %s: loaded %s", category, path)
            return bank
        except (PrototypeMismatchError, RuntimeError) as e:
            if not force:
                raise type(e)(f"{e} (rerun with --force to rebuild it)") from None
            log.warning("rebuilding prototypes: %s", e)
    return build_category_prototypes(cfg, category, device, backbone)


def build_category_prototypes(cfg: Config, category: str, device: torch.device | str,
                              backbone: Optional[nn.Module] = None) -> PrototypeBank:
    """Build the bank of `category` from its normal training images and save it at prototype_path (atomic)."""
    from prnet.datasets.mvtec import MVTEC, format_args  # imported here: the dataset package pulls in synthesis code
    from prnet.models.backbone import Backbone

    path = prototype_path(cfg, category)
    dataset = MVTEC(cfg.data.root, category, split="train", image_size=image_hw(cfg), **format_args(cfg))
    if backbone is None:
        backbone = Backbone(cfg.model.backbone, cfg.model.backbone_weights, cfg.model.stages,
                            cfg.model.bottleneck_stage)
    workers = cfg.train.workers if cfg.train.workers >= 0 else min(8, os.cpu_count() or 1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.prototypes.batch_size, shuffle=False,
                                         num_workers=workers, pin_memory=torch.device(device).type == "cuda")
    meta = {**expected_meta(cfg, category), "train_images": [s.name for s in dataset.samples]}
    bank = build_prototypes(backbone, loader, cfg, device, meta=meta, num_images=len(dataset))
    save_prototypes(bank, path)
    log.info("prototypes for %s: %d images, K=%s, saved to %s", category, bank.meta["num_images"],
             bank.meta["k"], path)
    return bank
