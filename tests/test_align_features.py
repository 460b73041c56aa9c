"""align()'s decisions branch by branch, on inputs built so that each branch is the one that decides:
the features, matching, RANSAC and the homography's plausibility, the preparation of a Frame and the
cell correlations of generator/align.py and align_frame.py (the ECC refinement: test_align_ecc.py).

How the scenes make each branch the deciding one, and why these tests exist: tests/align_scenes.py.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from generator.align import AlignConfig, align, homography_problem, prepare, project, set_region
from tests.align_scenes import (
    CROP,
    NO_ECC,
    TRUTH,
    _error,
    _grid,
    _hull_area,
    _matches,
    _object_scene,
    _plane,
    _rotated_scene,
    _set_features,
    _view,
)

# ----------------------------------------------------------------------------------------------
# the second RANSAC set: a small photo of a small object on a large anchor


ASIDE = np.array([[1, 0, 255], [0, 1, 140], [0, 0, 1.0]])  # photo px -> anchor px, beside the object: implausible


def test_an_implausible_strongest_set_gives_way_to_the_next_strongest():
    """30 matches agree on a view beside the object (a pattern of the table: implausible); the 10 others,
    on the true homography, get their chance and are taken, though they are exactly min_inliers, cover
    9 % of the anchor (the overlap is of the object's region) and 4 % of its area (the spread is of the
    object's)."""
    anchor, photo = _object_scene()
    good = _matches(CROP, _grid(165, 235, 4)[:10])
    bad = _matches(ASIDE, _grid(260, 370, 6)[:30])
    _set_features(anchor, photo, [bad, good])
    res = align(anchor, photo, NO_ECC)
    assert res.ok, res.reason
    assert res.checks["second_model"] == 1.0
    assert res.matches == 10 and res.inliers == 10  # the second set's, not the first's 40 matches
    assert _error(res.homography, CROP, 120) < 0.01
    # Its own measures, not the first set's: the photo covers the whole object.
    assert res.checks["overlap"] == pytest.approx(1.0) and res.checks["scale"] == pytest.approx(119 / 120, rel=1e-4)
    assert res.checks["spread"] == pytest.approx(_hull_area(good[0]) / 100.0 ** 2, rel=1e-6)
    assert _hull_area(good[0]) / 400.0 ** 2 < NO_ECC.min_spread < res.checks["spread"]
    assert res.checks["inlier_ratio"] == 1.0 and res.checks["reprojection_px"] < 1e-3 and res.homography[2, 2] == 1.0


def test_without_enough_other_matches_the_implausible_set_is_refused():
    """9 other matches are fewer than min_inliers: no second chance, the first set's problem is the reason."""
    anchor, photo = _object_scene()
    good = _matches(CROP, _grid(165, 235, 4)[:9])
    bad = _matches(ASIDE, _grid(260, 370, 6)[:30])
    _set_features(anchor, photo, [bad, good])
    res = align(anchor, photo, NO_ECC)
    assert res.reason == "photo covers only 0% of the object (min 30%; --min-overlap)" and res.homography is None
    assert res.matches == 39 and res.inliers == 30 and "second_model" not in res.checks


def test_a_second_set_needs_min_inliers_of_its_own():
    """12 other matches, of which only 9 agree on the true homography: refused with the first problem."""
    anchor, photo = _object_scene()
    good = _matches(CROP, _grid(165, 235, 4)[:9])
    stray = (np.array([[160.0, 230], [240, 160], [200, 245]]), np.array([[100.0, 5], [7, 90], [60, 60]]))
    bad = _matches(ASIDE, _grid(260, 370, 6)[:30])
    _set_features(anchor, photo, [bad, good, stray])
    res = align(anchor, photo, NO_ECC)
    assert res.reason == "photo covers only 0% of the object (min 30%; --min-overlap)" and "second_model" not in res.checks


def test_a_plausible_strongest_set_is_kept_though_the_rest_holds_another():
    """The strongest set is plausible: it stands, even though the other matches (a repeating pattern
    seen one period off) hold a plausible set too. The overlap is of the object's region: the photo
    covers only 9 % of the anchor."""
    anchor, photo = _object_scene()
    shifted = np.array([[1, 0, 4], [0, 1, 0], [0, 0, 1.0]]) @ CROP
    good = _matches(CROP, _grid(160, 240, 5)[:20])
    other = _matches(shifted, _grid(165, 235, 4)[:12])
    _set_features(anchor, photo, [good, other])
    res = align(anchor, photo, NO_ECC)
    assert res.ok, res.reason
    assert "second_model" not in res.checks and res.inliers == 20 and res.matches == 32
    assert _error(res.homography, CROP, 120) < 0.01
    assert res.checks["overlap"] == pytest.approx(1.0)


def test_a_photo_of_the_object_alone_is_judged_against_the_object():
    """Overlap and spread are of the object's region when it is set: the same photo and matches without
    the region cover 9 % of the anchor (refused), with it the whole object (accepted)."""
    anchor, photo = _object_scene()
    good = _matches(CROP, _grid(160, 240, 5))
    _set_features(anchor, photo, [good])
    res = align(anchor, photo, NO_ECC)
    assert res.ok and res.checks["overlap"] == pytest.approx(1.0)
    set_region(anchor, None)
    res = align(anchor, photo, NO_ECC)
    assert res.reason == "photo covers only 9% of the anchor (min 30%; --min-overlap)"
    assert res.checks["overlap"] == pytest.approx(119.0 ** 2 / 399.0 ** 2, rel=1e-4)


# ----------------------------------------------------------------------------------------------
# the counts and their limits: keypoints, matches, inliers, the half-size retry



def test_exactly_min_inliers_at_full_size_is_enough_and_no_retry_is_made():
    """10 keypoints, 10 matches, 10 inliers with min_inliers 10: accepted from the full-size features,
    though the half-size ones would give 20."""
    anchor, photo = _rotated_scene()
    full = _matches(TRUTH, _grid(40, 200, 4)[:10])
    half = _matches(TRUTH, _grid(35, 205, 5)[:20])
    _set_features(anchor, photo, [full], half=[half])
    res = align(anchor, photo, NO_ECC)
    assert res.ok, res.reason
    assert len(photo.keypoints) == 10 and res.matches == 10 and res.inliers == 10
    assert "half_size_features" not in res.checks and _error(res.homography, TRUTH, 240) < 0.01


def test_one_inlier_short_the_half_size_features_are_tried_and_taken():
    """9 inliers (and an outlier) at full size: one short of min_inliers. The half-size features give
    exactly 10, one more than the 9: taken, and said so."""
    anchor, photo = _rotated_scene()
    full = _matches(TRUTH, _grid(40, 200, 3))
    outlier = (np.array([[30.0, 210.0]]), np.array([[200.0, 25.0]]))
    half = _matches(TRUTH, _grid(45, 195, 4)[:10])
    _set_features(anchor, photo, [full, outlier], half=[half])
    res = align(anchor, photo, NO_ECC)
    assert res.ok, res.reason
    assert res.checks["half_size_features"] == 1.0
    assert res.matches == 10 and res.inliers == 10 and _error(res.homography, TRUTH, 240) < 0.01
    # The half-size matches were used: the inliers' hull is theirs.
    assert res.checks["spread"] == pytest.approx(_hull_area(half[0]) / 240 ** 2, rel=1e-6)
    # Without the retry: refused with the full-size count.
    anchor, photo = _rotated_scene()
    _set_features(anchor, photo, [full, outlier], half=[half])
    res = align(anchor, photo, AlignConfig(ecc=False, retry_half=False))
    assert res.reason == "too few RANSAC inliers (9 < 10 of 10 matches; another object? --min-inliers)"


def test_half_size_features_no_better_are_not_taken():
    """9 inliers at full size, 9 at half size: not one more, so the full-size result (refused) stands."""
    anchor, photo = _rotated_scene()
    full = _matches(TRUTH, _grid(40, 200, 3))
    outlier = (np.array([[30.0, 210.0]]), np.array([[200.0, 25.0]]))
    half = _matches(TRUTH, _grid(45, 195, 3))
    _set_features(anchor, photo, [full, outlier], half=[half])
    res = align(anchor, photo, NO_ECC)
    assert res.reason == "too few RANSAC inliers (9 < 10 of 10 matches; another object? --min-inliers)"
    assert "half_size_features" not in res.checks


def test_four_matches_are_enough_when_min_inliers_allows():
    """A homography needs 4 matches: with min_inliers 4, exactly 4 (spread over the plane) are accepted."""
    anchor, photo = _rotated_scene()
    four = _matches(TRUTH, np.array([[40.0, 45], [200, 38], [195, 205], [42, 190]]))
    _set_features(anchor, photo, [four])
    cfg = AlignConfig(ecc=False, min_inliers=4)
    res = align(anchor, photo, cfg)
    assert res.ok, res.reason
    assert res.matches == 4 and res.inliers == 4 and _error(res.homography, TRUTH, 240) < 0.01
    three = (four[0][:3], four[1][:3])
    _set_features(anchor, photo, [three])
    res = align(anchor, photo, AlignConfig(ecc=False, min_inliers=3))
    assert res.reason == "too few feature matches (3 < 3; another object?)" and res.matches == 3


def test_matching_needs_two_keypoints_on_each_side():
    """Two keypoints on a side are enough to match (the ratio test needs two neighbours); one is not."""
    anchor, photo = _rotated_scene()
    two = _matches(TRUTH, np.array([[60.0, 70], [170, 150]]))
    cfg = AlignConfig(ecc=False, min_inliers=1)
    _set_features(anchor, photo, [two], extra_photo=8)  # anchor: 2 keypoints, photo: 10
    assert len(anchor.keypoints) == 2
    assert align(anchor, photo, cfg).reason == "too few feature matches (2 < 1; another object?)"
    anchor, photo = _rotated_scene()
    ten = _matches(TRUTH, _grid(40, 200, 4)[:10])
    _set_features(anchor, photo, [ten])
    photo.keypoints, photo.descriptors = photo.keypoints[:2], photo.descriptors[:2]  # photo: 2
    photo.half_features = (photo.keypoints, photo.descriptors)
    assert align(anchor, photo, cfg).reason == "too few feature matches (2 < 1; another object?)"
    photo.keypoints, photo.descriptors = photo.keypoints[:1], photo.descriptors[:1]  # photo: 1
    photo.half_features = (photo.keypoints, photo.descriptors)
    assert align(anchor, photo, cfg).reason == "too few feature matches (0 < 1; another object?)"


def test_match_returns_float32_point_pairs_even_when_empty():
    from generator.align import _match

    anchor, photo = _rotated_scene()
    ten = _matches(TRUTH, _grid(40, 200, 4)[:10])
    _set_features(anchor, photo, [ten])
    src, dst = _match(anchor, photo, NO_ECC)
    assert src.dtype == np.float32 and dst.dtype == np.float32 and src.shape == dst.shape == (10, 2)
    order = np.argsort(src[:, 0])
    np.testing.assert_allclose(project(TRUTH, src[order].astype(np.float64)), dst[order], atol=1e-3)
    anchor.keypoints, anchor.descriptors = anchor.keypoints[:1], anchor.descriptors[:1]
    for half in (False, True):
        if half:
            anchor.half_features = (anchor.keypoints, anchor.descriptors)
        src, dst = _match(anchor, photo, NO_ECC, half=half)
        assert src.dtype == np.float32 and dst.dtype == np.float32 and src.shape == dst.shape == (0, 2)


def test_the_spread_limit_refuses_a_detail_matched_by_chance_and_is_inclusive():
    anchor, photo = _rotated_scene()
    pts = _grid(100, 125, 4)[:12]  # a 25-px patch of a 240-px plane
    _set_features(anchor, photo, [_matches(TRUTH, pts)])
    spread = _hull_area(pts) / 240 ** 2
    res = align(anchor, photo, NO_ECC)
    assert res.reason == (f"the inliers cover only {spread:.0%} of the object (min 5%: a detail matched by "
                          "chance? --min-spread)")
    assert res.checks["spread"] == pytest.approx(spread, rel=1e-6) and res.homography is None
    res = align(anchor, photo, AlignConfig(ecc=False, min_spread=res.checks["spread"]))
    assert res.ok, res.reason


def test_reprojection_error_is_the_rms_distance_of_the_inliers():
    """Matches off by a known 0.5-1.5 px (all within the RANSAC threshold): reprojection_px is their RMS
    distance from where the homography found maps them."""
    anchor, photo = _rotated_scene()
    a_pts, p_pts = _matches(TRUTH, _grid(40, 200, 5))
    rng = np.random.default_rng(4)
    ang = rng.uniform(0, 2 * np.pi, len(p_pts))
    p_pts = p_pts + rng.uniform(0.5, 1.5, len(p_pts))[:, None] * np.c_[np.cos(ang), np.sin(ang)]
    _set_features(anchor, photo, [(a_pts, p_pts)])
    res = align(anchor, photo, NO_ECC)
    assert res.ok and res.inliers == 25
    d = project(res.homography, p_pts.astype(np.float32).astype(np.float64)) - a_pts.astype(np.float32)
    assert res.checks["reprojection_px"] == pytest.approx(float(np.sqrt(np.mean(np.sum(d * d, axis=1)))), rel=1e-4)
    assert 0.3 < res.checks["reprojection_px"] < 1.5


# ----------------------------------------------------------------------------------------------
# matching and RANSAC on their own


def _orb_bytes(pattern: np.ndarray) -> np.ndarray:
    return np.where(pattern, 0x40, 0x3F).astype(np.uint8)


def test_orb_descriptors_are_compared_by_hamming_distance():
    """ORB descriptors are bit strings: the nearest is by differing bits, not by byte values. Each photo
    descriptor q differs from its true partner a by 1 bit in each byte (but by 128 in value) and from
    a decoy b by 7 bits in each byte (but by 1 in value): matched by bits, every match is the true one."""
    from generator.align import _match

    cfg = AlignConfig(method="orb", ecc=False)
    img = _plane(240, seed=1)
    anchor, photo = prepare(img, cfg), prepare(_view(img, TRUTH, (240, 240)), cfg)
    rng = np.random.default_rng(5)
    a_pts = _grid(40, 200, 4)[:12]
    p_pts = project(np.linalg.inv(TRUTH), a_pts)
    base = _orb_bytes(rng.random((12, 32)) < 0.5)  # bytes 0x3F or 0x40
    q = base | 0x80  # 1 bit from base, 128 in value
    decoy = q ^ 0x7F  # 7 bits from q, 1 in value (0xBF <-> 0xC0)
    anchor.keypoints = np.concatenate([a_pts, rng.uniform(0, 240, (12, 2))]).astype(np.float32)
    anchor.descriptors = np.concatenate([base, decoy])
    photo.keypoints, photo.descriptors = p_pts.astype(np.float32), q
    src, dst = _match(anchor, photo, cfg)
    assert len(src) == 12
    np.testing.assert_allclose(project(TRUTH, src.astype(np.float64)), dst, atol=1e-3)
    res = align(anchor, photo, AlignConfig(method="orb", ecc=False, retry_half=False))
    assert res.ok and res.inliers == 12 and _error(res.homography, TRUTH, 240) < 0.01


def test_the_ratio_test_is_strict():
    """A match is kept when its distance is below ratio x the second nearest's: 3 bits against 6 is, 4
    against 5 (exactly 0.8 x 5) is not, nor 14 against 15."""
    from generator.align import _match

    cfg = AlignConfig(method="orb", ecc=False)
    img = _plane(120, seed=2)
    anchor, photo = prepare(img, cfg), prepare(img, cfg)
    a1 = np.zeros(32, np.uint8)
    q4 = a1.copy()
    q4[0] = 0b00001111  # 4 bits from a1
    a2 = q4.copy()
    a2[1] = 0b00011111  # 5 bits from q4, 9 from a1
    q3 = a1.copy()
    q3[0] = 0b00000111  # 3 bits from a1, 6 from a2
    far = q4.copy()
    far[5] = far[6] = 0b00011111  # 14 bits from a1, 15 from a2: never kept
    assert [int(np.unpackbits(x ^ y).sum()) for x, y in ((q4, a1), (q4, a2), (q3, a1), (q3, a2), (far, a1),
                                                          (far, a2))] == [4, 5, 3, 6, 14, 15]
    anchor.keypoints, anchor.descriptors = np.array([[10.0, 10], [50, 50]], np.float32), np.stack([a1, a2])
    photo.keypoints = np.array([[20.0, 20], [30, 30]], np.float32)
    for q, kept in ((q3, True), (q4, False)):
        photo.descriptors = np.stack([q, far])
        src, dst = _match(anchor, photo, cfg)
        assert len(src) == int(kept), q
        assert src.dtype == dst.dtype == np.float32 and src.shape == dst.shape == (int(kept), 2)  # also when empty
        if kept:
            assert src[0].tolist() == [20.0, 20.0] and dst[0].tolist() == [10.0, 10.0]


def test_ransac_on_fewer_than_four_matches_and_its_threshold():
    from generator.align import _ransac

    rng = np.random.default_rng(6)
    src = rng.uniform(0, 200, (3, 2)).astype(np.float32)
    h, inl = _ransac(src, src + 1, AlignConfig())
    assert h is None and inl.dtype == bool and inl.shape == (3,) and not inl.any()
    # 20 exact matches and 6 off by 2 px: inliers at a 3-px threshold, outliers at 1 px.
    src = rng.uniform(0, 200, (26, 2)).astype(np.float32)
    dst = project(TRUTH, src.astype(np.float64))
    ang = rng.uniform(0, 2 * np.pi, 6)
    dst[20:] += 2.0 * np.c_[np.cos(ang), np.sin(ang)]
    dst = dst.astype(np.float32)
    h, inl = _ransac(src, dst, AlignConfig(ransac_threshold=3.0))
    assert inl.dtype == bool and inl.sum() == 26
    h, inl = _ransac(src, dst, AlignConfig(ransac_threshold=1.0))
    assert inl[:20].all() and not inl[20:].any()


# ----------------------------------------------------------------------------------------------
# the plausibility measures at their limits


SIZE = (200, 150)


def test_a_tiny_projection_is_an_extreme_scale_not_a_mirror_or_a_fold():
    """A map that shrinks the photo to a fraction of a pixel is still convex and not mirrored: its
    cross products are tiny but positive."""
    problem, checks = homography_problem(np.diag([1e-3, 1e-3, 1.0]), SIZE, SIZE, AlignConfig())
    assert problem == "extreme homography (scale change 0.00, allowed 1/3.0..3.0)"
    assert checks["scale"] == pytest.approx(1e-3 * np.sqrt(199 * 149 / (200 * 150)), rel=1e-6)


def test_anisotropy_of_a_shrinking_map_is_one():
    """Shrinking evenly (both singular values 0.5) is no shear: anisotropy 1, not 0.5."""
    _, checks = homography_problem(np.diag([0.5, 0.5, 1.0]), SIZE, (100, 75), AlignConfig())
    assert checks["anisotropy"] == pytest.approx(1.0, abs=1e-12)


def test_anisotropy_is_measured_at_the_photos_centre():
    """Under perspective the local stretch varies across the photo: it is taken at the centre pixel
    ((w - 1) / 2, (h - 1) / 2), by central differences one pixel either side."""
    h = np.array([[1.0, 0.1, 5], [0.05, 1.2, 3], [1.5e-3, 8e-4, 1.0]])
    w, hh = SIZE

    def f(x, y):
        p = h @ [x, y, 1.0]
        return p[:2] / p[2]

    cx, cy = (w - 1) / 2, (hh - 1) / 2
    jac = np.stack([(f(cx + 1, cy) - f(cx - 1, cy)) / 2, (f(cx, cy + 1) - f(cx, cy - 1)) / 2], axis=1)
    sv = np.linalg.svd(jac, compute_uv=False)
    _, checks = homography_problem(h, SIZE, (400, 300), AlignConfig(max_anisotropy=10, max_scale_change=10))
    assert checks["anisotropy"] == pytest.approx(sv[0] / sv[1], rel=1e-9)
    # Not the same one pixel off, nor with 2-px differences: the measure is that precise.
    jac2 = np.stack([(f(cx + 2, cy) - f(cx - 2, cy)) / 4, (f(cx, cy + 2) - f(cx, cy - 2)) / 4], axis=1)
    sv2 = np.linalg.svd(jac2, compute_uv=False)
    assert abs(sv2[0] / sv2[1] - sv[0] / sv[1]) > 1e-7


def test_overlap_and_scale_limits_are_inclusive():
    shift = np.array([[1, 0, 100], [0, 1, 0], [0, 0, 1.0]])
    _, checks = homography_problem(shift, SIZE, SIZE, AlignConfig())
    assert homography_problem(shift, SIZE, SIZE, AlignConfig(min_overlap=checks["overlap"]))[0] is None
    small = np.diag([0.4, 0.4, 1.0])
    _, checks = homography_problem(small, SIZE, (80, 60), AlignConfig())
    limit = 1 / checks["scale"]
    assert 1 / limit == checks["scale"]  # the lower limit, 1 / max_scale_change, is exactly the scale
    assert homography_problem(small, SIZE, (80, 60), AlignConfig(max_scale_change=limit))[0] is None


def test_overlap_of_a_region_smaller_than_two_square_pixels():
    """The overlap is of the region's own area, however small (the floor of 1 px^2 only avoids 0 / 0)."""
    region = np.array([[10, 10], [11.2, 10], [11.2, 11.2], [10, 11.2]], np.float64)  # 1.44 px^2
    _, checks = homography_problem(np.eye(3), SIZE, SIZE, AlignConfig(), region)
    assert checks["overlap"] == pytest.approx(1.0, rel=1e-5)


# ----------------------------------------------------------------------------------------------
# preparation: grey, work copy, noise, normalisation, features, the coarse copy


def test_a_float32_grey_image_is_used_as_is():
    """No copy of a photo that is already float32 grey (a 24-MP photo is 100 MB)."""
    from generator.align_frame import to_grey

    g = _plane(64)
    assert np.shares_memory(to_grey(g), g)


def test_work_copy_of_a_colour_image_and_of_a_very_wide_one():
    from generator.align import work_copy

    rgb = np.random.default_rng(7).random((40, 80, 3)).astype(np.float32)
    small, to_work = work_copy(rgb, 20)
    assert small.shape == (10, 20, 3)
    # Area filter: each work pixel is the mean of a 4 x 4 block (not a bilinear sample of it).
    np.testing.assert_allclose(small, rgb.reshape(10, 4, 20, 4, 3).mean(axis=(1, 3)), atol=1e-6)
    wide, to_work = work_copy(np.zeros((2, 300), np.float32), 100)  # 2 px tall: at least 1 px after
    assert wide.shape == (1, 100)


def test_noise_sigma_is_the_median_response_inside_a_one_pixel_border():
    """Immerkaer's operator, 3 x 3, where it fits (not on the outer ring of pixels): 1.4826 x the median
    absolute response / 6. A 12-px image, so that every row and column of responses counts."""
    from generator.align_frame import noise_sigma

    rng = np.random.default_rng(8)
    g = rng.random((12, 12)).astype(np.float32)
    k = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64)
    g64 = g.astype(np.float64)
    resp = np.abs(sum(k[i, j] * g64[i:i + 10, j:j + 10] for i in range(3) for j in range(3)))  # the inner 10 x 10
    assert noise_sigma(g) == pytest.approx(1.4826 * np.median(resp) / 6, rel=1e-6)


