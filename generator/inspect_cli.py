"""`drs-inspect`: what is in a shard or dataset, and a contact sheet to look at.

    drs-inspect DATASET_DIR                 # summary of every shard
    drs-inspect shard-00000.h5 --out sheet.png --sequences 4

The sheet has one row per sequence: the clean target (framed in green) beside its inputs; with
--masks, a second row shows occluders (red), shadows (blue) and highlights (yellow).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from generator.dataset_format import (
    DatasetFormatError,
    SequenceRecord,
    ShardReader,
    atomic_path,
    read_manifest,
    run_command,
)

PAD = 4


def _shards(path: Path) -> tuple[list[Path], dict | None]:
    if path.is_file():
        return [path], None
    manifest = read_manifest(path)
    return [path / e["file"] for e in manifest["shards"]], manifest


def summarize(path: Path) -> str:
    shards, manifest = _shards(path)
    lines = []
    total = total_bytes = 0
    for shard in shards:
        with ShardReader(shard) as r:
            k, (h, w) = r.sequence_length, r.image_size
            ids = r.sequence_ids
            size = shard.stat().st_size
            lines.append(f"{shard.name}: {len(r)} sequences (ids {ids.min()}..{ids.max()}), K={k}, {w}x{h}, "
                         f"source={r.attrs.get('source')}, target={'yes' if r.has_target else 'no'}, "
                         f"masks={','.join(r.mask_names) or '-'}, {size / 2**20:.1f} MiB, "
                         f"{size / max(len(r), 1) / 1e6:.3f} MB/sequence")
            lines.append(f"    schema {r.attrs.get('schema_version')}: {storage_line(r.storage(), len(r))}")
            total_bytes += size
            if r.mask_names and len(r):
                rec = r.read(0)
                cover = ", ".join(f"{n} {rec.masks[n].mean() * 100:.1f}%" for n in r.mask_names)
                lines.append(f"    first sequence mask coverage: {cover}")
            total += len(r)
    head = [f"{path}: {total} sequences in {len(shards)} shard(s), {total_bytes / max(total, 1) / 1e6:.3f} MB/sequence"]
    if manifest:
        rej = manifest.get("rejected", {})
        head.append(f"seed {manifest.get('seed')}, generator {manifest.get('generator_version')}, "
                    f"Blender {manifest.get('blender_version')}, devices {manifest.get('devices')}")
        head.append("rejected: " + (", ".join(f"{len(v)} {k}" for k, v in rej.items()) or "nothing"))
        if manifest.get("timings"):
            head.append("time per stage (s): " + json.dumps(manifest["timings"]))
        if manifest.get("missing_shards"):
            head.append(f"MISSING shards: {manifest['missing_shards']}")
    return "\n".join(head + lines)


def storage_line(storage: dict[str, dict], n: int) -> str:
    """'inputs 0.560 MB/seq zstd(6) predictor target_up, ...; fletcher32 on every chunk' from ShardReader.storage().

    The masks are summed into one entry. Left out: sequence_id (8 bytes a sequence) and params,
    whose strings (~12 KB a rendered sequence) live in HDF5's global heap, counted only in the
    file's size."""
    groups: dict[str, list[dict]] = {}
    for name, info in storage.items():
        if name in ("inputs", "target") or name.startswith("masks/"):
            groups.setdefault("masks" if name.startswith("masks/") else name, []).append(info)
    parts = []
    for name, infos in sorted(groups.items(), key=lambda item: ["inputs", "target", "masks"].index(item[0])):
        filters = "+".join(infos[0]["filters"]) or "uncompressed"
        predictor = "" if infos[0]["predictor"] == "none" else f" predictor {infos[0]['predictor']}"
        parts.append(f"{name} {sum(i['bytes'] for i in infos) / max(n, 1) / 1e6:.3f} MB/seq {filters}{predictor}")
    checked = [name for name, infos in groups.items() if all(i["fletcher32"] for i in infos)]
    check = ("fletcher32 on every chunk" if len(checked) == len(groups)
             else f"fletcher32 on {', '.join(checked)}" if checked else "no checksums")
    return f"{', '.join(parts)}; {check}"


def _mask_overlay(rec: SequenceRecord, j: int) -> np.ndarray:
    img = rec.inputs[j].astype(np.float32) * 0.45
    colours = {"occluder": (255, 40, 40), "shadow": (60, 90, 255), "specular": (255, 230, 0)}
    for name, colour in colours.items():
        if name in rec.masks:
            m = rec.masks[name][j].astype(bool)
            img[m] = 0.4 * img[m] + 0.6 * np.array(colour)
    return img.astype(np.uint8)


def contact_sheet(path: Path, sequences: int = 4, masks: bool = False) -> Image.Image:
    shards, _ = _shards(path)
    rows: list[list[np.ndarray]] = []
    labels: list[str] = []
    for shard in shards:
        with ShardReader(shard) as r:
            for i in range(min(len(r), sequences - len(labels) // (2 if masks else 1))):
                rec = r.read(i)
                target = rec.target if rec.target is not None else np.zeros_like(rec.inputs[0])
                rows.append([target, *rec.inputs])
                labels.append(f"seq {rec.sequence_id}")
                if masks and rec.masks:
                    rows.append([np.zeros_like(target)] + [_mask_overlay(rec, j) for j in range(len(rec.inputs))])
                    labels.append("masks")
        if len(rows) >= sequences * (2 if masks else 1):
            break
    if not rows:
        raise DatasetFormatError(f"{path}: no sequences to show")
    h, w = rows[0][0].shape[:2]
    cols = max(len(r) for r in rows)
    label_w = 70
    sheet = Image.new("RGB", (label_w + cols * (w + PAD) + PAD, len(rows) * (h + PAD) + PAD + 16), (30, 30, 30))
    draw = ImageDraw.Draw(sheet)
    draw.text((label_w + PAD, 2), "target", fill=(120, 255, 120))
    draw.text((label_w + w + 2 * PAD, 2), "inputs ->", fill=(230, 230, 230))
    for ri, (row, label) in enumerate(zip(rows, labels, strict=True)):
        y = 16 + PAD + ri * (h + PAD)
        draw.text((4, y + h // 2 - 6), label, fill=(230, 230, 230))
        for ci, img in enumerate(row):
            x = label_w + PAD + ci * (w + PAD)
            sheet.paste(Image.fromarray(img), (x, y))
            if ci == 0 and label != "masks":
                draw.rectangle([x - 2, y - 2, x + w + 1, y + h + 1], outline=(80, 220, 80), width=2)
    return sheet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="drs-inspect", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="a shard (.h5) or a dataset directory")
    parser.add_argument("--out", type=Path, help="write a contact sheet PNG here")
    parser.add_argument("--sequences", type=int, default=4, help="rows in the contact sheet (default 4)")
    parser.add_argument("--masks", action="store_true", help="add a row of mask overlays under each sequence")
    args = parser.parse_args(argv)
    if not args.path.exists():
        print(f"drs-inspect: {args.path} does not exist", file=sys.stderr)
        return 2

    def body() -> None:
        print(summarize(args.path))
        if args.out:
            sheet = contact_sheet(args.path, args.sequences, args.masks)
            with atomic_path(args.out) as tmp:
                sheet.save(tmp, format="PNG")
            print(f"contact sheet: {args.out}")

    return run_command("drs-inspect", body, on_interrupt="nothing was written")


if __name__ == "__main__":
    sys.exit(main())
