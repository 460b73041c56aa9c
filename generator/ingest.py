"""`drs-ingest`: folders of handheld photos (+ a clean reference) -> aligned schema-v1 shards.

    drs-ingest captures/ --out data/real --resolution 256

CAPTURES_DIR holds one subfolder per sequence. In each, the image named `reference.*` is the
clean shot (it becomes the `target`); every other image is an input. Every input is aligned to
the reference (generator/align.py: SIFT/ORB + RANSAC, then ECC), the square that every accepted
photo covers is cropped and resized to `--resolution`, and the sequences are written as shards
with `source=real` and, per image, the homography and alignment scores in `params`. A folder
without a reference is aligned to its first usable photo and written without a target
(inference only; the trainer refuses it for supervised training).

Photos whose alignment cannot be trusted are left out, with the reason, in the manifest's
`rejected.photos`; a sequence left with fewer than `--min-photos` is listed in
`rejected.sequences` and not written. The trainer needs one K for the whole dataset, so every
written sequence keeps the same number of photos (`--sequence-length`, default: the smallest
count left among the kept sequences), the best-aligned ones.

The dataset is built in a hidden sibling directory and renamed into place only when complete:
an error or Ctrl-C never leaves a half-written dataset under DATASET_DIR.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from generator import __version__
from generator.align import (
    AlignConfig,
    Alignment,
    align,
    common_square,
    prepare,
    project,
    render_crop,
    work_copy,
)
from generator.dataset_format import (
    SequenceRecord,
    shard_entry,
    shard_path,
    write_manifest,
    write_shard,
)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp"}
REFERENCE_STEM = "reference"
_EXIF_ORIENTATION = 0x0112


class IngestError(Exception):
    """A bad CAPTURES_DIR, option or output directory; the message says which."""


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
    """One readable photo at work resolution. homography: work px -> anchor work px once aligned."""

    path: Path
    small: np.ndarray  # uint8 (h, w, 3)
    to_work: np.ndarray  # 3x3, full px -> work px
    size: tuple[int, int]  # full (W, H)
    alignment: Alignment | None = None


@dataclass
class SequenceResult:
    """What became of one folder: the aligned images (or why none), and the photos left out."""

    name: str
    inputs: np.ndarray | None = None  # uint8 (K, r, r, 3)
    target: np.ndarray | None = None  # uint8 (r, r, 3)
    params: dict[str, Any] = field(default_factory=dict)
    scores: list[float] = field(default_factory=list)  # per input, higher = better aligned
    rejected_photos: list[dict[str, str]] = field(default_factory=list)
    reason: str | None = None  # set when the sequence is not written
    timings: dict[str, float] = field(default_factory=lambda: defaultdict(float))


def _load(path: Path, cfg: AlignConfig) -> Photo:
    full = read_photo(path)
    small, to_work = work_copy(full, cfg.work_size)
    return Photo(path, small, to_work, (full.shape[1], full.shape[0]))


def ingest_sequence(folder: Path, cfg: AlignConfig, resolution: int, min_photos: int = 2) -> SequenceResult:
    """Read, align, crop and resize one sequence folder."""
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
        except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
            res.reason = f"reference {refs[0].name} unreadable: {exc}"
            return res
    photos = []
    for p in input_paths:
        try:
            photos.append(_load(p, cfg))
        except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
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
        anchor.alignment = Alignment(np.eye(3), ecc=1.0, inliers=len(anchor_frame.keypoints))
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
        res.reason = f"{len(accepted)} usable photo(s) after alignment, at least {min_photos} needed"
        return res

    t = time.perf_counter()
    aw, ah = anchor.small.shape[1], anchor.small.shape[0]
    square = common_square([(p.small.shape[1], p.small.shape[0]) for p in accepted],
                           [p.alignment.homography for p in accepted], (aw, ah))
    if square[2] < min(32, resolution):
        res.reason = f"the photos share no usable common region (largest common square {square[2]} px)"
        return res
    res.inputs = np.stack([render_crop(p.small, p.alignment.homography, square, resolution) for p in accepted])
    if reference is not None:
        res.target = render_crop(reference.small, np.eye(3), square, resolution)
    res.scores = [p.alignment.ecc if p.alignment.ecc is not None else p.alignment.inliers for p in accepted]
    res.params = _params(folder, reference, anchor, accepted, square, resolution)
    res.timings["crop"] += time.perf_counter() - t
    return res


def _params(folder, reference, anchor, accepted, square, resolution) -> dict[str, Any]:
    """JSON record: crop in the anchor's full-resolution px, per image homography (photo full px ->
    anchor full px) and alignment scores."""
    x, y, side = square
    back = np.linalg.inv(anchor.to_work)
    (x0, y0), (x1, y1) = project(back, np.array([[x - 0.5, y - 0.5], [x + side - 0.5, y + side - 0.5]]))
    images = []
    for p in accepted:
        full = back @ p.alignment.homography @ p.to_work
        rec = p.alignment.to_params()
        rec.update(file=p.path.name, size=list(p.size), homography=(full / full[2, 2]).tolist())
        images.append(rec)
    return {
        "sequence": folder.name,
        "reference": reference.path.name if reference is not None else None,
        "anchor": anchor.path.name,
        "anchor_size": list(anchor.size),
        "crop": {"x": float(x0 + 0.5), "y": float(y0 + 0.5), "width": float(x1 - x0), "height": float(y1 - y0)},
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
            "reason": f"surplus: every sequence keeps its {k} best-aligned photos"} for i in dropped]
    res.inputs = res.inputs[keep]
    res.params["images"] = [res.params["images"][i] for i in keep]
    res.scores = [res.scores[i] for i in keep]
    return out


# ---------------------------------------------------------------------------------- dataset
def ingest(captures: Path, out: Path, *, cfg: AlignConfig | None = None, resolution: int = 256,
           sequences_per_shard: int = 32, sequence_length: int = 0, min_photos: int = 2,
           overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Ingest every subfolder of `captures` into the dataset directory `out`; returns the manifest."""
    captures, out = Path(captures), Path(out)
    cfg = cfg or AlignConfig()
    if not captures.is_dir():
        raise IngestError(f"CAPTURES_DIR {captures} is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise IngestError(f"--out {out} exists and is not empty; pass --overwrite to replace it")
    if resolution < 8 or sequences_per_shard < 1 or min_photos < 1 or sequence_length < 0:
        raise IngestError("--resolution must be >= 8, --sequences-per-shard and --min-photos >= 1, "
                          "--sequence-length >= 0")
    folders = sorted(p for p in captures.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise IngestError(f"CAPTURES_DIR {captures} has no subfolders (one per sequence expected)")
    # The work copy must hold enough pixels for the output crop (which is smaller than the photo).
    cfg = replace(cfg, work_size=max(cfg.work_size, 3 * resolution))
    min_photos = max(min_photos, sequence_length)
    config = {"resolution": resolution, "sequences_per_shard": sequences_per_shard,
              "sequence_length": sequence_length, "min_photos": min_photos, "align": asdict(cfg),
              "captures": str(captures.resolve())}

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    stage.chmod(0o777 & ~umask)  # mkdtemp makes 0700; the published dataset gets the usual permissions
    try:
        manifest = _build(folders, stage, cfg, config, resolution, sequences_per_shard, sequence_length,
                          min_photos, progress)
        _publish(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return manifest


def _build(folders, stage, cfg, config, resolution, per_shard, sequence_length, min_photos, progress):
    timings: dict[str, float] = defaultdict(float)
    rejected: dict[str, list] = {"photos": [], "sequences": []}
    kept: list[SequenceResult] = []
    staged: list[Path] = []
    for folder in tqdm(folders, desc="ingesting", unit="seq", disable=not progress):
        res = ingest_sequence(folder, cfg, resolution, min_photos)
        for stage_name, seconds in res.timings.items():
            timings[stage_name] += seconds
        rejected["photos"] += [{"sequence": res.name, **r} for r in res.rejected_photos]
        if res.reason:
            rejected["sequences"].append({"sequence": res.name, "reason": res.reason})
            continue
        # Aligned pixels wait on disk (not in memory) until K is known: there may be thousands.
        path = stage / "staged" / f"{len(kept):06d}.npz"
        path.parent.mkdir(exist_ok=True)
        np.savez(path, inputs=res.inputs, **({"target": res.target} if res.target is not None else {}))
        res.inputs = res.target = None
        kept.append(res)
        staged.append(path)
    if not kept:
        raise IngestError(f"no sequence could be ingested: {rejected['sequences']}")
    k = sequence_length or min(len(r.scores) for r in kept)

    t = time.perf_counter()
    # Sequences with a reference first, then inference-only ones: a shard is all one or the other.
    order = sorted(range(len(kept)), key=lambda i: kept[i].params["reference"] is None)
    groups = [[i for i in order if (kept[i].params["reference"] is None) == no_ref] for no_ref in (False, True)]
    shards, shard_index = [], 0
    for group in groups:
        for start in range(0, len(group), per_shard):
            records = []
            for row, i in enumerate(group[start:start + per_shard]):
                res = kept[i]
                with np.load(staged[i]) as z:
                    res.inputs, res.target = z["inputs"], z["target"] if "target" in z else None
                rejected["photos"] += [{"sequence": res.name, **r} for r in keep_best(res, k)]
                records.append(SequenceRecord(shard_index * per_shard + row, res.inputs, res.target, {}, res.params))
            path = write_shard(shard_path(stage, shard_index), records, seed=0, config=config,
                               generator_version=__version__, blender_version="", source="real")
            shards.append(shard_entry(stage, path, records[0].sequence_id, len(records)))
            shard_index += 1
    shutil.rmtree(stage / "staged")
    timings["write"] += time.perf_counter() - t
    return write_manifest(stage, seed=0, config=config, shards=shards, source="real", rejected=rejected,
                          timings=timings, generator_version=__version__, blender_version="", sequence_length=k)


def _publish(stage: Path, out: Path) -> None:
    """Rename the finished dataset into place (replacing an old one only now that the new is whole)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{time.time_ns()}")
        out.rename(old)
    stage.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------- CLI
def make_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="drs-ingest", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    d = AlignConfig()
    ap.add_argument("captures", type=Path, help="CAPTURES_DIR: one subfolder of photos per sequence")
    ap.add_argument("--out", type=Path, required=True, help="dataset directory to write")
    ap.add_argument("--resolution", type=int, default=256, help="side of the square output images (px)")
    ap.add_argument("--sequences-per-shard", type=int, default=32)
    ap.add_argument("--sequence-length", type=int, default=0,
                    help="photos per written sequence (K); 0 = the smallest count among kept sequences")
    ap.add_argument("--min-photos", type=int, default=2, help="fewer usable photos than this: sequence not written")
    ap.add_argument("--method", choices=("sift", "orb"), default=d.method, help="feature detector")
    ap.add_argument("--work-size", type=int, default=d.work_size, help="long side (px) photos are aligned at")
    ap.add_argument("--min-inliers", type=int, default=d.min_inliers, help="RANSAC inliers needed to trust a photo")
    ap.add_argument("--min-ecc", type=float, default=d.min_ecc, help="ECC correlation needed after refinement")
    ap.add_argument("--max-ecc-shift", type=float, default=d.max_ecc_shift,
                    help="px (work) ECC may move the corners away from the feature estimate")
    ap.add_argument("--max-scale-change", type=float, default=d.max_scale_change)
    ap.add_argument("--min-overlap", type=float, default=d.min_overlap, help="fraction of the reference a photo must cover")
    ap.add_argument("--no-ecc", action="store_true", help="features + RANSAC only (faster, less exact)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out (only once the new one is complete)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        cfg = AlignConfig(method=args.method, work_size=args.work_size, min_inliers=args.min_inliers,
                          min_ecc=args.min_ecc, max_ecc_shift=args.max_ecc_shift, ecc=not args.no_ecc,
                          max_scale_change=args.max_scale_change, min_overlap=args.min_overlap)
        manifest = ingest(args.captures, args.out, cfg=cfg, resolution=args.resolution,
                          sequences_per_shard=args.sequences_per_shard, sequence_length=args.sequence_length,
                          min_photos=args.min_photos, overwrite=args.overwrite, progress=not args.quiet)
    except (IngestError, ValueError) as exc:
        print(f"drs-ingest: error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        rej = manifest["rejected"]
        print(f"{args.out}: {manifest['num_sequences']} sequences of K={manifest['sequence_length']} "
              f"in {len(manifest['shards'])} shard(s); rejected {len(rej['photos'])} photos, "
              f"{len(rej['sequences'])} sequences", file=sys.stderr)
        if manifest["sequence_length"] < 9:  # the trainer's data.k_max defaults to 9 (the paper's set size)
            print(f"  fine-tune on it with data.k_max={manifest['sequence_length']} (at most K images per set)",
                  file=sys.stderr)
        for r in rej["sequences"]:
            print(f"  sequence {r['sequence']}: {r['reason']}", file=sys.stderr)
        for r in rej["photos"]:
            print(f"  photo {r['sequence']}/{r['file']}: {r['reason']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