def test_normalise_by_its_definition():
    """(g - mean) / sqrt(var + max(1e-6, 4 noise^2)) after a unit Gaussian blur, noise being the image's
    noise std times 1 / (2 sqrt(pi)) (what a unit Gaussian blur leaves of white noise); texture where
    var > (snr noise)^2 + 1e-6. snr defaults to 3. Half textured, half flat with noise, so that both the
    floor and the threshold matter."""
    from generator.align_frame import noise_sigma, normalise

    rng = np.random.default_rng(9)
    grey = np.full((64, 64), 0.5, np.float32)
    grey[:, :32] = _plane(64, seed=4)[:, :32]
    grey += rng.normal(0, 0.02, grey.shape).astype(np.float32)
    g = cv2.GaussianBlur(grey, (0, 0), 1.0).astype(np.float64)
    mean = cv2.GaussianBlur(g, (0, 0), 2.0)
    var = np.maximum(cv2.GaussianBlur(g * g, (0, 0), 2.0) - mean * mean, 0)
    noise = noise_sigma(grey) / (2 * np.sqrt(np.pi))
    norm, texture = normalise(grey, 2.0)
    np.testing.assert_allclose(norm, (g - mean) / np.sqrt(var + max(1e-6, 4 * noise * noise)), atol=2e-3)
    expected = var > (3.0 * noise) ** 2 + 1e-6
    assert (texture != expected).mean() < 0.002 and 0.2 < texture.mean() < 0.8
    # The snr's default is 3, and it moves the threshold.
    assert np.array_equal(normalise(grey, 2.0, 3.0)[1], texture)
    assert normalise(grey, 2.0, 6.0)[1].sum() < texture.sum()


