"""Cover images: any folder of pictures, or built-in procedural covers (no downloads).

A cover source maps an integer index to a square uint8 sRGB image at the requested resolution.
Both sources are deterministic: the same index always gives the same pixels.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"}
PROCEDURAL_COUNT = 1_000_000  # procedural covers are drawn from this many seeds


class CoverError(Exception):
    """No usable cover at all; the message lists why each file was refused."""


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (greyscale, 16-bit, CMYK, palette, alpha) -> RGB, alpha composited on white."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        scale = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / scale * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("RGB")


def square_resize(img: Image.Image, resolution: int) -> np.ndarray:
    """Centre-crop to a square and resample to resolution x resolution (area-aware Lanczos)."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    img = img.resize((resolution, resolution), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(img, dtype=np.uint8).copy()


@dataclass
class FolderCovers:
    """Covers from a folder (searched recursively). Unreadable files are skipped, deterministically:
    an index whose file fails falls through to the next file, and the reason is kept in `rejected`."""

    directory: Path
    files: list[Path] = field(init=False)
    rejected: dict[str, str] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        if not self.directory.is_dir():
            raise CoverError(f"covers.dir={self.directory} is not a directory")
        self.files = sorted(p for p in self.directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise CoverError(f"covers.dir={self.directory} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")

    def __len__(self) -> int:
        return len(self.files)

    def get(self, index: int, resolution: int) -> np.ndarray:
        for offset in range(len(self.files)):
            path = self.files[(index + offset) % len(self.files)]
            if str(path) in self.rejected:
                continue
            try:
                with Image.open(path) as img:
                    img.load()
                    return square_resize(to_rgb(img), resolution)
            except Exception as exc:  # PIL raises many types for truncated / foreign files
                reason = f"{type(exc).__name__}: {exc}"
                log.warning("skipping cover %s: %s", path, reason)
                self.rejected[str(path)] = reason
        details = "; ".join(f"{p}: {r}" for p, r in list(self.rejected.items())[:10])
        raise CoverError(f"no usable cover in {self.directory} ({len(self.rejected)} files refused: {details})")


@dataclass
class ProceduralCovers:
    """Book-cover-like pictures drawn from a seed: gradients, shapes, typography, photo-like noise."""

    seed: int
    rejected: dict[str, str] = field(init=False, default_factory=dict)

    def __len__(self) -> int:
        return PROCEDURAL_COUNT

    def get(self, index: int, resolution: int) -> np.ndarray:
        # Draw at twice the size and downsample, as a printed cover would be photographed.
        img = procedural_cover(np.random.default_rng([int(self.seed), int(index), 7]), resolution * 2)
        return np.asarray(img.resize((resolution, resolution), Image.Resampling.LANCZOS), dtype=np.uint8).copy()


def open_covers(directory: str | os.PathLike | None, seed: int) -> FolderCovers | ProceduralCovers:
    return ProceduralCovers(seed) if not directory else FolderCovers(Path(directory))


# ----------------------------------------------------------------------------------------------
# procedural covers

_WORDS = ("THE", "SILENT", "RIVER", "OF", "NIGHT", "GLASS", "HOUSE", "ATLAS", "LIGHT", "SHADOW", "AND",
          "GARDEN", "LAST", "CITY", "NOVEL", "POEMS", "HISTORY", "SEA", "IRON", "SUMMER", "WINTER", "MAP")


def _palette(rng: np.random.Generator, n: int) -> list[tuple[int, int, int]]:
    base = rng.uniform(0, 1)
    colours = []
    for i in range(n):
        hue = (base + i / n + rng.normal(0, 0.05)) % 1.0
        sat, val = rng.uniform(0.3, 1.0), rng.uniform(0.25, 1.0)
        colours.append(_hsv(hue, sat, val))
    return colours


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return int(r * 255), int(g * 255), int(b * 255)


def _gradient(rng: np.random.Generator, size: int, c0, c1) -> Image.Image:
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / size
    t = np.clip((np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)) + 0.5, 0, 1)[..., None]
    arr = (1 - t) * np.array(c0) + t * np.array(c1)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def _shapes(rng: np.random.Generator, draw: ImageDraw.ImageDraw, size: int, palette) -> None:
    for _ in range(int(rng.integers(2, 9))):
        colour = palette[int(rng.integers(len(palette)))]
        x0, y0 = rng.uniform(-0.2, 1.0, size=2) * size
        w, h = rng.uniform(0.05, 0.6, size=2) * size
        kind = rng.integers(4)
        if kind == 0:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
        elif kind == 1:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
        elif kind == 2:
            pts = [tuple(rng.uniform(0, 1, size=2) * size) for _ in range(3)]
            draw.polygon(pts, fill=colour)
        else:
            draw.line([x0, y0, x0 + w, y0 + h], fill=colour, width=int(rng.integers(2, max(3, size // 30))))


def _text(rng: np.random.Generator, draw: ImageDraw.ImageDraw, size: int, palette) -> None:
    for line in range(int(rng.integers(1, 4))):
        words = " ".join(_WORDS[int(i)] for i in rng.integers(len(_WORDS), size=int(rng.integers(1, 3))))
        font_size = max(8, int(size * rng.uniform(0.05, 0.12)))
        font = ImageFont.load_default(size=font_size)
        y = size * (0.08 + 0.12 * line) if rng.random() < 0.7 else size * rng.uniform(0.5, 0.9)
        x = size * rng.uniform(0.05, 0.3)
        draw.text((x, y), words, fill=palette[int(rng.integers(len(palette)))], font=font)
    # an author line, smaller
    font = ImageFont.load_default(size=max(6, int(size * 0.04)))
    draw.text((size * 0.1, size * 0.9), "A. N. AUTHOR", fill=palette[0], font=font)


def procedural_cover(rng: np.random.Generator, size: int) -> Image.Image:
    palette = _palette(rng, int(rng.integers(3, 6)))
    img = _gradient(rng, size, palette[0], palette[-1])
    draw = ImageDraw.Draw(img)
    _shapes(rng, draw, size, palette)
    if rng.random() < 0.5:  # a "photo" panel: smooth blotches, as a cover illustration
        panel = rng.normal(size=(8, 8, 3))
        panel = Image.fromarray(((panel - panel.min()) / np.ptp(panel) * 255).astype(np.uint8)).resize((size // 2, size // 3), Image.Resampling.BICUBIC)
        img.paste(panel, (int(size * rng.uniform(0.1, 0.4)), int(size * rng.uniform(0.3, 0.6))))
    _text(rng, ImageDraw.Draw(img), size, palette[::-1])
    img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.0, 0.8)))
    grain = rng.normal(0, rng.uniform(1, 6), size=(size, size, 1))  # print / paper grain
    arr = np.clip(np.asarray(img, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")

