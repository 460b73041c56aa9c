"""Align handheld photos of one flat object to an anchor image: features, RANSAC, then ECC.

    anchor = prepare(reference_rgb)                 # uint8 or float (H, W, 3), any size
    result = align(anchor, prepare(photo_rgb))      # Alignment: homography photo px -> anchor px
    if result.ok: warped = warp_to_anchor(photo_rgb, result.homography, anchor.size)

The object is flat, so one homography maps every photo onto the anchor. It is found in two steps:

1. features (SIFT, or ORB) matched with Lowe's ratio test, then a RANSAC homography: robust to
   large motion, occluders and light, but only as accurate as the keypoints (~1 px);
2. ECC refinement (cv2.findTransformECC, MOTION_HOMOGRAPHY), started from step 1, on locally
   normalised images (each pixel minus its neighbourhood mean, over its neighbourhood spread):
   gain, colour casts and soft shading cancel out, so what is matched is the texture of the
   object and not the light on it.

Alignment is done on a "work" copy whose long side is at most `work_size` pixels (speed), but the
homography returned is in full-resolution pixel coordinates of the two images given (pixel
centres at integers, as OpenCV's warps use). A result is rejected, with a reason, when it cannot be
trusted: too few features or RANSAC inliers, a degenerate or extreme homography (mirrored,
non-convex, large scale change, strong shear, small overlap), ECC failing, scoring low, or moving
far from the feature estimate.

Used by `drs-ingest` (generator/ingest.py) and `drs-restore --align` (trainer/restore.py); imports
only NumPy and OpenCV.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

METHODS = ("sift", "orb")


@dataclass(frozen=True)
class AlignConfig:
    """Knobs of the alignment and of its trust checks (pixels are work-image pixels)."""

    method: str = "sift"
    work_size: int = 1024  # long side of the work copy, px
    max_features: int = 4000
    # SIFT's default 0.04 finds too few keypoints on dim or low-contrast photos (shadowed, small).
    contrast_threshold: float = 0.02
    ratio: float = 0.75  # Lowe's ratio test
    ransac_threshold: float = 3.0  # px
    min_inliers: int = 25
    max_scale_change: float = 3.0  # area scale between photo and anchor, either way (linear factor)
    max_anisotropy: float = 3.0  # ratio of the local Jacobian's singular values (shear / foreshortening)
    min_overlap: float = 0.3  # fraction of the anchor the photo covers
    ecc: bool = True
    ecc_iterations: int = 100
    ecc_eps: float = 1e-6
    min_ecc: float = 0.5  # correlation of the normalised images after refinement
    max_ecc_shift: float = 8.0  # px; ECC moving the anchor's corners further than this is not trusted
    norm_sigma: float = 2.0  # px, neighbourhood of the local normalisation

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"align method must be one of {METHODS}, got {self.method!r}")
        for name in ("work_size", "max_features", "min_inliers", "ecc_iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"align {name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.ratio < 1:
            raise ValueError(f"align ratio must be in (0, 1), got {self.ratio}")
        if not 0 <= self.min_overlap <= 1:
            raise ValueError(f"align min_overlap must be in [0, 1], got {self.min_overlap}")


@dataclass
class Frame:
    """An image prepared for alignment: the grey work copy, its features, its normalised copy.

    size: (width, height) of the full-resolution image; to_work: 3x3 map full px -> work px.
    """

    size: tuple[int, int]
    to_work: np.ndarray
    grey: np.ndarray  # float32 (h, w) in [0, 1], the work copy
    keypoints: np.ndarray  # float32 (n, 2) work px
    descriptors: np.ndarray | None
    normalised: np.ndarray  # float32 (h, w), locally normalised grey

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
    ecc: float | None = None
    ecc_shift: float | None = None  # px (work), how far ECC moved the anchor's corners
    checks: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.reason is None

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


def scale_matrix(sx: float, sy: float) -> np.ndarray:
    """Map of pixel centres under a resize by (sx, sy): x' = (x + 0.5) * sx - 0.5 (cv2.resize's convention)."""
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]], dtype=np.float64)


def work_copy(image: np.ndarray, work_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Downscale (area filter) so the long side is <= work_size; returns (copy, full px -> work px map)."""
    h, w = image.shape[:2]
    s = min(1.0, work_size / max(h, w))
    if s >= 1.0:
        return image, np.eye(3)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    small = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    return small, scale_matrix(nw / w, nh / h)


