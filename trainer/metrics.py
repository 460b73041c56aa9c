"""Image quality metrics for restorations: PSNR and SSIM, raw and after histogram matching.

All functions take HxWx3 float arrays in [0, 1] (NumPy, or anything `np.asarray` accepts, such as
CPU tensors) and use scikit-image's maintained implementations with `data_range=1`, so the
numbers are comparable with other work that uses the same library defaults (SSIM: 7x7 uniform
window, per-channel mean).

The paper reports the *histogram-matched* figures: a method that recovers the right structure but
the wrong global brightness (Weiss's reflectance has no absolute scale; the mean is pulled up by
speculars) is not punished for the brightness alone. `match_histograms` maps each channel of the
prediction onto the target's distribution before scoring.
"""

from __future__ import annotations

import numpy as np
from skimage import exposure
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

__all__ = ["psnr", "ssim", "match_histograms", "psnr_matched", "ssim_matched", "all_metrics"]


def _check(pred, target) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if pred.shape != target.shape or pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"pred and target must both be (H, W, 3); got {pred.shape} and {target.shape}")
    return pred, target


def psnr(pred, target) -> float:
    """Peak signal-to-noise ratio in dB of `pred` against `target`, both (H, W, 3) floats in [0, 1].

    Identical images give +inf (scikit-image's convention); callers that average should cap it.
    """
    pred, target = _check(pred, target)
    with np.errstate(divide="ignore"):
        return float(peak_signal_noise_ratio(target, pred, data_range=1.0))


def ssim(pred, target) -> float:
    """Structural similarity (unitless, <= 1) of (H, W, 3) floats in [0, 1], averaged over channels."""
    pred, target = _check(pred, target)
    return float(structural_similarity(target, pred, data_range=1.0, channel_axis=-1))


def match_histograms(pred, target) -> np.ndarray:
    """`pred` with each channel's histogram mapped onto `target`'s; (H, W, 3) float64 in [0, 1]."""
    pred, target = _check(pred, target)
    return exposure.match_histograms(pred, target, channel_axis=-1)


def psnr_matched(pred, target) -> float:
    """PSNR (dB) after `match_histograms(pred, target)`: the paper's reported figure."""
    return psnr(match_histograms(pred, target), target)


def ssim_matched(pred, target) -> float:
    """SSIM after `match_histograms(pred, target)`: the paper's reported figure."""
    return ssim(match_histograms(pred, target), target)


def all_metrics(pred, target) -> dict[str, float]:
    """The four figures `drs-evaluate` reports, matching the histogram once for both matched ones."""
    pred, target = _check(pred, target)
    matched = match_histograms(pred, target)
    return {
        "psnr": psnr(pred, target),
        "ssim": ssim(pred, target),
        "psnr_matched": psnr(matched, target),
        "ssim_matched": ssim(matched, target),
    }
