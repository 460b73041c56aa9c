"""The ECC refinement of the alignment (generator/align.py, whose docstring explains the whole):
cv2.findTransformECC, MOTION_HOMOGRAPHY, started from the feature estimate, coarse to fine, on
locally normalised images (generator/align_frame.py's normalise: each pixel minus its
neighbourhood mean, over its neighbourhood spread): gain, colour casts and soft shading cancel
out, so what is matched is the texture of the object and not the light on it. ECC looks only where
the anchor has texture, inside the object's outline grown by 10 % (its edges pin the corners), and
only in the cells that agree under the feature estimate (an occluder or a glare is not the
object's texture).

The coarse step (half size, smoothed) survives motion blur; the fine step is kept where the
photo shares the fine detail. A photo that does not (a box blur flips the sign of fine
detail, so a fine ECC lands a pixel or more off) is matched against the anchor blurred by the
line kernel under which it looks most like the photo: same blur on both sides, no bias.
When clearly more cells agree under ECC's result than under the feature estimate (few inliers
in one corner: the estimate was far off elsewhere), ECC runs once more over those cells.

If ECC fails, or lands far from the feature estimate, or fits the feature inliers clearly worse
than it (ECC fitted a one-sided patch of texture and tilted the rest), or agrees less than it, the
feature estimate is kept (and said so in `Alignment.refined`): ECC is a refinement, not a judge.
`Alignment.checks` records how: ecc_coarse / ecc_fine_cc (correlations), ecc_fine (1 fine step
kept, 2 kept after matching the blur, 0 coarse result kept), blur_px, ecc_passes (2: the second
pass over the cells agreeing under ECC's result was kept).

Every name here is re-exported by generator/align.py; import them from there.
"""

from __future__ import annotations

import cv2
import numpy as np

from generator.align_frame import (
    AlignConfig,
    Alignment,
    Frame,
    _agreeing_cells,
    _cell_grid,
    _corners,
    agreement,
    homography_problem,
    normalise,
    project,
)


