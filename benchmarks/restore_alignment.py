"""`drs-restore --align` without a reference on semi-real captures: photos kept, intruders rejected,
residual misalignment, and whether the outline the output is rectified to is the cover's.

    .venv/bin/python benchmarks/restore_alignment.py                    # 8 drawn + 4 procedural sets, 640x480
    .venv/bin/python benchmarks/restore_alignment.py --modes consensus,anchor   # also the old anchor-only mode
    .venv/bin/python benchmarks/restore_alignment.py --quick            # 3 + 2 sets

Each set comes from tests/semireal.py (a cover on a plain, wood, stone or brick table, photographed by
hand with glare, shadows, occluders, noise and JPEG, plus one photo of another cover) and is
written as JPEG files WITHOUT the clean reference, as a user restoring has none. The first
`--sequences` sets draw their cover (30 % procedural); `--procedural` more sets have a procedural
cover forced (a gradient, a disc or triangle, a little text: the weakly textured case), half of
them on a plain table. Every folder goes through drs-restore's own alignment pre-pass
(trainer/restore_align.Aligner, as `drs-restore --align` builds it), so what is measured is what the
command does before the network runs. Residual error: per kept photo, the RMS over a 16x16 grid
of points on the cover (occluded parts included) between the homography found (photo -> the
output's anchor photo) and the true one, in anchor-photo px. Outline: the corners drs-restore
rectified to against the true ones, right when within OUTLINE_TOLERANCE of the diagonal.

Goals (issue 13, restore without a reference): >= 90 % of genuine photos kept, 100 % of intruders
rejected, <= 0.5 px mean residual error.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.semireal, run from anywhere

from tests.semireal import make_sequence, residuals  # noqa: E402
from trainer.restore_align import Aligner  # noqa: E402

OUTLINE_TOLERANCE = 0.01  # of the diagonal: an outline's corners this close are right (find_quad's own yardstick)


def sets(args: argparse.Namespace) -> list[tuple[int, dict]]:
    """(seed, make_sequence keyword arguments) of every set measured."""
    drawn = [(s, {}) for s in range(args.first_seed, args.first_seed + args.sequences)]
    forced = [(s, {"picture": "procedural", "table": "plain" if n % 2 == 0 else None})
              for n, s in enumerate(range(args.first_seed + 500, args.first_seed + 500 + args.procedural))]
    return drawn + forced


def measure_set(cap, folder: Path, mode: str) -> dict:
    """Run the restore aligner on one written set; what it kept, with residual errors."""
    paths = sorted(folder.glob("*.jpg"))  # IMG_00 .. IMG_07, INTRUDER_00: the anchor is IMG_00
    size = (cap.photos[0].shape[1], cap.photos[0].shape[0])
    t = time.perf_counter()
    aligner = Aligner(paths, size, anchor=0, progress=False, mode=mode)
    seconds = time.perf_counter() - t
    kept = {p.name: h for p, h in zip(aligner.paths, aligner.homographies, strict=True)}
    a = int(aligner.anchor_path.stem[4:6]) if aligner.anchor_path.name.startswith("IMG") else 0
    quad_a = cv2.perspectiveTransform(cap.quad[None], np.linalg.inv(cap.truth[a]))[0]
    errs = {}
    for i, name in enumerate(cap.photo_names):
        if name in kept:
            truth = np.linalg.inv(cap.truth[a]) @ cap.truth[i]  # photo i px -> anchor px
            errs[name] = float(np.sqrt(np.mean(residuals(kept[name], truth, quad_a) ** 2)))
    return {"kept": sorted(errs), "errors": errs, "intruder_kept": any(n.startswith("INTRUDER") for n in kept),
            "outline_error": outline_error(aligner.quad, quad_a, size),
            "rejected": {p.name: why for p, why in aligner.rejected}, "anchor": aligner.anchor_path.name,
            "how": aligner.how, "seconds": seconds}


def outline_error(found: np.ndarray | None, truth: np.ndarray, size: tuple[int, int]) -> float | None:
    """The largest corner error of the outline drs-restore rectified to, over the photo's diagonal
    (corners matched in their cyclic order, whichever corner comes first); None when not rectified."""
    if found is None:
        return None
    worst = min(np.linalg.norm(np.roll(found, k, axis=0) - truth, axis=1).max() for k in range(4))
    return float(worst / np.hypot(*size))


def run(args: argparse.Namespace) -> dict:
    cv2.setNumThreads(1)
    size = (args.width, args.height)
    raw = {"size": list(size), "photos": args.photos, "modes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for seed, kw in sets(args):
            cap = make_sequence(seed, photos=args.photos, photo_size=size, **kw)
            folder = Path(tmp) / f"seq{seed:04d}"
            cap.write(folder)
            (folder / "reference.jpg").unlink()  # a user restoring has no clean shot
            for mode in args.modes:
                r = measure_set(cap, folder, mode)
                r.update(seed=seed, table=cap.info["table"], picture=cap.info["picture"])
                raw["modes"].setdefault(mode, []).append(r)
                errs = list(r["errors"].values())
                print(f"  {mode:9s} seed {seed}: {cap.info['table']:6s} {cap.info['picture']:20s} kept "
                      f"{len(r['kept'])}/{args.photos}, intruder {'KEPT' if r['intruder_kept'] else 'rejected'}, "
                      f"error mean {np.mean(errs) if errs else float('nan'):.2f} px, {r['seconds']:.0f} s "
                      f"[{r['how'][:90]}]", flush=True)
    return raw


def report(raw: dict) -> None:
    w, h = raw["size"]
    for mode, runs in raw["modes"].items():
        genuine = len(runs) * raw["photos"]
        kept = sum(len(r["kept"]) for r in runs)
        intruders_kept = sum(r["intruder_kept"] for r in runs)
        errs = np.array([e for r in runs for e in r["errors"].values()])
        procedural = [r for r in runs if r["picture"] == "procedural"]
        print(f"\n--align-mode {mode}: {len(runs)} sets x {raw['photos']} photos + 1 intruder, {w}x{h} px, no reference")
        print(f"genuine photos kept: {kept}/{genuine} = {100 * kept / max(genuine, 1):.1f} %   (goal >= 90 %)")
        if procedural:
            pk = sum(len(r["kept"]) for r in procedural)
            print(f"  of them on procedural covers: {pk}/{len(procedural) * raw['photos']} = "
                  f"{100 * pk / max(len(procedural) * raw['photos'], 1):.1f} %")
        print(f"intruders rejected: {len(runs) - intruders_kept}/{len(runs)} = "
              f"{100 * (len(runs) - intruders_kept) / max(len(runs), 1):.1f} %   (goal 100 %)")
        if len(errs):
            print(f"residual error over the cover (anchor px), per photo RMS: mean {errs.mean():.3f}, median "
                  f"{np.median(errs):.3f}, 95th pct {np.percentile(errs, 95):.3f}, worst {errs.max():.3f}   "
                  f"(goal <= 0.5 mean)")
        outlines = [r["outline_error"] for r in runs if r["outline_error"] is not None]
        right = sum(e <= OUTLINE_TOLERANCE for e in outlines)
        print(f"output rectified to an outline in {len(outlines)}/{len(runs)} sets: {right} right (corners within "
              f"{OUTLINE_TOLERANCE:.0%} of the diagonal), {len(outlines) - right} wrong"
              + (f" (worst {max(outlines):.1%})" if outlines else "") + "; the others in the anchor photo's frame")
        print(f"seconds per set (alignment pre-pass, 1 thread): mean {np.mean([r['seconds'] for r in runs]):.1f}")
        reasons: dict[str, int] = {}
        for r in runs:
            for name, why in r["rejected"].items():
                if not name.startswith("INTRUDER"):
                    key = why.split("(")[0].strip()
                    reasons[key] = reasons.get(key, 0) + 1
        print("genuine photos left out: " + ("; ".join(f"{n} x {k}" for k, n in
                                                       sorted(reasons.items(), key=lambda kv: -kv[1])) or "none"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", type=int, default=8, help="sets whose cover is drawn")
    ap.add_argument("--procedural", type=int, default=4, help="more sets with a procedural cover forced")
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--modes", default="consensus", help="comma-separated --align-mode values to measure")
    ap.add_argument("--quick", action="store_true", help="3 drawn + 2 procedural sets")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    args = ap.parse_args()
    args.modes = args.modes.split(",")
    if args.quick:
        args.sequences, args.procedural = 3, 2
    raw = run(args)
    if args.json:
        args.json.write_text(json.dumps(raw) + "\n")
    report(raw)


if __name__ == "__main__":
    main()
