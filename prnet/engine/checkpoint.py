"""Checkpoints: atomic save, safe load (weights_only), resume, and rebuilding a model for predict/export.

A checkpoint holds tensors and plain Python types only, so `torch.load(..., weights_only=True)` opens it and
no code from the file runs:
    format, version, epoch, model (full state dict: backbone, prototypes, head), optimizer, scheduler,
    rng (torch CPU/CUDA states as tensors), config (dict), prototype_meta (dict), threshold (float or None: the
    decision threshold on the image score, stored when training finished) and threshold_rule (how it was chosen,
    eval.threshold), history (list of per-epoch dicts), average (train.average_last: the weight average's state,
    prnet.engine.averaging; None without it).
"""
from __future__ import annotations

import os
from typing import Any, Optional

import torch

from prnet.config import Config, ConfigError, config_from_dict
from prnet.utils import torch_save_atomic

FORMAT = "prnet-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or from another format version."""


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str, *, model: torch.nn.Module, epoch: int, cfg: Config, prototype_meta: dict,
                    optimizer: Optional[torch.optim.Optimizer] = None, scheduler: Any = None,
                    threshold: Optional[float] = None, threshold_rule: Optional[str] = None,
                    history: Optional[list] = None, average: Optional[dict] = None, world_size: int = 1) -> None:
    """Write everything needed to resume or to predict, atomically (temporary file, then os.replace). `world_size`:
    the training processes (the global batch and the steps per epoch depend on it)."""
    from prnet.config import config_to_dict

    state = {
        "format": FORMAT,
        "version": VERSION,
        "epoch": int(epoch),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_state(),
        "config": config_to_dict(cfg),
        "prototype_meta": dict(prototype_meta),
        "threshold": None if threshold is None else float(threshold),
        "threshold_rule": threshold_rule,
        "history": list(history or []),
        "average": average,
        "world_size": int(world_size),
    }
    torch_save_atomic(state, path)


def load_checkpoint(path: str, map_location: Any = "cpu") -> dict:
    """Open a checkpoint safely; CheckpointError naming the file if it is missing, corrupt or foreign."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt, truncated, or not a torch file
        raise CheckpointError(f"checkpoint {path} could not be read ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a PRNet checkpoint (no '{FORMAT}' format tag)")
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {state.get('version')}; this code reads version {VERSION}")
    try:
        state["config_obj"] = config_from_dict(state["config"])
    except (ConfigError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path} holds a config this code does not accept: {e}") from None
    return state


def model_from_checkpoint(path: str, device: torch.device) -> tuple[torch.nn.Module, Config, dict]:
    """Rebuild the full model (backbone, prototypes, head) from a checkpoint, offline, in eval mode."""
    from prnet.models.prnet import build_model

    state = load_checkpoint(path)
    cfg: Config = state["config_obj"]
    if "image_score" not in state["config"].get("eval", {}):
        # saved before eval.image_score existed: scored (and its threshold set) with the map's top-k mean
        cfg.eval.image_score = "map"
    build_cfg = config_from_dict(state["config"])
    build_cfg.model.backbone_weights = "checkpoint"  # the checkpoint carries the backbone's weights
    model = build_model(build_cfg, None)  # an empty prototype bank takes its shapes from the state dict
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not match the model this code builds: {e}") from None
    return model.to(device).eval(), cfg, state