def normalise(grey: np.ndarray, sigma: float) -> np.ndarray:
    """(g - local mean) / local std over a Gaussian neighbourhood of `sigma` px: removes gain, offset,
    colour casts and shading that vary slower than the neighbourhood, keeps the object's texture."""
    g = cv2.GaussianBlur(grey, (0, 0), 1.0)  # tame sensor noise before dividing by small spreads
    mean = cv2.GaussianBlur(g, (0, 0), sigma)
    var = cv2.GaussianBlur(g * g, (0, 0), sigma) - mean * mean
    return ((g - mean) / np.sqrt(np.maximum(var, 0) + 1e-4)).astype(np.float32)


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
    kps, desc = _detector(cfg).detectAndCompute(u8, None)
    pts = np.array([k.pt for k in kps], dtype=np.float32).reshape(-1, 2)
    return Frame((w, h), to_work, grey, pts, desc, normalise(grey, cfg.norm_sigma))


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
                       cfg: AlignConfig) -> tuple[str | None, dict[str, float]]:
    """Why homography h (photo px -> anchor px) is not plausible for a flat object, or None; plus the measures."""
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
    aw, ah = anchor_size
    rect = _corners(anchor_size).astype(np.float32)
    inter, _ = cv2.intersectConvexConvex(quad.astype(np.float32), rect)
    overlap = float(inter / max((aw - 1) * (ah - 1), 1))
    checks = {"scale": scale, "anisotropy": anisotropy, "overlap": overlap}
    if not 1 / cfg.max_scale_change <= scale <= cfg.max_scale_change:
        return f"extreme homography (scale change {scale:.2f}, allowed 1/{cfg.max_scale_change}..{cfg.max_scale_change})", checks
    if anisotropy > cfg.max_anisotropy:
        return f"extreme homography (shear/foreshortening {anisotropy:.2f} > {cfg.max_anisotropy})", checks
    if overlap < cfg.min_overlap:
        return f"photo covers only {overlap:.0%} of the anchor (min {cfg.min_overlap:.0%})", checks
    return None, checks


def _ecc(anchor: Frame, photo: Frame, h_work: np.ndarray, cfg: AlignConfig) -> tuple[np.ndarray, float]:
    """Refine h_work (photo work px -> anchor work px) by ECC; returns (refined, correlation).

    findTransformECC's warp maps template (anchor) coordinates into the input (photo), hence the inverse.
    """
    warp = np.linalg.inv(h_work)
    warp = (warp / warp[2, 2]).astype(np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, cfg.ecc_iterations, cfg.ecc_eps)
    cc, warp = cv2.findTransformECC(anchor.normalised, photo.normalised, warp, cv2.MOTION_HOMOGRAPHY, criteria, None, 1)
    refined = np.linalg.inv(warp.astype(np.float64))
    return refined / refined[2, 2], float(cc)


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
    h_work, inl = cv2.findHomography(src, dst, cv2.RANSAC, cfg.ransac_threshold, maxIters=5000, confidence=0.999)
    res.inliers = int(inl.sum()) if inl is not None else 0
    if h_work is None or res.inliers < cfg.min_inliers:
        res.reason = f"too few RANSAC inliers ({res.inliers} < {cfg.min_inliers} of {len(src)} matches; another object?)"
        return res
    problem, res.checks = homography_problem(h_work, photo.work_size, anchor.work_size, cfg)
    if problem:
        res.reason = problem
        return res
    if cfg.ecc:
        try:
            refined, res.ecc = _ecc(anchor, photo, h_work, cfg)
        except cv2.error as exc:
            res.reason = f"ECC refinement failed ({str(exc).strip().splitlines()[-1]})"
            return res
        ac = _corners(anchor.work_size)
        res.ecc_shift = float(np.abs(project(np.linalg.inv(refined), ac) - project(np.linalg.inv(h_work), ac)).max())
        if res.ecc < cfg.min_ecc:
            res.reason = f"poor ECC score ({res.ecc:.3f} < {cfg.min_ecc})"
            return res
        if res.ecc_shift > cfg.max_ecc_shift:
            res.reason = f"ECC moved {res.ecc_shift:.1f} px from the feature estimate (max {cfg.max_ecc_shift})"
            return res
        problem, res.checks = homography_problem(refined, photo.work_size, anchor.work_size, cfg)
        if problem:
            res.reason = problem
            return res
        h_work = refined
    h_full = np.linalg.inv(anchor.to_work) @ h_work @ photo.to_work
    res.homography = h_full / h_full[2, 2]
    return res


