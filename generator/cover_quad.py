"""The cover's quadrilateral in a photo, its true aspect ratio, and the map that rectifies it.

    found = find_quad(reference_rgb)            # QuadResult: quad (4, 2) px TL TR BR BL, or why not
    aspect = quad_aspect(found.quad, (W, H))     # the cover's own width / height
    to_flat, size = rectify_map(found.quad, aspect, short_side=256)   # 3x3 photo px -> flat px

What a document scanner does, for a cover lying on a table: candidates come from two detectors,
(1) contours of the edge map (Canny at a few thresholds) approximated by four-sided convex
polygons, and (2) the largest region whose colour differs from the image border's (the table).
Each candidate's sides are first snapped onto the strongest straight edges within a few px (a
colour blob's polygon lies a little off the cover's edges, more so on a textured table), then it
is scored by edge support: the fraction of points along its four sides where the
image gradient is strong and across the side. The best one is refined to sub-pixel corners by
fitting a line to the strongest edge along each side and intersecting the lines. A quad is
reported only when it is convincing (enough edge support, a plausible size and shape); when the
two detectors' best outlines differ, the one that encloses the other wins (the other is a frame
printed on the cover), and two that cross are a contradiction. Otherwise `quad` is None and
`reason` says why, and callers fall back to a square crop.

The aspect ratio of a perspective view of a rectangle is recovered as in Zhang & He, "Whiteboard
scanning and image enhancement" (2007): the focal length follows from the quad's vanishing
geometry (principal point at the image centre, square pixels); near front-on views, where that
is ill-conditioned, the mean side lengths are used.

NumPy and OpenCV only; generator/align.py re-exports what trainer/ needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

DETECT_SIDE = 512  # px, long side the detectors run at
MIN_SUPPORT = 0.8  # edge support (of the weakest side) needed to trust a quad
MIN_AREA, MAX_AREA = 0.08, 0.97  # fraction of the image a cover may fill
SNAP_REACH = 12  # px (detector), how far a candidate's side may move onto a straight edge


@dataclass
class QuadResult:
    """quad: float64 (4, 2) image px (pixel centres at integers), TL TR BR BL, or None; reason: why
    no quad (None when found); support: edge support of the quad in [0, 1]."""

    quad: np.ndarray | None
    reason: str | None = None
    support: float = 0.0
    source: str = ""  # "edges", "colour" or "user"


def order_corners(pts: np.ndarray) -> np.ndarray:
    """(4, 2) points -> TL, TR, BR, BL (clockwise on screen, starting nearest the top-left)."""
    pts = np.asarray(pts, np.float64).reshape(4, 2)
    c = pts.mean(axis=0)
    ang = np.arctan2(pts[:, 1] - c[1], pts[:, 0] - c[0])
    pts = pts[np.argsort(ang)]  # clockwise on screen (y down)
    start = int(np.argmin(pts.sum(axis=1)))
    return np.roll(pts, -start, axis=0)


def parse_corners(text: str) -> np.ndarray:
    """'x1,y1,x2,y2,x3,y3,x4,y4' (any order of corners) -> (4, 2) TL TR BR BL; ValueError if malformed."""
    try:
        vals = [float(v) for v in text.replace(";", ",").replace(" ", ",").split(",") if v.strip()]
    except ValueError as exc:
        raise ValueError(f"corners {text!r}: not numbers ({exc})") from None
    if len(vals) != 8:
        raise ValueError(f"corners {text!r}: expected 8 numbers x1,y1,...,x4,y4, got {len(vals)}")
    quad = order_corners(np.array(vals).reshape(4, 2))
    if _shape_problem(quad, None):
        raise ValueError(f"corners {text!r}: {_shape_problem(quad, None)}")
    return quad


def _shape_problem(quad: np.ndarray, image_size: tuple[int, int] | None) -> str | None:
    """Why `quad` (TL TR BR BL) cannot be a cover's outline, or None."""
    edges = np.roll(quad, -1, axis=0) - quad
    cross = edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1] - edges[:, 1] * np.roll(edges, -1, axis=0)[:, 0]
    if not np.all(cross > 0):
        return "not a convex quadrilateral"
    cosines = [abs(np.dot(-edges[i - 1], edges[i])) / (np.linalg.norm(edges[i - 1]) * np.linalg.norm(edges[i]))
               for i in range(4)]
    if max(cosines) > np.cos(np.deg2rad(45)):
        return "a corner is sharper than 45 degrees (more than a handheld tilt)"
    if image_size is not None:
        frac = cv2.contourArea(quad.astype(np.float32)) / (image_size[0] * image_size[1])
        if not MIN_AREA <= frac <= MAX_AREA:
            return f"it would fill {frac:.0%} of the image (a cover fills {MIN_AREA:.0%}..{MAX_AREA:.0%})"
    return None


