"""Turn linear render passes into the stored sRGB images, masks and QA verdicts. NumPy only.

The fast path renders each image's lighting once on a plain white cover and multiplies the cover in
here. For a flat Lambertian-plus-glossy plane this is exact up to indirect colour bleeding:

    image = grey_image + plane * (cover / albedo - 1) * diffuse_color * diffuse_light

where `grey_image` is the full render with a uniform grey cover of `albedo` (occluders, glossy reflections, ambient
included), `diffuse_color * diffuse_light` is the white cover's diffuse term and `plane` its
anti-aliased coverage (0 where an occluder hides it). The reference path path-traces the textured
cover directly and only encodes `image`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAGENTA = np.array([1.0, 0.0, 1.0], dtype=np.float32)  # Blender's colour for a missing texture


def srgb_to_linear(srgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] -> linear, float32."""
    srgb = np.asarray(srgb, dtype=np.float32)
    return np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb_u8(linear: np.ndarray) -> np.ndarray:
    """Linear radiance (white = 1) -> uint8 sRGB, clipped: a camera's sensor saturates too."""
    x = np.clip(np.nan_to_num(linear, nan=0.0), 0.0, 1.0)
    srgb = np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4) - 0.055)
    return np.round(srgb * 255.0).astype(np.uint8)


def composite_cover(passes: dict[str, np.ndarray], cover_linear: np.ndarray, albedo: float = 1.0) -> np.ndarray:
    """Fast path: the white-cover render with the cover multiplied into its diffuse term.

    passes: float32 (H, W, 3) "image", "diffuse_color", "diffuse_light"; (H, W) "plane".
    cover_linear: float32 (H, W, 3). Returns linear float32 (H, W, 3).
    """
    plane = passes["plane"][..., None]
    diffuse = passes["diffuse_color"] * passes["diffuse_light"]
    return passes["image"] + plane * (cover_linear / albedo - 1.0) * diffuse


@dataclass
class FrameMasks:
    occluder: np.ndarray  # uint8 (H, W): an occluder covers most of the pixel
    shadow: np.ndarray  # uint8 (H, W): the cover gets under 60 % of the light it would get unoccluded
    specular: np.ndarray  # uint8 (H, W): glossy reflection brighter than 15 % of white


def unshadowed_irradiance(lights: list[dict], resolution: int, plane_half: float = 0.5) -> np.ndarray:
    """Analytic direct light of point lights on the plane, ignoring every occluder: (H, W, 3).

    In the units of the `diffuse_light` pass (white = 1): a point light of power P (watts) at
    distance d gives a Lambertian plane P cos / (4 pi^2 d^2) times its colour in Cycles (the same
    relation generator.scene_spec.sample_light uses to set powers). An occluder-free render matches
    it to a few per cent (tests/test_render_worker.py).
    """
    coords = (np.arange(resolution) + 0.5) / resolution * 2 * plane_half - plane_half
    x = coords[None, :]
    y = -coords[:, None]  # row 0 is the top of the image, +y in the scene
    total = np.zeros((resolution, resolution, 3), dtype=np.float64)
    for light in lights:
        lx, ly, lz = light["position"]
        d2 = (lx - x) ** 2 + (ly - y) ** 2 + lz**2
        cos = lz / np.sqrt(d2)
        total += (light["power"] * cos / (4.0 * math.pi**2 * d2))[..., None] * np.asarray(light["color"])[None, None, :]
    return total.astype(np.float32)


def frame_masks(passes: dict[str, np.ndarray], lights: list[dict], ambient: float) -> FrameMasks:
    """Masks from the passes of one render (`lights`, `ambient`: the image's FrameSpec values). Only
    denoised (or high-sample) passes are used, so the masks are not speckled by low-sample noise.

    Shadow: the light a visible cover pixel receives (`diffuse_light`, direct + indirect) against
    what it would receive with no occluder, which is known in absolute terms: the point lights'
    analytic irradiance plus the world's uniform fill (a white background of strength A lights an
    unobstructed plane with A per channel). No percentile or fitted constant, so a frame whose
    fill light or a grazing lamp makes the light uneven is not marked as shadowed where it is lit.
    """
    plane = passes["plane"]
    occluder = plane < 0.5
    visible = ~occluder
    diffuse = passes["diffuse_color"] * passes["diffuse_light"]
    expected = unshadowed_irradiance(lights, plane.shape[0]).sum(-1) + 3.0 * float(ambient)
    ratio = passes["diffuse_light"].sum(-1) / np.maximum(expected, 1e-12)
    shadow = visible & (ratio < 0.6)
    # Whatever the render holds beyond the diffuse term on the cover is glossy reflection.
    glossy = (passes["image"] - diffuse).max(-1)
    specular = visible & (glossy > 0.15)
    return FrameMasks(occluder.astype(np.uint8), shadow.astype(np.uint8), specular.astype(np.uint8))


def qa_problem(linear: np.ndarray, srgb: np.ndarray) -> str | None:
    """Why a frame must not be written silently, or None when it is fine."""
    if not np.all(np.isfinite(linear)):
        return "non-finite pixel values (NaN/inf)"
    if srgb.mean() < 4.0:
        return "all black (mean sRGB value below 4/255)"
    if (srgb.min(-1) >= 254).mean() > 0.5:
        return "saturated (more than half the pixels white)"
    magenta = np.all(np.abs(np.clip(linear, 0, 1) - MAGENTA) < 0.05, axis=-1)
    if magenta.mean() > 0.05:
        return "missing-texture magenta on more than 5 % of the frame"
    return None
