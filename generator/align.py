"""Align handheld photos of one flat object to an anchor image: features, RANSAC, then ECC.

    anchor = prepare(reference_rgb)                 # uint8 or float (H, W, 3), any size
    result = align(anchor, prepare(photo_rgb))      # Alignment: homography photo px -> anchor px
    if result.ok: warped = warp_to_anchor(photo_rgb, result.homography, anchor.size)

The object is flat, so one homography maps every photo onto the anchor. It is found in two steps:

1. features (SIFT, or ORB) matched with Lowe's ratio test, then a RANSAC (MAGSAC++) homography:
   robust to large motion, occluders and light, but only as accurate as the keypoints (~1 px);
   with too few inliers the features are matched again on half-size copies (a motion blur is
   half as long there), and when the strongest consistent set gives an implausible homography
   (a repeating table pattern) the next strongest, among the other matches, is tried;
2. ECC refinement (cv2.findTransformECC, MOTION_HOMOGRAPHY), started from step 1, coarse to fine,
   on locally normalised images, only where the anchor has texture and the cells agree under the
   feature estimate (generator/align_ecc.py explains how). If ECC fails or disagrees with the
   features, the feature estimate is kept (and said so in `Alignment.refined`): ECC is a
   refinement, not a judge.

Whether a result can be trusted is judged by what an alignment must get right, not by a global
correlation (a plain, noisy table has no texture to correlate, so a perfect alignment scored low):

- geometry: enough RANSAC inliers, spread over the object (not one corner matched by chance), a
  plausible homography for a flat object (not mirrored, no extreme scale, shear or small overlap);
- photometry, where there is texture: the median over cells of the anchor's texture of the
  normalised cross-correlation of the two normalised images (generator/align_frame.py).

`Alignment.checks` records how: half_size_features, second_model, the geometric measures, and
ECC's own (ecc_coarse, ecc_fine, blur_px, ecc_passes...: see generator/align_ecc.py).

The alignment lives in three modules; what generator/ and trainer/ use is importable from this one:
- generator/align_frame.py: AlignConfig, Frame, Alignment, the preparation (work copy, features,
  normalisation, the object's region), homography_problem and the cell correlations of the
  photometric checks;
- generator/align_ecc.py: the ECC refinement (coarse to fine, the matched blur, the second pass);
- here: matching, RANSAC and align(), which decides.

Used by `drs-ingest` (generator/ingest.py) and `drs-restore --align` (trainer/restore_align.py); imports
only NumPy and OpenCV. The cover's quadrilateral and the rectifying map (generator/cover_quad.py)
and the resampling of aligned photos (generator/warp.py) are re-exported here, so trainer/
imports only this module.
"""

from __future__ import annotations

import cv2
import numpy as np

# What generator/ and trainer/ use is re-exported (__all__); tests import the rest from where it lives.
from generator.align_ecc import _refine, _reseat
from generator.align_frame import (
    AlignConfig,
    Alignment,
    Frame,
    _half_features,
    _percentile,
    cell_correlations,
    central_region,
    homography_problem,
    prepare,
    project,
    set_region,
    work_copy,
)
from generator.cover_quad import QuadResult, find_quad, flat_size, parse_corners, quad_aspect, rectify_map
from generator.warp import (
    common_square,
    largest_rect,
    largest_square,
    render_crop,
    render_view,
    scale_matrix,
    valid_mask,
    warp_to_anchor,
)

__all__ = ["AlignConfig", "Alignment", "Frame", "QuadResult", "align", "central_region", "common_square",
           "find_quad", "flat_size", "homography_problem", "largest_rect", "largest_square", "parse_corners",
           "prepare", "project", "quad_aspect", "rectify_map", "render_crop", "render_view", "scale_matrix", "set_region", "valid_mask",
           "warp_to_anchor", "work_copy"]


