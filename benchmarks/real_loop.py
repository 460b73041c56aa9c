"""The real-data loop end to end, on semi-real captures: does fine-tuning help on held-out covers?

    .venv/bin/python benchmarks/real_loop.py                   # 16 training covers, 300 steps, 3 new covers (~3 min)
    .venv/bin/python benchmarks/real_loop.py --quick           # 6 covers, 60 steps

It runs the project's own commands, as a user would:

    photos (tests/semireal.py: a cover on a table, handheld, glare, shadows, things in the way)
      -> drs-ingest (train, val, test folders)
      -> drs-evaluate with the packaged weights (what drs-restore uses by default)
      -> drs-train experiment=finetune init_from=<packaged weights>
      -> drs-evaluate with the fine-tuned checkpoint, on the same held-out test sequences
      -> drs-restore --align on held-out photos of new covers (3 by default), with both checkpoints
      -> OUT/comparison.png: per new cover, the photos, both restorations, the clean reference
         (flat), and what the aligner kept

and prints the network's PSNR on the held-out test set before and after fine-tuning.
tests/test_real_loop.py runs the same function at toy size.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.semireal, run from anywhere

from generator.align import find_quad, flat_size, quad_aspect, rectify_map, render_view  # noqa: E402
from tests.semireal import make_sequence  # noqa: E402
from trainer.restore import PACKAGED_WEIGHTS  # noqa: E402

BIN = Path(sys.executable).parent
HELD_OUT_SEEDS = (9, 10, 11, 12, 13, 14)  # new covers for drs-restore (none is a training/val/test seed)


def run(*args: str, quiet: bool = False) -> None:
    print(f"$ {' '.join(shlex.quote(a) for a in args)}", flush=True)
    subprocess.run([str(BIN / args[0]), *args[1:]], check=True,
                   stdout=subprocess.DEVNULL if quiet else None, stderr=subprocess.STDOUT if quiet else None)


def restore(photos: list[str], checkpoint: Path, out: Path) -> dict:
    """drs-restore --align as a user runs it; returns what its console said of the alignment:
    {"alignment": the line, "skipped": photos left out, "kept": photos restored}."""
    print(f"$ drs-restore --align --checkpoint {checkpoint} --out {out} ... ({len(photos)} photos)", flush=True)
    done = subprocess.run([str(BIN / "drs-restore"), "--align", "--checkpoint", str(checkpoint), "--out", str(out),
                           "--force", *photos], check=True, capture_output=True, text=True)
    lines = done.stderr.splitlines()
    how = next((ln.split("alignment: ", 1)[1] for ln in lines if ln.startswith("drs-restore: alignment: ")), "")
    skipped = sum(ln.startswith("drs-restore: skipping ") for ln in lines)
    return {"alignment": how, "skipped": skipped, "kept": len(photos) - skipped}


def model_overrides(checkpoint: Path) -> list[str]:
    """model=... (and its aggregation) matching the checkpoint: fine-tuning needs the same network,
    and the packaged weights need not be of the config's default architecture."""
    from model.checkpoint import load_checkpoint

    payload = load_checkpoint(checkpoint)
    out = [f"model={payload['arch']}"]
    if payload["arch_args"].get("aggregation"):
        out.append(f"model.aggregation={payload['arch_args']['aggregation']}")
    return out


def make_captures(root: Path, seeds: range, photos: int, size: tuple[int, int]) -> None:
    for s in seeds:
        make_sequence(s, photos=photos, photo_size=size).write(root / f"cover_{s:04d}")


def evaluate(checkpoint: Path, test: Path, out: Path, k: int) -> dict[str, float]:
    run("drs-evaluate", f"checkpoint={checkpoint}", f"data.test={test}", f"out_dir={out}", f"ks=[{k}]", "subsets=1",
        "baselines=[median]", "grid_sequences=0", "device=cpu", quiet=True)
    metrics = json.loads((out / "metrics.json").read_text())
    net, med = metrics["network"][str(k)], metrics["median"][str(k)]
    return {"psnr": net["psnr"], "psnr_matched": net["psnr_matched"], "median_psnr": med["psnr"]}


