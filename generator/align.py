"""Align handheld photos of one flat object to an anchor image: features, RANSAC, then ECC.

    anchor = prepare(reference_rgb)                 # uint8 or float (H, W, 3), any size
    result = align(anchor, prepare(photo_rgb))      # Alignment: homography photo px -> anchor px
    if result.ok: warped = warp_to_anchor(photo_rgb, result.homography, anchor.size)

The object is flat, so one homography maps every photo onto the anchor. It is found in two steps:

1. features (SIFT, or ORB) matched with Lowe's ratio test, then a RANSAC (MAGSAC++) homography:
   robust to large motion, occluders and light, but only as accurate as the keypoints (~1 px);
2. ECC refinement (cv2.findTransformECC, MOTION_HOMOGRAPHY), started from step 1, on locally
   normalised images (each pixel minus its neighbourhood mean, over its neighbourhood spread):
   gain, colour casts and soft shading cancel out, so what is matched is the texture of the
   object and not the light on it. ECC only looks where the anchor has texture (see below).

Whether a result can be trusted is judged by what an alignment must get right, not by a global
correlation (a plain, noisy table has no texture to correlate, so a perfect alignment scored low):

- geometry: enough RANSAC inliers, spread over the object (not one corner matched by chance), a
  plausible homography for a flat object (not mirrored, no extreme scale, shear or small overlap);
- photometry, where there is texture: the anchor's pixels whose local contrast stands clear of its
  sensor noise (`Frame.texture`, optionally only inside the object's region, e.g. the cover's
  quadrilateral) are cut into cells; the agreement is the median over cells of the normalised
  cross-correlation of the two normalised images. Occluders, glare and shadows spoil some cells,
  not the median; a photo of another object agrees nowhere.

If ECC fails, or lands far from the feature estimate, or agrees less than it, the feature
estimate is kept (and said so in `Alignment.refined`): ECC is a refinement, not a judge.

Alignment is done on a "work" copy whose long side is at most `work_size` pixels (speed), but the
homography returned is in full-resolution pixel coordinates of the two images given (pixel
centres at integers, as OpenCV's warps use).

Used by `drs-ingest` (generator/ingest.py) and `drs-restore --align` (trainer/restore.py); imports
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
    min_inliers: int = 10
    min_spread: float = 0.05  # convex hull of the inliers over the object's (or anchor's) area
    max_scale_change: float = 3.0  # area scale between photo and anchor, either way (linear factor)
    max_anisotropy: float = 3.0  # ratio of the local Jacobian's singular values (shear / foreshortening)
    min_overlap: float = 0.3  # fraction of the anchor (or of the object's region) the photo covers
    ecc: bool = True
    ecc_iterations: int = 50
    ecc_eps: float = 1e-4
    max_ecc_shift: float = 6.0  # px; ECC moving the inliers further than this: keep the feature estimate
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
    region_mask: np.ndarray | None = None  # bool (h, w), inside `region`
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


def prepare(image: np.ndarray, cfg: AlignConfig = AlignConfig()) -> Frame:
    """Full-resolution image (H, W[, 3]), uint8/uint16/float in [0, 1] -> Frame (work copy, features)."""
    grey_full = to_grey(image)
    h, w = grey_full.shape
    grey, to_work = work_copy(grey_full, cfg.work_size)
    u8 = np.clip(grey * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if cfg.clahe:  # local contrast: features in shadows and dim photos, not only in the bright parts
        u8 = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(u8)
    kps, desc = _detector(cfg).detectAndCompute(u8, None)
    pts = np.array([k.pt for k in kps], dtype=np.float32).reshape(-1, 2)
    if desc is not None and cfg.method == "sift":
        # RootSIFT (Arandjelovic & Zisserman 2012): L1-normalise, square root; Euclidean distance
        # then compares histograms by the Hellinger kernel, which matches more reliably.
        desc = np.sqrt(desc / np.maximum(desc.sum(axis=1, keepdims=True), 1e-7)).astype(np.float32)
    norm, texture = normalise(grey, cfg.norm_sigma, cfg.texture_snr)
    return Frame((w, h), to_work, grey, pts, desc, norm, texture)


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
        anchor.region = anchor.region_mask = None
        return anchor
    q = project(anchor.to_work, np.asarray(quad, np.float64)).astype(np.float32)
    # The checks look at the inner 90 % (linear) of the outline: an outline found a little too large
    # takes in a band of table, and on a patterned table (bricks, tiles) a photo of another cover, or
    # one aligned a period off, agrees there.
    inner = (q.mean(axis=0) + 0.9 * (q - q.mean(axis=0))).astype(np.float32)
    mask = np.zeros(anchor.grey.shape, np.uint8)
    cv2.fillConvexPoly(mask, np.round(inner * 16).astype(np.int32), 1, lineType=cv2.LINE_8, shift=4)
    anchor.region = q
    anchor.region_mask = mask.astype(bool)
    return anchor


# ---------------------------------------------------------------------------------- alignment
def _match(anchor: Frame, photo: Frame, cfg: AlignConfig) -> tuple[np.ndarray, np.ndarray]:
    """Ratio-test matches -> (photo points, anchor points), float32 (m, 2) each, work px."""
    if anchor.descriptors is None or photo.descriptors is None or len(anchor.keypoints) < 2 or len(photo.keypoints) < 2:
        return np.empty((0, 2), np.float32), np.empty((0, 2), np.float32)
    norm = cv2.NORM_L2 if cfg.method == "sift" else cv2.NORM_HAMMING
    pairs = cv2.BFMatcher(norm).knnMatch(photo.descriptors, anchor.descriptors, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < cfg.ratio * p[1].distance]
    src = np.array([photo.keypoints[m.queryIdx] for m in good], np.float32).reshape(-1, 2)
    dst = np.array([anchor.keypoints[m.trainIdx] for m in good], np.float32).reshape(-1, 2)
    return src, dst


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
         cells: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Refine h_work (photo work px -> anchor work px) by ECC; returns (refined, correlation).

    Only the anchor's textured pixels (inside its region, if set; inside `cells`, bool (h, w), if
    given) take part: elsewhere the normalised images hold nothing but noise. findTransformECC's
    warp maps its template's coordinates into its input image, and its mask is in the input
    image's frame: so the photo is the template and the anchor (whose mask we know) the input.
    """
    warp = (h_work / h_work[2, 2]).astype(np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, cfg.ecc_iterations, cfg.ecc_eps)
    mask = _check_mask(anchor, anchor.ecc_in_region)
    mask = mask if cells is None else mask & cells
    cc, warp = cv2.findTransformECC(photo.normalised, anchor.normalised, warp, cv2.MOTION_HOMOGRAPHY, criteria,
                                    mask.astype(np.uint8), 1)
    refined = warp.astype(np.float64)
    return refined / refined[2, 2], float(cc)


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
    aw, ah = anchor.work_size
    warped = cv2.warpPerspective(photo.normalised, h_work, (aw, ah), flags=cv2.INTER_LINEAR, borderValue=0)
    covered = cv2.warpPerspective(np.ones(photo.grey.shape, np.uint8), h_work, (aw, ah), flags=cv2.INTER_NEAREST)
    valid = (_check_mask(anchor, in_region) & covered.astype(bool)).astype(np.float32)
    c = _cell(anchor, cfg)
    ch, cw = ah // c, aw // c

    def cell_sums(x: np.ndarray) -> np.ndarray:
        return x[:ch * c, :cw * c].reshape(ch, c, cw, c).sum(axis=(1, 3))

    a, b = anchor.normalised * valid, warped * valid
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
    res.matches = len(src)
    if len(src) < max(4, cfg.min_inliers):
        res.reason = f"too few feature matches ({len(src)} < {cfg.min_inliers}; another object?)"
        return res
    h_work, inl = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, cfg.ransac_threshold, maxIters=5000, confidence=0.999)
    inl = inl.ravel().astype(bool) if inl is not None else np.zeros(len(src), bool)
    res.inliers = int(inl.sum())
    if h_work is None or res.inliers < cfg.min_inliers:
        res.reason = (f"too few RANSAC inliers ({res.inliers} < {cfg.min_inliers} of {len(src)} matches; "
                      "another object? --min-inliers)")
        return res
    problem, res.checks = homography_problem(h_work, photo.work_size, anchor.work_size, cfg, anchor.region)
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
        ecc_grid = grid if anchor.ecc_in_region else cell_correlations(anchor, photo, h_work, cfg, in_region=False)
        res.refined, h_work = _refine(anchor, photo, h_work, src[inl], _agreeing_cells(anchor, ecc_grid, cfg), res, cfg)
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