def _ecc(anchor: Frame, photo: Frame, h_work: np.ndarray, cfg: AlignConfig,
         cells: np.ndarray | None = None, coarse: bool = False, a_img: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Refine h_work (photo work px -> anchor work px) by ECC; returns (refined, correlation).

    coarse: on the half-size smoothed copies (`Frame.coarse`), else on the fine normalised ones (or,
    a_img given, on a_img for the anchor: a blurred copy of it, see _fine_step).
    Only the anchor's textured pixels (inside its ECC region, the outline grown by
    ECC_REGION_SCALE, if set; inside `cells`, bool (h, w) work px, if given) take part: elsewhere
    the normalised images hold nothing but noise. findTransformECC's warp maps its template's
    coordinates into its input image, and its mask is in the input image's frame: so the photo is
    the template and the anchor (whose mask we know) the input.
    """
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, cfg.ecc_iterations, cfg.ecc_eps)
    if coarse:
        a_img, p_img, mask = anchor.coarse, photo.coarse, anchor.coarse_texture
        region = anchor.coarse_ecc_mask
        h = anchor.to_coarse @ h_work @ np.linalg.inv(photo.to_coarse)
        if cells is not None:
            cells = cv2.resize(cells.astype(np.uint8), (a_img.shape[1], a_img.shape[0]),
                               interpolation=cv2.INTER_NEAREST).astype(bool)
    else:
        p_img, mask, region, h = photo.normalised, anchor.texture, anchor.ecc_mask, h_work
        a_img = anchor.normalised if a_img is None else a_img
    if mask is None:
        mask = np.ones(a_img.shape, bool)
    if anchor.ecc_in_region and region is not None:
        mask = mask & region
    if cells is not None:
        mask = mask & cells
    warp = (h / h[2, 2]).astype(np.float32)
    cc, warp = cv2.findTransformECC(p_img, a_img, warp, cv2.MOTION_HOMOGRAPHY, criteria, mask.astype(np.uint8), 1)
    refined = warp.astype(np.float64)
    if coarse:
        refined = np.linalg.inv(anchor.to_coarse) @ refined @ photo.to_coarse
    return refined / refined[2, 2], float(cc)


def _ecc_region(anchor: Frame) -> np.ndarray | bool:
    """bool (h, w): where ECC may look (the grown outline), or True for everywhere."""
    return anchor.ecc_mask if anchor.ecc_in_region and anchor.ecc_mask is not None else True


def _refine(anchor: Frame, photo: Frame, h_work: np.ndarray, src: np.ndarray, dst: np.ndarray,
            res: Alignment, cfg: AlignConfig) -> tuple[str, np.ndarray]:
    """ECC, coarse to fine, from the feature estimate h_work; returns ("ecc", refined) (res.agreement
    updated) or (why the feature estimate stands: ECC failed, moved the inliers too far, misfits
    them, or agrees less with the anchor, h_work). src, dst: the RANSAC inliers (photo, anchor
    work px).

    ECC looks only at the cells that agree under the feature estimate: an occluder or a glare is
    not texture of the object, and least squares would follow it. And it must still fit the
    inliers: where the visible texture is one-sided (a hand over most of the cover) ECC can fit
    what it sees and tilt the rest, which the inliers spread over the object reveal."""
    cells = _agreeing_under(anchor, photo, h_work, cfg)
    try:
        if anchor.coarse is not None and photo.coarse is not None:
            try:
                coarse, res.ecc = _ecc(anchor, photo, h_work, cfg, cells, coarse=True)
                res.checks["ecc_coarse"] = res.ecc
                if np.linalg.norm(project(coarse, src) - project(h_work, src), axis=1).max() > cfg.max_ecc_shift:
                    raise cv2.error("the coarse step wandered off")
            except cv2.error:  # the fine step alone, from the features
                coarse, res.ecc = h_work, None
            refined = _fine_step(anchor, photo, coarse, cells, res, cfg)
            if res.ecc is None:
                raise cv2.error("ECC failed at both scales")
        else:
            refined, res.ecc = _ecc(anchor, photo, h_work, cfg, cells)
    except cv2.error as exc:
        return f"kept features: ECC failed ({str(exc).strip().splitlines()[-1][:80]})", h_work
    res.ecc_shift = float(np.linalg.norm(project(refined, src) - project(h_work, src), axis=1).max())
    if res.ecc_shift > cfg.max_ecc_shift:
        return f"kept features: ECC moved the inliers {res.ecc_shift:.1f} px (max {cfg.max_ecc_shift})", h_work
    if homography_problem(refined, photo.work_size, anchor.work_size, cfg, anchor.region)[0]:
        return "kept features: ECC's homography is implausible", h_work
    rep = float(np.sqrt(np.mean(np.sum((project(refined, src) - dst) ** 2, axis=1))))
    res.checks["ecc_reprojection_px"] = rep
    if rep > res.checks.get("reprojection_px", 0.0) + cfg.max_ecc_disagreement:
        return (f"kept features: ECC misfits the inliers ({rep:.2f} px RMS against "
                f"{res.checks.get('reprojection_px', 0.0):.2f})"), h_work
    score, _ = agreement(anchor, photo, refined, cfg)
    if res.agreement is not None and (score is None or score < res.agreement - 0.02):
        return f"kept features: ECC agrees less ({score} < {res.agreement:.3f})", h_work
    res.agreement = score
    return "ecc", refined


RESEAT_GAIN = 1.25  # cells agreeing under ECC's result over those under the features: ECC once more


def _agreeing_under(anchor: Frame, photo: Frame, h_work: np.ndarray, cfg: AlignConfig) -> np.ndarray | None:
    """bool (h, w) work px: the cells ECC looks at when it starts from h_work (_refine and _reseat)."""
    mask = anchor.texture if anchor.texture is not None else np.ones(anchor.grey.shape, bool)
    if anchor.ecc_in_region and anchor.ecc_mask is not None:
        mask = mask & anchor.ecc_mask
    return _agreeing_cells(anchor, _cell_grid(anchor, anchor.normalised, photo.normalised, mask, h_work, cfg), cfg)


def _reseat(anchor: Frame, photo: Frame, h_features: np.ndarray, refined: np.ndarray, src: np.ndarray,
            dst: np.ndarray, res: Alignment, cfg: AlignConfig) -> np.ndarray:
    """ECC once more, from ECC's result `refined`, over the cells that agree under it, when they are
    clearly more (RESEAT_GAIN) than those that agreed under the feature estimate h_features; returns
    the homography to keep (work px), the second pass's where it passes _refine's tests and stays
    within max_ecc_shift of the inliers (src, dst: photo, anchor work px), else `refined`.
    res.checks["ecc_passes"]: 2 when the second pass was kept.

    Why: ECC looks only at the cells that agree under the feature estimate. With few inliers in one
    part of the object (a cover on a plain table, its texture matched in one corner) that estimate
    is far off elsewhere, only the cells near the inliers agree, and ECC, fitted to that patch,
    extrapolates over the rest. Seen: 10 inliers over 10 % of the cover, the feature estimate 21 px
    RMS off, ECC on 40 of 176 cells 0.95 px RMS (2.4 px at worst); over the 77 cells that agree under
    ECC's result, 0.19 px."""
    before, after = _agreeing_under(anchor, photo, h_features, cfg), _agreeing_under(anchor, photo, refined, cfg)
    if after is None or (before is not None and after.sum() < RESEAT_GAIN * before.sum()):
        return refined
    trial = Alignment(None, agreement=res.agreement, checks=dict(res.checks))
    why, again = _refine(anchor, photo, refined, src, dst, trial, cfg)
    if why != "ecc":
        return refined
    shift = float(np.linalg.norm(project(again, src) - project(h_features, src), axis=1).max())
    if shift > cfg.max_ecc_shift:
        return refined
    res.agreement, res.ecc, res.ecc_shift, res.checks = trial.agreement, trial.ecc, shift, trial.checks
    res.checks["ecc_passes"] = 2.0
    return again


