"""The Deep Residual Set network: pure PyTorch (no Hydra, h5py or trainer imports).

    from model import build_model, ARCHITECTURES, model_from_checkpoint, DeepResidualSet
    net = build_model("drs_fusion")                        # x (B, K, 3, H, W) -> (B, 3, H, W)
    net = build_model("drs_paper", aggregation="mean")     # the paper's design (model/network.py)

model/online.py folds images in one at a time (memory independent of K); model/tiling.py runs
the encoder and decoder tile by tile (memory independent of H, W).
"""

from model.fusion import FusionNet
from model.loading import model_from_checkpoint
from model.network import (
    AGGREGATIONS,
    ARCHITECTURES,
    DEFAULT_ARCH,
    DeepResidualSet,
    build_model,
    pad_to_multiple,
)

__all__ = [
    "AGGREGATIONS",
    "ARCHITECTURES",
    "DEFAULT_ARCH",
    "DeepResidualSet",
    "FusionNet",
    "build_model",
    "model_from_checkpoint",
    "pad_to_multiple",
]
