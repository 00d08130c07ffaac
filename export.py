"""Export a trained checkpoint to ONNX: backbone, prototype lookup, head, sigmoid, smoothing and score, one graph.

    python export.py --checkpoint outputs/demo/demo/last.pt --out model.onnx

Input `image`: N×3×H×W float32 RGB in [0, 1] at the training size (normalisation is inside the graph); a model
with a second read (eval.second_read, a size) has a second input `image2`: the same images resized from the files to
that size (metadata `second_read`), as predict.py reads them.
Outputs `anomaly_map`: N×1×H×W in [0, 1] (eval.anomaly_map's map, as in evaluation), `score`: N image scores. The batch axis is
dynamic. The model's metadata_props record, as JSON text, `threshold` (null if the checkpoint stores none),
`threshold_rule`, `image_size` ([h, w]), `topk`, `image_score`, `knn_weight`, `anomaly_map`, `knn_lift`, `sigma`,
`second_read` ([h, w] or "none"), `second_weight`, `category`, `backbone` and
`epoch`: a decision is `score >= threshold`, as in predict.py. Exit codes: 0 written, 2 bad checkpoint.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Optional

import torch

log = logging.getLogger("export")


class ExportModule(torch.nn.Module):
    """The whole inference path of a PRNet model as one module: image → (smoothed map, image score)."""

    def __init__(self, model: torch.nn.Module, sigma: float, topk: int, image_score: str, knn_weight: float,
                 anomaly_map: str = "head", knn_lift: float = 0.99, second_weight: Optional[float] = None):
        super().__init__()
        self.model, self.sigma, self.topk, self.image_score = model, sigma, topk, image_score
        self.knn_weight, self.anomaly_map, self.knn_lift = knn_weight, anomaly_map, knn_lift
        self.second_weight = second_weight

    def forward(self, image: torch.Tensor, image2: Optional[torch.Tensor] = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        from prnet.engine.evaluator import maps_and_scores

        return maps_and_scores(self.model, image, topk=self.topk, sigma=self.sigma, image_score=self.image_score,
                               knn_weight=self.knn_weight, anomaly_map=self.anomaly_map, knn_lift=self.knn_lift,
                               second_images=image2, second_weight=self.second_weight)


def onnx_metadata(cfg, state: dict) -> dict[str, str]:
    """The ONNX file's metadata_props: what a user of the graph needs to score and decide like predict.py.
    Values are JSON text (a threshold of null: the checkpoint stores none)."""
    from prnet.config import image_hw
    from prnet.inference import DEFAULT_THRESHOLD_RULE

    threshold = state.get("threshold")
    values = {
        "threshold": None if threshold is None else float(threshold),
        "threshold_rule": None if threshold is None else (state.get("threshold_rule") or DEFAULT_THRESHOLD_RULE),
        "image_size": list(image_hw(cfg)),
        "topk": int(cfg.eval.topk),
        "image_score": cfg.eval.image_score,
        "knn_weight": float(cfg.eval.knn_weight),
        "anomaly_map": cfg.eval.anomaly_map,
        "knn_lift": float(cfg.eval.knn_lift),
        "sigma": float(cfg.eval.sigma),
        "second_read": cfg.eval.second_read,
        "second_weight": float(cfg.eval.second_weight),
        "category": state.get("prototype_meta", {}).get("category"),
        "backbone": cfg.model.backbone,
        "epoch": int(state.get("epoch", 0)),
    }
    return {k: json.dumps(v) for k, v in values.items()}


def export_onnx(checkpoint: str, out: str, opset: int = 17) -> None:
    import onnx

    from prnet.config import image_hw
    from prnet.engine.checkpoint import CheckpointError, model_from_checkpoint
    from prnet.engine.evaluator import second_weight_of
    from prnet.utils import atomic_write

    model, cfg, state = model_from_checkpoint(checkpoint, torch.device("cpu"))
    if cfg.eval.image_score != "map" and not model.bank.has_residual_mean:
        raise CheckpointError(f"checkpoint {checkpoint}: eval.image_score={cfg.eval.image_score} but its prototypes "
                              f"have no residual means (made before they were stored)")
    if cfg.eval.image_score == "map_residual_knn" and not (
            model.knn is not None and model.knn.is_calibrated and model.knn.made_for(cfg.eval.topk, cfg.eval.sigma)):
        raise CheckpointError(f"checkpoint {checkpoint}: eval.image_score=map_residual_knn but its nearest-neighbour "
                              f"score is not made for eval.topk={cfg.eval.topk}, eval.sigma={cfg.eval.sigma:g} (a "
                              f"checkpoint saved before training finished)")
    if cfg.eval.anomaly_map == "head_knn" and not (
            model.knn is not None and model.knn.map_made_for(cfg.eval.knn_lift, cfg.eval.sigma)):
        raise CheckpointError(f"checkpoint {checkpoint}: eval.anomaly_map=head_knn but its nearest-neighbour map "
                              f"table is not made for eval.knn_lift={cfg.eval.knn_lift:g}, eval.sigma={cfg.eval.sigma:g}")
    second_weight = second_weight_of(cfg)
    if second_weight is not None and not (model.second is not None and model.second.is_calibrated
                                          and model.second.made_for(cfg.eval.topk, cfg.eval.sigma)):
        raise CheckpointError(f"checkpoint {checkpoint}: eval.second_read={cfg.eval.second_read} but its second "
                              f"read is not made for eval.topk={cfg.eval.topk}, eval.sigma={cfg.eval.sigma:g} (a "
                              f"checkpoint saved before training finished)")
    module = ExportModule(model, cfg.eval.sigma, cfg.eval.topk, cfg.eval.image_score, cfg.eval.knn_weight,
                          cfg.eval.anomaly_map, cfg.eval.knn_lift, second_weight).eval()
    h, w = image_hw(cfg)
    example = (torch.rand(2, 3, h, w),)
    names = ["image"]
    if second_weight is not None:
        example += (torch.rand(2, 3, *cfg.eval.second_read),)
        names.append("image2")
    metadata = onnx_metadata(cfg, state)

    def write(tmp: str) -> None:
        torch.onnx.export(
            module, example, tmp, input_names=names, output_names=["anomaly_map", "score"],
            dynamic_axes={**{n: {0: "batch"} for n in names}, "anomaly_map": {0: "batch"}, "score": {0: "batch"}},
            opset_version=opset, dynamo=False)
        graph = onnx.load(tmp)
        onnx.helper.set_model_props(graph, metadata)
        onnx.save(graph, tmp)

    atomic_write(out, write)
    log.info("wrote %s (input image N×3×%d×%d in [0,1]; metadata %s)", out, h, w,
             ", ".join(f"{k}={v}" for k, v in metadata.items()))


def main(argv=None) -> int:
    from prnet.engine.checkpoint import CheckpointError
    from prnet.utils import setup_logging

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--opset", type=int, default=17)
    args = p.parse_args(argv)
    setup_logging()
    try:
        export_onnx(args.checkpoint, args.out, args.opset)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