# ---------------------------------------------------------------------------------- detection
def find_quad(image: np.ndarray) -> QuadResult:
    """The cover's quadrilateral in `image` (H, W, 3) uint8/float RGB (or (H, W) grey)."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = np.clip(img.astype(np.float32) * (255.0 if img.dtype.kind == "f" else 255.0 / 65535), 0, 255)
        img = (img + 0.5).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    h, w = img.shape[:2]
    s = min(1.0, DETECT_SIDE / max(h, w))
    small = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA) if s < 1 else img
    small = cv2.GaussianBlur(small, (0, 0), 1.0)
    grad = _gradients(small)
    size = (small.shape[1], small.shape[0])
    # The cover's outline encloses the rectangles printed on it (frames, title bands, panels), so
    # among the convincing candidates the largest wins; without any, the best-supported says why not.
    convincing, best_support, problems = [], 0.0, []
    for source, cand in _candidates(small):
        problem = _shape_problem(cand, size)
        if problem:
            problems.append(problem)
            continue
        support = edge_support(grad, cand)
        # A candidate from a blurred colour blob or a rounded contour lies a few px off the cover's
        # edges: snap its sides onto the strongest straight edges nearby, and keep what is better.
        snapped = _refine(grad, _refine(grad, cand, reach=SNAP_REACH), reach=4)
        if snapped is not cand and not _shape_problem(snapped, size):
            snapped_support = edge_support(grad, snapped)
            if snapped_support > support:
                cand, support = snapped, snapped_support
        best_support = max(best_support, support)
        if support >= MIN_SUPPORT:
            convincing.append((cv2.contourArea(cand.astype(np.float32)), support, source, cand))
    if not convincing:
        if best_support == 0:
            why = "no four-sided outline found" + (f" (candidates rejected: {problems[0]})" if problems else "")
            return QuadResult(None, why)
        return QuadResult(None, f"the best outline has weak edges (support {best_support:.2f} < {MIN_SUPPORT})",
                          best_support)
    # Each detector's largest convincing outline; when both detectors found one, they must agree
    # (on a textured table either can lock onto a printed frame or the table's own lines).
    best: dict[str, tuple] = {}
    for area, support, source, cand in convincing:
        if source not in best or area > best[source][0]:
            best[source] = (area, support, source, cand)
    sources = "+".join(best)
    chosen = best.get("edges", best.get("colour"))
    if len(best) == 2:
        q_e, q_c = best["edges"][3], best["colour"][3]
        if np.linalg.norm(q_e - q_c, axis=1).max() > 0.02 * float(np.hypot(*size)):
            # One may be a rectangle printed on the cover, which the outline encloses; two outlines
            # that cross are a contradiction.
            large, small = sorted((best["edges"], best["colour"]), key=lambda b: -b[0])
            if not _encloses(large[3], small[3]):
                return QuadResult(None, "the edge and colour detectors disagree on the outline",
                                  min(best["edges"][1], best["colour"][1]))
            chosen, sources = large, large[2]
    _, support, _, best = chosen
    refined = _refine(grad, best)
    quad = (refined + 0.5) / s - 0.5  # detector px -> image px (pixel centres)
    return QuadResult(quad, None, support, sources)


def _encloses(outer: np.ndarray, inner: np.ndarray) -> bool:
    """Whether every corner of quad `inner` lies inside (or within 2 px of) quad `outer`."""
    contour = outer.astype(np.float32).reshape(-1, 1, 2)
    return all(cv2.pointPolygonTest(contour, (float(x), float(y)), True) >= -2 for x, y in inner)


def _gradients(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel (gx, gy) of the colour channel with the strongest gradient, float32 (H, W) each."""
    f = img.astype(np.float32)
    gx = cv2.Sobel(f, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(f, cv2.CV_32F, 0, 1, ksize=3)
    mag = gx * gx + gy * gy
    idx = np.argmax(mag, axis=2)[..., None]
    return np.take_along_axis(gx, idx, 2)[..., 0], np.take_along_axis(gy, idx, 2)[..., 0]


def _candidates(img: np.ndarray):
    """(source, quad (4, 2) TL TR BR BL) candidates from edge contours and from colour against the border."""
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    med = float(np.median(grey))
    h, w = grey.shape
    for lo_frac in (0.33, 0.66, 1.0):
        edges = cv2.Canny(grey, int(lo_frac * med * 0.5), int(lo_frac * med), L2gradient=True)
        edges = cv2.dilate(edges, np.ones((3, 3), np.uint8))
        yield from (("edges", q) for q in _quads_of(edges, h * w))
    # Colour: distance from the border's median colour (the table), thresholded by Otsu.
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB).astype(np.float32)
    border = np.concatenate([lab[:4].reshape(-1, 3), lab[-4:].reshape(-1, 3), lab[:, :4].reshape(-1, 3),
                             lab[:, -4:].reshape(-1, 3)])
    dist = np.linalg.norm(lab - np.median(border, axis=0), axis=2)
    dist = cv2.GaussianBlur(dist, (0, 0), 2.0)
    d8 = np.clip(dist / max(float(dist.max()), 1e-6) * 255, 0, 255).astype(np.uint8)
    _, fg = cv2.threshold(d8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, np.ones((9, 9), np.uint8))
    yield from (("colour", q) for q in _quads_of(fg, h * w, filled=True))


