"""generator/align.py's building blocks one by one, with values computed independently: the config's
checks, the records, grey conversion and the work copy, the local normalisation and the noise
estimate, regions, the homography plausibility checks and the cell agreement.

Written for mutation testing (tests/mutation.py): tests/test_align.py judges whole alignments of
semi-real captures (accuracy and rejections), which a wrong constant inside a helper can survive.
Small synthetic images keep these tests fast (each mutant reruns them).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from generator.align import (
    AlignConfig,
    Alignment,
    Frame,
    align,
    central_region,
    homography_problem,
    prepare,
    project,
    set_region,
    work_copy,
)
from generator.align_frame import (
    AGREEMENT_PERCENTILE,
    _agreeing_cells,
    _cell,
    _corners,
    _percentile,
    agreement,
    cell_correlations,
    noise_sigma,
    normalise,
    to_grey,
)
from tests.captures import make_capture, object_image
from tests.ecc_spy import EccSpy

# ----------------------------------------------------------------------------------------------
# config and records


@pytest.mark.parametrize("kw, message", [
    ({"method": "surf"}, "align method must be one of ('sift', 'orb'), got 'surf'"),
    ({"work_size": 0}, "align work_size must be >= 1, got 0"),
    ({"max_features": 0}, "align max_features must be >= 1, got 0"),
    ({"min_inliers": 0}, "align min_inliers must be >= 1, got 0"),
    ({"ecc_iterations": 0}, "align ecc_iterations must be >= 1, got 0"),
    ({"cell": 0}, "align cell must be >= 1, got 0"),
    ({"ratio": 0.0}, "align ratio must be in (0, 1), got 0.0"),
    ({"ratio": 1.0}, "align ratio must be in (0, 1), got 1.0"),
    ({"min_overlap": -0.01}, "align min_overlap must be in [0, 1], got -0.01"),
    ({"min_overlap": 1.01}, "align min_overlap must be in [0, 1], got 1.01"),
    ({"min_spread": 1.5}, "align min_spread must be in [0, 1], got 1.5"),
    ({"min_spread": -0.5}, "align min_spread must be in [0, 1], got -0.5"),
    ({"min_agreement": -1.01}, "align min_agreement must be in [-1, 1], got -1.01"),
    ({"min_agreement": 1.01}, "align min_agreement must be in [-1, 1], got 1.01"),
])
def test_each_bad_setting_is_named(kw, message):
    with pytest.raises(ValueError) as exc:
        AlignConfig(**kw)
    assert str(exc.value) == message


def test_the_limits_themselves_are_allowed():
    AlignConfig(method="orb", work_size=1, max_features=1, min_inliers=1, ecc_iterations=1, cell=1,
                ratio=0.01, min_overlap=0, min_spread=0, min_agreement=-1)
    AlignConfig(ratio=0.99, min_overlap=1, min_spread=1, min_agreement=1)


def test_the_documented_defaults():
    cfg = AlignConfig()
    assert (cfg.method, cfg.work_size, cfg.max_features, cfg.contrast_threshold, cfg.clahe, cfg.ratio) == (
        "sift", 1024, 4000, 0.02, True, 0.8)
    assert (cfg.ransac_threshold, cfg.min_inliers, cfg.min_spread, cfg.max_scale_change, cfg.max_anisotropy,
            cfg.min_overlap) == (3.0, 10, 0.05, 3.0, 3.0, 0.3)
    assert (cfg.ecc, cfg.ecc_iterations, cfg.ecc_eps, cfg.max_ecc_shift, cfg.min_agreement, cfg.norm_sigma,
            cfg.texture_snr, cfg.cell) == (True, 50, 1e-4, 6.0, 0.3, 2.0, 3.0, 32)
    assert AGREEMENT_PERCENTILE == 90


def test_alignment_record():
    rejected = Alignment(None, reason="too few features", inliers=7)
    assert not rejected.ok and rejected.score == 7.0 and type(rejected.score) is float
    assert rejected.to_params() == {"homography": None, "reason": "too few features", "matches": 0, "inliers": 7,
                                    "ecc": None, "ecc_shift": None, "agreement": None, "refined": None,
                                    "checks": {}}
    h = np.array([[1, 0, 2.5], [0, 1, -1], [0, 0, 1]], np.float64)
    accepted = Alignment(h, inliers=40, agreement=0.75, checks={"scale": 1.0})
    assert accepted.ok and accepted.score == 0.75
    params = accepted.to_params()
    assert params["homography"] == [[1.0, 0.0, 2.5], [0.0, 1.0, -1.0], [0.0, 0.0, 1.0]]
    assert all(type(v) is float for row in params["homography"] for v in row)
    assert params["agreement"] == 0.75 and params["checks"] == {"scale": 1.0} and params["reason"] is None


# ----------------------------------------------------------------------------------------------
# preparation


def test_to_grey_uses_rec601_luma_and_each_dtype_range():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], np.uint8)
    expected = np.array([[0.299, 0.587, 0.114, 1.0]])
    for image, scale in ((rgb, 1.0), (rgb.astype(np.uint16) * 257, 1.0), (rgb / 255.0, 1.0),
                         (rgb.astype(np.float32) / 510.0, 0.5)):
        grey = to_grey(image)
        assert grey.dtype == np.float32 and grey.shape == (1, 4) and grey.flags["C_CONTIGUOUS"]
        np.testing.assert_allclose(grey, scale * expected, atol=1e-6)
    plain = np.array([[0, 51, 255]], np.uint8)
    np.testing.assert_allclose(to_grey(plain), [[0.0, 0.2, 1.0]], atol=1e-7)
    # A 16-bit value is not mistaken for an 8-bit one.
    np.testing.assert_allclose(to_grey(np.array([[65535, 257]], np.uint16)), [[1.0, 1 / 255]], atol=1e-7)


def test_work_copy_keeps_small_images_and_shrinks_large_ones():
    small = np.zeros((40, 30), np.float32)
    same, to_work = work_copy(small, 40)
    assert same is small and np.array_equal(to_work, np.eye(3))
    big = np.tile(np.arange(200, dtype=np.float32), (100, 1))  # (H, W) = (100, 200), a horizontal ramp
    copy, to_work = work_copy(big, 50)
    assert copy.shape == (25, 50)
    # Pixel centres at integers: x_work = s x + (s - 1) / 2.
    np.testing.assert_allclose(to_work, [[0.25, 0, -0.375], [0, 0.25, -0.375], [0, 0, 1]])
    np.testing.assert_allclose(copy[0, :3], [1.5, 5.5, 9.5])  # area averages of 4 columns
    tall, to_work = work_copy(np.zeros((300, 2), np.float32), 100)  # 2 px wide: at least 1 px after
    assert tall.shape == (100, 1)
    np.testing.assert_allclose(to_work, [[0.5, 0, -0.25], [0, 1 / 3, -1 / 3], [0, 0, 1]])


def test_noise_sigma_estimates_white_noise_and_ignores_a_smooth_ramp():
    rng = np.random.default_rng(0)
    ramp = np.tile(np.linspace(0.2, 0.8, 256, dtype=np.float32), (256, 1))
    assert noise_sigma(ramp) < 1e-5
    for sigma in (0.01, 0.05):
        noisy = (ramp + rng.normal(0, sigma, ramp.shape)).astype(np.float32)
        assert noise_sigma(noisy) == pytest.approx(sigma, rel=0.05)


def _texture(size: int = 96, seed: int = 0) -> np.ndarray:
    """A grey image with texture at a few px scale (float32 in [0, 1])."""
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), 1.5) * 2.5 - 0.75


def test_normalise_cancels_gain_and_offset_and_finds_the_texture():
    g = np.clip(_texture(), 0, 1).astype(np.float32) * 0.5 + 0.25
    norm, texture = normalise(g, 2.0)
    norm2, texture2 = normalise(0.5 * g + 0.3, 2.0)
    assert norm.dtype == np.float32 and texture.dtype == bool
    np.testing.assert_allclose(norm2, norm, atol=1e-2)
    assert np.array_equal(texture, texture2) and texture.mean() > 0.9
    # Zero mean, unit spread over a neighbourhood: the normalised values are O(1).
    assert abs(norm.mean()) < 0.1 and 0.5 < norm.std() < 1.5
    # A flat noisy part is no texture.
    rng = np.random.default_rng(1)
    part = g.copy()
    part[:, 24:] = 0.5 + rng.normal(0, 0.01, (96, 72)).astype(np.float32)
    norm, texture = normalise(part, 2.0)
    assert texture[:, 4:18].mean() > 0.9 and texture[:, 32:].mean() < 0.02


def test_normalise_texture_threshold_follows_snr():
    rng = np.random.default_rng(2)
    g = 0.5 + rng.normal(0, 0.01, (96, 96)).astype(np.float32)
    g[:, 48:] += 0.004 * np.sign(np.sin(np.arange(48) * 1.3))[None, :].astype(np.float32)  # faint stripes
    low = normalise(g, 2.0, snr=0.5)[1][:, 56:].mean()
    high = normalise(g, 2.0, snr=3.0)[1][:, 56:].mean()
    assert low > high


def test_prepare_records_sizes_and_root_sift_descriptors():
    img = object_image("astronaut", 200)
    frame = prepare(img, AlignConfig(work_size=100))
    h, w = img.shape[:2]
    assert frame.size == (w, h) and frame.work_size == (frame.grey.shape[1], frame.grey.shape[0])
    assert max(frame.work_size) == 100
    assert frame.keypoints.dtype == np.float32 and frame.keypoints.shape[1] == 2 and len(frame.keypoints) > 20
    assert frame.keypoints[:, 0].max() < frame.work_size[0] and frame.keypoints[:, 1].max() < frame.work_size[1]
    # RootSIFT: each descriptor is the square root of an L1-normalised histogram, so its L2 norm is 1.
    assert frame.descriptors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(frame.descriptors, axis=1), 1.0, atol=1e-3)
    assert frame.texture.shape == frame.grey.shape and frame.normalised.shape == frame.grey.shape
    orb = prepare(img, AlignConfig(method="orb", work_size=100))
    assert orb.descriptors.dtype == np.uint8 and orb.descriptors.shape[1] == 32


def test_prepare_without_clahe_finds_fewer_features_in_a_dim_photo():
    dim = (object_image("astronaut", 160).astype(np.float32) * 0.15).astype(np.uint8)
    with_clahe = prepare(dim, AlignConfig())
    without = prepare(dim, AlignConfig(clahe=False))
    assert len(with_clahe.keypoints) > len(without.keypoints)


def test_more_features_are_allowed_when_asked():
    img = object_image("astronaut", 200)
    assert len(prepare(img, AlignConfig(max_features=30)).keypoints) <= 31
    assert len(prepare(img, AlignConfig(max_features=30, method="orb")).keypoints) <= 30
    assert len(prepare(img).keypoints) > 60


# ----------------------------------------------------------------------------------------------
# regions and geometry


def test_central_region():
    np.testing.assert_allclose(central_region((100, 50)), [[35, 17.5], [65, 17.5], [65, 32.5], [35, 32.5]])
    np.testing.assert_allclose(central_region((100, 50), 0.5), [[25, 12.5], [75, 12.5], [75, 37.5], [25, 37.5]])


def test_set_region_maps_the_quad_to_work_px_and_masks_its_inner_90_percent():
    frame = prepare(object_image("astronaut", 200), AlignConfig(work_size=100))
    w, h = frame.size
    quad = np.array([[0.2 * w, 0.2 * h], [0.8 * w, 0.2 * h], [0.8 * w, 0.8 * h], [0.2 * w, 0.8 * h]])
    assert set_region(frame, quad) is frame and frame.ecc_in_region is True
    np.testing.assert_allclose(frame.region, project(frame.to_work, quad), atol=1e-4)
    assert frame.region.dtype == np.float32
    ww, wh = frame.work_size
    expected = 0.6 * 0.9 * ww * 0.6 * 0.9 * wh  # the inner 90 % (linear) of the outline
    assert frame.region_mask.dtype == bool and frame.region_mask.shape == frame.grey.shape
    assert frame.region_mask.sum() == pytest.approx(expected, rel=0.06)
    assert frame.region_mask[wh // 2, ww // 2] and not frame.region_mask[int(0.22 * wh), int(0.22 * ww)]
    set_region(frame, None, ecc_in_region=False)
    assert frame.region is None and frame.region_mask is None and frame.ecc_in_region is False


def test_project_and_corners():
    h = np.array([[2, 0, 1], [0, 3, -1], [0, 0, 1.0]])
    np.testing.assert_allclose(project(h, np.array([[0, 0], [1, 2]])), [[1, -1], [3, 5]])
    persp = np.array([[1, 0, 0], [0, 1, 0], [0.5, 0, 1.0]])
    np.testing.assert_allclose(project(persp, np.array([[2.0, 4.0]])), [[1.0, 2.0]])
    np.testing.assert_allclose(_corners((5, 3)), [[0, 0], [4, 0], [4, 2], [0, 2]])


SIZE = (200, 150)


def test_a_plausible_homography_and_its_measures():
    cfg = AlignConfig()
    problem, checks = homography_problem(np.diag([1.5, 1.5, 1]), SIZE, (400, 300), cfg)
    assert problem is None
    assert checks["anisotropy"] == pytest.approx(1.0)
    # scale: sqrt of the projected corners' area over the photo's (corners at pixel centres: 199 x 149)
    assert checks["scale"] == pytest.approx(1.5 * np.sqrt(199 * 149 / (200 * 150)))
    assert checks["overlap"] == pytest.approx(1.5 * 199 * 1.5 * 149 / (399 * 299), rel=1e-6)
    stretch = np.diag([2.0, 1.0, 1.0])
    assert homography_problem(stretch, SIZE, SIZE, cfg)[1]["anisotropy"] == pytest.approx(2.0)


@pytest.mark.parametrize("h, message", [
    (None, "degenerate homography (singular or not finite)"),
    (np.zeros((3, 3)), "degenerate homography (singular or not finite)"),
    (np.diag([1e-7, 1e-7, 1.0]), "degenerate homography (singular or not finite)"),
    (np.array([[1, 0, 0], [0, 1, 0], [0, 0, np.nan]]), "degenerate homography (singular or not finite)"),
    (np.array([[1, 0, 0], [0, 1, 0], [0, 0, np.inf]]), "degenerate homography (singular or not finite)"),
    (np.array([[1, 0, 0], [0, 1, 0], [-0.01, 0, 1.0]]), "degenerate homography (the photo's horizon crosses the anchor)"),
    (np.array([[1, 0, 0], [0, 1, 0], [0, -1 / 149, 1.0]]), "degenerate homography (the photo's horizon crosses the anchor)"),
    (np.diag([-1.0, 1, 1]) @ np.array([[1, 0, -199], [0, 1, 0], [0, 0, 1.0]]), "degenerate homography (mirror image)"),
    (np.diag([1.0, -1, 1]) @ np.array([[1, 0, 0], [0, 1, -149], [0, 0, 1.0]]), "degenerate homography (mirror image)"),
])
def test_degenerate_homographies(h, message):
    assert homography_problem(h, SIZE, SIZE, AlignConfig()) == (message, {})


def test_scale_shear_and_overlap_limits_are_named_with_their_values():
    cfg = AlignConfig()
    problem, checks = homography_problem(np.diag([4.0, 4, 1]), SIZE, (800, 600), cfg)
    assert problem == f"extreme homography (scale change {checks['scale']:.2f}, allowed 1/3.0..3.0)"
    assert problem == "extreme homography (scale change 3.98, allowed 1/3.0..3.0)"
    problem, _ = homography_problem(np.diag([0.25, 0.25, 1]), SIZE, SIZE, cfg)
    assert problem.startswith("extreme homography (scale change 0.25")
    problem, checks = homography_problem(np.diag([4.0, 1, 1]), SIZE, (800, 150), cfg)
    assert problem == "extreme homography (shear/foreshortening 4.00 > 3.0)" and checks["scale"] == pytest.approx(
        2 * np.sqrt(199 * 149 / (200 * 150)))
    shift = np.array([[1, 0, 140], [0, 1, 0], [0, 0, 1.0]])
    problem, checks = homography_problem(shift, SIZE, SIZE, cfg)
    assert checks["overlap"] == pytest.approx(59 / 199, rel=1e-6)
    assert problem == "photo covers only 30% of the anchor (min 30%; --min-overlap)"
    region = np.array([[100, 0], [199, 0], [199, 149], [100, 149]], np.float64)
    shifted = np.array([[1, 0, -120], [0, 1, 0], [0, 0, 1.0]])
    problem, checks = homography_problem(shifted, SIZE, SIZE, cfg, region)
    assert checks["overlap"] == pytest.approx(0.0)
    assert problem == "photo covers only 0% of the object (min 30%; --min-overlap)"
    # Limits are inclusive: exactly the allowed value passes.
    edge = AlignConfig(max_scale_change=checks_scale_edge(), max_anisotropy=2.0, min_overlap=0.0)
    assert homography_problem(np.diag([2.0, 1, 1]), SIZE, SIZE, edge)[0] is None


def checks_scale_edge() -> float:
    return float(np.sqrt(2 * 199 * 149 / (200 * 150)))


def test_the_limits_follow_the_config():
    h = np.diag([2.5, 2.5, 1])
    assert homography_problem(h, SIZE, (500, 375), AlignConfig())[0] is None
    assert homography_problem(h, SIZE, (500, 375), AlignConfig(max_scale_change=2.0))[0].startswith("extreme")
    assert homography_problem(np.diag([0.45, 0.45, 1]), SIZE, SIZE, AlignConfig(max_scale_change=2.0))[0].startswith(
        "extreme")
    assert homography_problem(np.diag([2.0, 1, 1]), SIZE, (400, 150), AlignConfig(max_anisotropy=1.9))[0].startswith(
        "extreme homography (shear")
    shift = np.array([[1, 0, 100], [0, 1, 0], [0, 0, 1.0]])
    assert homography_problem(shift, SIZE, SIZE, AlignConfig(min_overlap=0.6))[0].startswith("photo covers only 50%")
    assert homography_problem(shift, SIZE, SIZE, AlignConfig(min_overlap=0.4))[0] is None


# ----------------------------------------------------------------------------------------------
# agreement


def _frame_pair(shift: float = 0.0):
    img = object_image("astronaut", 160)
    anchor = prepare(img)
    t = np.array([[1, 0, shift], [0, 1, 0], [0, 0, 1.0]])
    moved = cv2.warpPerspective(img, t, (img.shape[1], img.shape[0]), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REFLECT)
    return anchor, prepare(moved), t


def test_percentile_and_cell_side():
    grid = np.array([[np.nan, 0.1, 0.2], [0.3, 0.4, np.nan], [0.5, 0.6, 0.7]])
    value, n = _percentile(grid)
    assert n == 7 and value == pytest.approx(np.percentile([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], 90))
    assert _percentile(np.full((2, 2), np.nan)) == (None, 0)
    anchor = prepare(object_image("astronaut", 160))
    assert _cell(anchor, AlignConfig()) == 32 and _cell(anchor, AlignConfig(cell=500)) == min(anchor.grey.shape)


def test_cells_of_a_photo_against_itself_correlate_fully():
    anchor, _, _ = _frame_pair()
    cfg = AlignConfig()
    grid = cell_correlations(anchor, anchor, np.eye(3), cfg)
    h, w = anchor.grey.shape
    assert grid.shape == (h // 32, w // 32)
    finite = grid[np.isfinite(grid)]
    assert len(finite) >= 0.8 * grid.size and np.allclose(finite, 1.0, atol=1e-4)
    score, cells = agreement(anchor, anchor, np.eye(3), cfg)
    assert score == pytest.approx(1.0, abs=1e-4) and cells == len(finite)
    # The negative image anti-correlates: each cell's NCC is -1.
    neg = prepare(255 - object_image("astronaut", 160))
    assert np.allclose(cell_correlations(anchor, neg, np.eye(3), cfg)[np.isfinite(grid)], -1.0, atol=0.05)


def test_cells_the_photo_does_not_cover_or_without_texture_are_nan():
    anchor, photo, t = _frame_pair(shift=0.0)
    cfg = AlignConfig()
    away = np.array([[1, 0, 80], [0, 1, 0], [0, 0, 1.0]])  # the photo lands on the right half only
    grid = cell_correlations(anchor, photo, away, cfg)
    assert np.isnan(grid[:, :2]).all() and np.isfinite(grid[:, 3:]).any()
    flat = prepare(np.full((160, 160, 3), 128, np.uint8))
    assert np.isnan(cell_correlations(flat, flat, np.eye(3), cfg)).all()
    assert agreement(flat, flat, np.eye(3), cfg) == (None, 0)


def test_a_misaligned_homography_agrees_less():
    anchor, photo, t = _frame_pair(shift=3.0)
    cfg = AlignConfig()
    right, _ = agreement(anchor, photo, np.linalg.inv(t), cfg)
    wrong, _ = agreement(anchor, photo, np.eye(3), cfg)
    assert right > 0.95 and wrong < right - 0.3


def test_agreeing_cells_mark_the_good_cells_in_work_px():
    anchor = prepare(object_image("astronaut", 160))
    cfg = AlignConfig(cell=32)
    h, w = anchor.grey.shape
    grid = np.full((h // 32, w // 32), 0.9)
    grid[0, 0] = 0.1  # disagrees
    grid[0, 1] = np.nan  # not judged
    grid[1, 1] = 0.44  # below half the 90th percentile (0.45)
    grid[1, 2] = 0.46  # above it
    mask = _agreeing_cells(anchor, grid, cfg)
    assert mask.shape == (h, w) and mask.dtype == bool
    assert not mask[:32, :64].any() and not mask[32:64, 32:64].any() and mask[32:64, 64:96].all()
    assert mask[64:64 + 32, :32].all() and mask.sum() == (grid.size - 3) * 32 * 32
    assert not mask[(h // 32) * 32:, :].any()  # the partial cells at the border are not judged
    assert _agreeing_cells(anchor, np.full(grid.shape, np.nan), cfg) is None
    few = np.full(grid.shape, np.nan)
    few[0, :3] = 0.9
    assert _agreeing_cells(anchor, few, cfg) is None  # fewer than 4 cells: no mask
    few[1, 0] = 0.9
    assert _agreeing_cells(anchor, few, cfg).sum() == 4 * 32 * 32
    low = np.full(grid.shape, 0.15)  # all low: nothing clears the absolute floor of 0.2
    assert _agreeing_cells(anchor, low, cfg) is None


# ----------------------------------------------------------------------------------------------
# align's early rejections (the accuracy is tests/test_align.py's)


def test_too_few_features_and_matches_are_counted_in_the_reason():
    cap = make_capture("astronaut", k=1, seed=0, ref_size=(192, 160))
    cfg = AlignConfig()
    anchor = prepare(cap.reference, cfg)
    res = align(anchor, prepare(cap.photos[0], cfg), AlignConfig(min_inliers=100000))
    n = len(prepare(cap.photos[0], cfg).keypoints)
    assert res.reason == f"too few features ({n} < 100000; blank, blurred or dark photo?)" and res.matches == 0
    photo = prepare(cap.photos[0], cfg)
    res = align(anchor, photo, AlignConfig(min_inliers=n - 1))  # the ratio test always drops some
    assert res.matches < n - 1
    assert res.reason == f"too few feature matches ({res.matches} < {n - 1}; another object?)"
    res = align(anchor, photo, AlignConfig(min_inliers=res.matches))  # RANSAC drops a few more
    assert res.reason == (f"too few RANSAC inliers ({res.inliers} < {res.matches} of {res.matches} matches; "
                          "another object? --min-inliers)")


def test_an_accepted_alignment_reports_its_checks():
    cap = make_capture("astronaut", k=1, seed=5, ref_size=(192, 160))
    cfg = AlignConfig()
    res = align(prepare(cap.reference, cfg), prepare(cap.photos[0], cfg), cfg)
    assert res.ok and res.homography[2, 2] == pytest.approx(1.0)
    assert set(res.checks) >= {"scale", "anisotropy", "overlap", "spread", "inlier_ratio", "reprojection_px", "cells"}
    assert res.checks["inlier_ratio"] == pytest.approx(res.inliers / res.matches)
    assert 0 < res.checks["spread"] <= 1 and res.checks["reprojection_px"] < cfg.ransac_threshold
    assert res.matches >= res.inliers >= cfg.min_inliers and res.refined == "ecc" and res.ecc is not None
    off = align(prepare(cap.reference, cfg), prepare(cap.photos[0], cfg), AlignConfig(ecc=False))
    assert off.ok and off.refined == "off" and off.ecc is None and off.ecc_shift is None


# ----------------------------------------------------------------------------------------------
# ECC's region, the half-size features, the motion-blur kernel (coarse-to-fine ECC)


def test_line_kernel_is_a_normalised_centred_line():
    from generator.align_ecc import _line_kernel

    k = _line_kernel(5, 0.0)
    assert k.dtype == np.float32 and k.shape == (5, 5) and k.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(k[2], 0.2, atol=1e-6)  # the middle row, evenly
    assert np.abs(np.delete(k, 2, axis=0)).max() < 1e-6
    v = _line_kernel(7, 90.0)
    np.testing.assert_allclose(v[:, 3], 1 / 7, atol=1e-6)  # turned a quarter: the middle column
    assert np.abs(np.delete(v, 3, axis=1)).max() < 1e-6
    d = _line_kernel(9, 45.0)
    assert d.sum() == pytest.approx(1.0) and d[4, 4] > 0 and d[0, 4] == pytest.approx(0, abs=1e-6)
    assert np.allclose(d, d.T[::-1, ::-1], atol=1e-6)  # symmetric about the centre, along the diagonal


def test_quad_mask_scales_the_quad_about_its_centre():
    from generator.align_frame import _quad_mask

    # An asymmetric quad (a trapezoid off the image's diagonal), so a mirrored or mis-centred one shows.
    q = np.array([[20, 10], [60, 10], [70, 30], [10, 30]], np.float32)
    area = 0.5 * (40 + 60) * 20
    full = _quad_mask(q, 1.0, (50, 90))
    assert full.dtype == bool and full.shape == (50, 90)
    assert area <= full.sum() <= 1.2 * area  # (pixels on the outline count)
    assert full[12, 40] and full[28, 15] and not full[12, 15] and not full[40, 40]  # the trapezoid's shape
    half = _quad_mask(q, 0.5, (50, 90))
    assert 0.2 * full.sum() <= half.sum() <= 0.32 * full.sum()
    ys, xs = np.nonzero(half)
    centre = q.mean(axis=0)
    assert abs(xs.mean() - centre[0]) < 3 and abs(ys.mean() - centre[1]) < 1.5
    assert not half[12, 40 - 16] and half[22, 40]
    grown = _quad_mask(q, 1.1, (50, 90))
    assert grown.sum() == pytest.approx(1.21 * full.sum(), rel=0.06) and (grown >= full).all()


def test_set_region_sets_the_ecc_masks_full_and_coarse():
    from generator.align_ecc import _ecc_region
    from generator.align_frame import ECC_REGION_SCALE

    assert ECC_REGION_SCALE == 1.1
    frame = prepare(object_image("astronaut", 200), AlignConfig(work_size=100))
    assert _ecc_region(frame) is True  # no region: everywhere
    w, h = frame.size
    quad = np.array([[0.2 * w, 0.2 * h], [0.8 * w, 0.2 * h], [0.8 * w, 0.8 * h], [0.2 * w, 0.8 * h]])
    set_region(frame, quad)
    ww, wh = frame.work_size
    assert frame.ecc_mask.shape == frame.grey.shape
    assert frame.ecc_mask.sum() == pytest.approx(0.66 * ww * 0.66 * wh, rel=0.06)  # grown 10 % (linear)
    assert (frame.ecc_mask >= frame.region_mask).all()
    assert _ecc_region(frame) is frame.ecc_mask
    ch, cw = frame.coarse.shape
    assert frame.coarse_ecc_mask.shape == (ch, cw)
    assert frame.coarse_ecc_mask.sum() == pytest.approx(0.66 * cw * 0.66 * ch, rel=0.1)
    set_region(frame, quad, ecc_in_region=False)
    assert _ecc_region(frame) is True  # a region that only judges: ECC looks everywhere
    set_region(frame, None)
    assert frame.ecc_mask is None and frame.coarse_ecc_mask is None and _ecc_region(frame) is True
    no_ecc = prepare(object_image("astronaut", 200), AlignConfig(work_size=100, ecc=False))
    assert no_ecc.coarse is None
    set_region(no_ecc, quad)
    assert no_ecc.coarse_ecc_mask is None and no_ecc.ecc_mask is not None


def test_half_size_features_are_in_work_px_and_cached():
    from generator.align_frame import _half_features

    cfg = AlignConfig()
    frame = prepare(object_image("astronaut", 240), cfg)
    pts, desc = _half_features(frame, cfg)
    assert pts.dtype == np.float32 and pts.ndim == 2 and pts.shape[1] == 2 and len(desc) == len(pts) > 10
    w, h = frame.work_size
    # Mapped back to work px: spread over the whole work image, not its top-left quarter.
    assert pts[:, 0].max() > 0.7 * w and pts[:, 1].max() > 0.7 * h
    assert pts.min() >= -1 and pts[:, 0].max() < w and pts[:, 1].max() < h
    assert _half_features(frame, cfg) is frame.half_features


def test_matching_blur_recovers_a_known_motion_blur():
    """A photo that is the anchor under a line blur: the blur found is that line, length and direction."""
    from generator.align_ecc import _line_kernel, _matching_blur

    img = object_image("astronaut", 256)
    anchor = prepare(img)
    for length, angle in ((9, 30.0), (5, 120.0), (11, 0.0)):
        photo = prepare(cv2.filter2D(img, -1, _line_kernel(length, angle)))
        kernel, found = _matching_blur(anchor, photo, np.eye(3), None)
        assert found == length, (length, angle, found)
        np.testing.assert_allclose(kernel, _line_kernel(length, angle), atol=1e-6)
    sharp = prepare(img)
    assert _matching_blur(anchor, sharp, np.eye(3), None) == (None, 0)  # no blur looks more like it
    blurred = prepare(cv2.filter2D(img, -1, _line_kernel(9, 30.0)))
    nowhere = np.zeros(anchor.grey.shape, bool)
    assert _matching_blur(anchor, blurred, np.eye(3), nowhere) == (None, 0)  # no agreeing cell
    away = np.array([[1, 0, 1000], [0, 1, 0], [0, 0, 1.0]])
    assert _matching_blur(anchor, blurred, away, None) == (None, 0)  # the photo covers none of the anchor


# ----------------------------------------------------------------------------------------------
# _matching_blur's judging window: which pixels it looks at, its thresholds, the candidates it tries


def _tex(h: int, w: int, seed: int = 0, amplitude: float = 1.0) -> np.ndarray:
    """float32 (h, w): zero-mean texture at a few px scale, of std about `amplitude`."""
    t = cv2.GaussianBlur(np.random.default_rng(seed).random((h, w)).astype(np.float32), (0, 0), 1.5)
    return ((t - t.mean()) / t.std() * amplitude).astype(np.float32)


def _bare_frame(grey: np.ndarray, texture: np.ndarray | None) -> Frame:
    """A Frame with only what _matching_blur reads (work grey, texture; no region)."""
    h, w = grey.shape
    return Frame((w, h), np.eye(3), grey, np.zeros((0, 2), np.float32), None, grey, texture)


def _vertical_blur(img: np.ndarray, length: int = 9) -> np.ndarray:
    from generator.align_ecc import _line_kernel

    return cv2.filter2D(img, -1, _line_kernel(length, 90.0))


def test_matching_blur_needs_100_textured_covered_pixels():
    """The blur is judged only over the anchor's texture (or everywhere without a texture map), in the
    agreeing cells, where the photo covers it; fewer than 100 such pixels: no judgement."""
    from generator.align_ecc import _matching_blur

    grey = _tex(128, 128, seed=3, amplitude=0.2) + 0.5
    photo = _bare_frame(_vertical_blur(grey), None)
    texture = np.zeros(grey.shape, bool)
    texture[59:69, 59:69] = True  # exactly 100 px
    kernel, length = _matching_blur(_bare_frame(grey, texture), photo, np.eye(3), None)
    assert kernel is not None and length > 0
    texture[68, 68] = False  # 99 px
    assert _matching_blur(_bare_frame(grey, texture), photo, np.eye(3), None) == (None, 0)
    # The agreeing cells restrict the texture; they do not replace it.
    assert _matching_blur(_bare_frame(grey, texture), photo, np.eye(3), np.ones(grey.shape, bool)) == (None, 0)
    # Without a texture map every pixel counts.
    kernel, length = _matching_blur(_bare_frame(grey, None), photo, np.eye(3), None)
    assert length == 9 and kernel is not None
    # Only what the photo covers counts: a photo 59 + 9 px wide covers 9 columns of the 10 x 11 block.
    texture = np.zeros(grey.shape, bool)
    texture[59:69, 59:70] = True  # 110 px, 90 of them covered
    small = _bare_frame(np.ascontiguousarray(_vertical_blur(grey)[:, :68]), None)
    assert _matching_blur(_bare_frame(grey, texture), small, np.eye(3), None) == (None, 0)


def test_matching_blur_judges_only_the_window_about_the_median_texture():
    """Texture spread far apart: the window (BLUR_WINDOW px about the median of the texture, plus a margin)
    holds fewer than 100 of its pixels, so nothing is judged."""
    from generator.align_ecc import _matching_blur

    grey = _tex(64, 700, seed=4, amplitude=0.2) + 0.5
    texture = np.zeros(grey.shape, bool)
    texture[20:30, 2:6] = True  # 40 px far left
    texture[20:30, 690:694] = True  # 40 px far right
    texture[20:30, 349:352] = True  # 30 px in the middle: the median
    photo = _bare_frame(_vertical_blur(grey), None)
    assert _matching_blur(_bare_frame(grey, texture), photo, np.eye(3), None) == (None, 0)


def _stripe_scene(block_x0: int, stripe_dx: int, axis: str):
    """A faint texture the photo shares unblurred (a 40 x 40 block of texture pixels), and one strong
    stripe of texture pixels `stripe_dx` px from the block's median column, where the photo is the
    anchor blurred along the stripe. Returns (anchor, photo, stripe column): a blur is found iff the
    stripe is judged. axis "y": the same, transposed."""
    from generator.align_ecc import BLUR_WINDOW, MAX_BLUR

    h, w = 96, 480
    grey = _tex(h, w, seed=5, amplitude=0.01) + 0.5
    texture = np.zeros((h, w), bool)
    texture[30:70, block_x0:block_x0 + 40] = True
    cx = int(np.median(np.nonzero(texture)[1]))
    xb = max(cx + stripe_dx, 0)  # at the image's border at most
    assert xb < w
    texture[30:70, xb] = True
    cx2 = int(np.median(np.nonzero(texture)[1]))  # the stripe moves the median by a column at most
    texture[30:70, xb] = False
    xb = max(cx2 + stripe_dx, 0)  # on the same side: the median stays
    assert xb < w
    texture[30:70, xb] = True
    assert int(np.median(np.nonzero(texture)[1])) == cx2
    lo, hi = max(xb - 8, 0), xb + 9
    grey[:, lo:hi] += _tex(h, hi - lo, seed=6, amplitude=1.0)  # the stripe's texture, 100 x stronger
    photo = grey.copy()
    photo[:, lo:hi] = _vertical_blur(grey)[:, lo:hi]
    # Where the window ends (exclusive), from the documented sizes: BLUR_WINDOW / 2 about the median,
    # plus a margin of 2 * MAX_BLUR + 4 px.
    m, half = 2 * MAX_BLUR + 4, BLUR_WINDOW // 2
    window = (max(cx2 - half - m, 0), cx2 + half + m + 1)
    if axis == "y":
        grey, photo, texture = grey.T.copy(), photo.T.copy(), texture.T.copy()
    return _bare_frame(grey, texture), _bare_frame(photo, None), xb, window


@pytest.mark.parametrize("axis", ["x", "y"])
def test_matching_blur_window_edges(axis):
    from generator.align_ecc import _matching_blur

    # The right (bottom) edge: the last column inside the window is judged, the first outside is not.
    for dx in (208, 209):
        anchor, photo, xb, (w0, w1) = _stripe_scene(150, dx, axis)
        kernel, length = _matching_blur(anchor, photo, np.eye(3), None)
        assert (length > 0) == (xb < w1), (dx, xb, w1, length)
        assert (xb == w1 - 1) == (dx == 208)
    # The left (top) edge, away from the image border.
    for dx in (-208, -209):
        anchor, photo, xb, (w0, w1) = _stripe_scene(240, dx, axis)
        assert w0 > 0
        kernel, length = _matching_blur(anchor, photo, np.eye(3), None)
        assert (length > 0) == (xb >= w0), (dx, xb, w0, length)
    # A window that would start before the image starts at its first column, which is judged.
    anchor, photo, xb, (w0, w1) = _stripe_scene(150, -170, axis)
    assert xb == 0 and w0 == 0
    assert _matching_blur(anchor, photo, np.eye(3), None)[1] > 0


def test_matching_blur_recovers_a_blur_in_a_window_off_the_origin():
    """Texture only in the middle of the anchor: the window starts away from (0, 0), and the photo is
    cut from the same place."""
    from generator.align_ecc import _line_kernel, _matching_blur

    grey = _tex(256, 256, seed=7, amplitude=0.15) + 0.5
    texture = np.zeros(grey.shape, bool)
    texture[110:170, 100:160] = True
    for length, angle in ((9, 30.0), (7, 105.0)):
        photo = _bare_frame(cv2.filter2D(grey, -1, _line_kernel(length, angle)), None)
        kernel, found = _matching_blur(_bare_frame(grey, texture), photo, np.eye(3), None)
        assert found == length
        np.testing.assert_allclose(kernel, _line_kernel(length, angle), atol=1e-6)


def test_matching_blur_is_scale_free_and_tries_odd_lengths_up_to_13_and_half_steps_of_angle():
    from generator.align_ecc import _line_kernel, _matching_blur

    grey = _tex(160, 160, seed=8, amplitude=0.001) + 0.5  # faint: the detail's norm is far below 1
    anchor = _bare_frame(grey, None)
    photo = _bare_frame(cv2.filter2D(grey, -1, _line_kernel(9, 60.0)), None)
    kernel, found = _matching_blur(anchor, photo, np.eye(3), None)
    assert found == 9
    np.testing.assert_allclose(kernel, _line_kernel(9, 60.0), atol=1e-6)
    # Angles half-way between the 15-degree steps are reached from either neighbour.
    for angle in (7.5, 22.5, 37.5, 52.5, 67.5, 97.5, 127.5, 157.5):
        photo = _bare_frame(cv2.filter2D(grey, -1, _line_kernel(7, angle)), None)
        kernel, found = _matching_blur(anchor, photo, np.eye(3), None)
        assert found == 7, angle
        np.testing.assert_allclose(kernel, _line_kernel(7, angle), atol=1e-6, err_msg=str(angle))
    # The lengths tried are odd (centred kernels), 3 to 2 * MAX_BLUR + 1 = 13 px.
    photo = _bare_frame(cv2.filter2D(grey, -1, _line_kernel(10, 0.0)), None)
    assert _matching_blur(anchor, photo, np.eye(3), None)[1] in (9, 11)
    photo = _bare_frame(cv2.filter2D(grey, -1, _line_kernel(17, 0.0)), None)
    assert _matching_blur(anchor, photo, np.eye(3), None)[1] == 13


def test_matching_blur_without_detail_finds_no_blur():
    """A flat window has no detail: every blur scores 0, as does none, and a tie is no blur."""
    from generator.align_ecc import _matching_blur

    flat = _bare_frame(np.zeros((64, 64), np.float32), np.ones((64, 64), bool))
    assert _matching_blur(flat, flat, np.eye(3), None) == (None, 0)


# ----------------------------------------------------------------------------------------------
# _refine and _ecc: which steps run, what ECC looks at, what is recorded


def _shifted_pair(size: int = 176, off: float = 1.5):
    """(anchor, photo, truth, h_work, src, dst): the photo is the anchor moved by a known small rotation
    and shift (truth: photo px -> anchor px); h_work, the 'feature estimate', is `off` px from it. 176 px:
    5 whole 32-px cells and a partial band of 16 px, which no cell judges."""
    img = object_image("astronaut", size)
    c = np.array([[1, 0, -size / 2], [0, 1, -size / 2], [0, 0, 1.0]])
    a = np.deg2rad(2.0)
    rot = np.array([[np.cos(a), -np.sin(a), 2.3], [np.sin(a), np.cos(a), -1.7], [0, 0, 1.0]])
    truth = np.linalg.inv(c) @ rot @ c  # photo px -> anchor px
    photo_img = cv2.warpPerspective(img, truth, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                    borderMode=cv2.BORDER_REFLECT)
    anchor, photo = prepare(img), prepare(photo_img)
    h_work = np.array([[1, 0, off], [0, 1, 0], [0, 0, 1.0]]) @ truth
    g = np.linspace(30, size - 30, 6)
    src = np.array([[x, y] for x in g for y in g], np.float64)
    return anchor, photo, truth, h_work, src, project(truth, src)


def _max_error(h: np.ndarray, truth: np.ndarray, size: int = 176) -> float:
    corners = np.array([[0, 0], [size - 1, 0], [size - 1, size - 1], [0, size - 1]], np.float64)
    d = project(h, corners) - project(truth, corners)
    return float(np.hypot(d[:, 0], d[:, 1]).max())


def _refine_run(anchor, photo, h_work, src, dst, cfg: AlignConfig | None = None):
    from generator.align_ecc import _refine

    cfg = cfg or AlignConfig()
    res = Alignment(None)
    res.checks["reprojection_px"] = float(np.sqrt(np.mean(np.sum((project(h_work, src) - dst) ** 2, axis=1))))
    res.agreement, res.checks["cells"] = agreement(anchor, photo, h_work, cfg)
    refined, h = _refine(anchor, photo, h_work, src, dst, res, cfg)
    return res, refined, h


def test_refine_coarse_then_fine_records_each_step(monkeypatch):
    anchor, photo, truth, h_work, src, dst = _shifted_pair()
    spy = EccSpy(monkeypatch)
    res, refined, h = _refine_run(anchor, photo, h_work, src, dst)
    assert refined == "ecc" and _max_error(h, truth) < 0.1 < _max_error(h_work, truth)
    # First the coarse step, on the half-size copies, over the anchor's coarse texture in the agreeing
    # cells only (the partial 16-px band at the border is in no cell); its correlation is recorded.
    template, image, mask, cc, _ = spy.calls[0]
    assert template is photo.coarse and image is anchor.coarse
    assert mask.shape == anchor.coarse.shape and mask.any()
    assert not (mask & ~anchor.coarse_texture).any() and not mask[80:, :].any() and not mask[:, 80:].any()
    assert res.checks["ecc_coarse"] == cc and type(res.checks["ecc_coarse"]) is float
    # Then the fine step from it, kept: no blur needed to be matched.
    template, image, mask, cc, _ = spy.calls[1]
    assert template is photo.normalised and image is anchor.normalised
    assert not (mask & ~anchor.texture).any() and not mask[160:, :].any() and mask[:160, :160].any()
    assert res.checks["ecc_fine"] == 1.0 and "blur_px" not in res.checks and len(spy.calls) == 2
    assert res.ecc == res.checks["ecc_fine_cc"] == cc
    # ecc_shift: the largest distance an inlier moved from the feature estimate (computed here by hand).
    d = project(h, src) - project(h_work, src)
    assert res.ecc_shift == pytest.approx(float(np.hypot(d[:, 0], d[:, 1]).max()), rel=1e-9)
    assert res.checks["ecc_reprojection_px"] == pytest.approx(
        float(np.sqrt(np.mean(np.sum((project(h, src) - dst) ** 2, axis=1)))), rel=1e-9)


def test_refine_keeps_a_coarse_step_that_moves_the_inliers_exactly_the_limit(monkeypatch):
    """max_ecc_shift is inclusive for the coarse step: moving an inlier exactly that far is allowed (then
    the fine step starts from it); a hair less allowed, and the coarse step is dropped (the fine step
    starts from the features, with the blur matched: blur_px recorded)."""
    anchor, photo, truth, h_work, src, dst = _shifted_pair()
    spy = EccSpy(monkeypatch)
    _refine_run(anchor, photo, h_work, src, dst)
    warp = spy.calls[0][4].astype(np.float64)
    coarse = np.linalg.inv(anchor.to_coarse) @ warp @ photo.to_coarse
    coarse = coarse / coarse[2, 2]
    moved = float(np.linalg.norm(project(coarse, src) - project(h_work, src), axis=1).max())
    assert 1.0 < moved < 3.0  # each inlier moves ~1.5 px (all 36 together would be far more)
    res, _, _ = _refine_run(anchor, photo, h_work, src, dst, AlignConfig(max_ecc_shift=moved))
    assert "blur_px" not in res.checks and res.checks["ecc_fine"] == 1.0
    res, _, _ = _refine_run(anchor, photo, h_work, src, dst, AlignConfig(max_ecc_shift=moved * 0.999))
    assert "blur_px" in res.checks


def test_refine_without_coarse_copies_runs_ecc_once_at_full_size(monkeypatch):
    for which in ("anchor", "photo", "both"):
        anchor, photo, truth, h_work, src, dst = _shifted_pair()
        if which in ("anchor", "both"):
            anchor.coarse = None
        if which in ("photo", "both"):
            photo.coarse = None
        spy = EccSpy(monkeypatch)
        res, refined, h = _refine_run(anchor, photo, h_work, src, dst)
        assert refined == "ecc" and _max_error(h, truth) < 0.1, which
        assert "ecc_coarse" not in res.checks and "ecc_fine" not in res.checks and len(spy.calls) == 1
        template, image, mask, cc, _ = spy.calls[0]
        assert template is photo.normalised and image is anchor.normalised and res.ecc == cc
        assert not mask[160:, :].any() and mask[:160, :160].any()  # the agreeing cells only


def test_refine_without_a_texture_map_uses_every_pixel():
    anchor, photo, truth, h_work, src, dst = _shifted_pair()
    anchor.texture = None
    res, refined, h = _refine_run(anchor, photo, h_work, src, dst)
    assert refined == "ecc" and _max_error(h, truth) < 0.1


def test_refine_inside_the_objects_region(monkeypatch):
    anchor, photo, truth, h_work, src, dst = _shifted_pair()
    quad = np.array([[30, 30], [146, 30], [146, 146], [30, 146]], np.float64)
    set_region(anchor, quad)
    spy = EccSpy(monkeypatch)
    res, refined, h = _refine_run(anchor, photo, h_work, src, dst)
    assert refined == "ecc" and _max_error(h, truth) < 0.15
    coarse_mask, fine_mask = spy.calls[0][2], spy.calls[1][2]
    assert coarse_mask.any() and not (coarse_mask & ~anchor.coarse_ecc_mask).any()
    assert fine_mask.any() and not (fine_mask & ~anchor.ecc_mask).any()


def test_refine_says_why_ecc_failed():
    anchor, photo, truth, h_work, src, dst = _shifted_pair()
    anchor.texture = np.zeros(anchor.grey.shape, bool)  # nothing to correlate: ECC fails at every step
    anchor.coarse_texture = np.zeros(anchor.coarse.shape, bool)
    res, refined, h = _refine_run(anchor, photo, h_work, src, dst)
    assert refined == "kept features: ECC failed (ECC failed at both scales)" and h is h_work
    # One scale only: OpenCV's own message, its last line cut to 80 characters.
    anchor.coarse = None
    res, refined, h = _refine_run(anchor, photo, h_work, src, dst)
    assert refined.startswith("kept features: ECC failed (OpenCV(") and refined.endswith(")") and h is h_work
    inner = refined[len("kept features: ECC failed ("):-1]
    assert len(inner) == 80 and "\n" not in inner


def test_ecc_against_a_given_anchor_image_and_without_a_texture_map(monkeypatch):
    from generator.align_ecc import _ecc

    anchor, photo, truth, h_work, src, dst = _shifted_pair()
    cfg = AlignConfig()
    spy = EccSpy(monkeypatch)
    h, cc = _ecc(anchor, photo, h_work, cfg)
    assert spy.calls[-1][1] is anchor.normalised and _max_error(h, truth) < 0.1
    other = anchor.normalised.copy()
    _ecc(anchor, photo, h_work, cfg, a_img=other)
    assert spy.calls[-1][1] is other
    # No texture map: every pixel (of the ECC region, where there is one).
    anchor.texture = None
    h, cc = _ecc(anchor, photo, h_work, cfg)
    assert spy.calls[-1][2].shape == anchor.grey.shape and spy.calls[-1][2].all() and _max_error(h, truth) < 0.1
    set_region(anchor, np.array([[30, 30], [146, 30], [146, 146], [30, 146]], np.float64))
    h, cc = _ecc(anchor, photo, h_work, cfg)
    assert np.array_equal(spy.calls[-1][2], anchor.ecc_mask) and _max_error(h, truth) < 0.15
    # A homography is the same map at any scale.
    h2, cc2 = _ecc(anchor, photo, 1e-3 * h_work, cfg)
    np.testing.assert_allclose(h2, h, atol=1e-4)


def test_half_size_features_are_detected_at_half_the_long_side(monkeypatch):
    import generator.align_frame as frame_module  # where prepare and _half_features look _features up

    seen = []
    real = frame_module._features

    def spy(grey, cfg):
        seen.append(grey.shape)
        return real(grey, cfg)

    monkeypatch.setattr(frame_module, "_features", spy)
    frame = prepare(object_image("astronaut", 243))
    assert frame.grey.shape == (243, 243) and seen == [(243, 243)]
    frame_module._half_features(frame, AlignConfig())
    assert seen[1] == (121, 121)  # 243 // 2


@pytest.mark.parametrize("in_region", [False, True])
def test_refine_with_too_few_judged_cells_lets_ecc_use_all_the_texture(monkeypatch, in_region):
    """The cells are judged where the anchor has texture (inside the ECC region, if any). Texture in
    only 3 whole cells (and in the 16-px band at the border, which no cell covers) is too few cells
    to choose among: the fine ECC then looks at all the texture, the band included."""
    anchor, photo, truth, h_work, src, dst = _shifted_pair()
    texture = np.zeros(anchor.grey.shape, bool)
    texture[160:, :] = texture[:, 160:] = True
    texture[:32, :64] = texture[32:64, :32] = True
    anchor.texture = texture
    if in_region:  # the grown outline covers the whole image
        set_region(anchor, np.array([[5, 5], [170, 5], [170, 170], [5, 170]], np.float64))
    spy = EccSpy(monkeypatch)
    _refine_run(anchor, photo, h_work, src, dst)
    fine = [mask for template, _, mask, _, _ in spy.calls if template is photo.normalised]
    assert fine and all(mask[160:, :].any() for mask in fine)


def test_matching_blur_looks_at_detail_not_at_light():
    """A blurred photo under other light (gain, offset, a strong ramp of shading) and with sensor noise:
    the blur is judged on the detail (each image minus its 2-px blur), which the light leaves alone."""
    from generator.align_ecc import _line_kernel, _matching_blur

    grey = _tex(192, 192, seed=9, amplitude=0.08) + 0.5
    anchor = _bare_frame(grey, np.ones(grey.shape, bool))
    yy, xx = np.mgrid[0:192, 0:192].astype(np.float32) / 192
    rng = np.random.default_rng(10)
    for length, angle in ((9, 45.0), (5, 150.0), (11, 90.0)):
        blurred = cv2.filter2D(grey, -1, _line_kernel(length, angle))
        lit = 0.7 * blurred + 0.2 + 0.6 * xx * yy + rng.normal(0, 0.002, grey.shape).astype(np.float32)
        kernel, found = _matching_blur(anchor, _bare_frame(lit.astype(np.float32), None), np.eye(3), None)
        assert found == length, (length, angle, found)
        np.testing.assert_allclose(kernel, _line_kernel(length, angle), atol=1e-6)


def test_coarse_ecc_takes_the_cells_at_the_nearest_coarse_pixels(monkeypatch):
    """The cells (work px) are shrunk to the coarse copy by nearest neighbour: coarse column x takes work
    column floor(x * W / w), as OpenCV's INTER_NEAREST does. 177 px: W / w = 177 / 88 is not 2, so
    coarse column 44 takes work column 88 (inside cells ending at 89) though it lies mostly beyond."""
    from generator.align_ecc import _ecc

    anchor, photo, truth, h_work, src, dst = _shifted_pair(size=177)
    assert anchor.coarse.shape == (88, 88)
    cells = np.zeros(anchor.grey.shape, bool)
    cells[:, :89] = True
    spy = EccSpy(monkeypatch)
    _ecc(anchor, photo, h_work, AlignConfig(), cells, coarse=True)
    cols = np.floor(np.arange(88) * 177 / 88).astype(int)
    rows = np.floor(np.arange(88) * 177 / 88).astype(int)
    expected = cells[np.ix_(rows, cols)] & anchor.coarse_texture
    assert expected[:, 44].any()
    assert np.array_equal(spy.calls[-1][2], expected)


def test_matching_blur_coverage_is_nearest_pixel():
    """Where the photo covers the anchor is decided at the nearest photo pixel: shifted by half a pixel,
    anchor column 63 samples photo column 63.5, which rounds (half to even) to 64, outside a 64-px wide
    photo. So 99 of these 110 texture pixels are covered: too few to judge; unshifted, all 110 are."""
    from generator.align_ecc import _matching_blur

    grey = _tex(128, 128, seed=11, amplitude=0.2) + 0.5
    texture = np.zeros(grey.shape, bool)
    texture[50:61, 54:64] = True  # 11 x 10 px, the last column at x = 63
    anchor = _bare_frame(grey, texture)
    photo = _bare_frame(np.ascontiguousarray(_vertical_blur(grey)[:, :64]), None)
    assert _matching_blur(anchor, photo, np.eye(3), None)[1] > 0
    half = np.array([[1, 0, -0.5], [0, 1, 0], [0, 0, 1.0]])  # photo px -> anchor px
    assert _matching_blur(anchor, photo, half, None) == (None, 0)