# ---------------------------------------------------------------------------------- warping, crop
def warp_to_anchor(image: np.ndarray, homography: np.ndarray, anchor_size: tuple[int, int],
                   border_value: float = 0.0) -> np.ndarray:
    """Resample image (H, W[, C]) into the anchor's frame (W_a, H_a); pixels outside it = border_value."""
    return cv2.warpPerspective(image, homography, anchor_size, flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=border_value)


def valid_mask(photo_size: tuple[int, int], homography: np.ndarray, anchor_size: tuple[int, int],
               margin: int = 2) -> np.ndarray:
    """bool (H_a, W_a): anchor pixels the photo covers, shrunk by `margin` px (interpolation fringe)."""
    w, h = photo_size
    mask = warp_to_anchor(np.ones((h, w), np.uint8), homography, anchor_size)
    if margin > 0:
        mask = cv2.erode(mask, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8), borderValue=0)
    return mask.astype(bool)


def largest_square(mask: np.ndarray) -> tuple[int, int, int]:
    """(x, y, side) of the largest axis-aligned square inside mask (H, W) bool, the one nearest the
    centre among equals; side 0 when the mask is empty. Binary search on the side with an integral image."""
    h, w = mask.shape
    integral = cv2.integral(mask.astype(np.uint8)).astype(np.int64)

    def fits(s: int) -> np.ndarray:
        sums = integral[s:, s:] - integral[:-s, s:] - integral[s:, :-s] + integral[:-s, :-s]
        return sums == s * s  # (h - s + 1, w - s + 1): top-left corners where an s x s square fits

    lo, hi = 0, min(h, w)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid).any():
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        return 0, 0, 0
    ys, xs = np.nonzero(fits(lo))
    d = (xs + lo / 2 - w / 2) ** 2 + (ys + lo / 2 - h / 2) ** 2
    i = int(np.argmin(d))
    return int(xs[i]), int(ys[i]), lo


def common_square(sizes: list[tuple[int, int]], homographies: list[np.ndarray], anchor_size: tuple[int, int],
                  margin: int = 2) -> tuple[int, int, int]:
    """Largest square (x, y, side), anchor px, that every photo covers (photo sizes (W, H), homographies
    photo px -> anchor px). The anchor itself is included by giving it the identity."""
    aw, ah = anchor_size
    common = np.ones((ah, aw), bool)
    for size, h in zip(sizes, homographies, strict=True):
        common &= valid_mask(size, h, anchor_size, margin)
    return largest_square(common)


def render_crop(image: np.ndarray, homography: np.ndarray, square: tuple[int, int, int], resolution: int) -> np.ndarray:
    """The square (x, y, side) of the anchor's frame as seen in `image` (H, W, 3), resampled to
    (resolution, resolution, 3), same dtype.

    Warped at twice the output size, then area-averaged down: a plain bilinear warp straight to a
    much smaller output would alias (it samples, it does not average).
    """
    x0, y0, side = square
    big = 2 * resolution
    s = big / side
    # anchor px -> oversampled output px (pixel centres: anchor pixel x0 - 0.5 is the output's left edge)
    to_out = np.array([[s, 0, s * (0.5 - x0) - 0.5], [0, s, s * (0.5 - y0) - 0.5], [0, 0, 1]])
    m = to_out @ homography
    over = cv2.warpPerspective(image, m, (big, big), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    return cv2.resize(over, (resolution, resolution), interpolation=cv2.INTER_AREA)
