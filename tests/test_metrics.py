"""PSNR/SSIM wrappers: agree with the textbook formulas and behave under histogram matching."""

from __future__ import annotations

import numpy as np
import pytest

from trainer import metrics


def test_psnr_matches_the_formula():
    rng = np.random.default_rng(0)
    target = rng.random((16, 20, 3))
    pred = np.clip(target + rng.normal(0, 0.05, target.shape), 0, 1)
    expected = 10 * np.log10(1.0 / np.mean((pred - target) ** 2))
    assert metrics.psnr(pred, target) == pytest.approx(expected, rel=1e-9)


def test_ssim_is_one_for_identical_and_lower_for_noisy():
    rng = np.random.default_rng(1)
    target = rng.random((32, 32, 3))
    assert metrics.ssim(target, target) == pytest.approx(1.0)
    noisy = np.clip(target + rng.normal(0, 0.2, target.shape), 0, 1)
    assert metrics.ssim(noisy, target) < 0.9
    # data_range is fixed at 1, so a darker copy of the target is not perfectly similar.
    assert metrics.ssim(0.5 * target, target) < 0.99


def test_histogram_matching_forgives_a_global_brightness_change():
    rng = np.random.default_rng(2)
    target = rng.random((32, 32, 3)) * 0.8 + 0.1
    darker = target * 0.6
    assert metrics.psnr(darker, target) < 20
    assert metrics.psnr_matched(darker, target) > 60  # a monotone change maps back exactly
    assert metrics.ssim_matched(darker, target) > 0.999
    out = metrics.all_metrics(darker, target)
    assert set(out) == {"psnr", "ssim", "psnr_matched", "ssim_matched"}
    assert out["psnr_matched"] == pytest.approx(metrics.psnr_matched(darker, target))


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        metrics.psnr(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)))
