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
streamed (float (3, H, W) in [0, 1]) and uses what it returns. --align plugs an Aligner
(trainer/restore_align.py) in there: a pre-pass finds each photo's homography onto the anchor
photo, by default by consensus of the whole set (generator/align_set.py: no photo, the anchor
included, is trusted alone), or with --align-mode anchor each photo against the anchor
(generator/align.py, drs-ingest's alignment); then every pass warps each photo as it streams by.
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
    from trainer.restore_align import Aligner  # cv2 and the aligner: only with --align

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
