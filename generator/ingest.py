"""`drs-ingest`: folders of handheld photos (+ a clean reference) -> aligned schema-v1 shards.

    drs-ingest captures/ --out data/real --resolution 256

CAPTURES_DIR holds one subfolder per sequence. In each, the image named `reference.*` is the
clean shot (it becomes the `target`); every other image is an input. Each folder goes through
generator/capture_sequence.py: every input is aligned to the reference (generator/align.py:
RootSIFT + MAGSAC, then ECC, judged by inlier spread and photometric agreement where the cover has
texture), and every image is warped to the flat, front-on cover (its outline found in the
reference or given in `corners.txt`), or, without an outline, to the largest square every
accepted photo covers. A folder without a reference is aligned to its first usable photo and
written without a target (inference only; the trainer refuses it for supervised training).

Photos whose alignment cannot be trusted are left out, with the reason, in the manifest's
`rejected.photos`; a sequence left with fewer than `--min-photos` is listed in
`rejected.sequences` and not written. The trainer needs one K and one image size for the whole
dataset: K is the smallest count of good photos among the kept sequences (none is dropped; the
trade against larger K is reported) or `--sequence-length`, each sequence keeping its best-aligned
photos; the image size has `--resolution` on its short side, at the covers' median aspect ratio.

The dataset is built in a hidden sibling directory and renamed into place only when complete:
an error or Ctrl-C never leaves a half-written dataset under DATASET_DIR.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from generator import __version__
from generator.align import AlignConfig
from generator.capture_sequence import (  # noqa: F401  (read_photo, list_images: part of this module's API)
    RECTIFY,
    SequenceResult,
    _orient,
    fit_to_frame,
    ingest_sequence,
    keep_best,
    list_images,
    read_photo,
)
from generator.cover_quad import flat_size
from generator.dataset_format import (
    SequenceRecord,
    run_command,
    shard_entry,
    shard_path,
    write_manifest,
    write_shard,
)
from generator.dataset_guard import make_owned_tempdir, why_not_replaceable


class IngestError(Exception):
    """A bad CAPTURES_DIR, option or output directory; the message says which."""


# ---------------------------------------------------------------------------------- dataset
def ingest(captures: Path, out: Path, *, cfg: AlignConfig | None = None, resolution: int = 256,
           sequences_per_shard: int = 32, sequence_length: int = 0, min_photos: int = 2,
           rectify: str = "auto", overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Ingest every subfolder of `captures` into the dataset directory `out`; returns the manifest."""
    captures, out = Path(captures), Path(out)
    cfg = cfg or AlignConfig()
    if not captures.is_dir():
        raise IngestError(f"CAPTURES_DIR {captures} is not a directory")
    check_out_dir(captures, out, overwrite)
    if resolution < 8 or sequences_per_shard < 1 or min_photos < 1 or sequence_length < 0:
        raise IngestError("--resolution must be >= 8, --sequences-per-shard and --min-photos >= 1, "
                          "--sequence-length >= 0")
    if rectify not in RECTIFY:
        raise IngestError(f"--rectify must be one of {RECTIFY}, got {rectify!r}")
    folders = sorted(p for p in captures.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise IngestError(f"CAPTURES_DIR {captures} has no subfolders (one per sequence expected)")
    # The work copy must hold enough pixels for the output crop (which is smaller than the photo).
    cfg = replace(cfg, work_size=max(cfg.work_size, 3 * resolution))
    min_photos = max(min_photos, sequence_length)
    config = {"resolution": resolution, "sequences_per_shard": sequences_per_shard,
              "sequence_length": sequence_length, "min_photos": min_photos, "rectify": rectify,
              "align": asdict(cfg), "captures": str(captures.resolve())}

    out.parent.mkdir(parents=True, exist_ok=True)
    # Named with host and pid: a killed run's stage is removed by the next run (dataset_guard.py).
    stage = make_owned_tempdir(out.parent, f".{out.name}.", ".partial")
    umask = os.umask(0)
    os.umask(umask)
    stage.chmod(0o777 & ~umask)  # mkdtemp makes 0700; the published dataset gets the usual permissions
    try:
        manifest = _build(folders, stage, cfg, config, resolution, sequences_per_shard, sequence_length,
                          min_photos, rectify, progress)
        _publish(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return manifest


def _build(folders, stage, cfg, config, resolution, per_shard, sequence_length, min_photos, rectify, progress):
    timings: dict[str, float] = defaultdict(float)
    rejected: dict[str, list] = {"photos": [], "sequences": []}
    kept: list[SequenceResult] = []
    staged: list[Path] = []
    for folder in tqdm(folders, desc="ingesting", unit="seq", disable=not progress):
        res = ingest_sequence(folder, cfg, resolution, min_photos, rectify, sequence_length)
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
    k, k_report = choose_k([len(r.scores) for r in kept], sequence_length, [r.name for r in kept], min_photos)
    frame = dataset_frame([r.params["output_size"] for r in kept], resolution)

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
                res.inputs, cut = fit_to_frame(res.inputs, frame)
                if res.target is not None:
                    res.target, _ = fit_to_frame(res.target, frame)
                res.params["view"]["frame_cut"] = round(cut, 4)
                records.append(SequenceRecord(shard_index * per_shard + row, res.inputs, res.target, {}, res.params))
            path = write_shard(shard_path(stage, shard_index), records, seed=0, config=config,
                               generator_version=__version__, blender_version="", source="real")
            shards.append(shard_entry(stage, path, records[0].sequence_id, len(records)))
            shard_index += 1
    shutil.rmtree(stage / "staged")
    timings["write"] += time.perf_counter() - t
    views = Counter(r.params["view"]["mode"] for r in kept)
    outlines = {r.name: r.params["quad"].get("reason") for r in kept if r.params["view"]["mode"] != "rectified"}
    return write_manifest(stage, seed=0, config=config, shards=shards, source="real", rejected=rejected,
                          timings=timings, generator_version=__version__, blender_version="", sequence_length=k,
                          sequence_length_choice=k_report, image_size=list(frame),
                          views={"counts": dict(views), "not_rectified": outlines})


def choose_k(counts: list[int], fixed: int, names: list[str], min_photos: int) -> tuple[int, dict[str, Any]]:
    """The dataset's K (the trainer needs one) and a report of the choice.

    fixed (--sequence-length) > 0: that K; the sequences with fewer photos were already left out,
    with the reason. Otherwise the largest K that drops no kept sequence: the smallest count. The
    report says how many photos each K would use and which sequences it would drop, so a user
    can trade sequences for photos knowingly.
    """
    k = fixed or min(counts)
    options = []
    for cand in sorted(set(counts) | {k}):
        if cand < min_photos:
            continue
        drop = [n for n, c in zip(names, counts, strict=True) if c < cand]
        options.append({"k": cand, "sequences": len(counts) - len(drop), "photos_used": cand * (len(counts) - len(drop)),
                        "would_drop": drop})
    return k, {"k": k, "how": "--sequence-length" if fixed else "smallest count among kept sequences (none dropped)",
               "good_photos": dict(zip(names, counts, strict=True)),
               "surplus_photos": sum(c - k for c in counts), "options": options}


def dataset_frame(sizes: list[list[int]], resolution: int) -> tuple[int, int]:
    """One (W, H) for the whole dataset (the trainer stacks sequences): short side `resolution`, at
    the median aspect ratio of the sequences' own outputs (rectified covers keep their own aspect;
    the rest is cut evenly, see fit_to_frame)."""
    aspect = float(np.median([w / h for w, h in sizes]))
    return flat_size(aspect, resolution)


def check_out_dir(captures: Path, out: Path, overwrite: bool) -> None:
    """--out must be new, an empty directory or (with --overwrite) a drs dataset and nothing else;
    it may never hold or lie inside CAPTURES_DIR, which --overwrite would delete."""
    if out.exists() and not out.is_dir():
        raise IngestError(f"--out {out} is a file; name a directory for the dataset")
    c, o = captures.resolve(), out.resolve()
    if o == c or o in c.parents or c in o.parents:
        raise IngestError(f"--out {out} and CAPTURES_DIR {captures} overlap; write the dataset outside the captures")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise IngestError(f"--out {out} exists and is not empty; pass --overwrite to replace it")
        reason = why_not_replaceable(out)
        if reason:
            raise IngestError(f"--overwrite replaces only a drs dataset: {reason}; remove it yourself or "
                              f"choose another --out")


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
    ap.add_argument("--resolution", type=int, default=256,
                    help="short side of the output images (px); the long side follows the covers' aspect ratio")
    ap.add_argument("--rectify", choices=RECTIFY, default="auto",
                    help="auto: output the flat, front-on cover where its outline is found (else a square crop); "
                         "on: leave out sequences without an outline; off: square crops of the reference's view")
    ap.add_argument("--sequences-per-shard", type=int, default=32)
    ap.add_argument("--sequence-length", type=int, default=0,
                    help="photos per written sequence (K); 0 = the smallest count among kept sequences")
    ap.add_argument("--min-photos", type=int, default=2, help="fewer usable photos than this: sequence not written")
    ap.add_argument("--method", choices=("sift", "orb"), default=d.method, help="feature detector")
    ap.add_argument("--work-size", type=int, default=d.work_size, help="long side (px) photos are aligned at")
    ap.add_argument("--min-inliers", type=int, default=d.min_inliers, help="RANSAC inliers needed to trust a photo")
    ap.add_argument("--min-spread", type=float, default=d.min_spread,
                    help="fraction of the cover (or reference) the inliers' convex hull must span")
    ap.add_argument("--min-agreement", type=float, default=d.min_agreement,
                    help="photometric agreement needed where the cover has texture (cell correlation, 90th percentile)")
    ap.add_argument("--max-ecc-shift", type=float, default=d.max_ecc_shift,
                    help="px (work) ECC may move the inliers; further: the feature estimate is kept")
    ap.add_argument("--max-scale-change", type=float, default=d.max_scale_change)
    ap.add_argument("--min-overlap", type=float, default=d.min_overlap, help="fraction of the reference a photo must cover")
    ap.add_argument("--no-ecc", action="store_true", help="features + RANSAC only (faster, less exact)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out (only once the new one is complete)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    done: dict[str, Any] = {}

    def body() -> None:
        cfg = AlignConfig(method=args.method, work_size=args.work_size, min_inliers=args.min_inliers,
                          min_spread=args.min_spread, min_agreement=args.min_agreement,
                          max_ecc_shift=args.max_ecc_shift, ecc=not args.no_ecc,
                          max_scale_change=args.max_scale_change, min_overlap=args.min_overlap)
        done["manifest"] = ingest(args.captures, args.out, cfg=cfg, resolution=args.resolution,
                                  sequences_per_shard=args.sequences_per_shard, sequence_length=args.sequence_length,
                                  min_photos=args.min_photos, rectify=args.rectify, overwrite=args.overwrite,
                                  progress=not args.quiet)

    code = run_command("drs-ingest", body, user_errors=(IngestError, ValueError),
                       on_interrupt=f"{args.out} was not touched (the dataset is built aside and renamed into "
                                    f"place only when complete); rerun the same command to start again")
    if code:
        return code
    manifest = done["manifest"]
    if not args.quiet:
        print(summary(args.out, manifest), file=sys.stderr)
    return 0


def summary(out: Path, manifest: dict[str, Any]) -> str:
    """The console report: what was written, how K was chosen, and every rejection with its reason."""
    rej, k = manifest["rejected"], manifest["sequence_length"]
    w, h = manifest["image_size"]
    lines = [f"{out}: {manifest['num_sequences']} sequences of K={k}, {w}x{h} px, in {len(manifest['shards'])} "
             f"shard(s); rejected {len(rej['photos'])} photos, {len(rej['sequences'])} sequences"]
    choice = manifest["sequence_length_choice"]
    lines.append(f"  K={k} ({choice['how']}; {choice['surplus_photos']} good photos beyond K left out)")
    for opt in choice["options"]:
        if opt["k"] > k and opt["would_drop"]:
            lines.append(f"  K={opt['k']} would use {opt['photos_used']} photos but drop {len(opt['would_drop'])} "
                         f"sequence(s): {', '.join(opt['would_drop'][:5])}{' ...' if len(opt['would_drop']) > 5 else ''}")
            break
    if k < 9:  # the trainer's data.k_max defaults to 9 (the paper's set size)
        lines.append(f"  fine-tune on it with data.k_max={k} (at most K images per set)")
    views = manifest["views"]
    lines.append(f"  views: {', '.join(f'{n} {mode}' for mode, n in sorted(views['counts'].items()))}")
    for name, why in views["not_rectified"].items():
        lines.append(f"  sequence {name}: square crop, {why}")
    for r in rej["sequences"]:
        lines.append(f"  sequence {r['sequence']}: {r['reason']}")
    for r in rej["photos"]:
        lines.append(f"  photo {r['sequence']}/{r['file']}: {r['reason']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
