"""Prototype bank: k-means prototypes of normal feature maps per scale, nearest lookup and residuals.

Choices where the paper is silent follow the public reimplementation: K = 10 % of the normal training
images per scale (prototypes.ratio), the nearest prototype is chosen per image over the whole
flattened feature map (C·h·w), and the residual is squared, (f − p)².

Held-out residuals for training images (`prototypes.leave_one_out`, our fix): a normal training image is part of
the k-means cluster whose mean is its prototype, so its residual is smaller than a new normal image's would be
(by the factor ((n−1)/n)² for a cluster of n images; a cluster of one gives a residual of zero). A head trained on
those residuals learns a normal level that test images never reach. The bank therefore keeps each training
image's cluster (`assign`) and, given the training image a sample was made from (`source`), takes the residual
against that cluster's mean without the sample's own features f, (n·c − f)/(n − 1), whose difference to f is
n/(n − 1)·(f − c); a cluster of one is left out. For the normal image itself that is its cluster rebuilt without
it. For a sample changed from it (a synthetic anomaly, f = f_i + Δ), rebuilding without i would give
n/(n − 1)·(f_i − c) + Δ; the scaled form gives n/(n − 1)·(f_i − c + Δ), the change Δ scaled by n/(n − 1)
(1.17–1.33 for clusters of 4–7 images). Given the clean image's features f_i beside the sample (`clean`, the
trainer's `prototypes.held_out_exact`, one more backbone pass for the synthetic samples), the residual is the exact
one, f − (n·c − f_i)/(n − 1). Test images (no source) use the bank as it is.

Distance maps (`distance_map`, for the image score eval.image_score=map_residual): per scale, the residual summed
over channels (the squared distance to the nearest prototype per feature position), upsampled bilinearly to the
image size and divided by `residual_mean` (that scale's mean over the normal training images, each with its
held-out residual; stored with the prototypes), the scales averaged. A normal image's map is about 1 everywhere.

Patch memory (optional, `patch_memory`): the bank can also hold a PatchMemory (prnet.models.patch_memory), the
normal training patches' features, whose distance map is a second input of the head.

k-means lives in prnet.models.kmeans; building, storing and checking prototype files in prnet.engine.prototypes.
"""
from __future__ import annotations

import contextlib
import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from prnet.models.patch_memory import PatchMemory


