"""One capture folder -> aligned images of the cover: read, align to the reference, rectify.

    res = ingest_sequence(Path("captures/book1"), AlignConfig(), resolution=256)
    res.inputs   # uint8 (K, H, W, 3): each accepted photo, seen as the flat cover (or a square crop)
    res.target   # uint8 (H, W, 3): the reference, the same way; None without a reference

The cover's outline (generator/cover_quad.py) is looked for in the reference, or read from the
folder's `corners.txt` ("x1,y1,x2,y2,x3,y3,x4,y4", reference px): every photo is then warped,
through its homography onto the reference, to a front-on picture of the cover at the cover's own
aspect ratio (short side `resolution`), cut to the part every accepted photo shows. Without an
outline, the largest square every accepted photo covers is used (and params say why).

Used by generator/ingest.py (`drs-ingest`), which chooses K and the dataset's one image size.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from generator.align import (
    AlignConfig,
    Alignment,
    align,
    central_region,
    common_square,
    find_quad,
    flat_size,
    largest_rect,
    parse_corners,
    prepare,
    project,
    quad_aspect,
    rectify_map,
    render_view,
    set_region,
    valid_mask,
    work_copy,
)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp"}
REFERENCE_STEM = "reference"
CORNERS_FILE = "corners.txt"
RECTIFY = ("auto", "on", "off")
_EXIF_ORIENTATION = 0x0112
_UNREADABLE = (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError)


# ---------------------------------------------------------------------------------- reading
def read_photo(path: Path) -> np.ndarray:
    """Any JPEG/PNG/TIFF/WebP -> uint8 (H, W, 3) RGB, EXIF orientation applied.

    8 and 16 bit, greyscale (promoted to RGB), palette, CMYK and alpha (composited on white).
    PIL reads 16-bit RGB by dropping the low byte; those files go through OpenCV instead so the
    conversion to 8 bits rounds. Raises OSError/ValueError (PIL's or ours) on unreadable files.
    """
    with Image.open(path) as im:
        # Look at the tile before getexif(): for PNG that loads the pixels and empties im.tile.
        sixteen_bit_rgb = im.mode == "RGB" and any("16" in str(tile.args) for tile in im.tile)
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
        if sixteen_bit_rgb:
            arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
            if arr is None or arr.dtype != np.uint16 or arr.ndim != 3:
                raise ValueError(f"OpenCV cannot decode this 16-bit image ({None if arr is None else arr.dtype})")
            rgb = np.clip(arr[..., 2::-1].astype(np.float32) / 257.0 + 0.5, 0, 255).astype(np.uint8)
            return np.ascontiguousarray(_orient(rgb, orientation))
        im.load()
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
            grey = np.asarray(im, dtype=np.float32) / 257.0
            im = Image.fromarray(np.clip(grey + 0.5, 0, 255).astype(np.uint8), "L")
        elif im.mode in ("I", "F"):
            grey = np.asarray(im, dtype=np.float64)
            scale = 65535.0 if grey.max() > 255 else 255.0
            im = Image.fromarray(np.clip(grey / scale * 255 + 0.5, 0, 255).astype(np.uint8), "L")
        if im.mode == "P":
            im = im.convert("RGBA")
        if im.mode in ("RGBA", "LA", "PA"):
            im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """EXIF orientation 1..8 on an (H, W, C) array, as PIL's exif_transpose does it."""
    ops = {2: lambda x: x[:, ::-1], 3: lambda x: x[::-1, ::-1], 4: lambda x: x[::-1],
           5: lambda x: x.transpose(1, 0, 2), 6: lambda x: np.rot90(x, -1),
           7: lambda x: np.rot90(x.transpose(1, 0, 2), 2), 8: lambda x: np.rot90(x, 1)}
    return ops[orientation](a) if orientation in ops else a


def list_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """(references, inputs) of one sequence folder, by name; hidden files are ignored."""
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
    refs = [p for p in files if p.stem.lower() == REFERENCE_STEM]
    return refs, [p for p in files if p not in refs]


# ---------------------------------------------------------------------------------- one sequence
@dataclass
class Photo:
    """One readable photo at work resolution. alignment.homography: work px -> anchor work px."""

    path: Path
    small: np.ndarray  # uint8 (h, w, 3)
    to_work: np.ndarray  # 3x3, full px -> work px
    size: tuple[int, int]  # full (W, H)
    alignment: Alignment | None = None


@dataclass
class SequenceResult:
    """What became of one folder: the aligned images (or why none), and the photos left out."""

    name: str
    inputs: np.ndarray | None = None  # uint8 (K, H, W, 3)
    target: np.ndarray | None = None  # uint8 (H, W, 3)
    params: dict[str, Any] = field(default_factory=dict)
    scores: list[float] = field(default_factory=list)  # per input, higher = better aligned
    rejected_photos: list[dict[str, str]] = field(default_factory=list)
    reason: str | None = None  # set when the sequence is not written
    timings: dict[str, float] = field(default_factory=lambda: defaultdict(float))


def _load(path: Path, cfg: AlignConfig) -> Photo:
    full = read_photo(path)
    small, to_work = work_copy(full, cfg.work_size)
    return Photo(path, small, to_work, (full.shape[1], full.shape[0]))


def cover_outline(folder: Path, anchor: Photo, rectify: str) -> tuple[np.ndarray | None, dict[str, Any]]:
    """The cover's quad in the anchor's work px (or None) and its record for params["quad"].
    ValueError for a malformed corners.txt (the user's own file: an error, not a fallback)."""
    if rectify == "off":
        return None, {"source": None, "reason": "--rectify off"}
    corners = folder / CORNERS_FILE
    if corners.is_file():
        try:
            full = parse_corners(corners.read_text())
        except ValueError as exc:
            raise ValueError(f"{corners}: {exc}") from None
        quad = project(anchor.to_work, full)
        return quad, {"source": "user", "corners": full.tolist()}
    found = find_quad(anchor.small)
    if found.quad is None:
        return None, {"source": None, "reason": f"no cover outline found: {found.reason}", "support": found.support}
    full = project(np.linalg.inv(anchor.to_work), found.quad)
    return found.quad, {"source": found.source, "support": found.support, "corners": full.tolist()}


def ingest_sequence(folder: Path, cfg: AlignConfig, resolution: int, min_photos: int = 2,
                    rectify: str = "auto", k_needed: int = 0) -> SequenceResult:
    """Read, align, rectify (or crop) and resize one sequence folder. k_needed: the dataset's fixed
    K (--sequence-length), named in the reason when too few photos are left; 0 = none."""
    res = SequenceResult(folder.name)
    refs, input_paths = list_images(folder)
    if len(refs) > 1:
        res.reason = f"several reference images ({', '.join(p.name for p in refs)}); keep one"
        return res
    t = time.perf_counter()
    reference = None
    if refs:
        try:
            reference = _load(refs[0], cfg)
        except _UNREADABLE as exc:
            res.reason = f"reference {refs[0].name} unreadable: {exc}"
            return res
    photos = []
    for p in input_paths:
        try:
            photos.append(_load(p, cfg))
        except _UNREADABLE as exc:
            res.rejected_photos.append({"file": p.name, "reason": f"unreadable: {exc}"})
    res.timings["read"] += time.perf_counter() - t

    t = time.perf_counter()
    frames = {id(p): prepare(p.small, cfg) for p in photos}
    if reference is not None:
        anchor, anchor_frame = reference, prepare(reference.small, cfg)
    else:  # inference only: the first photo with enough features anchors the others
        usable = [p for p in photos if len(frames[id(p)].keypoints) >= cfg.min_inliers]
        if not usable:
            res.reason = "no reference image and no photo with enough features to align to"
            return res
        anchor = usable[0]
        anchor_frame = frames[id(anchor)]
        anchor.alignment = Alignment(np.eye(3), agreement=1.0, inliers=len(anchor_frame.keypoints), refined="anchor")
    res.timings["align"] += time.perf_counter() - t
    t = time.perf_counter()
    quad, quad_record = cover_outline(folder, anchor, rectify)
    res.timings["outline"] += time.perf_counter() - t
    if quad is None and rectify == "on" and quad_record["source"] is None:
        res.reason = f"{quad_record['reason']} (--rectify on; add {CORNERS_FILE} or use --rectify auto)"
        return res
    work_size = (anchor.small.shape[1], anchor.small.shape[0])
    if quad is not None:
        set_region(anchor_frame, quad)
    else:  # judge by the centre (where the cover lies), but fit the whole view
        set_region(anchor_frame, central_region(work_size), ecc_in_region=False)
    t = time.perf_counter()
    accepted = []
    for p in photos:
        if p is not anchor:
            p.alignment = align(anchor_frame, frames[id(p)], cfg)
        if p.alignment.ok:
            accepted.append(p)
        else:
            res.rejected_photos.append({"file": p.path.name, "reason": p.alignment.reason})
    res.timings["align"] += time.perf_counter() - t
    if len(accepted) < min_photos:
        needed = f" (--sequence-length {k_needed}; a smaller K keeps it)" if k_needed >= min_photos else ""
        res.reason = f"{len(accepted)} usable photo(s) after alignment, at least {min_photos} needed{needed}"
        return res

    t = time.perf_counter()
    images = [(p.small, p.alignment.homography) for p in accepted]
    if reference is not None:
        images.append((reference.small, np.eye(3)))
    to_out, size, view = _output_view(anchor, accepted, quad, resolution)
    if to_out is None:
        res.reason = view["reason"]
        return res
    rendered = [render_view(img, to_out @ h, size) for img, h in images]
    res.inputs = np.stack(rendered[:len(accepted)])
    if reference is not None:
        res.target = rendered[-1]
    res.scores = [p.alignment.score for p in accepted]
    res.params = _params(folder, reference, anchor, accepted, to_out, size, resolution)
    res.params["quad"] = quad_record
    res.params["view"] = view
    res.timings["warp"] += time.perf_counter() - t
    return res


def _output_view(anchor: Photo, accepted: list[Photo], quad: np.ndarray | None, resolution: int):
    """(to_out 3x3 anchor work px -> output px, output (W, H), record) for the rectified cover cut to
    what every photo shows, or, without a quad, the largest common square; (None, None, {reason})
    when the photos share too little."""
    sizes = [(p.small.shape[1], p.small.shape[0]) for p in accepted]
    homs = [p.alignment.homography for p in accepted]
    aw, ah = anchor.small.shape[1], anchor.small.shape[0]
    if quad is None:
        square = common_square(sizes, homs, (aw, ah))
        if square[2] < min(32, resolution):
            return None, None, {"reason": f"the photos share no usable common region (largest common square {square[2]} px)"}
        x0, y0, side = square
        s = resolution / side
        to_out = np.array([[s, 0, s * (0.5 - x0) - 0.5], [0, s, s * (0.5 - y0) - 0.5], [0, 0, 1]])
        return to_out, (resolution, resolution), {"mode": "square crop", "square_work_px": list(square)}
    aspect = quad_aspect(quad, (aw, ah))
    # Where the photos are checked for coverage: the flat cover at a few px per output px.
    fw, fh = flat_size(aspect, resolution)
    flat = rectify_map(quad, (fw, fh))
    common = np.ones((fh, fw), bool)
    for size, h in zip(sizes, homs, strict=True):
        common &= valid_mask(size, flat @ h, (fw, fh), margin=1)
    common &= valid_mask((aw, ah), flat, (fw, fh), margin=1)
    x, y, w, h = largest_rect(common, aspect)
    if min(w, h) < min(32, resolution) // 2:
        return None, None, {"reason": f"the photos share too little of the cover (largest common part {w}x{h} px)"}
    shown = w * h / (fw * fh)
    # The part every photo shows, blown up to the full flat size (nothing when all show it all).
    sx, sy = fw / w, fh / h
    crop = np.array([[sx, 0, sx * (0.5 - x) - 0.5], [0, sy, sy * (0.5 - y) - 0.5], [0, 0, 1]])
    return crop @ flat, (fw, fh), {"mode": "rectified", "aspect": aspect, "cover_shown": shown,
                                   "shown_rect": [int(x), int(y), int(w), int(h)]}


def _params(folder, reference, anchor, accepted, to_out, size, resolution) -> dict[str, Any]:
    """JSON record: the map anchor full px -> output px, per image homography (photo full px ->
    anchor full px) and alignment scores."""
    back = np.linalg.inv(anchor.to_work)
    images = []
    for p in accepted:
        full = back @ p.alignment.homography @ p.to_work
        rec = p.alignment.to_params()
        rec.update(file=p.path.name, size=list(p.size), homography=(full / full[2, 2]).tolist())
        images.append(rec)
    out_map = to_out @ anchor.to_work
    return {
        "sequence": folder.name,
        "reference": reference.path.name if reference is not None else None,
        "anchor": anchor.path.name,
        "anchor_size": list(anchor.size),
        "to_output": (out_map / out_map[2, 2]).tolist(),  # anchor full px -> output px
        "output_size": list(size),
        "resolution": resolution,
        "images": images,
    }


def keep_best(res: SequenceResult, k: int) -> list[dict[str, str]]:
    """Cut a sequence down to its k best-aligned inputs (original order kept); returns the dropped."""
    if len(res.scores) <= k:
        return []
    keep = sorted(np.argsort(res.scores, kind="stable")[::-1][:k].tolist())
    dropped = [i for i in range(len(res.scores)) if i not in keep]
    out = [{"file": res.params["images"][i]["file"],
            "reason": f"surplus: every sequence keeps its {k} best-aligned photos (K={k})"} for i in dropped]
    res.inputs = res.inputs[keep]
    res.params["images"] = [res.params["images"][i] for i in keep]
    res.scores = [res.scores[i] for i in keep]
    return out


def fit_to_frame(images: np.ndarray, frame: tuple[int, int]) -> tuple[np.ndarray, float]:
    """uint8 (..., H, W, 3) -> (..., frame H, frame W, 3): scaled to fill the frame (aspect kept, so
    nothing is stretched), the overhang cut evenly from both sides; also the fraction cut off."""
    h, w = images.shape[-3:-1]
    fw, fh = frame
    if (w, h) == (fw, fh):
        return images, 0.0
    s = max(fw / w, fh / h)
    nw, nh = max(fw, round(w * s)), max(fh, round(h * s))
    flat = images.reshape(-1, h, w, 3)
    if (nw, nh) != (w, h):
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
        flat = np.stack([cv2.resize(im, (nw, nh), interpolation=interp) for im in flat])
    x0, y0 = (nw - fw) // 2, (nh - fh) // 2
    out = flat[:, y0:y0 + fh, x0:x0 + fw].reshape(*images.shape[:-3], fh, fw, 3)
    return np.ascontiguousarray(out), 1 - fw * fh / (nw * nh)
