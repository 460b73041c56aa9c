"""Build folders of book-cover-like images from installed photographs, artwork and fonts.

    make covers                                         # apt-get installs the packages, then:
    .venv/bin/python -m generator.cover_builder --out data/covers [--per-source 40] [--size 384]

Sources are the wallpapers and backgrounds that Debian packages install (gnome-backgrounds,
mate-backgrounds, plasma-workspace-wallpapers, ukui-wallpapers: photographs, paintings and
artwork) or any `--source DIR`. Each source picture becomes many covers: a random crop (or the
picture framed in a panel) under a layout drawn per cover (title and author in one of the
installed fonts, bands, borders, a publisher's mark), as a printed book cover is laid out.

Sources are split into train and validation by a hash of their name, never by cover: no picture
(and no variant of it: a wallpaper's sizes and its light/dark versions share one name) gives
covers to both, and the split of a source does not depend on which other sources are installed.
A file that cannot be read is skipped with its reason in `OUT/covers.json`. Output:
`OUT/train/*.jpg`, `OUT/val/*.jpg` (square, `--size` px, JPEG quality 92), `OUT/covers.json`.
Point the generator at a split with `covers.dir=OUT/train`.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from generator.covers import IMAGE_SUFFIXES, to_rgb
from generator.dataset_format import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

DEFAULT_SOURCES = ("/usr/share/backgrounds", "/usr/share/wallpapers", "/usr/share/ukui-background-properties")
FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts")
# Fonts whose glyphs are symbols, not letters.
_SYMBOL_FONTS = ("dingbat", "symbol", "d050000l", "opensymbol", "emoji")
MIN_SOURCE_SIDE = 200  # pixels; thumbnails and icons are not photographs of anything

_WORDS = ("the", "of", "and", "a", "in", "house", "river", "night", "garden", "light", "shadow", "sea", "city",
          "winter", "summer", "glass", "iron", "stone", "silent", "last", "first", "history", "poems", "letters",
          "journey", "island", "mountain", "forest", "daughter", "king", "queen", "empire", "secret", "lost",
          "memory", "time", "fire", "water", "salt", "bread", "wolves", "birds", "map", "atlas", "theory",
          "introduction", "handbook", "modern", "ancient", "art", "science", "mathematics", "cooking", "travels",
          "north", "south", "under", "between", "beyond", "after", "before", "songs", "stories", "tales",
          "war", "peace", "love", "death", "life", "world", "edge", "road", "home", "music", "painting",
          "gardens", "machines", "language", "mind", "body", "dreams", "voyage", "harbour", "orchard")
_SYLLABLES = ("ka", "ren", "tho", "mi", "sel", "ora", "vin", "del", "bra", "sto", "lu", "mar", "en", "qui", "zal",
              "per", "ith", "on", "ga", "ber", "fal", "nor", "ric", "ste", "wa", "yel", "an", "dor")
_PUBLISHERS = ("PRESS", "BOOKS", "EDITIONS", "VERLAG", "HOUSE", "& SONS", "PUBLISHING", "CLASSICS")


class CoverBuildError(Exception):
    """Nothing to build from; the message says what is missing."""


@dataclass
class Source:
    key: str  # the name the split hashes: variants of one picture share it
    path: Path


def find_sources(roots: list[Path]) -> list[Source]:
    """Every image under `roots`, one per picture: a KDE wallpaper package
    (`NAME/contents/images*/WxH.ext`) counts once, at its largest file, under the key NAME."""
    by_key: dict[str, Path] = {}
    for root in roots:
        if not root.is_dir():
            continue
        for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
            rel = path.relative_to(root)
            stem = rel.parts[:rel.parts.index("contents")] if "contents" in rel.parts[:-1] else rel.with_suffix("").parts
            key = "/".join((root.name, *stem))
            if key not in by_key or path.stat().st_size > by_key[key].stat().st_size:
                by_key[key] = path
    return [Source(k, p) for k, p in sorted(by_key.items())]


def split_of(key: str, val_percent: float) -> str:
    """'val' for a fixed `val_percent` of keys, by hash: stable whatever else is installed."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64 * 100.0
    return "val" if h < val_percent else "train"


