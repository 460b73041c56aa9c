"""Resampling aligned photos: coverage masks, the largest common rectangle, anti-aliased warps.

    mask = valid_mask(photo_size, homography, anchor_size)    # bool (H_a, W_a): what a photo shows
    x, y, w, h = largest_rect(mask, aspect=0.7)               # the largest 0.7-aspect rectangle inside
    out = render_view(photo, to_out @ homography, (W, H))     # the photo seen in the output frame

Pixel centres are at integers throughout, as OpenCV's warps use. NumPy and OpenCV only;
re-exported by generator/align.py.
"""

from __future__ import annotations

import cv2
import numpy as np


def scale_matrix(sx: float, sy: float) -> np.ndarray:
    """Map of pixel centres under a resize by (sx, sy): x' = (x + 0.5) * sx - 0.5 (cv2.resize's convention)."""
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]], dtype=np.float64)



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


def largest_rect(mask: np.ndarray, aspect: float = 1.0) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the largest axis-aligned rectangle of width / height ~ `aspect` inside mask
    (H, W) bool, the one nearest the centre among equals; all 0 when the mask is empty. Binary
    search on the height with an integral image."""
    hh, ww = mask.shape
    integral = cv2.integral(mask.astype(np.uint8)).astype(np.int64)

    def width(rh: int) -> int:
        return max(1, round(rh * aspect))

    def fits(rh: int) -> np.ndarray:
        rw = width(rh)
        if rw > ww or rh > hh:
            return np.zeros((0, 0), bool)
        sums = integral[rh:, rw:] - integral[:-rh, rw:] - integral[rh:, :-rw] + integral[:-rh, :-rw]
        return sums == rh * rw  # (hh - rh + 1, ww - rw + 1): top-left corners where it fits

    lo, hi = 0, min(hh, int(ww / aspect) + 1)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid).any():
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        return 0, 0, 0, 0
    rw = width(lo)
    ys, xs = np.nonzero(fits(lo))
    d = (xs + rw / 2 - ww / 2) ** 2 + (ys + lo / 2 - hh / 2) ** 2
    i = int(np.argmin(d))
    return int(xs[i]), int(ys[i]), rw, lo


def largest_square(mask: np.ndarray) -> tuple[int, int, int]:
    """(x, y, side) of the largest axis-aligned square inside mask (H, W) bool (see largest_rect)."""
    x, y, side, _ = largest_rect(mask, 1.0)
    return x, y, side


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
    (resolution, resolution, 3), same dtype."""
    x0, y0, side = square
    s = resolution / side
    # anchor px -> output px (pixel centres: anchor pixel x0 - 0.5 is the output's left edge)
    to_out = np.array([[s, 0, s * (0.5 - x0) - 0.5], [0, s, s * (0.5 - y0) - 0.5], [0, 0, 1]])
    return render_view(image, to_out @ homography, (resolution, resolution))


def render_view(image: np.ndarray, to_out: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` (H, W, C) resampled through to_out (3, 3: image px -> output px) into (size[1], size[0], C).

    Warped at twice the output size, then area-averaged down: a plain bilinear warp straight to a
    much smaller output would alias (it samples, it does not average).
    """
    w, h = size
    up = scale_matrix(2.0, 2.0) @ to_out  # output px -> oversampled px, pixel centres kept
    over = cv2.warpPerspective(image, up, (2 * w, 2 * h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    return cv2.resize(over, (w, h), interpolation=cv2.INTER_AREA)