def _quads_of(binary: np.ndarray, area: int, filled: bool = False):
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL if filled else cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    for c in sorted(contours, key=cv2.contourArea, reverse=True)[:8]:
        if cv2.contourArea(c) < MIN_AREA * area:
            break
        hull = cv2.convexHull(c)
        for eps in (0.02, 0.04):
            approx = cv2.approxPolyDP(hull, eps * cv2.arcLength(hull, True), True)
            if len(approx) == 4:
                yield order_corners(approx.reshape(4, 2))
                break


def edge_support(grad: tuple[np.ndarray, np.ndarray], quad: np.ndarray, samples: int = 40) -> float:
    """In [0, 1]: over the quad's four sides, the least fraction of points along a side with a strong
    gradient across it (the weakest side counts: a side cutting across the cover is weak)."""
    gx, gy = grad
    h, w = gx.shape
    mag = np.sqrt(gx * gx + gy * gy)
    strong = max(float(np.percentile(mag, 90)), 1e-3) * 0.5
    fractions = []
    for i in range(4):
        a, b = quad[i], quad[(i + 1) % 4]
        d = (b - a) / max(np.linalg.norm(b - a), 1e-9)
        n = np.array([-d[1], d[0]])
        hits = 0
        for t in np.linspace(0.05, 0.95, samples):
            p = a + t * (b - a)
            best = 0.0
            for off in (-2, -1, 0, 1, 2):  # the outline may be a pixel or two off
                x, y = np.round(p + off * n).astype(int)
                if 0 <= x < w and 0 <= y < h:
                    best = max(best, abs(gx[y, x] * n[0] + gy[y, x] * n[1]))
            hits += best > strong
        fractions.append(hits / samples)
    return min(fractions)