# ---------------------------------------------------------------------------------- alignment
def _match(anchor: Frame, photo: Frame, cfg: AlignConfig, half: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Ratio-test matches -> (photo points, anchor points), float32 (m, 2) each, work px. half: of
    the features detected on the half-size copies."""
    (a_pts, a_desc), (p_pts, p_desc) = ((_half_features(anchor, cfg), _half_features(photo, cfg)) if half else
                                        ((anchor.keypoints, anchor.descriptors), (photo.keypoints, photo.descriptors)))
    if a_desc is None or p_desc is None or len(a_pts) < 2 or len(p_pts) < 2:
        return np.empty((0, 2), np.float32), np.empty((0, 2), np.float32)
    norm = cv2.NORM_L2 if cfg.method == "sift" else cv2.NORM_HAMMING
    pairs = cv2.BFMatcher(norm).knnMatch(p_desc, a_desc, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < cfg.ratio * p[1].distance]
    src = np.array([p_pts[m.queryIdx] for m in good], np.float32).reshape(-1, 2)
    dst = np.array([a_pts[m.trainIdx] for m in good], np.float32).reshape(-1, 2)
    return src, dst


def _ransac(src: np.ndarray, dst: np.ndarray, cfg: AlignConfig) -> tuple[np.ndarray | None, np.ndarray]:
    """MAGSAC++ homography of matches -> (h (3, 3) or None, inlier mask bool (m,))."""
    if len(src) < 4:
        return None, np.zeros(len(src), bool)
    h, inl = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, cfg.ransac_threshold, maxIters=5000, confidence=0.999)
    return h, (inl.ravel().astype(bool) if inl is not None else np.zeros(len(src), bool))


def align(anchor: Frame, photo: Frame, cfg: AlignConfig = AlignConfig()) -> Alignment:  # noqa: B008 (a frozen dataclass)
    """Homography photo -> anchor (full-resolution px), or a rejection with its reason."""
    res = Alignment(None)
    if len(photo.keypoints) < cfg.min_inliers:
        res.reason = f"too few features ({len(photo.keypoints)} < {cfg.min_inliers}; blank, blurred or dark photo?)"
        return res
    src, dst = _match(anchor, photo, cfg)
    h_work, inl = _ransac(src, dst, cfg)
    if cfg.retry_half and (h_work is None or inl.sum() < cfg.min_inliers):
        src2, dst2 = _match(anchor, photo, cfg, half=True)
        h2, inl2 = _ransac(src2, dst2, cfg)
        if h2 is not None and inl2.sum() >= max(cfg.min_inliers, inl.sum() + 1):
            src, dst, h_work, inl = src2, dst2, h2, inl2
            res.checks["half_size_features"] = 1.0
    res.matches = len(src)
    if len(src) < max(4, cfg.min_inliers):
        res.reason = f"too few feature matches ({len(src)} < {cfg.min_inliers}; another object?)"
        return res
    res.inliers = int(inl.sum())
    if h_work is None or res.inliers < cfg.min_inliers:
        res.reason = (f"too few RANSAC inliers ({res.inliers} < {cfg.min_inliers} of {len(src)} matches; "
                      "another object? --min-inliers)")
        return res
    problem, checks = homography_problem(h_work, photo.work_size, anchor.work_size, cfg, anchor.region)
    if problem and (~inl).sum() >= cfg.min_inliers:
        # The strongest consistent set can be the wrong one (a repeating table pattern, a shifted
        # copy of it): the next strongest, among the other matches, gets its chance, and the same checks.
        h2, inl2 = _ransac(src[~inl], dst[~inl], cfg)
        if h2 is not None and inl2.sum() >= cfg.min_inliers:
            problem2, checks2 = homography_problem(h2, photo.work_size, anchor.work_size, cfg, anchor.region)
            if problem2 is None:
                src, dst = src[~inl], dst[~inl]
                h_work, inl, problem, checks = h2, inl2, None, checks2
                res.matches, res.inliers = len(src), int(inl.sum())
                res.checks["second_model"] = 1.0
    res.checks.update(checks)
    if problem:
        res.reason = problem
        return res
    # Geometry of the inliers: spread over the object (a chance match clusters), reprojection error.
    object_area = cv2.contourArea(anchor.region) if anchor.region is not None else anchor.grey.size
    hull = cv2.convexHull(dst[inl].reshape(-1, 1, 2))
    res.checks["spread"] = float(cv2.contourArea(hull) / max(object_area, 1))
    res.checks["inlier_ratio"] = res.inliers / len(src)
    res.checks["reprojection_px"] = float(np.sqrt(np.mean(np.sum((project(h_work, src[inl]) - dst[inl]) ** 2, axis=1))))
    if res.checks["spread"] < cfg.min_spread:
        res.reason = (f"the inliers cover only {res.checks['spread']:.0%} of the object (min {cfg.min_spread:.0%}: "
                      "a detail matched by chance? --min-spread)")
        return res
    grid = cell_correlations(anchor, photo, h_work, cfg)
    res.agreement, res.checks["cells"] = _percentile(grid)
    if cfg.ecc:
        h_features = h_work
        res.refined, h_work = _refine(anchor, photo, h_work, src[inl], dst[inl], res, cfg)
        if res.refined == "ecc":
            h_work = _reseat(anchor, photo, h_features, h_work, src[inl], dst[inl], res, cfg)
    else:
        res.refined = "off"
    if (res.ecc_shift is not None and res.ecc_shift > 5 * cfg.max_ecc_shift and res.refined != "ecc"
            and res.inliers < 3 * cfg.min_inliers):
        # Few inliers and an ECC that runs far away from them: the features most likely matched by
        # chance (seen: 11 inliers, 41 px off, on a cover with large flat areas).
        res.reason = (f"few inliers ({res.inliers}) and ECC ran {res.ecc_shift:.0f} px away from them: no "
                      f"trustworthy alignment (--min-inliers, --max-ecc-shift)")
        return res
    if res.agreement is not None and res.agreement < cfg.min_agreement:
        res.reason = (f"poor photometric agreement where the object has texture ({res.agreement:.2f} < "
                      f"{cfg.min_agreement}; another object, or mostly hidden? --min-agreement)")
        return res
    h_full = np.linalg.inv(anchor.to_work) @ h_work @ photo.to_work
    res.homography = h_full / h_full[2, 2]
    return res
