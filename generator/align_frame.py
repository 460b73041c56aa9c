"""The foundation of the alignment (generator/align.py, whose docstring explains the whole): the
knobs (AlignConfig), an image prepared for alignment (Frame), the outcome (Alignment), and what
both the matching and the ECC refinement (generator/align_ecc.py) build on.

- preparation: the grey work copy, its features (RootSIFT or ORB, also on a half-size copy), its
  locally normalised copy (each pixel minus its neighbourhood mean, over its neighbourhood
  spread) with the map of where it has texture, and the object's region (set_region);
- geometry: whether a homography is plausible for a flat object (homography_problem: not
  mirrored, no extreme scale, shear or small overlap);
- photometry, where there is texture: the anchor's pixels whose local contrast stands clear of its
  sensor noise (`Frame.texture`, optionally only inside the object's region, e.g. the cover's
  quadrilateral) are cut into cells; the agreement is the median over cells of the normalised
  cross-correlation of the two normalised images. Occluders, glare and shadows spoil some cells,
  not the median; a photo of another object agrees nowhere.

Alignment is done on a "work" copy whose long side is at most `work_size` pixels (speed), but the
homography returned is in full-resolution pixel coordinates of the two images given (pixel
centres at integers, as OpenCV's warps use).

Every name here is re-exported by generator/align.py; import them from there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

from generator.warp import scale_matrix

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


# ---------------------------------------------------------------------------------- geometry
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


# ---------------------------------------------------------------------------------- photometric checks
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
