"""Validation: network vs per-pixel median on the same inputs, PSNR and SSIM (trainer/metrics.py)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from model.fusion import fusion_kwargs
from trainer.baselines import median
from trainer.data import to_float
from trainer.logging_utils import image_grid
from trainer.metrics import psnr, ssim

PSNR_CAP = 100.0  # dB; identical images give +inf, which would swamp a mean


def _hwc(t: torch.Tensor) -> np.ndarray:
    """(3, H, W) tensor -> (H, W, 3) float64 in [0, 1]."""
    return t.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy().astype(np.float64)


@torch.no_grad()
def validate(net: nn.Module, loader: DataLoader, device: torch.device, autocast,
             image_size: tuple[int, int] | None = None) -> tuple[dict[str, float], torch.Tensor | None]:
    """Mean PSNR/SSIM of `net` and of the median baseline over `loader` (image_size: the whole
    photos' size when the loader crops them).

    Returns (metrics, grid): metrics has psnr, ssim, median_psnr, median_ssim (dB / unitless), k, n;
    grid is an image row (inputs | output | median | target) of the first sequence, for TensorBoard.
    """
    was_training = net.training
    net.eval()
    sums = {"psnr": 0.0, "ssim": 0.0, "median_psnr": 0.0, "median_ssim": 0.0}
    n, k, grid = 0, 0, None
    for batch in loader:
        if "inputs" not in batch:  # every item skipped as unreadable
            continue
        inputs, targets = to_float(batch["inputs"]), to_float(batch["target"])  # float in [0, 1], CPU
        x = inputs.to(device)
        with autocast():
            pred = net(x, **fusion_kwargs(net, image_size))
        pred = pred.float().clamp(0, 1).cpu()
        k = x.shape[1]
        for b in range(x.shape[0]):
            target = _hwc(targets[b])
            out = _hwc(pred[b])
            med = median(inputs[b].permute(0, 2, 3, 1).numpy())
            sums["psnr"] += min(psnr(out, target), PSNR_CAP)
            sums["ssim"] += ssim(out, target)
            sums["median_psnr"] += min(psnr(med, target), PSNR_CAP)
            sums["median_ssim"] += ssim(med, target)
            if grid is None:
                grid = image_grid(inputs[b], pred[b], torch.from_numpy(med).permute(2, 0, 1), targets[b])
            n += 1
    net.train(was_training)
    if n == 0:
        raise RuntimeError("validation set yielded no readable sequence")
    metrics = {key: v / n for key, v in sums.items()}
    metrics.update(k=k, n=n)
    return metrics, grid
