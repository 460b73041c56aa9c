"""Sequences per second and bytes per sequence: HDF5 shards (schema 2, and schema 1 for reference)
beside the same sequences as a folder of PNG files.

    .venv/bin/python benchmarks/loader_throughput.py --dataset /work/data/bench-256  # rendered (what counts)
    .venv/bin/python benchmarks/loader_throughput.py            # 48 smooth test sequences, 256 px, K=9
    .venv/bin/python benchmarks/loader_throughput.py --quick    # 16 sequences, 128 px, seconds

Without --dataset the sequences are the tests' smooth synthetic ones, which PNG compresses far
better than real renders (grain, noise): --dataset measures what training will actually read.

The first --sequences sequences are written three ways in one temporary folder: shards of the
current schema (Zstd, predictor, checksums), shards of schema 1 (LZF), and a PNG folder (the K
inputs and the target as RGB PNGs, each mask as a 1-bit PNG). Bytes per sequence count all of it
(inputs + target + masks). Every loader is the training loader (trainer/data.py: the same item
requests, augmentation, uint8 tensors and collate, batches of 10, 2 DataLoader workers) over one
of the three; the loaders run in turn, twice, and the faster round of each counts, so a burst of
load on the shared machine hurts them alike.
Speed is given twice: sequences per second (wall clock, 2 workers) and sequences per CPU-second of
the loader's processes, which does not move with the load other jobs put on a shared machine.
Also printed: what one training step consumes (sequences per second of drs_small at the default
training crop), so "loader / training" says how far data is from starving the model.
Goals: shard bytes <= PNG bytes, loader >= 3x PNG and >= 10x training.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.fixtures_data, run from anywhere

from generator.dataset_format import (  # noqa: E402
    SCHEMA_VERSION,
    SequenceRecord,
    ShardReader,
    dataset_shards,
    shard_entry,
    shard_path,
    write_manifest,
    write_shard,
)
from tests.fixtures_data import make_sequence  # noqa: E402
from trainer.data import ItemRequest, SetBatchSampler, ShardSetDataset, _to_tensor, collate_sets, make_loader  # noqa: E402

PER_SHARD = 16


class PngFolder(Dataset):
    """DIR/seq-00000/{0..K-1}.png + target.png, served exactly as ShardSetDataset serves a shard.

    Same item requests, same frame subset and augmentation (ShardSetDataset's own geometry step,
    same random draws), same uint8 (k, 3, H, W) tensors and collate: the two loaders differ only in
    where the pixels come from, and `main` checks that their first batches are equal. The masks
    (mask-*.png) are on disk for the byte count but not read: training does not use them."""

    def __init__(self, root: Path, like: ShardSetDataset):
        self.dirs = sorted(p for p in root.iterdir() if p.is_dir())
        self.like = like

    def __len__(self) -> int:
        return len(self.dirs)

    def __getitem__(self, request: ItemRequest) -> dict:
        rng = np.random.default_rng(request.aug_seed)
        frames = rng.permutation(self.like.sequence_length)[:request.k] if self.like.augment else range(request.k)
        d = self.dirs[request.index]
        load = lambda p: np.asarray(Image.open(p).convert("RGB"))  # noqa: E731
        inputs, target = self.like._geometry(rng, np.stack([load(d / f"{j}.png") for j in frames]), load(d / "target.png"))
        return {"inputs": _to_tensor(inputs), "target": _to_tensor(target[None])[0], "sequence_id": request.index}


def synthetic_records(n: int, k: int, size: int, seed: int = 0) -> tuple[list[SequenceRecord], dict]:
    records = []
    for sid in range(n):
        inputs, target, occluder = make_sequence(np.random.default_rng([seed, sid]), k, size)
        records.append(SequenceRecord(sid, inputs, target, {"occluder": occluder}, {"sequence_id": sid}))
    return records, {"seed": seed, "generator_version": "fixture", "blender_version": "none"}


def rendered_records(dataset: Path, n: int) -> tuple[list[SequenceRecord], dict]:
    """The first n sequences of a rendered dataset (drs-generate output, any schema)."""
    records, attrs = [], {}
    for path in dataset_shards(dataset):
        with ShardReader(path) as reader:
            attrs = reader.attrs
            records += [reader.read(i) for i in range(min(len(reader), n - len(records)))]
        if len(records) >= n:
            break
    return records, attrs


def write_shards(out: Path, records: list[SequenceRecord], attrs: dict, schema_version: int) -> Path:
    entries = []
    for start in range(0, len(records), PER_SHARD):
        chunk = records[start:start + PER_SHARD]
        path = write_shard(shard_path(out, start // PER_SHARD), chunk, seed=attrs["seed"], config={},
                           generator_version=attrs["generator_version"], blender_version=attrs["blender_version"],
                           schema_version=schema_version)
        entries.append(shard_entry(out, path, chunk[0].sequence_id, len(chunk)))
    write_manifest(out, seed=attrs["seed"], config={}, shards=entries)
    return out


def write_pngs(root: Path, records: list[SequenceRecord]) -> None:
    for sid, rec in enumerate(records):
        d = root / f"seq-{sid:05d}"
        d.mkdir(parents=True)
        for j, img in enumerate(rec.inputs):
            Image.fromarray(img).save(d / f"{j}.png")
        Image.fromarray(rec.target).save(d / "target.png")
        for name, mask in rec.masks.items():
            for j, m in enumerate(mask):
                Image.fromarray(m.astype(bool)).save(d / f"mask-{name}-{j}.png")  # mode "1": 1 bit per pixel


def dir_bytes(root: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in root.rglob(pattern))


def time_loader(loader) -> tuple[float, float]:
    """(sequences per second, sequences per CPU-second) through one iterator, both from the end of
    the first batch (worker start-up excluded) to the last. CPU time is that of this process and
    its workers: what the loader costs, whatever else the machine runs."""
    procs: list[psutil.Process] = []

    def cpu() -> dict[int, float]:
        times = {}
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                times[proc.pid] = sum(proc.cpu_times()[:2])
        return times

    n, start, first, last = 0, None, {}, {}
    for batch in loader:
        if start is None:  # the workers are up: list them once (walking /proc every batch costs ms)
            procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
            start, first = time.perf_counter(), cpu()
            continue
        n += batch["inputs"].shape[0]
        last.update(cpu())  # the workers exit with the iterator: sample them while they live
    wall = time.perf_counter() - start
    used = sum(t - first.get(pid, 0.0) for pid, t in last.items())
    return n / wall, n / used


def training_consumption(crop: int, batch: int, k: int, steps: int) -> float:
    """Sequences per second one drs_small training step consumes (forward, backward, Adam) on CPU."""
    from model import build_model
    from trainer.optim import compute_loss

    net = build_model("drs_small")
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    cfg = type("L", (), {"loss": "l1", "ssim_weight": 0.0})
    x, y = torch.rand(batch, k, 3, crop, crop), torch.rand(batch, 3, crop, crop)
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        loss = compute_loss(net(x), y, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=48)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--length", type=int, default=9, help="images per sequence (K)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--train-crop", type=int, default=128, help="crop of the training-consumption step")
    parser.add_argument("--train-k", type=int, default=5, help="mean set size of training (k cycles 1..9)")
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="16 sequences at 128 px, 6 epochs, 2 train steps")
    parser.add_argument("--dataset", type=Path, help="read rendered sequences from this dataset (drs-generate output)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.quick:
        # 6 epochs (12 batches): fewer leave too few CPU clock ticks (10 ms) for the per-CPU-second figure
        args.sequences, args.resolution, args.epochs, args.train_steps = 16, 128, 6, 2
        args.train_crop = min(args.train_crop, args.resolution)

    if args.dataset:
        records, attrs = rendered_records(args.dataset, args.sequences)
    else:
        records, attrs = synthetic_records(args.sequences, args.length, args.resolution)
    args.sequences = len(records)
    args.length, args.resolution = records[0].inputs.shape[0], records[0].inputs.shape[1]
    mask_names = sorted(records[0].masks)

    with tempfile.TemporaryDirectory(prefix="drs-loader-bench-") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        write_shards(tmp / "v2", records, attrs, SCHEMA_VERSION)
        write_s = (time.perf_counter() - start) / args.sequences
        write_shards(tmp / "v1", records, attrs, 1)
        write_pngs(tmp / "png", records)
        del records

        sampler = SetBatchSampler(args.sequences, args.batch, args.length, args.length, seed=0)
        batches = []  # every epoch's batches up front: one iterator, workers started once, for every loader
        for epoch in range(args.epochs):
            sampler.set_epoch(epoch)
            batches += list(sampler)
        datasets = {"v2": ShardSetDataset(tmp / "v2", crop=None, augment=True),
                    "v1": ShardSetDataset(tmp / "v1", crop=None, augment=True)}
        datasets["png"] = PngFolder(tmp / "png", like=datasets["v2"])
        firsts = [collate_sets([ds[r] for r in batches[0]]) for ds in datasets.values()]
        assert all(torch.equal(f[key], firsts[0][key]) for f in firsts for key in ("inputs", "target")), \
            "the three loaders must deliver the same batches"
        loaders = {name: (lambda ds=ds: make_loader(ds, batches, num_workers=args.workers)) for name, ds in datasets.items()}
        rate = {name: 0.0 for name in loaders}
        cpu_rate = dict(rate)
        for _ in range(2):
            for name, make in loaders.items():
                wall, per_cpu = time_loader(make())
                rate[name], cpu_rate[name] = max(rate[name], wall), max(cpu_rate[name], per_cpu)
        size = {"v2": dir_bytes(tmp / "v2", "*.h5"), "v1": dir_bytes(tmp / "v1", "*.h5"),
                "png": dir_bytes(tmp / "png", "*.png"), "png_masks": dir_bytes(tmp / "png", "mask-*.png")}
        size = {k: v / args.sequences for k, v in size.items()}

    crop = min(args.train_crop, args.resolution)
    train_rate = training_consumption(crop, args.batch, args.train_k, args.train_steps)
    figures = {
        "resolution": args.resolution, "K": args.length, "sequences": args.sequences, "workers": args.workers,
        "masks": mask_names, "data": str(args.dataset) if args.dataset else "smooth test sequences",
        "hdf5_seq_per_s": rate["v2"], "hdf5_v1_seq_per_s": rate["v1"], "png_seq_per_s": rate["png"],
        "hdf5_over_png": rate["v2"] / rate["png"], "hdf5_v1_over_png": rate["v1"] / rate["png"],
        "hdf5_seq_per_cpu_s": cpu_rate["v2"], "hdf5_v1_seq_per_cpu_s": cpu_rate["v1"],
        "png_seq_per_cpu_s": cpu_rate["png"], "hdf5_over_png_cpu": cpu_rate["v2"] / cpu_rate["png"],
        "hdf5_bytes_per_seq": size["v2"], "hdf5_v1_bytes_per_seq": size["v1"], "png_bytes_per_seq": size["png"],
        "png_mask_bytes_per_seq": size["png_masks"], "hdf5_write_s_per_seq": write_s,
        "train_seq_per_s": train_rate, "hdf5_over_train": rate["v2"] / train_rate,
        "train_step": f"drs_small, crop {crop}, batch {args.batch}, k={args.train_k}, CPU",
    }
    print(f"loader throughput, {args.sequences} sequences of K={args.length} at {args.resolution} px "
          f"({figures['data']}), masks {','.join(mask_names) or '-'}, batch {args.batch}, {args.workers} workers")
    print(f"  shards, schema {SCHEMA_VERSION}: {rate['v2']:7.1f} seq/s {cpu_rate['v2']:7.1f} seq/CPU-s "
          f"{size['v2'] / 1e6:6.3f} MB/seq (written at {write_s * 1e3:.0f} ms/seq)")
    print(f"  shards, schema 1: {rate['v1']:7.1f} seq/s {cpu_rate['v1']:7.1f} seq/CPU-s {size['v1'] / 1e6:6.3f} MB/seq")
    print(f"  PNG folder      : {rate['png']:7.1f} seq/s {cpu_rate['png']:7.1f} seq/CPU-s {size['png'] / 1e6:6.3f} MB/seq "
          f"(masks {size['png_masks'] / 1e6:.3f} of it)")
    ok = lambda cond: "met" if cond else "MISSED"  # noqa: E731
    print(f"  bytes, shards / PNG: {size['v2'] / size['png']:.2f} (goal <= 1: {ok(size['v2'] <= size['png'])})")
    speed, cpu_speed = rate["v2"] / rate["png"], cpu_rate["v2"] / cpu_rate["png"]
    print(f"  speed, shards / PNG: {speed:.1f}x in seq/s (goal >= 3x: {ok(speed >= 3)}), {cpu_speed:.1f}x per "
          f"CPU-second (goal >= 3x: {ok(cpu_speed >= 3)}); schema 1 / PNG: {rate['v1'] / rate['png']:.1f}x in seq/s")
    print(f"  training consumes {train_rate:.2f} seq/s ({figures['train_step']}); loader / training: "
          f"{rate['v2'] / train_rate:.0f}x (goal >= 10x: {ok(rate['v2'] >= 10 * train_rate)})")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
