"""`drs-restore`: photos of one flat object -> one clean image.

    drs-restore --checkpoint CKPT --out clean.png photos/          # a folder
    drs-restore --out clean.tif --bit-depth 16 'shots/*.jpg'       # a glob, packaged weights
    drs-restore --align --out clean.png handheld/                  # photos not taken from a tripod

Images are streamed one at a time (never all in memory), EXIF orientation applied, folded into the
network's running aggregate (model/online.py) and decoded tile by tile, so memory depends neither
on the number of photos nor, with --tile, much on their size. The output is written to a
temporary file and renamed into place only when everything succeeded: an error never leaves a
partial or stale-looking output behind.

Extension point: restore_files(..., transform=f) calls f(index, image) on every image as it is
streamed (float (3, H, W) in [0, 1]) and uses what it returns. --align plugs an Aligner in there:
a pre-pass finds each photo's homography onto the anchor photo, by default by consensus of the
whole set (generator/align_set.py: no photo, the anchor included, is trusted alone), or with
--align-mode anchor each photo against the anchor (generator/align.py, drs-ingest's alignment);
then every pass warps each photo as it streams by.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from generator.dataset_format import atomic_path, run_command
from model import DeepResidualSet, model_from_checkpoint
from model.checkpoint import CheckpointError
from model.online import restore_online

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
ALIGN_MODES = ("consensus", "anchor")  # --align-mode: to the median of the agreeing photos, or to one photo
OUTPUT_FORMATS = {".png": (8, 16), ".tif": (8, 16), ".tiff": (8, 16), ".jpg": (8,), ".jpeg": (8,)}
PACKAGED_WEIGHTS = Path(__file__).resolve().parent.parent / "model" / "weights" / "drs_fusion.pt"
# EXIF orientations 5-8 rotate by 90 degrees: width and height swap once the tag is applied.
_EXIF_ORIENTATION = 0x0112
_M_MMAP_THRESHOLD = -3  # mallopt parameter number, from glibc's malloc.h

Transform = Callable[[int, torch.Tensor], torch.Tensor]


class RestoreError(Exception):
    """A bad input, option or output path; the message names what was wrong."""


# ---------------------------------------------------------------------------------- inputs
def expand_inputs(items: Sequence[str]) -> list[Path]:
    """Files, folders (their images, sorted by name) and globs -> image paths, in the order given."""
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise RestoreError(f"folder {p} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            paths += found
        elif p.is_file():
            paths.append(p)
        elif glob.has_magic(item):
            found = sorted(Path(f) for f in glob.glob(item) if Path(f).is_file())
            if not found:
                raise RestoreError(f"pattern {item!r} matches no files")
            paths += found
        else:
            raise RestoreError(f"input {item} does not exist")
    if not paths:
        raise RestoreError("no input images given")
    return paths


def probe_size(path: Path) -> tuple[int, int]:
    """(width, height) after EXIF orientation, from the header only (cheap)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                w, h = h, w
            return w, h
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise RestoreError(f"cannot read image {path}: {exc}") from exc


