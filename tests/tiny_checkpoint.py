"""A tiny PRNet checkpoint with random weights (no training, no downloads), for the API and predict tests."""
import torch

from prnet.config import Config
from prnet.engine.checkpoint import save_checkpoint
from prnet.models.backbone import Backbone
from prnet.models.prnet import build_model
from prnet.models.prototypes import PrototypeBank

SIZE = 64


def tiny_config() -> Config:
    cfg = Config()
    cfg.data.image_size = SIZE
    cfg.model.backbone, cfg.model.backbone_weights = "tf_efficientnet_lite0", "none"
    cfg.model.head_widths = [16, 32, 64]
    cfg.eval.topk, cfg.eval.sigma = 10, 1.0
    # no training images to make the nearest-neighbour memory from: the image score and map without it
    cfg.eval.image_score, cfg.eval.anomaly_map = "map_residual", "head"
    return cfg


def make_tiny_checkpoint(path: str, threshold=None, seed: int = 0) -> str:
    """Save a seeded random model at `path` (category 'tiny') with the decision threshold `threshold`."""
    cfg = tiny_config()
    torch.manual_seed(seed)
    backbone = Backbone(cfg.model.backbone, "none", cfg.model.stages, cfg.model.bottleneck_stage)
    protos = [torch.rand(2, c, SIZE // s, SIZE // s) for c, s in zip(backbone.channels, backbone.strides)]
    # residual means of 1: the distance map is the raw distance (random prototypes have no normal level)
    bank = PrototypeBank(protos, {"category": "tiny"}, residual=cfg.prototypes.residual,
                         residual_mean=[1.0] * len(protos))
    model = build_model(cfg, bank, backbone=backbone).eval()
    save_checkpoint(path, model=model, epoch=1, cfg=cfg, prototype_meta={"category": "tiny"}, threshold=threshold)
    return path