def _refine(grad: tuple[np.ndarray, np.ndarray], quad: np.ndarray, reach: int = 4) -> np.ndarray:
    """Sub-pixel corners: along each side, the peak of the gradient across it (parabola fit) within
    `reach` px; a robust line through the peaks; corners where neighbouring lines meet."""
    gx, gy = grad
    h, w = gx.shape
    lines = []
    for i in range(4):
        a, b = quad[i], quad[(i + 1) % 4]
        d = (b - a) / max(np.linalg.norm(b - a), 1e-9)
        n = np.array([-d[1], d[0]])
        pts = []
        for t in np.linspace(0.08, 0.92, 60):
            p = a + t * (b - a)
            offs = np.arange(-reach, reach + 1)
            xy = p + offs[:, None] * n
            xs, ys = xy[:, 0], xy[:, 1]
            if xs.min() < 0 or ys.min() < 0 or xs.max() > w - 1 or ys.max() > h - 1:
                continue
            prof = np.abs(cv2.remap(gx, xs.astype(np.float32)[None], ys.astype(np.float32)[None], cv2.INTER_LINEAR)[0] * n[0]
                          + cv2.remap(gy, xs.astype(np.float32)[None], ys.astype(np.float32)[None], cv2.INTER_LINEAR)[0] * n[1])
            k = int(np.argmax(prof))
            if 0 < k < len(prof) - 1:
                den = prof[k - 1] - 2 * prof[k] + prof[k + 1]
                sub = 0.5 * (prof[k - 1] - prof[k + 1]) / den if den < 0 else 0.0
                pts.append(p + (offs[k] + sub) * n)
        if len(pts) < 10:
            return quad
        vx, vy, x0, y0 = cv2.fitLine(np.array(pts, np.float32), cv2.DIST_HUBER, 0, 0.01, 0.01).ravel()
        lines.append(np.cross([x0, y0, 1.0], [x0 + vx, y0 + vy, 1.0]))
    out = []
    for i in range(4):
        p = np.cross(lines[i - 1], lines[i])
        if abs(p[2]) < 1e-9:
            return quad
        out.append(p[:2] / p[2])
    out = np.array(out)
    # The refinement only polishes: a corner that moved far means a side locked onto something else.
    return out if np.abs(out - quad).max() <= 2 * reach else quad


# ---------------------------------------------------------------------------------- geometry
def quad_aspect(quad: np.ndarray, image_size: tuple[int, int]) -> float:
    """The true width / height of the rectangle seen as `quad` (TL TR BR BL) in an image of
    image_size (W, H), assuming square pixels and the principal point at the centre."""
    tl, tr, br, bl = (np.array([*p, 1.0]) for p in np.asarray(quad, np.float64))
    w_img, h_img = image_size
    sides_w = 0.5 * (np.linalg.norm(tr[:2] - tl[:2]) + np.linalg.norm(br[:2] - bl[:2]))
    sides_h = 0.5 * (np.linalg.norm(bl[:2] - tl[:2]) + np.linalg.norm(br[:2] - tr[:2]))
    fallback = sides_w / sides_h
    # Zhang & He: m1 = TL, m2 = TR, m3 = BL, m4 = BR.
    m1, m2, m3, m4 = tl, tr, bl, br
    k2 = np.dot(np.cross(m1, m4), m3) / np.dot(np.cross(m2, m4), m3)
    k3 = np.dot(np.cross(m1, m4), m2) / np.dot(np.cross(m3, m4), m2)
    n2, n3 = k2 * m2 - m1, k3 * m3 - m1
    if abs(n2[2] * n3[2]) < 1e-12:
        return float(fallback)
    u0, v0 = (w_img - 1) / 2, (h_img - 1) / 2
    f2 = -((n2[0] * n3[0] - (n2[0] * n3[2] + n2[2] * n3[0]) * u0 + n2[2] * n3[2] * u0 * u0)
           + (n2[1] * n3[1] - (n2[1] * n3[2] + n2[2] * n3[1]) * v0 + n2[2] * n3[2] * v0 * v0)) / (n2[2] * n3[2])
    # Ill-conditioned near front-on (the vanishing points run off to infinity): trust the sides.
    if not 0.25 * max(w_img, h_img) ** 2 <= f2 <= 25 * max(w_img, h_img) ** 2:
        return float(fallback)
    a_inv = np.linalg.inv(np.array([[np.sqrt(f2), 0, u0], [0, np.sqrt(f2), v0], [0, 0, 1]]))
    num, den = n2 @ a_inv.T @ a_inv @ n2, n3 @ a_inv.T @ a_inv @ n3
    return float(np.sqrt(num / den)) if num > 0 and den > 0 else float(fallback)


def flat_size(aspect: float, short_side: int) -> tuple[int, int]:
    """(W, H) of a rectified cover of width / height `aspect` whose short side is `short_side` px."""
    if aspect >= 1:
        return max(1, round(short_side * aspect)), short_side
    return short_side, max(1, round(short_side / aspect))


def rectify_map(quad: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float64 (3, 3): image px -> flat px of a (W, H) = size picture of the cover whose corners are
    `quad` (TL TR BR BL, the outline's pixel-centre coordinates: the flat picture's outer edges)."""
    w, h = size
    dst = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]], np.float32)
    m = cv2.getPerspectiveTransform(np.asarray(quad, np.float32), dst).astype(np.float64)
    return m / m[2, 2]
