"""PRNet (Zhang et al., CVPR 2023): frozen backbone, prototype residuals, multi-scale fusion, multi-size
self-attention and a U-Net-like decoder to a per-pixel anomaly logit map."""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from prnet.config import Config, ModelConfig
from prnet.models.attention import MultiSizeSelfAttention
from prnet.models.backbone import Backbone
from prnet.models.decoder import Decoder
from prnet.models.fusion import MultiScaleFusion
from prnet.models.knn_score import NOT_CALIBRATED, KnnScore
from prnet.models.patch_memory import PatchMemory
from prnet.models.prototypes import PrototypeBank
from prnet.models.second_read import SecondRead


def _proj(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class PRNet(nn.Module):
    """forward(x in [0,1], N×3×H×W) -> anomaly logits N×1×H×W (and the prototype distance map on request).

    The backbone and the prototype bank are part of the module (buffers), so a checkpoint or an ONNX
    export carries them. With `bank=None` the bank is empty and takes its prototypes from the first
    checkpoint loaded (load_state_dict); a forward pass before that raises.

    `patch_memory` (prototypes.patch_memory > 0): the bank also holds a PatchMemory, and its distance map (one
    channel, resized to each scale) joins each scale's residual at the input of the residual projection.

    `knn` (eval.image_score=map_residual_knn): the model also holds a KnnScore (prnet.models.knn_score), the
    nearest-neighbour distance that the image score combines with the map; calibrated after training. Loading a
    state dict gives the model a KnnScore if the state holds one and takes it away if not.

    `second` (eval.second_read): the model also holds a SecondRead (prnet.models.second_read), the prototype bank
    and statistics of the head's second read of each image at another size, a part of the same image score; made
    after training. Loading a state dict gives or takes it away as for `knn`.
    """

    def __init__(self, model_cfg: ModelConfig, bank: Optional[PrototypeBank] = None, residual: str = "squared",
                 backbone: Optional[Backbone] = None, patch_memory: bool = False, knn: bool = False,
                 second: bool = False) -> None:
        super().__init__()
        self.backbone = backbone if backbone is not None else Backbone(
            model_cfg.backbone, model_cfg.backbone_weights, model_cfg.stages, model_cfg.bottleneck_stage)
        n = len(model_cfg.stages)
        if bank is None:
            bank = PrototypeBank(None, {"residual": residual}, residual=residual, num_scales=n,
                                 patch_memory=PatchMemory() if patch_memory else None)
        if bank.num_scales != n:
            raise ValueError(f"PRNet: prototype bank has {bank.num_scales} scales, model.stages has {n}")
        if (bank.patch_memory is not None) != patch_memory:
            raise ValueError(f"PRNet: the prototype bank {'has' if bank.patch_memory is not None else 'lacks'} a "
                             f"patch memory, the config's prototypes.patch_memory says "
                             f"{'on' if patch_memory else 'off'}: rebuild the prototypes")
        self.patch_memory = patch_memory
        self.bank = bank
        widths = [int(w) for w in model_cfg.head_widths]
        if len(widths) != n:
            raise ValueError(f"PRNet: model.head_widths {widths} needs one width per stage {model_cfg.stages}")
        chans = self.backbone.channels
        self.feat_proj = nn.ModuleList(_proj(c, w) for c, w in zip(chans, widths))
        extra = 1 if patch_memory else 0  # the patch distance channel
        self.res_proj = nn.ModuleList(_proj(c + extra, w) for c, w in zip(chans, widths))
        self.feat_fusion = MultiScaleFusion(widths, self.backbone.strides)
        self.res_fusion = MultiScaleFusion(widths, self.backbone.strides)
        self.merge = nn.ModuleList(_proj(2 * w, w) for w in widths)
        self.attention = nn.ModuleList(
            nn.Sequential(*[MultiSizeSelfAttention(w, model_cfg.attn_patch_divisors)
                            for _ in range(model_cfg.attn_blocks)]) for w in widths)
        self.out_fusion = MultiScaleFusion(widths, self.backbone.strides)
        self.decoder = Decoder(widths, self.backbone.bottleneck_channels)
        self.knn = KnnScore() if knn else None
        self.residual = residual
        self.second = SecondRead(num_scales=n, residual=residual) if second else None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The nearest-neighbour score is made after training, not trained: whether the model holds one follows the
        # state loaded, not the evaluation settings it was built with (eval.* may change on resume and predict).
        knn_state = [k for k in state_dict if k.startswith(prefix + "knn.")]
        if knn_state and self.knn is None:
            self.knn = KnnScore().to(state_dict[knn_state[0]].device)
        elif not knn_state and self.knn is not None:
            self.knn = None
        second_state = [k for k in state_dict if k.startswith(prefix + "second.")]
        if second_state and self.second is None:
            self.second = SecondRead(num_scales=self.bank.num_scales, residual=self.residual).to(
                state_dict[second_state[0]].device)
        elif not second_state and self.second is not None:
            self.second = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor, source: Optional[torch.Tensor] = None,
                with_distance: bool = False, with_knn: bool = False,
                clean: Optional[tuple[torch.Tensor, torch.Tensor]] = None):
        """`source`: for training only, the normal training image each input was made from (held-out residuals,
        PrototypeBank.forward); None at test time. `clean` (training only, with `source`): (rows, the clean
        training images source[rows] that those inputs were changed from, M×3×H×W): exact held-out residuals for
        them (prototypes.held_out_exact). `with_distance`: return (logits, the prototype distance map
        N×1×H×W, PrototypeBank.distance_map) for the image score eval.image_score=map_residual; `with_knn` (with
        with_distance): (logits, distance map, the raw nearest-neighbour distance map N×1×h×w of KnnScore) for
        map_residual_knn."""
        if with_knn and (not with_distance or self.knn is None or self.knn.memory.is_empty):
            raise ValueError("PRNet.forward: with_knn needs with_distance" if not with_distance else
                             f"PRNet.forward: {NOT_CALIBRATED}")
        feats, residuals, bottleneck, patch = self.encode(x, source, clean=clean)
        distance = None
        if with_distance:  # float32, like the residuals (the bank turns autocast off for them)
            autocast_on = x.device.type in ("cuda", "cpu") and torch.is_autocast_enabled(x.device.type)
            with torch.autocast(x.device.type, enabled=False) if autocast_on else contextlib.nullcontext():
                distance = self.bank.distance_map(residuals, (x.shape[-2], x.shape[-1]))
        logits = self.head(feats, residuals, bottleneck, (x.shape[-2], x.shape[-1]), patch)
        if with_knn:
            return logits, distance, self.knn(feats)
        return (logits, distance) if with_distance else logits

    def encode(self, x: torch.Tensor, source: Optional[torch.Tensor] = None,
               bank: Optional[PrototypeBank] = None, clean: Optional[tuple[torch.Tensor, torch.Tensor]] = None):
        """The frozen part: (per-scale features, per-scale prototype residuals, bottleneck feature, patch
        distance map N×1×h×w or None without a patch memory) of images x; `bank`: another prototype bank than the
        model's (the second read's, made at its size; no patch memory); `clean`: as in forward."""
        feats, bottleneck = self.backbone(x)
        if bank is not None:
            return feats, bank(feats, source), bottleneck, None
        clean_feats = None
        if clean is not None and clean[1].shape[0]:
            clean_feats = (clean[0], self.backbone(clean[1])[0])
        patch = self.bank.patch_memory(feats, source) if self.patch_memory else None
        return feats, self.bank(feats, source, clean=clean_feats), bottleneck, patch

    def head(self, feats: list[torch.Tensor], residuals: list[torch.Tensor], bottleneck: torch.Tensor,
             hw: tuple[int, int], patch: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The trained part: anomaly logits N×1×H×W (H×W = hw) from encode's outputs."""
        if (patch is not None) != self.patch_memory:
            raise ValueError("PRNet.head: the patch distance map is " +
                             ("missing (the model has a patch memory)" if self.patch_memory else
                              "given to a model without a patch memory"))
        if patch is not None:
            residuals = [torch.cat([r, F.interpolate(patch.to(r.dtype), size=r.shape[-2:], mode="bilinear",
                                                     align_corners=False)], dim=1) for r in residuals]
        if not torch.is_autocast_enabled(bottleneck.device.type):
            dtype = self.feat_proj[0][0].weight.dtype
            feats = [f.to(dtype) for f in feats]
            residuals = [r.to(dtype) for r in residuals]
            bottleneck = bottleneck.to(dtype)
        f = self.feat_fusion([p(t) for p, t in zip(self.feat_proj, feats)])
        r = self.res_fusion([p(t) for p, t in zip(self.res_proj, residuals)])
        z = [m(torch.cat([a, b], dim=1)) for m, a, b in zip(self.merge, f, r)]
        z = [att(t) for att, t in zip(self.attention, z)]
        z = self.out_fusion(z)
        return self.decoder(bottleneck, z, hw)

    def head_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters (everything but the frozen backbone)."""
        return [p for p in self.parameters() if p.requires_grad]


def count_trainable(model: nn.Module) -> int:
    """Number of parameters with requires_grad."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_model(cfg: Config, bank: Optional[PrototypeBank] = None, backbone: Optional[Backbone] = None) -> PRNet:
    """PRNet from a full Config and a prototype bank (None: filled by a checkpoint)."""
    return PRNet(cfg.model, bank, residual=cfg.prototypes.residual, backbone=backbone,
                 patch_memory=cfg.prototypes.patch_memory > 0, knn=needs_knn(cfg), second=needs_second_read(cfg))


def needs_knn(cfg: Config) -> bool:
    """Whether cfg's evaluation uses the nearest-neighbour memory (KnnScore): the image score map_residual_knn or the
    anomaly map head_knn."""
    return cfg.eval.image_score == "map_residual_knn" or cfg.eval.anomaly_map == "head_knn"


def needs_second_read(cfg: Config) -> bool:
    """Whether cfg's image score includes the head's second read (SecondRead): eval.second_read resolved to a size
    (prnet.engine.second_read.resolve_second_read) and the image score map_residual_knn."""
    return cfg.eval.image_score == "map_residual_knn" and isinstance(cfg.eval.second_read, list)
