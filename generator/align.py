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
   on locally normalised images (each pixel minus its neighbourhood mean, over its neighbourhood
   spread): gain, colour casts and soft shading cancel out, so what is matched is the texture of
   the object and not the light on it. ECC looks only where the anchor has texture, inside the
   object's outline grown by 10 % (its edges pin the corners), and only in the cells that agree
   under the feature estimate (an occluder or a glare is not the object's texture).
   The coarse step (half size, smoothed) survives motion blur; the fine step is kept where the
   photo shares the fine detail. A photo that does not (a box blur flips the sign of fine
   detail, so a fine ECC lands a pixel or more off) is matched against the anchor blurred by the
   line kernel under which it looks most like the photo: same blur on both sides, no bias.
   When clearly more cells agree under ECC's result than under the feature estimate (few inliers
   in one corner: the estimate was far off elsewhere), ECC runs once more over those cells.

Whether a result can be trusted is judged by what an alignment must get right, not by a global
correlation (a plain, noisy table has no texture to correlate, so a perfect alignment scored low):

- geometry: enough RANSAC inliers, spread over the object (not one corner matched by chance), a
  plausible homography for a flat object (not mirrored, no extreme scale, shear or small overlap);
- photometry, where there is texture: the anchor's pixels whose local contrast stands clear of its
  sensor noise (`Frame.texture`, optionally only inside the object's region, e.g. the cover's
  quadrilateral) are cut into cells; the agreement is the median over cells of the normalised
  cross-correlation of the two normalised images. Occluders, glare and shadows spoil some cells,
  not the median; a photo of another object agrees nowhere.