def _fine_step(anchor: Frame, photo: Frame, h_coarse: np.ndarray, cells: np.ndarray | None, res: Alignment,
               cfg: AlignConfig) -> np.ndarray:
    """ECC on the fine copies from the coarse result h_coarse; returns the fine result where the photo
    shares the fine detail (see AlignConfig.ecc_fine_ratio, ecc_fine_shift), else h_coarse.

    A photo that does not (motion blur, defocus) is matched by blurring the anchor the same way
    (the line kernel, up to 2 * MAX_BLUR px long, under which the anchor looks most like the photo):
    with the same blur on both sides the fine correlation peaks where the photo really lies.
    res.checks["ecc_fine"]: 1 fine step kept, 2 kept after matching the blur, 0 coarse result kept;
    res.checks["blur_px"]: the length of the blur matched (0: none)."""
    res.checks["ecc_fine"] = 0.0
    if res.ecc is not None:  # the coarse step worked: is the fine detail shared as it is?
        fine = _fine_ecc(anchor, anchor.normalised, photo, h_coarse, cells, res, cfg)
        if fine is not None:
            res.checks["ecc_fine"] = 1.0
            return fine
    kernel, length = _matching_blur(anchor, photo, h_coarse, cells)
    res.checks["blur_px"] = float(length)
    if kernel is None and res.ecc is not None:
        return h_coarse
    blurred = anchor.normalised if kernel is None else \
        normalise(cv2.filter2D(anchor.grey, -1, kernel), cfg.norm_sigma, cfg.texture_snr)[0]
    fine = _fine_ecc(anchor, blurred, photo, h_coarse, cells, res, cfg)
    if fine is None:
        return h_coarse
    res.checks["ecc_fine"] = 2.0
    return fine


def _fine_ecc(anchor: Frame, a_img: np.ndarray, photo: Frame, h_coarse: np.ndarray, cells: np.ndarray | None,
              res: Alignment, cfg: AlignConfig) -> np.ndarray | None:
    """Fine ECC of the photo against a_img (the anchor's fine normalised copy, or a blurred one) from
    h_coarse; the result if it passes the fine-step tests, else None."""
    try:
        fine, cc = _ecc(anchor, photo, h_coarse, cfg, cells, a_img=a_img)
    except cv2.error:
        return None
    probe = anchor.region if anchor.region is not None else _corners(anchor.work_size)
    moved = float(np.linalg.norm(project(fine, project(np.linalg.inv(h_coarse), probe)) - probe, axis=1).max())
    res.checks["ecc_fine_cc"], res.checks["ecc_fine_shift"] = cc, moved
    if (res.ecc is None or cc >= cfg.ecc_fine_ratio * res.ecc) and moved <= cfg.ecc_fine_shift:
        res.ecc = cc
        return fine
    return None


