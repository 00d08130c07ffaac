"""Prototype files: build a bank from a category's normal training images, store it, check it, load it.

A file is `<prototypes.dir>/<backbone>_<H>x<W>/<category>.pt`, saved with tensors and plain Python types only
(it loads with `torch.load(..., weights_only=True)`). Its metadata identifies everything that determines the
bank (`expected_meta`): the resolved data root and format, the category, the training images (names and contents,
hashed: a copy of the data with new modification times still matches), image size, backbone and weights identity,
stages, ratio, residual, seed and k-means iterations. A file whose metadata differs is stale: `ensure_prototypes`
(train.py) rebuilds it with a warning naming the differing fields; create_proto_feature_maps.py refuses it and prints
the command that rebuilds it.
"""
from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import logging
import os
from typing import Any, Iterable, Optional, Sequence

import torch
from torch import nn
from tqdm import tqdm

from prnet.config import Config, image_hw
from prnet.datasets import normal_train_set
from prnet.models.kmeans import kmeans, num_prototypes
from prnet.models.patch_memory import (MAX_CANDIDATES, PatchMemory, greedy_coreset, memory_inputs,
                                       nearest_distances, patch_embedding, random_subset)
from prnet.models.prototypes import PrototypeBank
from prnet.utils import torch_generator, torch_save_atomic

log = logging.getLogger(__name__)

FORMAT_VERSION = 4  # files of earlier formats lack the identity fields or the residual means and count as stale