If ECC fails, or lands far from the feature estimate, or fits the feature inliers clearly worse
than it (ECC fitted a one-sided patch of texture and tilted the rest), or agrees less than it, the
feature estimate is kept (and said so in `Alignment.refined`): ECC is a refinement, not a judge.
`Alignment.checks` records how: ecc_coarse / ecc_fine_cc (correlations), ecc_fine (1 fine step
kept, 2 kept after matching the blur, 0 coarse result kept), blur_px, half_size_features, second_model,
ecc_passes (2: the second pass over the cells agreeing under ECC's result was kept).

Alignment is done on a "work" copy whose long side is at most `work_size` pixels (speed), but the
homography returned is in full-resolution pixel coordinates of the two images given (pixel
centres at integers, as OpenCV's warps use).

Used by `drs-ingest` (generator/ingest.py) and `drs-restore --align` (trainer/restore_align.py); imports
only NumPy and OpenCV. The cover's quadrilateral and the rectifying map (generator/cover_quad.py)
and the resampling of aligned photos (generator/warp.py) are re-exported here, so trainer/
imports only this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

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
           "find_quad", "flat_size", "largest_rect", "largest_square", "parse_corners", "prepare", "project",
           "quad_aspect", "rectify_map", "render_crop", "render_view", "scale_matrix", "set_region", "valid_mask",
           "warp_to_anchor", "work_copy"]

METHODS = ("sift", "orb")
AGREEMENT_PERCENTILE = 90  # of the cell correlations (see agreement())
ECC_REGION_SCALE = 1.1  # ECC looks at the object's outline grown by this (linear; see set_region)


@dataclass(frozen=True)
class AlignConfig:
    """Knobs of the alignment and of its trust checks (pixels are work-image pixels).

    The trust thresholds were calibrated on the semi-real captures of tests/semireal.py
    (benchmarks/ingest_alignment.py): genuine photos clear them with margin, intruders do not.
    """

    method: str = "sift"
    work_size: int = 1024  # long side of the work copy, px
    max_features: int = 4000
    # SIFT's default 0.04 finds too few keypoints on dim or low-contrast photos (shadowed, small).
    contrast_threshold: float = 0.02
    clahe: bool = True  # equalise local contrast before detecting features
    ratio: float = 0.8  # Lowe's ratio test
    ransac_threshold: float = 3.0  # px
    # Too few inliers at the work size: match again on half-size copies, where a motion blur or a
    # slight defocus is half as long and the keypoints come back.
    retry_half: bool = True
    min_inliers: int = 10
    min_spread: float = 0.05  # convex hull of the inliers over the object's (or anchor's) area
    max_scale_change: float = 3.0  # area scale between photo and anchor, either way (linear factor)
    max_anisotropy: float = 3.0  # ratio of the local Jacobian's singular values (shear / foreshortening)
    min_overlap: float = 0.3  # fraction of the anchor (or of the object's region) the photo covers
    ecc: bool = True
    ecc_iterations: int = 50
    ecc_eps: float = 1e-4
    max_ecc_shift: float = 6.0  # px; ECC moving the inliers further than this: keep the feature estimate
    # ECC runs coarse to fine: first on a half-size copy smoothed by ecc_blur and normalised over
    # ecc_sigma (work px), then on the fine normalised copy. The coarse band survives motion blur (a
    # box blur flips the sign of finer detail, which pulls a fine-scale ECC a pixel or more off), so
    # the fine step is kept only where the photo still shares the fine detail: its correlation at
    # least ecc_fine_ratio times the coarse one, and moving no point of the object more than
    # ecc_fine_shift px from the coarse result.
    ecc_blur: float = 2.0
    ecc_sigma: float = 3.0
    ecc_fine_ratio: float = 0.8
    ecc_fine_shift: float = 6.0
    # ECC must agree with the feature inliers: their RMS reprojection error under ECC's homography
    # may exceed the feature estimate's by at most this (px), or the feature estimate is kept.
    max_ecc_disagreement: float = 1.0
    min_agreement: float = 0.3  # median cell correlation of the normalised images, where there is texture
    norm_sigma: float = 2.0  # px, neighbourhood of the local normalisation
    texture_snr: float = 3.0  # local contrast over noise needed for a pixel to count as texture
    cell: int = 32  # px, side of the cells the agreement is computed over

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"align method must be one of {METHODS}, got {self.method!r}")
        for name in ("work_size", "max_features", "min_inliers", "ecc_iterations", "cell"):
            if getattr(self, name) < 1:
                raise ValueError(f"align {name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.ratio < 1:
            raise ValueError(f"align ratio must be in (0, 1), got {self.ratio}")
        for name in ("min_overlap", "min_spread"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"align {name} must be in [0, 1], got {getattr(self, name)}")
        if not -1 <= self.min_agreement <= 1:
            raise ValueError(f"align min_agreement must be in [-1, 1], got {self.min_agreement}")


@dataclass
class Frame:
    """An image prepared for alignment: the grey work copy, its features, its normalised copy.

    size: (width, height) of the full-resolution image; to_work: 3x3 map full px -> work px.
    texture: bool (h, w), where the local contrast stands clear of the image's own noise.
    """

    size: tuple[int, int]
    to_work: np.ndarray
    grey: np.ndarray  # float32 (h, w) in [0, 1], the work copy
    keypoints: np.ndarray  # float32 (n, 2) work px
    descriptors: np.ndarray | None
    normalised: np.ndarray  # float32 (h, w), locally normalised grey
    texture: np.ndarray | None = None
    region: np.ndarray | None = None  # float32 (4, 2) work px: the object's quadrilateral (set_region)
    region_mask: np.ndarray | None = None  # bool (h, w), inside the inner 90 % of `region`
    coarse: np.ndarray | None = None  # float32 (h/2, w/2), the smoothed normalised half-size copy
    coarse_texture: np.ndarray | None = None  # bool (h/2, w/2), where `coarse` has texture
    to_coarse: np.ndarray | None = None  # 3x3, work px -> coarse px
    ecc_mask: np.ndarray | None = None  # bool (h, w), inside `region` grown by ECC_REGION_SCALE
    coarse_ecc_mask: np.ndarray | None = None  # the same at coarse px
    half_features: tuple[np.ndarray, np.ndarray | None] | None = None  # (keypoints work px, descriptors) at half size
    ecc_in_region: bool = True  # False: the region judges the photo, but ECC fits the whole anchor

    @property
    def work_size(self) -> tuple[int, int]:
        return self.grey.shape[1], self.grey.shape[0]


@dataclass
class Alignment:
    """The outcome for one photo. homography: float64 (3, 3), photo px -> anchor px (full resolution),
    None when rejected; reason: why it was rejected (None = accepted)."""

    homography: np.ndarray | None
    reason: str | None = None
    matches: int = 0
    inliers: int = 0
    ecc: float | None = None  # ECC's own correlation (inside the texture mask)
    ecc_shift: float | None = None  # px (work), how far ECC moved the inliers from the feature estimate
    agreement: float | None = None  # median cell correlation where there is texture (the photometric check)
    refined: str | None = None  # "ecc", or why the feature estimate was kept
    checks: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.reason is None

    @property
    def score(self) -> float:
        """Higher = better aligned (for choosing the best photos of a sequence)."""
        return self.agreement if self.agreement is not None else float(self.inliers)

    def to_params(self) -> dict[str, Any]:
        """JSON-ready record (homography as nested lists)."""
        d = asdict(self)
        d["homography"] = None if self.homography is None else [[float(v) for v in row] for row in self.homography]
        return d


# ---------------------------------------------------------------------------------- preparation
def to_grey(image: np.ndarray) -> np.ndarray:
    """uint8/uint16/float (H, W[, 3]) RGB -> float32 (H, W) luma in [0, 1]."""
    img = np.asarray(image)
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    elif img.dtype == np.uint16:
        img = img.astype(np.float32) / 65535.0
    else:
        img = img.astype(np.float32, copy=False)
    if img.ndim == 3:
        img = img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114
    return np.ascontiguousarray(img)


def work_copy(image: np.ndarray, work_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Downscale (area filter) so the long side is <= work_size; returns (copy, full px -> work px map)."""
    h, w = image.shape[:2]
    s = min(1.0, work_size / max(h, w))
    if s >= 1.0:
        return image, np.eye(3)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    small = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    return small, scale_matrix(nw / w, nh / h)


def normalise(grey: np.ndarray, sigma: float, snr: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """(g - local mean) / local std over a Gaussian neighbourhood of `sigma` px: removes gain, offset,
    colour casts and shading that vary slower than the neighbourhood, keeps the object's texture.

    Returns (normalised float32 (h, w), texture bool (h, w)): texture is where the local std stands
    `snr` times clear of the image's noise (estimated robustly, Immerkaer's operator with a median).
    The spread is floored at twice the noise, so flat noisy areas normalise to ~0, not to noise.
    """
    g = cv2.GaussianBlur(grey, (0, 0), 1.0)  # tame sensor noise before dividing by small spreads
    mean = cv2.GaussianBlur(g, (0, 0), sigma)
    var = np.maximum(cv2.GaussianBlur(g * g, (0, 0), sigma) - mean * mean, 0)
    # White noise through a unit Gaussian blur keeps 1 / (2 sqrt(pi)) of its std; the estimate is
    # made before the blur, which leaves too little of the noise at the operator's frequencies.
    noise = noise_sigma(grey) / (2 * np.sqrt(np.pi))
    norm = (g - mean) / np.sqrt(var + max(1e-6, 4 * noise * noise))
    texture = var > (snr * noise) ** 2 + 1e-6
    return norm.astype(np.float32), texture


def noise_sigma(grey: np.ndarray) -> float:
    """Std of the image's noise, float: Immerkaer's Laplacian-difference operator, with a median so
    that texture (most of a cover) does not count as noise."""
    k = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    resp = np.abs(cv2.filter2D(grey, cv2.CV_32F, k)[1:-1, 1:-1])
    return float(1.4826 * np.median(resp) / 6.0)


def _detector(cfg: AlignConfig):
    if cfg.method == "sift":
        return cv2.SIFT_create(nfeatures=cfg.max_features, contrastThreshold=cfg.contrast_threshold)
    return cv2.ORB_create(nfeatures=cfg.max_features)


def _features(grey: np.ndarray, cfg: AlignConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """Keypoints float32 (n, 2) px and descriptors of a grey float image in [0, 1]."""
    u8 = np.clip(grey * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if cfg.clahe:  # local contrast: features in shadows and dim photos, not only in the bright parts
        u8 = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(u8)
    kps, desc = _detector(cfg).detectAndCompute(u8, None)
    pts = np.array([k.pt for k in kps], dtype=np.float32).reshape(-1, 2)
    if desc is not None and cfg.method == "sift":
        # RootSIFT (Arandjelovic & Zisserman 2012): L1-normalise, square root; Euclidean distance
        # then compares histograms by the Hellinger kernel, which matches more reliably.
        desc = np.sqrt(desc / np.maximum(desc.sum(axis=1, keepdims=True), 1e-7)).astype(np.float32)
    return pts, desc


def _half_features(frame: Frame, cfg: AlignConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """The frame's features detected on its half-size copy, keypoints in work px (cached)."""
    if frame.half_features is None:
        half, to_half = work_copy(frame.grey, max(frame.grey.shape) // 2)
        pts, desc = _features(half, cfg)
        frame.half_features = (project(np.linalg.inv(to_half), pts).astype(np.float32).reshape(-1, 2), desc)
    return frame.half_features


def prepare(image: np.ndarray, cfg: AlignConfig = AlignConfig()) -> Frame:
    """Full-resolution image (H, W[, 3]), uint8/uint16/float in [0, 1] -> Frame (work copy, features)."""
    grey_full = to_grey(image)
    h, w = grey_full.shape
    grey, to_work = work_copy(grey_full, cfg.work_size)
    pts, desc = _features(grey, cfg)
    norm, texture = normalise(grey, cfg.norm_sigma, cfg.texture_snr)
    frame = Frame((w, h), to_work, grey, pts, desc, norm, texture)
    if cfg.ecc:
        half, frame.to_coarse = work_copy(grey, max(grey.shape) // 2)
        frame.coarse, frame.coarse_texture = normalise(cv2.GaussianBlur(half, (0, 0), cfg.ecc_blur / 2),
                                                       cfg.ecc_sigma / 2, cfg.texture_snr)
    return frame


def central_region(size: tuple[int, int], fraction: float = 0.3) -> np.ndarray:
    """(4, 2) px: the centred rectangle of `fraction` of an image's width and height (size (W, H)),
    where the object lies when its outline is unknown (the capture protocol centres it). Without
    it, a photo of another cover on the same textured table would agree with the table."""
    w, h = size
    x0, y0, x1, y1 = (1 - fraction) / 2 * w, (1 - fraction) / 2 * h, (1 + fraction) / 2 * w, (1 + fraction) / 2 * h
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)


def set_region(anchor: Frame, quad: np.ndarray | None, ecc_in_region: bool = True) -> Frame:
    """Restrict the anchor's checks to the object: quad float (4, 2), anchor full-resolution px (e.g.
    the cover's corners). Spread, overlap and agreement are then measured over the object only, and
    ECC looks only at the object's texture (a textured table moves with the object, but glare and
    clutter on it do not help). None: the whole anchor. ecc_in_region=False: a region that only
    judges (e.g. central_region, a guess): ECC still fits the whole anchor, or the homography would
    be extrapolated from the centre to the borders. Returns the same frame."""
    anchor.ecc_in_region = ecc_in_region
    if quad is None:
        anchor.region = anchor.region_mask = anchor.ecc_mask = anchor.coarse_ecc_mask = None
        return anchor
    q = project(anchor.to_work, np.asarray(quad, np.float64)).astype(np.float32)
    # The checks look at the inner 90 % (linear) of the outline: an outline found a little too large
    # takes in a band of table, and on a patterned table (bricks, tiles) a photo of another cover, or
    # one aligned a period off, agrees there. ECC, which only refines, looks a little beyond the
    # outline: the cover's edges pin its corners where the print itself is flat or hidden.
    anchor.region = q
    anchor.region_mask = _quad_mask(q, 0.9, anchor.grey.shape)
    anchor.ecc_mask = _quad_mask(q, ECC_REGION_SCALE, anchor.grey.shape)
    if anchor.coarse is not None:
        qc = project(anchor.to_coarse, q.astype(np.float64)).astype(np.float32)
        anchor.coarse_ecc_mask = _quad_mask(qc, ECC_REGION_SCALE, anchor.coarse.shape)
    return anchor


def _quad_mask(q: np.ndarray, scale: float, shape: tuple[int, int]) -> np.ndarray:
    """bool (h, w): inside quad q (4, 2) px scaled about its centre by `scale` (linear)."""
    grown = (q.mean(axis=0) + scale * (q - q.mean(axis=0))).astype(np.float32)
    mask = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(mask, np.round(grown * 16).astype(np.int32), 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


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


def _corners(size: tuple[int, int]) -> np.ndarray:
    w, h = size
    return np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float64)


def project(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply homography h (3, 3) to points (n, 2) -> (n, 2)."""
    p = np.c_[pts, np.ones(len(pts))] @ h.T
    return p[:, :2] / p[:, 2:3]


def homography_problem(h: np.ndarray, photo_size: tuple[int, int], anchor_size: tuple[int, int],
                       cfg: AlignConfig, region: np.ndarray | None = None) -> tuple[str | None, dict[str, float]]:
    """Why homography h (photo px -> anchor px) is not plausible for a flat object, or None; plus the
    measures. region: the object's quadrilateral (4, 2) in anchor px; overlap is then of it."""
    if h is None or not np.all(np.isfinite(h)) or abs(np.linalg.det(h)) < 1e-12:
        return "degenerate homography (singular or not finite)", {}
    w, hh = photo_size
    quad = project(h, _corners(photo_size))
    denom = np.c_[_corners(photo_size), np.ones(4)] @ h[2]
    if np.any(denom <= 0):
        return "degenerate homography (the photo's horizon crosses the anchor)", {}
    edges = np.roll(quad, -1, axis=0) - quad
    cross = edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1] - edges[:, 1] * np.roll(edges, -1, axis=0)[:, 0]
    if not (np.all(cross > 0) or np.all(cross < 0)):
        return "degenerate homography (photo maps to a non-convex quadrilateral)", {}
    if np.all(cross < 0):
        return "degenerate homography (mirror image)", {}
    area = 0.5 * abs(np.dot(quad[:, 0], np.roll(quad[:, 1], -1)) - np.dot(quad[:, 1], np.roll(quad[:, 0], -1)))
    scale = float(np.sqrt(area / max(w * hh, 1)))
    # Local Jacobian at the photo's centre: its singular values say how much the map shears there.
    c = np.array([(w - 1) / 2, (hh - 1) / 2])
    eps = 1.0
    jac = np.stack([(project(h, [c + [eps, 0]]) - project(h, [c - [eps, 0]]))[0],
                    (project(h, [c + [0, eps]]) - project(h, [c - [0, eps]]))[0]], axis=1) / (2 * eps)
    sv = np.linalg.svd(jac, compute_uv=False)
    anisotropy = float(sv[0] / max(sv[1], 1e-12))
    rect = (_corners(anchor_size) if region is None else np.asarray(region, np.float64)).astype(np.float32)
    inter, _ = cv2.intersectConvexConvex(quad.astype(np.float32), rect)
    overlap = float(inter / max(cv2.contourArea(rect), 1))
    checks = {"scale": scale, "anisotropy": anisotropy, "overlap": overlap}
    if not 1 / cfg.max_scale_change <= scale <= cfg.max_scale_change:
        return f"extreme homography (scale change {scale:.2f}, allowed 1/{cfg.max_scale_change}..{cfg.max_scale_change})", checks
    if anisotropy > cfg.max_anisotropy:
        return f"extreme homography (shear/foreshortening {anisotropy:.2f} > {cfg.max_anisotropy})", checks
    if overlap < cfg.min_overlap:
        what = "the anchor" if region is None else "the object"
        return f"photo covers only {overlap:.0%} of {what} (min {cfg.min_overlap:.0%}; --min-overlap)", checks
    return None, checks


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


def _check_mask(anchor: Frame, in_region: bool = True) -> np.ndarray:
    """bool (h, w): the anchor pixels the photometric checks look at."""
    mask = anchor.texture if anchor.texture is not None else np.ones(anchor.grey.shape, bool)
    return mask if anchor.region_mask is None or not in_region else mask & anchor.region_mask


def agreement(anchor: Frame, photo: Frame, h_work: np.ndarray, cfg: AlignConfig) -> tuple[float | None, int]:
    """Photometric agreement of a homography (photo work px -> anchor work px): (the
    AGREEMENT_PERCENTILE-th percentile over cells of the normalised cross-correlation of the
    normalised images, number of cells judged), where the anchor has texture and the photo covers
    it. A high percentile: occluders, glare and shadow edges spoil many cells of a genuine photo,
    while a photo of another object agrees in none. None when no cell has texture enough."""
    return _percentile(cell_correlations(anchor, photo, h_work, cfg))


def _percentile(grid: np.ndarray) -> tuple[float | None, int]:
    ncc = grid[np.isfinite(grid)]
    if len(ncc) == 0:
        return None, 0
    return float(np.percentile(ncc, AGREEMENT_PERCENTILE)), len(ncc)


def cell_correlations(anchor: Frame, photo: Frame, h_work: np.ndarray, cfg: AlignConfig,
                      in_region: bool = True) -> np.ndarray:
    """float (h // cell, w // cell) over the anchor's work image: the normalised cross-correlation of
    the two normalised images in each cell of `cfg.cell` px; NaN where less than a quarter of the
    cell is textured (anchor texture, inside its region unless in_region=False) and covered by the
    photo."""
    return _cell_grid(anchor, anchor.normalised, photo.normalised, _check_mask(anchor, in_region), h_work, cfg)


def _cell_grid(anchor: Frame, a_img: np.ndarray, p_img: np.ndarray, mask: np.ndarray, h_work: np.ndarray,
               cfg: AlignConfig) -> np.ndarray:
    """cell_correlations of anchor image a_img and photo image p_img (both normalised, work px) over
    the anchor pixels in `mask` (bool (h, w)) that the photo covers."""
    aw, ah = anchor.work_size
    warped = cv2.warpPerspective(p_img, h_work, (aw, ah), flags=cv2.INTER_LINEAR, borderValue=0)
    covered = cv2.warpPerspective(np.ones(p_img.shape, np.uint8), h_work, (aw, ah), flags=cv2.INTER_NEAREST)
    valid = (mask & covered.astype(bool)).astype(np.float32)
    c = _cell(anchor, cfg)
    ch, cw = ah // c, aw // c

    def cell_sums(x: np.ndarray) -> np.ndarray:
        return x[:ch * c, :cw * c].reshape(ch, c, cw, c).sum(axis=(1, 3))

    a, b = a_img * valid, warped * valid
    n, sa, sb = cell_sums(valid), cell_sums(a), cell_sums(b)
    saa, sbb, sab = cell_sums(a * a), cell_sums(b * b), cell_sums(a * b)
    n = np.maximum(n, 1)
    cov = sab - sa * sb / n
    ncc = cov / np.sqrt(np.maximum(saa - sa * sa / n, 1e-9) * np.maximum(sbb - sb * sb / n, 1e-9))
    ncc[n < 0.25 * c * c] = np.nan
    return ncc


def _cell(anchor: Frame, cfg: AlignConfig) -> int:
    """Cell side (px): cfg.cell, or the whole (short side of the) image when it is smaller."""
    return min(cfg.cell, *anchor.grey.shape)


def _agreeing_cells(anchor: Frame, grid: np.ndarray, cfg: AlignConfig) -> np.ndarray | None:
    """bool (h, w) work px: the cells of `grid` (cell_correlations) that agree well, where ECC
    should look (occluded, glaring or shadow-edged cells out); None when too few agree."""
    good = np.isfinite(grid)
    if not good.any():
        return None
    good &= np.nan_to_num(grid, nan=-1) > max(0.2, 0.5 * np.nanpercentile(grid, AGREEMENT_PERCENTILE))
    if good.sum() < 4:
        return None
    c = _cell(anchor, cfg)
    mask = np.zeros(anchor.grey.shape, bool)
    mask[:good.shape[0] * c, :good.shape[1] * c] = np.repeat(np.repeat(good, c, axis=0), c, axis=1)
    return mask


def align(anchor: Frame, photo: Frame, cfg: AlignConfig = AlignConfig()) -> Alignment:
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