MAX_BLUR = 6  # px (work), half the longest motion blur matched
BLUR_ANGLES = 12  # directions tried, over 180 degrees
BLUR_WINDOW = 384  # px (work), side of the window the blur is judged in


def _line_kernel(length: int, angle_deg: float) -> np.ndarray:
    """float32 (length, length), sum 1: a centred line `length` px long at angle_deg (a motion blur)."""
    k = np.zeros((length, length), np.float32)
    k[length // 2] = 1
    rot = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), angle_deg, 1)
    k = cv2.warpAffine(k, rot, (length, length))
    return k / k.sum()


def _matching_blur(anchor: Frame, photo: Frame, h_work: np.ndarray,
                   cells: np.ndarray | None) -> tuple[np.ndarray | None, int]:
    """(kernel, length px) of the line blur under which the anchor looks most like the photo warped
    onto it by h_work, judged by the correlation of their detail (each minus its 2-px blur) over the
    agreeing cells; (None, 0) when no blur looks more like it than none."""
    aw, ah = anchor.work_size
    mask = _ecc_region(anchor) & (anchor.texture if anchor.texture is not None else True)
    if cells is not None:
        mask &= cells
    mask &= cv2.warpPerspective(np.ones(photo.grey.shape, np.uint8), h_work, (aw, ah), flags=cv2.INTER_NEAREST) > 0
    ys, xs = np.nonzero(mask)
    if len(ys) < 100:
        return None, 0
    # Judged in a window of at most BLUR_WINDOW px around the middle of the agreeing texture (speed).
    m, half = 2 * MAX_BLUR + 4, BLUR_WINDOW // 2
    cy, cx = int(np.median(ys)), int(np.median(xs))
    y0, y1 = max(ys.min(), cy - half) - m, min(ys.max(), cy + half) + m + 1
    x0, x1 = max(xs.min(), cx - half) - m, min(xs.max(), cx + half) + m + 1
    y0, y1, x0, x1 = max(y0, 0), min(y1, ah), max(x0, 0), min(x1, aw)
    if mask[y0:y1, x0:x1].sum() < 100:
        return None, 0
    sel = mask[y0:y1, x0:x1]
    shift = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1.0]])
    warped = cv2.warpPerspective(photo.grey, shift @ h_work, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR)
    a = anchor.grey[y0:y1, x0:x1]

    def detail(img: np.ndarray) -> np.ndarray:
        d = (img - cv2.GaussianBlur(img, (0, 0), 2.0))[sel]
        return d - d.mean()

    p = detail(warped)
    p /= max(float(np.linalg.norm(p)), 1e-9)

    def score(k: np.ndarray | None) -> float:
        d = detail(a if k is None else cv2.filter2D(a, -1, k))
        return float(d @ p / max(float(np.linalg.norm(d)), 1e-9))

    # Direction at a middle length, then the length, then the direction between its neighbours.
    tried: dict[tuple[int, float], float] = {}

    def best_of(cands) -> tuple[int, float]:
        for length, angle in cands:
            if (length, angle) not in tried:
                tried[(length, angle)] = score(_line_kernel(length, angle))
        return max(cands, key=lambda c: tried[c])

    step_deg = 180.0 / BLUR_ANGLES
    _, angle = best_of([(MAX_BLUR + 1, ang) for ang in np.arange(BLUR_ANGLES) * step_deg])
    length, _ = best_of([(n, angle) for n in range(3, 2 * MAX_BLUR + 2, 2)])
    length, angle = best_of([(length, angle + d) for d in (-step_deg / 2, 0.0, step_deg / 2)])
    if tried[(length, angle)] <= score(None):
        return None, 0
    return _line_kernel(length, angle), length