class PrototypeMismatchError(ValueError):
    """A prototype file made from other data or settings than the run expects; `fields` names the differences."""

    def __init__(self, message: str, fields: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.fields = list(fields)


def _batches(images: Iterable, batch_size: int) -> Iterable[torch.Tensor]:
    """Image batches N×3×H×W from a DataLoader of dicts/tensors or an iterable of single images (grouped by
    `batch_size`) or of batches (passed through)."""
    pending: list[torch.Tensor] = []
    for item in images:
        x = item["image"] if isinstance(item, dict) else item
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected image tensors or dicts with 'image', got {type(x).__name__}")
        if x.dim() == 3:
            pending.append(x)
            if len(pending) == batch_size:
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
def build_prototypes(backbone: nn.Module, images: Iterable, device: torch.device | str, *, ratio: float = 0.1,
                     kmeans_iters: int = 50, seed: int = 0, residual: str = "squared", batch_size: int = 16,
                     meta: Optional[dict] = None, num_images: Optional[int] = None) -> PrototypeBank:
    """Extract features of all `images` (a loader or iterable), run k-means per scale, return the bank.

    K = num_prototypes(N, ratio); scale i's k-means draws from torch_generator(seed, i). Features are kept on
    `device` in float32 in preallocated N×D tensors (one per scale) when the number of images is known.
    """
    device = torch.device(device)
    backbone = backbone.to(device).eval()
    if num_images is None and hasattr(images, "dataset"):  # a DataLoader knows its dataset's length
        try:
            num_images = len(images.dataset)  # type: ignore[attr-defined]
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
    for x in tqdm(_batches(images, batch_size), desc="features", unit="batch", total=total, leave=False):
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
    k = num_prototypes(n, ratio)
    protos, assignments = [], []
    for i, feats_i in enumerate(store):
        centers, assign = kmeans(feats_i, k, kmeans_iters, generator=torch_generator(seed, i))
        protos.append(centers.reshape(k, *shapes[i]).cpu())
        assignments.append(assign.cpu())
        store[i] = torch.empty(0)  # free this scale before the next one
        log.info("prototypes scale %d: %d images -> K=%d of %s", i, n, k, shapes[i])
    info = dict(meta or {})
    info.update({"num_images": n, "k": [k] * len(protos), "residual": residual,
                 "date": datetime.datetime.now().isoformat(timespec="seconds"), "format": FORMAT_VERSION})
    return PrototypeBank(protos, info, residual=residual, assignments=assignments)


@torch.no_grad()
def residual_means(backbone: nn.Module, bank: PrototypeBank, images: Iterable, hw: tuple[int, int],
                   device: torch.device | str) -> torch.Tensor:
    """Per scale, the mean of PrototypeBank.distances over the bank's training images, `images` in the bank's
    build order, each image with its held-out residual (the level of an unseen normal image). Moves `bank` to
    `device` (nn.Module.to: on another device its buffers are replaced by new tensors, so read them afterwards)."""
    device = torch.device(device)
    bank = bank.to(device)
    sums = torch.zeros(bank.num_scales, dtype=torch.float64)
    n = 0
    for x in tqdm(_batches(images, 16), desc="residual means", unit="batch", leave=False):
        feats, _ = backbone(x.to(device).float())
        source = torch.arange(n, n + x.shape[0])
        for i, d in enumerate(bank.distances(bank(feats, source), hw)):
            sums[i] += d.double().mean(dim=(1, 2, 3)).sum().cpu()
        n += x.shape[0]
    if n != bank.num_sources:
        raise ValueError(f"residual_means: {n} images for a bank of {bank.num_sources} training images")
    return (sums / n).float()


@torch.no_grad()
def patch_features(backbone: nn.Module, images: Iterable, device: torch.device | str,
                   batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(P×D patch features of `images` (patch_embedding of memory_inputs), in image order; P owners: each patch's
    image index; the number of images)."""
    device = torch.device(device)
    collected, owners, n = [], [], 0
    for x in tqdm(_batches(images, batch_size), desc="patch features", unit="batch", leave=False):
        feats, _ = backbone(x.to(device).float())
        e = patch_embedding(memory_inputs(feats))
        collected.append(e.permute(0, 2, 3, 1).reshape(-1, e.shape[1]))
        owners.append(torch.arange(n, n + e.shape[0], device=device).repeat_interleave(e.shape[2] * e.shape[3]))
        n += e.shape[0]
    if n == 0:
        raise ValueError("patch features: no images")
    return torch.cat(collected), torch.cat(owners), n


def coreset_memory(features: torch.Tensor, owner: torch.Tensor, count: Optional[int], *, seed: int = 0,
                   max_candidates: Optional[int] = MAX_CANDIDATES, ratio: float = 0.1) -> PatchMemory:
    """A PatchMemory of patch features: at most `max_candidates` rows drawn uniformly with `seed` (None: all), then
    `count` of them (None: round(ratio × the candidates), at least 1) chosen by greedy_coreset (seeded, on a
    128-dimensional projection). Each row remembers its owner. The baseline of benchmarks/patchcore.py makes the
    same memory from the same features and seed."""
    candidates, cand_owner = features, owner
    if max_candidates is not None and features.shape[0] > max_candidates:
        keep = random_subset(features.shape[0], max_candidates, seed).to(features.device)
        candidates, cand_owner = features[keep], owner[keep]
    if count is None:
        count = max(1, int(round(ratio * candidates.shape[0])))
    if count > candidates.shape[0]:
        raise ValueError(f"coreset_memory: cannot choose {count} of {candidates.shape[0]} candidate patches")
    idx = greedy_coreset(candidates, count, seed=seed, progress=False)
    return PatchMemory(candidates[idx], cand_owner[idx])


@torch.no_grad()
def build_patch_memory(backbone: nn.Module, images: Iterable, device: torch.device | str, count: int, *,
                       seed: int = 0, max_candidates: Optional[int] = MAX_CANDIDATES,
                       batch_size: int = 16) -> PatchMemory:
    """A PatchMemory of `count` patches of `images` (the bank's training images, in its build order): patch_features
    then coreset_memory. Then every patch of every image is matched against the memory without its image's rows
    (the features of the first pass, not extracted again), and the mean of those held-out distances becomes the
    memory's `mean`: the level of an unseen normal image.
    """
    feats_all, owner, n = patch_features(backbone, images, device, batch_size)
    available = feats_all.shape[0] if max_candidates is None else min(feats_all.shape[0], max_candidates)
    if count > available:
        raise ValueError(f"prototypes.patch_memory {count}: more than the {available} candidate patches of {n} "
                         f"training images")
    memory = coreset_memory(feats_all, owner, count, seed=seed, max_candidates=max_candidates)
    held_out = nearest_distances(feats_all, memory.memory, query_owner=owner, memory_owner=memory.source)
    memory.mean.fill_(float(held_out.double().mean()))
    del feats_all, owner
    log.info("patch memory: %d of %d training images' patches, mean held-out distance %.4f", count, n,
             float(memory.mean))
    return memory.cpu()


def run_prototype_file(model: nn.Module, cfg: Config, category: str) -> tuple[PrototypeBank, Any]:
    """(the run's prototype file as a bank, with its training images' cluster assignments; the normal training set
    in the bank's build order), for work on a model loaded from a checkpoint that needs held-out residuals. The file
    must hold the checkpoint's prototypes and name the same training images in the same order
    (PrototypeMismatchError otherwise). Its format is not checked; if the images' contents differ from those it was
    made from (or it was made when modification times stood for them), a warning says so: what is computed from
    the images now is then not from the images the prototypes were."""
    path = prototype_path(cfg, category)
    stored = load_prototypes(path)
    if any(a.shape != b.shape or not torch.equal(a.cpu(), b.cpu()) for a, b in zip(stored.prototypes,
                                                                                    model.bank.prototypes)):
        raise PrototypeMismatchError(f"prototype file {path}: not the prototypes of this checkpoint", ["prototypes"])
    dataset = normal_train_set(cfg, category)
    names = [s.name for s in dataset.samples]
    if stored.meta.get("train_images") != names or stored.num_sources != len(names):
        raise PrototypeMismatchError(f"prototype file {path}: made from other training images than "
                                     f"{cfg.data.root}/{category} holds now", ["train_images"])
    if stored.meta.get("train_files") != files_digest([s.path for s in dataset.samples], names):
        log.warning("prototype file %s: the training images of %s/%s are not byte for byte those it was made from "
                    "(edited since, or the file identified them by modification time): the statistics computed "
                    "from them now may differ from those of the run", path, cfg.data.root, category)
    return stored, dataset


def attach_residual_means(model: nn.Module, cfg: Config, category: str, device: torch.device | str) -> bool:
    """Give a model loaded from a checkpoint saved before residual means were stored (PRNet.bank without them)
    its residual means, computed as build_category_prototypes does: from the run's prototype file (its cluster
    assignments hold the training images out; run_prototype_file) and the current normal training images. Returns
    whether it computed them (False: the model had them)."""
    if model.bank.has_residual_mean:
        return False
    stored, dataset = run_prototype_file(model, cfg, category)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.prototypes.batch_size, shuffle=False,
                                         num_workers=0)
    means = residual_means(model.backbone, stored, loader, image_hw(cfg), device)
    model.bank.residual_mean.copy_(means.to(model.bank.residual_mean.device))
    log.info("residual means for %s computed from %s: %s", category, prototype_path(cfg, category),
             [round(float(m), 4) for m in means])
    return True


# ------------------------------------------------------------------------------------------------ identity
def weights_identity(backbone: str, weights: str) -> str:
    """What the backbone's weights are: 'none', 'hub:<backbone>', 'package:<dist>==<version>', or for a file
    'file:sha256:<digest of its bytes>' (the same weights copied elsewhere are the same weights). weights=hub that
    falls back to the offline package (no network) is the package's weights, and says so."""
    if weights == "none":
        return "none"
    if weights == "hub":
        from prnet.models.backbone import PACKAGE_WEIGHTS, hub_source
        if backbone in PACKAGE_WEIGHTS and hub_source(backbone) == "package":
            return weights_identity(backbone, "package")
        return f"hub:{backbone}"
    if weights == "package":
        from prnet.models.backbone import PACKAGE_WEIGHTS
        if backbone not in PACKAGE_WEIGHTS:
            return f"package:{backbone}"
        dist = PACKAGE_WEIGHTS[backbone][0].replace("_", "-")
        try:
            return f"package:{dist}=={importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            return f"package:{dist}"
    path = os.path.realpath(os.path.expanduser(weights))
    try:
        return f"file:sha256:{content_digest(path)}"
    except OSError:
        return f"file:{path}"


def content_digest(path: str) -> str:
    """sha256 of a file's bytes (hex). Every training image of Magnetic Tile (762, 30 MB) takes 0.06 s here."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def files_digest(paths: Sequence[str], names: Sequence[str]) -> str:
    """sha256 over each file's name and the sha256 of its bytes. Contents rather than modification times: a copy
    or a restore of the data (new times, same images) keeps the prototypes and lets a run resume; an image
    replaced by another one of the same size and time does not."""
    h = hashlib.sha256()
    for path, name in zip(paths, names):
        h.update(f"{name}\0{content_digest(path)}\n".encode())
    return h.hexdigest()


def expected_meta(cfg: Config, category: str, samples: Optional[Sequence] = None) -> dict:
    """Every field that determines the bank of `category` under `cfg` (the cache key of its file).
    `samples`: the training samples in the order the bank's assignments refer to (default: scanned now)."""
    if samples is None:
        samples = normal_train_set(cfg, category).samples
    names = [s.name for s in samples]
    h, w = image_hw(cfg)
    return {"format": FORMAT_VERSION,
            "data_root": os.path.realpath(cfg.data.root),
            "data_format": cfg.data.format,
            "category": category,
            "train_files": files_digest([s.path for s in samples], names),
            "num_train_images": len(names),
            "image_size": [h, w],
            "backbone": cfg.model.backbone,
            "weights": weights_identity(cfg.model.backbone, cfg.model.backbone_weights),
            "stages": [int(s) for s in cfg.model.stages],
            "ratio": float(cfg.prototypes.ratio),
            "residual": cfg.prototypes.residual,
            "seed": int(cfg.seed),
            "kmeans_iters": int(cfg.prototypes.kmeans_iters),
            "train_images": names,
            # only when on, so that files made before the option existed stay valid without it
            **({"patch_memory": int(cfg.prototypes.patch_memory)} if cfg.prototypes.patch_memory > 0 else {})}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def differing_fields(meta: dict, expected: dict) -> list[str]:
    """The keys of `expected` whose value in `meta` differs (a missing key differs)."""
    return [key for key, want in expected.items() if key not in meta or _plain(meta[key]) != _plain(want)]


def describe_differences(meta: dict, expected: dict, fields: Sequence[str]) -> str:
    """'ratio 0.1 -> 0.5, train_files' : short values shown as file -> now, long ones by name only."""
    parts = []
    for key in fields:
        have, want = repr(meta.get(key, "missing")), repr(expected[key])
        parts.append(f"{key} {have} -> {want}" if len(have) + len(want) <= 80 else key)
    return ", ".join(parts)


def check_meta(meta: dict, expected: dict, path: str) -> None:
    """Raise PrototypeMismatchError listing every field whose file value differs from `expected`."""
    fields = differing_fields(meta, expected)
    if fields:
        raise PrototypeMismatchError(f"prototype file {path} was made from other data or settings "
                                     f"({describe_differences(meta, expected, fields)})", fields)


# ------------------------------------------------------------------------------------------------ files
def save_prototypes(bank: PrototypeBank, path: str) -> None:
    """Write the bank atomically as tensors plus plain-Python metadata (loadable with weights_only=True)."""
    assignments = bank.assignments
    payload = {"format": FORMAT_VERSION, "prototypes": [p.detach().cpu().contiguous() for p in bank.prototypes],
               "assign": None if assignments is None else [a.cpu().contiguous() for a in assignments],
               "residual_mean": bank.residual_mean.detach().cpu().clone(), "meta": _plain(bank.meta)}
    memory = bank.patch_memory
    if memory is not None:
        payload["patch_memory"] = {"memory": memory.memory.detach().cpu().contiguous(),
                                   "source": memory.source.detach().cpu().contiguous(),
                                   "mean": float(memory.mean)}
    torch_save_atomic(payload, path)


def load_prototypes(path: str, expected: Optional[dict] = None) -> PrototypeBank:
    """Load a prototype file (weights_only); check its metadata against `expected` (field -> value)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prototype file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt or foreign file
        raise RuntimeError(f"prototype file {path} cannot be read ({type(e).__name__}: {e}); "
                           f"delete it or rebuild it") from e
    if not (isinstance(payload, dict) and isinstance(payload.get("prototypes"), list)
            and isinstance(payload.get("meta"), dict)):
        raise RuntimeError(f"prototype file {path}: not a prototype file (expected keys 'prototypes', 'meta')")
    meta = payload["meta"]
    if expected:
        check_meta(meta, expected, path)
    stored = payload.get("patch_memory")
    if expected and "patch_memory" in expected and not isinstance(stored, dict):
        raise PrototypeMismatchError(f"prototype file {path} has no patch memory", ["patch_memory"])
    memory = None if not isinstance(stored, dict) else PatchMemory(stored["memory"], stored["source"],
                                                                   stored["mean"])
    if expected and memory is not None and "patch_memory" not in expected:
        raise PrototypeMismatchError(f"prototype file {path} has a patch memory the settings do not ask for "
                                     f"(prototypes.patch_memory: 0)", ["patch_memory"])
    bank = PrototypeBank(payload["prototypes"], meta, residual=meta.get("residual", "squared"),
                         assignments=payload.get("assign"), residual_mean=payload.get("residual_mean"),
                         patch_memory=memory)
    if expected and "train_images" in expected and bank.num_sources != len(expected["train_images"]):
        raise PrototypeMismatchError(f"prototype file {path} lacks the k-means cluster of each of its "
                                     f"{len(expected['train_images'])} training images (held-out residuals need them)",
                                     ["assign"])
    return bank


def prototype_path(cfg: Config, category: str) -> str:
    """<prototypes.dir>/<backbone>_<H>x<W>/<category>.pt: the folder keeps settings from colliding."""
    h, w = image_hw(cfg)
    return os.path.join(cfg.prototypes.dir, f"{cfg.model.backbone}_{h}x{w}", f"{category}.pt")


def load_matching(cfg: Config, category: str) -> PrototypeBank:
    """The bank stored at prototype_path if its metadata matches `cfg` and the current training images and it holds
    residual means; FileNotFoundError, RuntimeError (unreadable) or PrototypeMismatchError (stale) otherwise."""
    path = prototype_path(cfg, category)
    bank = load_prototypes(path, expected_meta(cfg, category))
    if not bank.has_residual_mean:
        raise PrototypeMismatchError(f"prototype file {path} has no residual means (files written on a GPU before "
                                     f"the fix of 2026-12-04 stored them as NaN)", ["residual_mean"])
    return bank


def ensure_prototypes(cfg: Config, category: str, device: torch.device | str, force: bool = False,
                      backbone: Optional[nn.Module] = None) -> PrototypeBank:
    """Load the matching prototype file of `category`, or build it from the normal training images and save it.

    A stale or unreadable file is rebuilt with one warning giving the reason; `force` rebuilds in any case.
    """
    path = prototype_path(cfg, category)
    if os.path.isfile(path) and not force:
        try:
            bank = load_matching(cfg, category)
            log.info("prototypes for %s: loaded %s", category, path)
            return bank
        except (PrototypeMismatchError, RuntimeError) as e:
            log.warning("rebuilding prototypes: %s", e)
    return build_category_prototypes(cfg, category, device, backbone)


def make_backbone(cfg: Config) -> nn.Module:
    """The run's backbone; a random-weights one (weights=none) is drawn with the run seed, as in training."""
    from prnet.models.backbone import Backbone

    torch.manual_seed(cfg.seed)
    return Backbone(cfg.model.backbone, cfg.model.backbone_weights, cfg.model.stages, cfg.model.bottleneck_stage)


def build_category_prototypes(cfg: Config, category: str, device: torch.device | str,
                              backbone: Optional[nn.Module] = None) -> PrototypeBank:
    """Build the bank of `category` from its normal training images and save it at prototype_path (atomic)."""
    path = prototype_path(cfg, category)
    dataset = normal_train_set(cfg, category)
    if backbone is None:
        backbone = make_backbone(cfg)
    workers = cfg.train.workers if cfg.train.workers >= 0 else min(8, os.cpu_count() or 1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.prototypes.batch_size, shuffle=False,
                                         num_workers=workers, pin_memory=torch.device(device).type == "cuda")
    meta = expected_meta(cfg, category, dataset.samples)
    bank = build_prototypes(backbone, loader, device, ratio=cfg.prototypes.ratio,
                            kmeans_iters=cfg.prototypes.kmeans_iters, seed=cfg.seed,
                            residual=cfg.prototypes.residual, batch_size=cfg.prototypes.batch_size,
                            meta=meta, num_images=len(dataset))
    means = residual_means(backbone, bank, loader, image_hw(cfg), device)  # (moves the bank: read its buffer after)
    bank.residual_mean.copy_(means)
    if cfg.prototypes.patch_memory > 0:
        bank.patch_memory = build_patch_memory(backbone, loader, device, cfg.prototypes.patch_memory,
                                               seed=cfg.seed, batch_size=cfg.prototypes.batch_size)
    save_prototypes(bank, path)
    log.info("prototypes for %s: %d images, K=%s, saved to %s", category, bank.meta["num_images"],
             bank.meta["k"], path)
    return bank
