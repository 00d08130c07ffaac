"""Write the maps the lift candidates need for one proxy run: the head's map and the baseline's nearest-neighbour map
of the proxy's test images and (held out) of the normal training images, with the test masks and labels.

    PYTHONPATH=.:benchmarks python docs/results/lift_shape/dump_maps.py RUN/magnetic_tile/last.pt OUT.npz

The maps are score_fusion.py's (run_maps, knn_scores): its `pq99` made from them is its file's to every digit.
About 5 minutes and 1 GB per Magnetic Tile proxy run.
"""
import sys

import numpy as np
import torch

from prnet.datasets import build_test_dataset, normal_train_set
from prnet.engine.checkpoint import model_from_checkpoint
from prnet.utils import setup_logging
from score_fusion import knn_scores, run_maps, use_run_bank


def main(checkpoint: str, out: str) -> None:
    setup_logging()
    device = torch.device("cpu")
    model, cfg, _ = model_from_checkpoint(checkpoint, device)
    category = cfg.data.classes[0]
    test, train = build_test_dataset(cfg, category), normal_train_set(cfg, category)
    use_run_bank(model, cfg, category, checkpoint, device)
    p_train, _, p_test, _, _ = run_maps(model, train, test, sigma=cfg.eval.sigma, batch=16, device=device)
    _, _, k_test, k_train = knn_scores(cfg, train, test, device, 16, train_maps=True)
    np.savez(out, p_train=p_train.astype(np.float32), p_test=p_test.astype(np.float32),
             k_train=k_train.astype(np.float32), k_test=k_test.astype(np.float32),
             masks=np.stack([test.mask(i) for i in range(len(test))]).astype(np.uint8),
             defects=np.array([s.defect for s in test.samples]))


if __name__ == "__main__":
    main(*sys.argv[1:3])