def real_loop(out: Path, *, train_covers: int, val_covers: int, test_covers: int, photos: int,
              photo_size: tuple[int, int], resolution: int, steps: int, crop: int, batch: int = 4,
              lr: float = 1e-4, held_out: int = 3) -> dict:
    """Run the loop into `out`; returns {"before": metrics, "after": metrics, "k": K, "held_out": what
    drs-restore kept of each new cover's photos, paths...}. held_out: how many new covers are restored."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    caps = out / "captures"
    make_captures(caps / "train", range(1000, 1000 + train_covers), photos, photo_size)
    make_captures(caps / "val", range(2000, 2000 + val_covers), photos, photo_size)
    make_captures(caps / "test", range(3000, 3000 + test_covers), photos, photo_size)
    # New covers (seeds not among the training, validation or test ones), the first on a plain table.
    # Several, not one: whether drs-restore can align a set depends on the cover (see the README).
    new_covers = {s: make_sequence(s, photos=photos, photo_size=photo_size, intruders=0,
                                   table="plain" if s == HELD_OUT_SEEDS[0] else None)
                  for s in HELD_OUT_SEEDS[:held_out]}
    for s, cap in new_covers.items():
        cap.write(out / "held_out" / f"cover_{s:04d}")
        (out / "held_out" / f"cover_{s:04d}" / "reference.jpg").unlink()  # a user restoring has no clean shot
    data = {}
    for split in ("train", "val", "test"):
        data[split] = out / "data" / split
        run("drs-ingest", str(caps / split), "--out", str(data[split]), "--resolution", str(resolution),
            "--overwrite", "--quiet")
    k = min(json.loads((data[s] / "manifest.json").read_text())["sequence_length"] for s in data)
    before = evaluate(PACKAGED_WEIGHTS, data["test"], out / "eval_pretrained", k)
    every = max(1, steps // 3)
    run("drs-train", "experiment=finetune", f"init_from={PACKAGED_WEIGHTS}", *model_overrides(PACKAGED_WEIGHTS),
        f"data.train={data['train']}",
        f"data.val={data['val']}", f"out_dir={out / 'finetune'}", f"trainer.max_steps={steps}", f"data.crop={crop}",
        f"data.k_max={k}", f"data.batch_size={batch}", "data.num_workers=0", f"trainer.val_every={every}",
        f"trainer.ckpt_every={every}", f"trainer.log_every={every}", f"optim.warmup_steps={max(1, steps // 10)}",
        f"optim.lr={lr}")
    tuned = out / "finetune" / "checkpoints" / "best.pt"
    after = evaluate(tuned, data["test"], out / "eval_finetuned", k)
    restored = {}
    for s in new_covers:
        folder = out / "held_out" / f"cover_{s:04d}"
        photos_in = sorted(str(p) for p in folder.glob("IMG_*.jpg"))
        for name, ckpt in (("pretrained", PACKAGED_WEIGHTS), ("finetuned", tuned)):
            # The alignment does not depend on the checkpoint (deterministic): either run's words do.
            restored[s] = restore(photos_in, ckpt, folder / f"restored_{name}.png")
    comparison(new_covers, restored, out).save(out / "comparison.png")
    result = {"k": k, "before": before, "after": after, "seconds": time.perf_counter() - start,
              "held_out": {str(s): r for s, r in restored.items()}, "comparison": str(out / "comparison.png")}
    (out / "real_loop.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def comparison(covers: dict, restored: dict, out: Path) -> Image.Image:
    """One row per new cover: photos (downscaled), the two restorations and the clean reference
    rectified the same way, under a line saying how many photos drs-restore aligned and fused."""
    rows = [_comparison_row(cap, restored[s], out / "held_out" / f"cover_{s:04d}") for s, cap in covers.items()]
    sheet = Image.new("RGB", (max(r.size[0] for r in rows), sum(r.size[1] for r in rows)), (30, 30, 30))
    y = 0
    for row in rows:
        sheet.paste(row, (0, y))
        y += row.size[1]
    return sheet


def _comparison_row(cap, said: dict, folder: Path, height: int = 240) -> Image.Image:
    """One new cover's row, every tile `height` px tall (the restorations are the flat cover when its
    outline was found, else the anchor photo's frame; the reference is the flat cover)."""
    restored = [Image.open(folder / f"restored_{n}.png").convert("RGB") for n in ("pretrained", "finetuned")]
    found = find_quad(cap.reference)
    quad = found.quad if found.quad is not None else cap.quad
    size = flat_size(quad_aspect(quad, cap.reference.shape[1::-1]), height)
    truth = Image.fromarray(render_view(cap.reference, rectify_map(quad, size), size))
    tiles = [("photo", Image.fromarray(p)) for p in cap.photos[:4]]
    tiles += [("pretrained", restored[0]), ("fine-tuned", restored[1]), ("clean reference", truth)]
    tiles = [(label, t.resize((max(1, round(t.size[0] * height / t.size[1])), height))) for label, t in tiles]
    row = Image.new("RGB", (sum(t.size[0] + 6 for _, t in tiles) + 6, height + 40), (30, 30, 30))
    draw, x = ImageDraw.Draw(row), 6
    n = said["kept"] + said["skipped"]
    fused = (f"{said['kept']} of {n} photos aligned and restored together" if said["kept"] > 1 else
             f"no consensus among the {n} photos: the anchor photo restored alone")
    draw.text((6, 4), f"{folder.name} ({cap.info['picture']}, {cap.info['table']} table): {fused}",
              fill=(255, 220, 120))
    for label, tile in tiles:
        row.paste(tile, (x, 36))
        draw.text((x, 20), label, fill=(230, 230, 230))
        x += tile.size[0] + 6
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/real_loop"))
    ap.add_argument("--train-covers", type=int, default=16)
    ap.add_argument("--test-covers", type=int, default=6)
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--resolution", type=int, default=128, help="drs-ingest --resolution (short side)")
    ap.add_argument("--lr", type=float, default=1e-4, help="fine-tuning learning rate (experiment=finetune: 2e-5)")
    ap.add_argument("--held-out", type=int, default=3, help=f"new covers restored (at most {len(HELD_OUT_SEEDS)})")
    ap.add_argument("--quick", action="store_true", help="6 training covers, 3 test covers, 60 steps")
    args = ap.parse_args()
    if args.quick:
        args.train_covers, args.test_covers, args.steps = 6, 3, 60
    r = real_loop(args.out, train_covers=args.train_covers, val_covers=2, test_covers=args.test_covers,
                  photos=args.photos, photo_size=(640, 480), resolution=args.resolution, steps=args.steps,
                  crop=min(96, args.resolution), lr=args.lr, held_out=args.held_out)
    b, a = r["before"], r["after"]
    print(f"\nheld-out semi-real test sequences ({args.test_covers} covers, K={r['k']}, {args.resolution} px short side):")
    print(f"  packaged weights ({PACKAGED_WEIGHTS.name}): PSNR {b['psnr']:.2f} dB (histogram-matched {b['psnr_matched']:.2f})")
    print(f"  fine-tuned, {args.steps} steps, lr {args.lr:g}:  PSNR {a['psnr']:.2f} dB (histogram-matched {a['psnr_matched']:.2f})")
    print(f"  per-pixel median:                 PSNR {b['median_psnr']:.2f} dB")
    for seed, said in r["held_out"].items():
        print(f"  new cover {seed}: drs-restore kept {said['kept']} of {said['kept'] + said['skipped']} photos "
              f"({said['alignment']})")
    print(f"  comparison picture: {r['comparison']}  ({r['seconds'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