def find_fonts(dirs: tuple[str, ...] = FONT_DIRS) -> list[Path]:
    fonts = []
    for d in dirs:
        root = Path(d)
        if root.is_dir():
            fonts += [p for p in root.rglob("*") if p.suffix.lower() in (".ttf", ".otf")
                      and not any(s in p.name.lower() for s in _SYMBOL_FONTS)]
    usable = []
    for path in sorted(fonts):
        try:
            ImageFont.truetype(str(path), 20).getbbox("Ag")
            usable.append(path)
        except OSError:
            log.warning("skipping font %s: unreadable", path)
    return usable


def load_source(path: Path) -> Image.Image:
    """The picture as RGB; raises on unreadable or too-small files (the caller records why)."""
    with Image.open(path) as img:
        img.load()
        rgb = to_rgb(img)
    if min(rgb.size) < MIN_SOURCE_SIDE:
        raise ValueError(f"too small ({rgb.size[0]}x{rgb.size[1]}, need {MIN_SOURCE_SIDE} px a side)")
    return rgb


# ----------------------------------------------------------------------------------------------
# layout


def _font(rng: np.random.Generator, fonts: list[Path], size: int) -> ImageFont.ImageFont:
    if fonts:
        return ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), size)
    return ImageFont.load_default(size=size)


def _words(rng: np.random.Generator, n: int) -> str:
    out = []
    for _ in range(n):
        if rng.random() < 0.7:
            out.append(_WORDS[int(rng.integers(len(_WORDS)))])
        else:  # invented names widen the letter statistics beyond a small word list
            out.append("".join(_SYLLABLES[int(i)] for i in rng.integers(len(_SYLLABLES), size=int(rng.integers(2, 4)))))
    text = " ".join(out)
    style = rng.integers(3)
    return text.upper() if style == 0 else text.title() if style == 1 else text.capitalize()


def _contrast(rng: np.random.Generator, region: np.ndarray) -> tuple[int, int, int]:
    """A text colour that stands out from `region` (h, w, 3) uint8: light on dark, dark on light."""
    lum = float(region.mean()) if region.size else 128.0
    if rng.random() < 0.3:  # a saturated accent colour, darkened or lightened to contrast
        c = rng.uniform(0, 1, size=3)
        c = c / c.max()
        return tuple(int(v) for v in (c * (90 if lum > 128 else 255)))
    v = int(rng.integers(0, 50)) if lum > 128 else int(rng.integers(210, 256))
    return (v, v, v)


def _fit_text(draw: ImageDraw.ImageDraw, text: str, rng: np.random.Generator, fonts: list[Path], size: int, max_width: float):
    """A font drawn by `rng` at `size` px, shrunk until `text` fits `max_width`; (font, bbox)."""
    font = _font(rng, fonts, size)
    while True:
        box = draw.textbbox((0, 0), text, font=font)
        if box[2] - box[0] <= max_width or font.size <= 8:
            return font, box
        font = font.font_variant(size=max(8, int(font.size * 0.85)))


def _background(rng: np.random.Generator, photo: Image.Image, size: int) -> tuple[Image.Image, tuple[int, int, int, int] | None]:
    """The cover's picture: a random crop of the photo filling the cover, or a plain/gradient
    ground with the photo framed in a panel. Returns the image and the panel box (or None)."""
    w, h = photo.size
    if rng.random() < 0.3:
        photo = ImageOps.mirror(photo)
    if rng.random() < 0.65:  # full bleed: a square window of 35-100 % of the short side
        side = int(min(w, h) * rng.uniform(0.35, 1.0))
        x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        return photo.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.Resampling.LANCZOS), None
    ground = tuple(int(v) for v in rng.integers(0, 256, size=3))
    img = Image.new("RGB", (size, size), ground)
    if rng.random() < 0.5:
        other = np.array(tuple(int(v) for v in rng.integers(0, 256, size=3)), np.float32)
        t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
        img = Image.fromarray(((1 - t) * np.array(ground, np.float32) + t * other).repeat(size, 1).astype(np.uint8))
    pw, ph = int(size * rng.uniform(0.5, 0.9)), int(size * rng.uniform(0.3, 0.6))
    aspect = pw / ph
    cw = min(w, int(h * aspect))
    ch = int(cw / aspect)
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    panel = photo.crop((x0, y0, x0 + cw, y0 + ch)).resize((pw, ph), Image.Resampling.LANCZOS)
    px, py = (size - pw) // 2 + int(rng.integers(-size // 20, size // 20 + 1)), int(size * rng.uniform(0.25, 0.4))
    img.paste(panel, (px, py))
    return img, (px, py, px + pw, py + ph)