class PrototypeBank(nn.Module):
    """Per-scale prototypes as buffers `proto_<l>` (K_l×C_l×h_l×w_l); forward(feats) -> residuals.

    With `prototypes=None` the bank has `num_scales` empty buffers that take their shapes from the first
    state dict loaded into them (a checkpoint), so a model can be built before its prototypes are known.
    `meta` is not part of the state dict (ONNX tracing needs tensor-only state): save it beside it.
    """

    def __init__(self, prototypes: Optional[Sequence[torch.Tensor]] = None, meta: Optional[dict] = None,
                 residual: str = "squared", num_scales: Optional[int] = None,
                 assignments: Optional[Sequence[torch.Tensor]] = None,
                 residual_mean: Optional[Sequence[float]] = None,
                 patch_memory: Optional[PatchMemory] = None) -> None:
        super().__init__()
        if residual not in ("squared", "abs"):
            raise ValueError(f"residual: expected squared or abs, got {residual!r}")
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
        # per scale, the mean distance of the normal training images (held out); NaN: not known (a bank or a
        # checkpoint made before it was stored), distance maps refused
        mean = torch.full((self.num_scales,), math.nan) if residual_mean is None else \
            torch.as_tensor(residual_mean, dtype=torch.float32).reshape(-1)
        if mean.numel() != self.num_scales:
            raise ValueError(f"PrototypeBank: {mean.numel()} residual means for {self.num_scales} scales")
        self.register_buffer("residual_mean", mean.clone())
        # optional: the nearest-neighbour distance to normal training patches, a second input of the head
        self.patch_memory = patch_memory
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

    @property
    def is_empty(self) -> bool:
        return any(p.numel() == 0 for p in self.prototypes)

    @property
    def has_residual_mean(self) -> bool:
        return bool((torch.isfinite(self.residual_mean) & (self.residual_mean > 0)).all())

    def distances(self, residuals: Sequence[torch.Tensor], hw: tuple[int, int]) -> list[torch.Tensor]:
        """Per scale, the N×1×H×W squared distance of each feature to its prototype (forward's residuals summed
        over channels), upsampled bilinearly to `hw`."""
        out = []
        for r in residuals:
            d = r.float().sum(1, keepdim=True) if self.residual == "squared" else (r.float() ** 2).sum(1, keepdim=True)
            out.append(F.interpolate(d, size=hw, mode="bilinear", align_corners=False))
        return out

    def distance_map(self, residuals: Sequence[torch.Tensor], hw: tuple[int, int]) -> torch.Tensor:
        """N×1×H×W: each scale's distance divided by its normal-image mean, averaged over the scales (module
        docstring). Needs `residual_mean` (RuntimeError otherwise)."""
        if not torch.jit.is_tracing() and not self.has_residual_mean:  # (export checks it before tracing)
            raise RuntimeError("PrototypeBank: no residual means (prototypes or checkpoint made before they were "
                               "stored): rebuild the prototypes, or score with eval.image_score=map")
        maps = self.distances(residuals, hw)
        return sum(m / self.residual_mean[i] for i, m in enumerate(maps)) / len(maps)

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
        mean_key = f"{prefix}residual_mean"
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if mean_key not in state_dict and mean_key in missing_keys:  # older checkpoints: not known
            missing_keys.remove(mean_key)
            self.residual_mean.fill_(math.nan)

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

    def held_out_diff(self, f: torch.Tensor, scale: int, source: torch.Tensor,
                      clean: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """f − its nearest prototype (N×C×h×w) when row r of `f` comes from training image source[r] (−1: not a
        training image), with that image held out of its own cluster of n: the scaled form n/(n − 1)·(f − c), exact
        for the image itself. `clean` (rows, features M×C×h×w): for those rows, the features of the clean training
        image f_i they were changed from; their own cluster's held-out mean is then (n·c − f_i)/(n − 1) exactly."""
        flat, pflat = self._flat(f, scale)
        dist = ((flat * flat).sum(1, keepdim=True) - 2.0 * flat @ pflat.t() + (pflat * pflat).sum(1)[None]).clamp_min(0)
        # masks rather than row selection: no host synchronisation on the training step's hot path
        rows = torch.arange(f.shape[0], device=f.device)
        known, own, n, held = self._own_cluster(scale, source)
        d_own = dist[rows, own] * held * held
        exact_rows = exact_diff = exact_ok = None
        if clean is not None:
            exact_rows, g = clean[0], clean[1].flatten(1).float()
            n_r = n[exact_rows]
            exact_ok = known[exact_rows] & (n_r > 1)
            held_mean = (n_r[:, None] * pflat[own[exact_rows]] - g) / (n_r - 1).clamp_min(1)[:, None]
            exact_diff = flat[exact_rows] - held_mean
            d_own[exact_rows] = torch.where(exact_ok, (exact_diff * exact_diff).sum(1), d_own[exact_rows])
        dist[rows, own] = torch.where(known & (n <= 1), torch.full_like(n, float("inf")), d_own)
        idx = dist.argmin(dim=1)
        # every prototype left out (one cluster of one image): fall back to the bank as it is
        idx = torch.where(torch.isinf(dist.min(1).values), own, idx)
        gain = torch.where(idx == own, held, torch.ones_like(n))
        diff = (flat - pflat[idx]) * gain[:, None]
        if clean is not None:
            use = exact_ok & (idx[exact_rows] == own[exact_rows])
            diff[exact_rows] = torch.where(use[:, None], exact_diff, diff[exact_rows])
        return diff.reshape(f.shape)

    def forward(self, feats: Sequence[torch.Tensor], source: Optional[torch.Tensor] = None,
                clean: Optional[tuple[torch.Tensor, Sequence[torch.Tensor]]] = None) -> list[torch.Tensor]:
        """Residual between each feature map and its nearest prototype, per scale.

        `source` (N ints, optional): the training image each input was made from, −1 for others; those inputs get
        held-out residuals (see the module docstring). Needs a bank with assignments. `clean` (with `source`):
        (rows, per-scale features of the clean training images source[rows]) for inputs changed from them: their
        held-out residuals are exact rather than scaled."""
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
        if clean is not None:
            if source is None:
                raise ValueError("PrototypeBank: clean features need source (the training image of each input)")
            rows = torch.as_tensor(clean[0]).long().reshape(-1)
            if len(clean[1]) != self.num_scales or any(g.shape[0] != rows.numel() or g.shape[1:] != f.shape[1:]
                                                       for g, f in zip(clean[1], feats)):
                raise ValueError(f"PrototypeBank: clean features must match the inputs' per scale, one map per row of "
                                 f"{rows.numel()}")
            clean = (rows.to(feats[0].device, non_blocking=True), clean[1]) if rows.numel() else None
        device_type = feats[0].device.type
        autocast_on = torch.is_autocast_enabled(device_type) if device_type in ("cuda", "cpu", "mps") else False
        out = []
        with torch.autocast(device_type, enabled=False) if autocast_on else contextlib.nullcontext():
            for i, f in enumerate(feats):
                f32 = f.float()
                if source is None:
                    idx = self.nearest(f32, i)
                    diff = f32 - torch.index_select(getattr(self, f"proto_{i}"), 0, idx)
                else:
                    diff = self.held_out_diff(f32, i, source, None if clean is None else (clean[0], clean[1][i]))
                out.append(diff * diff if self.residual == "squared" else diff.abs())
        return out