def test_features_are_sift_on_the_clahe_equalised_8_bit_image_with_root_sift_descriptors():
    """The grey image is rounded to 8 bits (values outside [0, 1] saturate: a highlight is white, not
    wrapped to black), equalised by CLAHE (clip 2, 8 x 8 tiles), and SIFT runs at the configured contrast
    threshold (0.02, not OpenCV's 0.04); descriptors are RootSIFT."""
    from generator.align_frame import _features

    g = ((_plane(128, seed=6) - 0.5) * 3.0 + 0.5).astype(np.float32)  # partly below 0 and above 1
    g[:, :64] = 0.35 + 0.12 * (g[:, :64] - 0.5)  # a low-contrast half, where the threshold matters
    assert (g < 0).mean() > 0.03 and (g > 1).mean() > 0.03
    u8 = np.floor(np.clip(g.astype(np.float64) * 255 + 0.5, 0, 255)).astype(np.uint8)
    u8 = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(u8)
    kps, desc = cv2.SIFT_create(nfeatures=4000, contrastThreshold=0.02).detectAndCompute(u8, None)
    pts, d = _features(g, AlignConfig())
    assert len(kps) > 20
    np.testing.assert_array_equal(pts, np.array([k.pt for k in kps], np.float32))
    root = np.sqrt(desc / desc.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(d, root, atol=1e-6)


def test_the_coarse_copy_is_half_size_smoothed_and_normalised_at_half_the_scales():
    """Frame.coarse: the work copy at half its long side (floor: 123 -> 61), blurred by ecc_blur / 2 and
    normalised over ecc_sigma / 2 (both given in work px), its texture at the configured snr, as is the
    fine copy's. Half the image is texture fading to nothing, with noise: the snr decides where it ends."""
    from generator.align import work_copy
    from generator.align_frame import normalise

    cfg = AlignConfig(ecc_blur=3.0, ecc_sigma=5.0, texture_snr=2.0, norm_sigma=1.5)
    grey = _plane(123, seed=7)
    grey[:, 60:] = 0.5 + (grey[:, 60:] - 0.5) * np.linspace(0.3, 0, 63)[None, :]
    grey = (grey + np.random.default_rng(13).normal(0, 0.01, grey.shape)).astype(np.float32)
    frame = prepare(grey, cfg)
    half, to_coarse = work_copy(grey, 61)
    assert frame.coarse.shape == (61, 61) and np.array_equal(frame.to_coarse, to_coarse)
    norm, texture = normalise(cv2.GaussianBlur(half, (0, 0), 1.5), 2.5, 2.0)
    np.testing.assert_allclose(frame.coarse, norm, atol=1e-5)
    assert np.array_equal(frame.coarse_texture, texture)
    assert not np.array_equal(texture, normalise(cv2.GaussianBlur(half, (0, 0), 1.5), 2.5)[1])
    fine, fine_texture = normalise(grey, 1.5, 2.0)
    np.testing.assert_allclose(frame.normalised, fine, atol=1e-6)
    assert np.array_equal(frame.texture, fine_texture)
    assert not np.array_equal(fine_texture, normalise(grey, 1.5)[1])


# ----------------------------------------------------------------------------------------------
# the cell grid and the agreeing cells


def test_cell_correlation_does_not_depend_on_either_images_contrast():
    """NCC per cell: scaling either normalised image by 1e-3 (a nearly flat cell) changes nothing."""
    from generator.align_frame import cell_correlations

    anchor, photo = _rotated_scene()
    grid = cell_correlations(anchor, photo, TRUTH, NO_ECC)
    assert np.nanmin(grid) > 0.8
    photo.normalised = photo.normalised * 1e-3
    np.testing.assert_allclose(cell_correlations(anchor, photo, TRUTH, NO_ECC), grid, atol=1e-6)
    anchor.normalised = anchor.normalised * 1e-3
    np.testing.assert_allclose(cell_correlations(anchor, photo, TRUTH, NO_ECC), grid, atol=1e-6)


def test_a_cell_is_judged_from_a_quarter_of_its_pixels():
    from generator.align_frame import _cell_grid

    anchor, _ = _rotated_scene()
    mask = np.zeros(anchor.grey.shape, bool)
    mask[:16, :16] = True  # cell (0, 0): exactly 256 of 1024 pixels
    mask[32:47, 32:49] = True  # cell (1, 1): 255
    grid = _cell_grid(anchor, anchor.normalised, anchor.normalised, mask, np.eye(3), NO_ECC)
    assert np.isfinite(grid[0, 0]) and np.isnan(grid[1, 1])
    assert np.isnan(grid).sum() == grid.size - 1


def test_cells_default_to_the_objects_region():
    from generator.align_frame import cell_correlations

    anchor, photo = _object_scene()
    grid = cell_correlations(anchor, photo, CROP, NO_ECC)
    inside = np.zeros(anchor.grey.shape, bool)
    inside[155:245, 155:245] = True  # the inner 90 % of the region
    np.testing.assert_array_equal(grid, cell_correlations(anchor, photo, CROP, NO_ECC, in_region=True))
    whole = cell_correlations(anchor, photo, CROP, NO_ECC, in_region=False)
    assert np.isfinite(whole).sum() > np.isfinite(grid).sum() > 0
    # In the region, the cells judged are those with a quarter of their pixels inside it.
    quarter = inside[:384, :384].reshape(12, 32, 12, 32).sum(axis=(1, 3)) >= 256
    assert np.array_equal(np.isfinite(grid), quarter & np.isfinite(whole))
    set_region(anchor, None)
    np.testing.assert_array_equal(cell_correlations(anchor, photo, CROP, NO_ECC), whole)


def test_agreeing_cells_threshold_is_strict():
    """A cell agrees when its NCC is above max(0.2, half the 90th percentile): exactly 0.2 is not."""
    from generator.align_frame import _agreeing_cells

    anchor, _ = _rotated_scene()  # 240 px: 7 x 7 cells of 32
    grid = np.full((7, 7), 0.1)
    grid[0, :4] = 0.3
    grid[1, :4] = 0.2
    grid[2, 0] = np.nan
    mask = _agreeing_cells(anchor, grid, NO_ECC)
    assert mask.sum() == 4 * 32 * 32 and mask[:32, :128].all()