def layout_cover(rng: np.random.Generator, photo: Image.Image, fonts: list[Path], size: int) -> Image.Image:
    """One square book cover, `size` px, from `photo` (RGB) and the installed `fonts`."""
    img, panel = _background(rng, photo, size)
    draw = ImageDraw.Draw(img)
    arr = np.asarray(img)
    if rng.random() < 0.45:  # a band across the cover, carrying the title
        y0 = int(size * rng.choice([0.05, 0.12, 0.62, 0.75]))
        bh = int(size * rng.uniform(0.12, 0.25))
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        draw.rectangle([0, y0, size, y0 + bh], fill=colour)
        title_box = (y0, y0 + bh)
        arr = np.asarray(img)
    else:
        y0 = int(size * (rng.uniform(0.05, 0.2) if rng.random() < 0.7 else rng.uniform(0.6, 0.75)))
        title_box = (y0, y0 + int(size * 0.22))
    if rng.random() < 0.35:  # a border or a double rule
        inset = int(size * rng.uniform(0.02, 0.06))
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        width = int(rng.integers(1, max(2, size // 60)))
        draw.rectangle([inset, inset, size - inset, size - inset], outline=colour, width=width)
        if rng.random() < 0.4:
            draw.rectangle([inset * 2, inset * 2, size - inset * 2, size - inset * 2], outline=colour, width=max(1, width // 2))
    if panel is not None and rng.random() < 0.6:
        draw.rectangle(panel, outline=tuple(int(v) for v in rng.integers(0, 256, size=3)), width=max(1, size // 128))
    # title: 1-3 lines, one font, centred or left-aligned
    lines = [_words(rng, int(rng.integers(1, 4))) for _ in range(int(rng.integers(1, 4)))]
    centred = rng.random() < 0.6
    font_rng_state = int(rng.integers(2**31))
    region = arr[title_box[0]:title_box[1]]
    colour = _contrast(rng, region)
    y = title_box[0] + int(size * 0.02)
    for line in lines:
        font, box = _fit_text(draw, line, np.random.default_rng(font_rng_state), fonts, int(size * rng.uniform(0.07, 0.13)), size * 0.86)
        tw, th = box[2] - box[0], box[3] - box[1]
        x = (size - tw) / 2 if centred else size * 0.07
        if rng.random() < 0.25:  # a drop shadow, as embossed or printed titles often have
            draw.text((x + 2, y + 2 - box[1]), line, font=font, fill=(0, 0, 0))
        draw.text((x, y - box[1]), line, font=font, fill=colour)
        y += int(th * 1.25)
    # author, smaller, elsewhere
    author = f"{_words(rng, 1).split()[0].title()} {_words(rng, 1).split()[0].title()}"
    author = author.upper() if rng.random() < 0.5 else author
    ay = int(size * (rng.uniform(0.82, 0.9) if title_box[0] < size * 0.5 else rng.uniform(0.05, 0.12)))
    font, box = _fit_text(draw, author, rng, fonts, int(size * rng.uniform(0.04, 0.065)), size * 0.8)
    ax = (size - (box[2] - box[0])) / 2 if centred else size * 0.07
    draw.text((ax, ay - box[1]), author, font=font, fill=_contrast(rng, arr[ay:ay + 20]))
    if rng.random() < 0.6:  # the publisher's mark: a small emblem and a name
        r = int(size * rng.uniform(0.025, 0.045))
        cx, cy = int(size * rng.uniform(0.08, 0.92)), int(size * 0.955) - r
        colour = _contrast(rng, arr[max(0, cy - r):cy + r, max(0, cx - r):cx + r])
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([cx - r, cy - r, cx + r, cy + r], outline=colour, width=max(1, r // 5))
        mark = _PUBLISHERS[int(rng.integers(len(_PUBLISHERS)))]
        font = _font(rng, fonts, max(8, int(r * 0.9)))
        draw.text((cx + r * 1.4, cy - r * 0.5), mark, font=font, fill=colour)
    return img


# ----------------------------------------------------------------------------------------------
# build


def build(out: Path, sources: list[Source], fonts: list[Path], per_source: int, val_per_source: int,
          size: int, val_percent: float, seed: int = 0) -> dict:
    """Write the covers of every source into OUT/train or OUT/val; returns the summary written
    to OUT/covers.json. Each cover's randomness is keyed by (seed, source key, index)."""
    summary: dict = {"size": size, "seed": seed, "val_percent": val_percent, "fonts": len(fonts),
                     "splits": {"train": {"sources": [], "covers": 0}, "val": {"sources": [], "covers": 0}},
                     "rejected": []}
    for split in ("train", "val"):
        (out / split).mkdir(parents=True, exist_ok=True)
    for src in sources:
        try:
            photo = load_source(src.path)
        except Exception as exc:  # PIL raises many types for truncated or foreign files
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("skipping %s: %s", src.path, reason)
            summary["rejected"].append({"file": str(src.path), "reason": reason})
            continue
        split = split_of(src.key, val_percent)
        count = val_per_source if split == "val" else per_source
        digest = hashlib.sha256(src.key.encode()).hexdigest()[:10]
        # A photo much larger than the covers is shrunk once: layout crops stay sharp and fast.
        if min(photo.size) > 3 * size:
            scale = 3 * size / min(photo.size)
            photo = photo.resize((math.ceil(photo.size[0] * scale), math.ceil(photo.size[1] * scale)), Image.Resampling.LANCZOS)
        key_words = [int(seed), int(digest, 16) % 2**32]
        for i in range(count):
            cover = layout_cover(np.random.default_rng([*key_words, i]), photo, fonts, size)
            with atomic_path(out / split / f"{digest}-{i:03d}.jpg") as tmp:
                cover.save(tmp, format="JPEG", quality=92)
        summary["splits"][split]["sources"].append(src.key)
        summary["splits"][split]["covers"] += count
    write_json_atomic(out / "covers.json", summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/covers"))
    parser.add_argument("--source", type=Path, action="append", help=f"folder of pictures (default: {', '.join(DEFAULT_SOURCES)})")
    parser.add_argument("--per-source", type=int, default=40, help="covers per training picture")
    parser.add_argument("--val-per-source", type=int, default=25, help="covers per validation picture (fewer pictures: more covers each)")
    parser.add_argument("--size", type=int, default=384, help="cover side in pixels")
    parser.add_argument("--val-percent", type=float, default=15.0, help="share of pictures kept for validation")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    roots = args.source or [Path(p) for p in DEFAULT_SOURCES]
    sources = find_sources(roots)
    if not sources:
        print(f"error: no pictures under {', '.join(map(str, roots))} (run `make covers`, which installs them)", file=sys.stderr)
        sys.exit(2)
    fonts = find_fonts()
    if not fonts:
        log.warning("no TrueType/OpenType fonts installed; titles use Pillow's built-in font")
    summary = build(args.out, sources, fonts, args.per_source, args.val_per_source, args.size, args.val_percent, args.seed)
    tr, va = summary["splits"]["train"], summary["splits"]["val"]
    print(f"{args.out}: train {tr['covers']} covers from {len(tr['sources'])} pictures, val {va['covers']} from "
          f"{len(va['sources'])}; {len(summary['rejected'])} files refused; {len(fonts)} fonts")
    if not tr["covers"] or not va["covers"]:
        print(f"error: a split is empty (train {tr['covers']}, val {va['covers']}): add pictures or change --val-percent", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
