"""Semi-real handheld captures for the alignment, ingest and restore tests.

Real photographs bundled with scikit-image stand in for a flat printed object; each "photo" is a
view of it through a random homography, with its own exposure gain, colour cast, smooth shading,
a cast shadow with a soft edge, an occluding blob and sensor noise. The ground-truth homography
(photo px -> reference px) is returned, so alignment error can be measured exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from skimage import data as skdata

OBJECTS = ("astronaut", "coffee", "chelsea", "rocket")


def object_image(name: str, long_side: int = 320) -> np.ndarray:
    """uint8 (H, W, 3): a scikit-image photograph, resized so its long side is `long_side`."""
    img = getattr(skdata, name)()
    h, w = img.shape[:2]
    s = long_side / max(h, w)
    return cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)


def random_homography(rng: np.random.Generator, size: tuple[int, int], strength: float = 1.0) -> np.ndarray:
    """A plausible handheld motion about the image centre: rotation, zoom, shift, mild perspective."""
    w, h = size
    angle = np.deg2rad(rng.uniform(-8, 8) * strength)
    scale = np.exp(rng.uniform(-0.12, 0.12) * strength)
    tx, ty = rng.uniform(-0.06, 0.06, 2) * np.array([w, h]) * strength
    px, py = rng.uniform(-4e-4, 4e-4, 2) * strength * 256 / max(w, h)
    c = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]])
    r = np.array([[scale * np.cos(angle), -scale * np.sin(angle), tx],
                  [scale * np.sin(angle), scale * np.cos(angle), ty], [px, py, 1]])
    return np.linalg.inv(c) @ r @ c


def view(canvas: np.ndarray, photo_to_canvas: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """What a camera sees: canvas resampled through the map photo px -> canvas px, float32 (H, W, 3) in [0, 1]."""
    out = cv2.warpPerspective(canvas.astype(np.float32) / 255.0, photo_to_canvas, size,
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)
    return out


def spoil(rng: np.random.Generator, img: np.ndarray, occluder: bool = True, shadow: bool = True) -> np.ndarray:
    """Light changes and things in the way, on float (H, W, 3) in [0, 1] -> uint8."""
    h, w = img.shape[:2]
    gain = rng.uniform(0.6, 1.3)
    cast = rng.uniform(0.85, 1.15, 3)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    a = rng.uniform(0, 2 * np.pi)
    shading = 1 + 0.3 * (np.cos(a) * (xx - 0.5) + np.sin(a) * (yy - 0.5))
    out = img * gain * cast * shading[..., None]
    if shadow:  # a half-plane shadow with a soft edge, like a hand or lamp arm
        b = rng.uniform(0, 2 * np.pi)
        d = np.cos(b) * (xx - rng.uniform(0.3, 0.7)) + np.sin(b) * (yy - rng.uniform(0.3, 0.7))
        out *= 1 - 0.45 * np.clip(d * 25 + 0.5, 0, 1)[..., None]
    if occluder:  # a blob of solid colour (a pen, a finger) over ~5% of the frame
        mask = np.zeros((h, w), np.uint8)
        centre = (int(rng.uniform(0.15, 0.85) * w), int(rng.uniform(0.15, 0.85) * h))
        axes = (int(rng.uniform(0.08, 0.16) * w), int(rng.uniform(0.04, 0.1) * h))
        cv2.ellipse(mask, centre, axes, rng.uniform(0, 180), 0, 360, 1, -1)
        out[mask.astype(bool)] = rng.uniform(0.1, 0.9, 3)
    # a specular glint
    gx, gy = rng.uniform(0.2, 0.8, 2)
    out += 0.5 * np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / 0.004)[..., None]
    out += rng.normal(0, 0.01, out.shape)
    return np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8)


@dataclass
class Capture:
    """reference: uint8 (h, w, 3) clean; photos[i]: uint8 spoiled; truth[i]: photo px -> reference px."""

    reference: np.ndarray
    photos: list[np.ndarray]
    truth: list[np.ndarray]


def make_capture(name: str = "astronaut", k: int = 4, seed: int = 0, ref_size: tuple[int, int] = (192, 160),
                 photo_size: tuple[int, int] = (224, 176), strength: float = 1.0) -> Capture:
    """A reference view of the object (centred, clean) and k spoiled handheld views of it."""
    rng = np.random.default_rng(seed)
    canvas = object_image(name)
    ch, cw = canvas.shape[:2]
    rw, rh = ref_size
    # Reference px -> canvas px: the reference frames the middle of the object, slightly zoomed in.
    s = 0.8 * min(cw / rw, ch / rh)
    g0 = np.array([[s, 0, cw / 2 - s * rw / 2], [0, s, ch / 2 - s * rh / 2], [0, 0, 1]])
    reference = np.clip(view(canvas, g0, ref_size) * 255 + 0.5, 0, 255).astype(np.uint8)
    photos, truth = [], []
    pw, ph = photo_size
    # Photo px -> reference px: centre the photo on the reference, then a random handheld motion.
    centre = np.array([[1, 0, (rw - pw) / 2], [0, 1, (rh - ph) / 2], [0, 0, 1]])
    for _ in range(k):
        p = centre @ random_homography(rng, photo_size, strength)
        photos.append(spoil(rng, view(canvas, g0 @ p, photo_size)))
        truth.append(p / p[2, 2])
    return Capture(reference, photos, truth)


def corner_error(estimate: np.ndarray, truth: np.ndarray, ref_size: tuple[int, int]) -> float:
    """Max distance (px, in the reference) between where the two homographies put the reference's
    corners, each taken back into the photo by the true map first."""
    w, h = ref_size
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    in_photo = _project(np.linalg.inv(truth), corners)
    return float(np.linalg.norm(_project(estimate, in_photo) - corners, axis=1).max())


def _project(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = np.c_[pts, np.ones(len(pts))] @ h.T
    return p[:, :2] / p[:, 2:3]
