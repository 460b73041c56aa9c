"""The Deep Residual Set network: pure PyTorch (no Hydra, h5py or trainer imports).

    from model import build_model, ARCHITECTURES, model_from_checkpoint, DeepResidualSet
    net = build_model("drs_small", aggregation="mean")     # x (B, K, 3, H, W) -> (B, 3, H, W)

model/online.py folds images in one at a time (memory independent of K); model/tiling.py runs
the encoder and decoder tile by tile (memory independent of H, W).
"""

from model.loading import model_from_checkpoint
from model.network import AGGREGATIONS, ARCHITECTURES, DeepResidualSet, build_model, pad_to_multiple

__all__ = [
    "AGGREGATIONS",
    "ARCHITECTURES",
    "DeepResidualSet",
    "build_model",
    "model_from_checkpoint",
    "pad_to_multiple",
]
