"""Camera effects: what a phone does to each photo of a sequence, applied after rendering. NumPy/OpenCV.

Real captures differ from renders in ways a network must have seen: exposure and white balance
change from shot to shot, the corners are darker (vignetting), the sensor adds noise that grows
with the signal, focus and hand shake blur a little, alignment leaves about 0.3 px of residual
misregistration, and the file is a JPEG. Each image draws its own effects from the sequence's key
`[seed, sequence_id, 3, 1 + attempt]`, so they are reproducible per sequence and independent of
the lighting group. Only the inputs change: the target stays the clean cover, and the masks stay
those of the render (the residual shift is sub-pixel).

Order follows the physics: light reaches the sensor through the lens (exposure, vignetting, blur,
the pose residual), the sensor adds noise, the white balance is applied to the raw values, then
the camera encodes sRGB and JPEG. Sizes in pixels are given at 256 px and scale with resolution.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image

from generator.composite import linear_to_srgb_u8

_CAMERA_STREAM = 3
REFERENCE_RESOLUTION = 256  # the resolution the pixel sizes of CameraConfig are given at


@dataclass
class CameraEffects:
    """One image's draw. gains: linear RGB multipliers (exposure x white balance)."""

    gains: tuple[float, float, float]
    vignetting: float  # fraction of light lost at the frame's corners
    blur_sigma: float  # Gaussian defocus, pixels at this resolution (0: none)
    motion: tuple[float, float]  # motion blur length (pixels) and angle (radians); length 0: none
    shift: tuple[float, float]  # residual misregistration (dx, dy), pixels
    rotation_deg: float
    shot_noise: float  # variance per unit of linear signal
    read_noise: float  # standard deviation, linear units
    jpeg_quality: int  # 0: stored without JPEG
    noise_seed: int


def camera_rng(seed: int, sequence_id: int, attempt: int = 0) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(sequence_id), _CAMERA_STREAM, 1 + int(attempt)])


def sample_effects(rng: np.random.Generator, cam: Any, resolution: int) -> CameraEffects:
    """One image's effects from `cam` (generator.config.CameraConfig)."""
    px = resolution / REFERENCE_RESOLUTION
    exposure = 2.0 ** rng.normal(0.0, cam.exposure_ev)
    wb = np.exp(rng.normal(0.0, cam.white_balance, size=3))
    wb = wb / np.exp(np.log(wb).mean())  # white balance moves hue, exposure moves brightness
    motion_len = 0.0
    if rng.random() < cam.motion_prob:
        motion_len = rng.uniform(*cam.motion_length) * px
    blur = 0.0 if motion_len > 0 else rng.uniform(*cam.blur_sigma) * px
    lo, hi = cam.jpeg_quality
    return CameraEffects(
        gains=tuple(float(g) for g in exposure * wb),
        vignetting=float(rng.uniform(*cam.vignetting)),
        blur_sigma=float(blur),
        motion=(float(motion_len), float(rng.uniform(0, math.pi))),
        shift=tuple(float(v) for v in rng.normal(0.0, cam.shift_px * px, size=2)),
        rotation_deg=float(rng.normal(0.0, cam.rotation_deg)),
        shot_noise=float(rng.uniform(*cam.shot_noise)),
        read_noise=float(rng.uniform(*cam.read_noise)),
        jpeg_quality=int(rng.integers(lo, hi + 1)) if hi > 0 else 0,
        noise_seed=int(rng.integers(2**31)),
    )


def _vignette(shape: tuple[int, int], amount: float) -> np.ndarray:
    """(H, W, 1) gain: 1 at the centre, 1 - amount in the corners, a cos^4-like falloff."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xx - (w - 1) / 2) ** 2 + (yy - (h - 1) / 2) ** 2) / (((w - 1) / 2) ** 2 + ((h - 1) / 2) ** 2)
    return (1.0 - amount * r2 * r2)[..., None].astype(np.float32)


def _motion_kernel(length: float, angle: float) -> np.ndarray:
    size = int(math.ceil(length)) | 1
    kernel = np.zeros((size * 4 + 1, size * 4 + 1), np.float32)
    c = size * 2
    for t in np.linspace(-length / 2, length / 2, max(2, int(length * 8))):
        kernel[int(round(c + 2 * t * math.sin(angle))), int(round(c + 2 * t * math.cos(angle)))] += 1.0
    kernel = cv2.resize(kernel, (size * 2 + 1, size * 2 + 1), interpolation=cv2.INTER_AREA)
    return kernel / kernel.sum()


def apply_effects(linear: np.ndarray, fx: CameraEffects) -> np.ndarray:
    """One linear render (H, W, 3) float32 (white = 1) -> the photo, uint8 sRGB (H, W, 3)."""
    h, w, _ = linear.shape
    x = linear.astype(np.float32) * _vignette((h, w), fx.vignetting)
    if fx.motion[0] > 0:
        x = cv2.filter2D(x, -1, _motion_kernel(*fx.motion), borderType=cv2.BORDER_REFLECT)
    elif fx.blur_sigma > 0.05:
        x = cv2.GaussianBlur(x, (0, 0), fx.blur_sigma, borderType=cv2.BORDER_REFLECT)
    warp = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), fx.rotation_deg, 1.0)
    warp[:, 2] += fx.shift
    x = cv2.warpAffine(x, warp, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    noise_rng = np.random.default_rng(fx.noise_seed)
    var = fx.shot_noise * np.clip(x, 0, None) + fx.read_noise**2
    x = x + np.sqrt(var) * noise_rng.standard_normal(x.shape, dtype=np.float32)
    x = x * np.asarray(fx.gains, np.float32)
    srgb = linear_to_srgb_u8(x)
    if fx.jpeg_quality <= 0:
        return srgb
    buf = io.BytesIO()
    Image.fromarray(srgb).save(buf, format="JPEG", quality=fx.jpeg_quality)
    buf.seek(0)
    with Image.open(buf) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def photograph(linear_frames: list[np.ndarray], cam: Any, seed: int, sequence_id: int, attempt: int = 0
               ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Every linear render of one sequence (K x (H, W, 3) float32) -> (K, H, W, 3) uint8 photos
    and the per-image effects as plain dicts (for `params`). Deterministic per (seed, id, attempt)."""
    rng = camera_rng(seed, sequence_id, attempt)
    resolution = linear_frames[0].shape[0]
    effects = [sample_effects(rng, cam, resolution) for _ in linear_frames]
    photos = np.stack([apply_effects(x, fx) for x, fx in zip(linear_frames, effects, strict=True)])
    return photos, [asdict(fx) for fx in effects]