def _refine(anchor: Frame, photo: Frame, h_work: np.ndarray, inliers: np.ndarray, cells: np.ndarray | None,
            res: Alignment, cfg: AlignConfig) -> tuple[str, np.ndarray]:
    """ECC from the feature estimate h_work; returns ("ecc", refined) (res.agreement updated) or (why
    the feature estimate stands: ECC failed, moved the inliers too far, or agrees less, h_work).
    ECC looks only at the cells that agree under the feature estimate (`cells`): an occluder or a
    glare is not texture of the object, and least squares would follow it."""
    try:
        refined, res.ecc = _ecc(anchor, photo, h_work, cfg, cells)
    except cv2.error as exc:
        return f"kept features: ECC failed ({str(exc).strip().splitlines()[-1][:80]})", h_work
    res.ecc_shift = float(np.linalg.norm(project(refined, inliers) - project(h_work, inliers), axis=1).max())
    if res.ecc_shift > cfg.max_ecc_shift:
        return f"kept features: ECC moved the inliers {res.ecc_shift:.1f} px (max {cfg.max_ecc_shift})", h_work
    if homography_problem(refined, photo.work_size, anchor.work_size, cfg, anchor.region)[0]:
        return "kept features: ECC's homography is implausible", h_work
    score, _ = agreement(anchor, photo, refined, cfg)
    if res.agreement is not None and (score is None or score < res.agreement - 0.02):
        return f"kept features: ECC agrees less ({score} < {res.agreement:.3f})", h_work
    res.agreement = score
    return "ecc", refined