def load_image(path: Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """One image -> float32 (3, H, W) in [0, 1], EXIF orientation applied; resized to size=(W, H) if given."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            if size is not None and im.size != size:
                im = im.resize(size, Image.Resampling.BICUBIC)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise RestoreError(f"cannot read image {path}: {exc}") from exc
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def check_sizes(paths: Sequence[Path], resize: bool) -> tuple[int, int]:
    """Probe every header before any compute, so a mismatch fails in seconds, not after minutes.

    Returns the first image's (width, height); raises unless all match or `resize` is set.
    """
    first = probe_size(paths[0])
    for p in paths[1:]:
        wh = probe_size(p)
        if wh != first and not resize:
            raise RestoreError(
                f"image {p} is {wh[0]}x{wh[1]} but {paths[0]} is {first[0]}x{first[1]}; "
                "all photos must have the same size (pass --resize to resize them to the first one's)"
            )
    return first


class ImageStream:
    """Zero-argument callable -> a fresh generator over the images (model/online.py may call it once
    per encoder stage). Each image is loaded, resized to `size`, passed through `transform`."""

    def __init__(self, paths: Sequence[Path], size: tuple[int, int], transform: Transform | None = None,
                 passes: int = 1, progress: bool = True):
        self.paths, self.size, self.transform = list(paths), size, transform
        self.passes, self.progress, self.done = passes, progress, 0

    def __call__(self) -> Iterator[torch.Tensor]:
        self.done += 1
        desc = "encoding" if self.passes == 1 else f"encoding (pass {self.done}/{self.passes})"
        for i, p in enumerate(tqdm(self.paths, desc=desc, unit="img", disable=not self.progress)):
            img = load_image(p, self.size)
            if self.transform is not None:
                img = self.transform(i, img)
            yield img


# ---------------------------------------------------------------------------------- alignment
class Aligner:
    """--align: a Transform that warps photo i onto the anchor photo's frame, or onto the flat cover.

    mode "consensus" (default): the photos are aligned to the median of those that agree
    (generator/align_set.py; each photo's work copy is held meanwhile); when the anchor itself does
    not align to the others, the best-aligned photo becomes the anchor (`how` says so). mode
    "anchor": one streamed pre-pass (one photo in memory at a time, plus the anchor) aligns each
    photo to the anchor. Either way photos whose
    alignment cannot be trusted are dropped (listed in `rejected` as (path, reason)); `paths`
    and `homographies` (float64 (3, 3), photo px -> anchor px, at `size`) are those kept, in
    order, so index i of the restore stream is paths[i]. Anchor pixels fill what a photo does
    not cover, so the set mean there is not darkened. Deterministic: "multi" calls it per pass.

    rectify: "auto" finds the cover's outline (generator/cover_quad.py) in the anchor or, when glare
    or a hand spoils it there, in the per-pixel median of the aligned photos (at most 512 px, where
    each photo's occluders and glare are outvoted), and outputs the flat, front-on cover at its own aspect ratio (`to_out`, anchor px
    -> output px; `out_size`); "off" keeps the anchor's frame; `corners` (4, 2) anchor px give the
    outline. `outline` says what happened (for the console).
    """

    def __init__(self, paths: Sequence[Path], size: tuple[int, int], anchor: int = 0, cfg=None,
                 progress: bool = True, rectify: str = "auto", corners: np.ndarray | None = None,
                 mode: str = "consensus"):
        # cv2: only needed with --align
        from generator.align import AlignConfig, align, find_quad, prepare, set_region

        if not 0 <= anchor < len(paths):
            raise RestoreError(f"--align-to {anchor}: there are {len(paths)} photos (indices 0..{len(paths) - 1})")
        if mode not in ALIGN_MODES:
            raise RestoreError(f"--align-mode {mode!r}: one of {', '.join(ALIGN_MODES)}")
        cfg = cfg or AlignConfig()
        self.how = "each photo aligned to the anchor photo (--align-mode anchor)"
        if mode == "consensus":
            return self._consensus(paths, size, anchor, cfg, progress, rectify, corners)
        self.anchor_path = Path(paths[anchor])
        self.anchor = _to_hwc(load_image(self.anchor_path, size))
        anchor_frame = prepare(self.anchor, cfg)
        self.to_out, self.out_size, self.outline = np.eye(3), size, ""
        if corners is not None:
            quad, how = np.asarray(corners, np.float64), "the given --corners"
        elif rectify == "off":
            quad, how = None, "not rectified (--rectify off): output in the anchor photo's frame"
        else:
            found = find_quad(self.anchor)
            quad, how = found.quad, found.reason if found.quad is None else f"the outline found in {self.anchor_path.name}"
        # Without an outline, the whole anchor photo counts (the photos were chosen by the user; a
        # central region, as drs-ingest uses against intruders, would extrapolate to the borders).
        set_region(anchor_frame, quad)
        look = quad is None and rectify == "auto" and corners is None
        median = _MedianView(size) if look else None  # the aligned photos, small, for the outline
        self.paths: list[Path] = []
        self.homographies: list[np.ndarray] = []
        self.rejected: list[tuple[Path, str]] = []
        for i, p in enumerate(tqdm(paths, desc="aligning", unit="img", disable=not progress)):
            if i == anchor:
                h, reason = np.eye(3), None
            else:
                img = _to_hwc(load_image(p, size))
                res = align(anchor_frame, prepare(img, cfg), cfg)
                h, reason = res.homography, res.reason
                if reason is None and median is not None:
                    median.add(img, h)
            if i == anchor and median is not None:
                median.add(self.anchor, h)
            if reason is None:
                self.paths.append(Path(p))
                self.homographies.append(h)
            else:
                self.rejected.append((Path(p), reason))
        if median is not None and median.count >= 3:
            found = median.find_quad()
            if found is not None:
                quad, how = found, f"the outline found in the median of the aligned photos (not in the anchor: {how})"
        self._finish(quad, size, how, rectify, corners)

    def _finish(self, quad: np.ndarray | None, size: tuple[int, int], how: str, rectify: str,
                corners: np.ndarray | None) -> None:
        """The output frame (rectified to quad, or the anchor's) and the anchor fill, once the
        homographies are known."""
        import cv2

        if quad is not None:
            self._rectify(quad, size, how)
        elif rectify == "off" and corners is None:
            self.outline = how
        else:
            self.outline = (f"no cover outline found in {self.anchor_path.name} or the other photos ({how}); output "
                            "in the anchor photo's frame (give --corners x1,y1,...,x4,y4 to rectify)")
        self.size = size
        # What fills pixels a photo does not cover: the anchor, seen in the output frame (uint8: 1/4
        # of the float's memory).
        fill = cv2.warpPerspective(self.anchor, self.to_out, self.out_size, flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REPLICATE)
        self.anchor = (fill * 255 + 0.5).astype(np.uint8)

    def _consensus(self, paths: Sequence[Path], size: tuple[int, int], anchor: int, cfg, progress: bool,
                   rectify: str, corners: np.ndarray | None) -> None:
        """--align-mode consensus (generator/align_set.py): every photo aligned to the median of the
        photos that agree, not to one spoiled photo. Holds each photo's work copy (about 10 MB for
        a 1024-px work size) while aligning; the restore itself still streams."""
        from generator.align import find_quad, project
        from generator.align_set import SetPhoto, align_set

        photos = [SetPhoto.load(_to_hwc(load_image(p, size)), cfg)
                  for p in tqdm(paths, desc="preparing", unit="img", disable=not progress)]
        res = align_set(photos, anchor, cfg)
        self.how = res.how
        if res.anchor != anchor:
            if corners is not None:
                raise RestoreError(f"--corners are in {Path(paths[anchor]).name}'s px, but that photo does not align to "
                                   f"the others ({res.rejected.get(anchor, '')}); give them in "
                                   f"{Path(paths[res.anchor]).name}'s px with --align-to {res.anchor}")
            self.how += (f"; {Path(paths[anchor]).name} does not align to the others, so the output is in "
                         f"{Path(paths[res.anchor]).name}'s frame")
        self.anchor_path = Path(paths[res.anchor])
        self.anchor = _to_hwc(load_image(self.anchor_path, size))
        self.to_out, self.out_size, self.outline = np.eye(3), size, ""
        self.paths = [Path(p) for i, p in enumerate(paths) if i in res.homographies]
        self.homographies = [res.homographies[i] for i in range(len(paths)) if i in res.homographies]
        self.rejected = [(Path(paths[i]), why) for i, why in sorted(res.rejected.items())]
        if corners is not None:
            quad, how = np.asarray(corners, np.float64), "the given --corners"
        elif rectify == "off":
            quad, how = None, "not rectified (--rectify off): output in the anchor photo's frame"
        else:
            found = find_quad(self.anchor)
            quad, how = found.quad, found.reason if found.quad is None else f"the outline found in {self.anchor_path.name}"
            if quad is None and res.median is not None and len(self.paths) >= 3:
                # The median is in the anchor's work frame: each photo's glare and hand outvoted.
                in_median = find_quad(res.median)
                if in_median.quad is not None:
                    quad = project(np.linalg.inv(photos[res.anchor].frame.to_work), in_median.quad)
                    how = f"the outline found in the median of the aligned photos (not in the anchor: {how})"
        self._finish(quad, size, how, rectify, corners)

    def _rectify(self, quad: np.ndarray, size: tuple[int, int], how: str) -> None:
        """Set to_out / out_size / outline for the cover outlined by quad (anchor px)."""
        from generator.align import flat_size, quad_aspect, rectify_map

        aspect = quad_aspect(quad, size)
        # The flat cover at about the resolution the anchor shows it with: nothing is thrown away.
        sides = np.linalg.norm(np.roll(quad, -1, axis=0) - quad, axis=1)
        short = int(round(min(sides[0] + sides[2], sides[1] + sides[3]) / 2))
        self.out_size = flat_size(aspect, max(short, 8))
        self.to_out = rectify_map(quad, self.out_size)
        self.outline = f"rectified to {how}: {self.out_size[0]}x{self.out_size[1]} px, aspect {aspect:.3f}"

    def __call__(self, index: int, img: torch.Tensor) -> torch.Tensor:
        import cv2

        h = self.to_out @ self.homographies[index]
        src = _to_hwc(img)
        if (src.shape[1], src.shape[0]) != self.size:
            # --resize with the first photo dropped: the stream resized to another photo's size.
            src = cv2.resize(src, self.size, interpolation=cv2.INTER_CUBIC)
        warped = cv2.warpPerspective(src, h, self.out_size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                     borderValue=0)
        cover = cv2.warpPerspective(np.ones(src.shape[:2], np.float32), h, self.out_size, flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        # warped already holds cover * photo; the rest of each pixel's weight goes to the anchor.
        warped += (1 - cover)[..., None] * (self.anchor.astype(np.float32) / 255.0)
        return torch.from_numpy(warped).permute(2, 0, 1).contiguous()


class _MedianView:
    """The aligned photos at most 512 px on the long side, in the anchor's frame, for a per-pixel
    median: one occluder or glare per photo is outvoted, the cover's outline stays (uint8, K small
    images: a few MB for dozens of photos)."""

    SIDE = 512

    def __init__(self, size: tuple[int, int]):
        from generator.align import scale_matrix

        self.scale = min(1.0, self.SIDE / max(size))
        self.small = (max(1, round(size[0] * self.scale)), max(1, round(size[1] * self.scale)))
        self.to_small = scale_matrix(self.small[0] / size[0], self.small[1] / size[1])
        self.frames: list[np.ndarray] = []

    @property
    def count(self) -> int:
        return len(self.frames)

    def add(self, img: np.ndarray, h: np.ndarray) -> None:
        """img float (H, W, 3) at the stream size, h: its homography onto the anchor."""
        import cv2

        small = cv2.resize(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8), self.small, interpolation=cv2.INTER_AREA)
        m = self.to_small @ h @ np.linalg.inv(self.to_small)
        self.frames.append(cv2.warpPerspective(small, m, self.small, flags=cv2.INTER_LINEAR,
                                               borderMode=cv2.BORDER_REPLICATE))

    def find_quad(self) -> np.ndarray | None:
        """The outline in the median, anchor px; None if not found."""
        from generator.align import find_quad, project

        found = find_quad(np.median(np.stack(self.frames), axis=0).astype(np.uint8))
        return None if found.quad is None else project(np.linalg.inv(self.to_small), found.quad)


def _to_hwc(img: torch.Tensor) -> np.ndarray:
    """float (3, H, W) tensor -> float32 (H, W, 3) array."""
    return np.ascontiguousarray(img.detach().cpu().float().numpy().transpose(1, 2, 0))


# ---------------------------------------------------------------------------------- model + output
def resolve_checkpoint(path: str | None) -> Path:
    """The given checkpoint, or the packaged weights when none is given."""
    if path is not None:
        return Path(path)
    if not PACKAGED_WEIGHTS.is_file():
        raise RestoreError(f"no --checkpoint given and no packaged weights found at {PACKAGED_WEIGHTS}; "
                           "pass --checkpoint CKPT (a drs-train checkpoint)")
    return PACKAGED_WEIGHTS


def resolve_device(name: str, half: bool) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise RestoreError(f"--device {name!r}: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RestoreError(f"--device {name}: CUDA is not available on this machine")
    if half and device.type != "cuda":
        raise RestoreError(f"--half needs a CUDA device; --device is {device}")
    return device


def check_output(out: Path, bit_depth: int) -> None:
    suffix = out.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise RestoreError(f"--out {out}: unsupported format {suffix or '(none)'}; use one of {sorted(OUTPUT_FORMATS)}")
    if bit_depth not in OUTPUT_FORMATS[suffix]:
        raise RestoreError(f"--out {out}: {suffix} cannot hold {bit_depth}-bit images; use .png or .tif")


def encode_image(img: torch.Tensor, suffix: str, bit_depth: int) -> bytes:
    """float (3, H, W) -> encoded file bytes (clamped to [0, 1], 8 or 16 bits per channel).

    OpenCV rather than PIL: PIL cannot write 16-bit RGB PNGs.
    """
    import cv2  # local: only needed at the very end

    maxval = 65535 if bit_depth == 16 else 255
    arr = (img.detach().float().clamp(0, 1).cpu().numpy().transpose(1, 2, 0) * maxval).round()
    arr = arr.astype(np.uint16 if bit_depth == 16 else np.uint8)
    ok, buf = cv2.imencode(suffix, np.ascontiguousarray(arr[..., ::-1]))  # OpenCV wants BGR
    if not ok:
        raise RestoreError(f"could not encode the result as {suffix}")
    return buf.tobytes()


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, rename: readers never see a partial image."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


# ---------------------------------------------------------------------------------- API + CLI
def restore_files(
    paths: Sequence[Path],
    net: DeepResidualSet,
    *,
    tile: int | None = 1024,
    device: str | torch.device = "cpu",
    half: bool = False,
    resize: bool = False,
    transform: Transform | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Restore one set of photos; returns float32 (3, H, W) (H, W of the first photo), not clamped.

    transform(index, image) -> image, if given, is applied to every streamed image (e.g. alignment
    to image 0); with "multi" aggregation it is called once per pass, so it must be deterministic.
    """
    size = check_sizes(paths, resize)
    stream = ImageStream(paths, size, transform, passes=net.num_passes, progress=progress)
    return restore_online(net, stream, tile=tile, device=device, half=half)


def make_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="drs-restore",
        description="Fuse photos of one flat object (different light, things in the way) into one clean image.",
    )
    ap.add_argument("images", nargs="+", help="image files, folders of images, or glob patterns")
    ap.add_argument("--out", required=True, help="output image: .png, .tif/.tiff (8 or 16 bit) or .jpg")
    ap.add_argument("--checkpoint", default=None,
                    help=f"drs-train checkpoint (default: packaged weights {PACKAGED_WEIGHTS.name})")
    ap.add_argument("--tile", type=int, default=None,
                    help="tile size in pixels (exact: halo = receptive field); 0 = whole image; default: the "
                         "network's own (drs_fusion 2048, whose halo makes small tiles costly; others 1024)")
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    ap.add_argument("--half", action="store_true", help="float16 autocast (CUDA only)")
    ap.add_argument("--bit-depth", type=int, choices=(8, 16), default=8, help="bits per channel of the output")
    ap.add_argument("--resize", action="store_true", help="resize every photo to the first photo's size")
    ap.add_argument("--align", action="store_true",
                    help="align every photo to the first one (features + ECC) before restoring: handheld shots")
    ap.add_argument("--align-to", type=int, default=None, metavar="INDEX",
                    help="align to photo INDEX (0-based, in input order) instead of the first; implies --align")
    ap.add_argument("--rectify", choices=("auto", "off"), default="auto",
                    help="with --align: auto = output the flat, front-on cover when its outline is found in the "
                         "anchor photo; off = output in the anchor photo's frame")
    ap.add_argument("--align-mode", choices=ALIGN_MODES, default="consensus",
                    help="with --align: consensus = align every photo to the median of the photos that agree "
                         "(no photo is trusted alone; default); anchor = align each photo to the anchor photo only")
    ap.add_argument("--corners", default=None, metavar="X1,Y1,...,X4,Y4",
                    help="the cover's corners in the anchor photo (px, any order); implies --align, rectifies to them")
    ap.add_argument("--force", action="store_true", help="replace --out if it already exists")
    ap.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return ap


def transform_from_args(args: argparse.Namespace, paths: list[Path]) -> tuple[list[Path], Transform | None]:
    """Per-image transform chosen by the options, and the photos it keeps (--align drops those it
    cannot align, saying why)."""
    if not args.align and args.align_to is None and args.corners is None:
        return paths, None
    corners = None
    if args.corners is not None:
        from generator.align import parse_corners

        try:
            corners = parse_corners(args.corners)
        except ValueError as exc:
            raise RestoreError(f"--corners: {exc}") from None
    aligner = Aligner(paths, check_sizes(paths, args.resize), anchor=args.align_to or 0, progress=not args.quiet,
                      rectify=args.rectify, corners=corners, mode=args.align_mode)
    if not args.quiet:
        print(f"drs-restore: alignment: {aligner.how}", file=sys.stderr)
    if not args.quiet or aligner.outline.startswith("no cover outline"):  # a fallback is always said
        print(f"drs-restore: {aligner.outline}", file=sys.stderr)
    for p, reason in aligner.rejected:
        print(f"drs-restore: skipping {p}: {reason}", file=sys.stderr)
    return aligner.paths, aligner


def limit_heap_growth() -> None:
    """Have glibc serve every allocation >= 1 MiB by mmap, returned to the OS on free.

    Why: glibc raises its mmap threshold dynamically once a large block is freed, after which
    image-sized tensors come from the heap and freed ones stay resident, fragmented by the
    threads' arenas. Measured on 1280x720 sets: peak RSS then varied 446-598 MB between identical
    runs; with a fixed threshold it is 434 MB every time, for any K, at no measurable speed cost.
    A no-op where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):
        pass


def run(args: argparse.Namespace) -> Path:
    limit_heap_growth()
    out = Path(args.out)
    check_output(out, args.bit_depth)
    if out.exists() and not args.force:
        raise RestoreError(f"--out {out} exists; pass --force to replace it")
    device = resolve_device(args.device, args.half)
    paths = expand_inputs(args.images)
    net = model_from_checkpoint(resolve_checkpoint(args.checkpoint), map_location="cpu")
    start = time.perf_counter()
    paths, transform = transform_from_args(args, paths)
    tile = args.tile if args.tile is not None else getattr(net, "default_tile", 1024)
    img = restore_files(paths, net, tile=tile if tile > 0 else None, device=device, half=args.half,
                        resize=args.resize, transform=transform, progress=not args.quiet)
    write_atomic(out, encode_image(img, out.suffix.lower(), args.bit_depth))
    if not args.quiet:
        print(f"restored {len(paths)} images ({img.shape[2]}x{img.shape[1]}) with {net.arch} "
              f"in {time.perf_counter() - start:.1f} s -> {out}", file=sys.stderr)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    return run_command("drs-restore", lambda: run(args), user_errors=(RestoreError, CheckpointError),
                       on_interrupt=f"{args.out} was not written; rerun the same command")


if __name__ == "__main__":
    sys.exit(main())
