"""Sequences per second from the HDF5 shard loader beside the same data as a folder of PNG files.

    .venv/bin/python benchmarks/loader_throughput.py            # 48 sequences, 256 px, K=9
    .venv/bin/python benchmarks/loader_throughput.py --quick    # 16 sequences, 128 px, seconds
    .venv/bin/python benchmarks/loader_throughput.py --dataset data/synth   # rendered sequences instead

Without --dataset the sequences are the tests' smooth synthetic ones, which PNG compresses far
better than real renders (grain, noise): --dataset measures what training will actually read.

Both loaders deliver the same thing (all K images and the target of a sequence as float tensors,
batches of 10, 2 DataLoader workers), measured in one run under the same machine load. Also
printed: bytes per sequence on disk for each, and what one training step consumes (sequences per
second of drs_small at the default training crop), so "loader / training" says how far data is
from starving the model. Goal: loader >= 3x PNG and >= 10x training.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.fixtures_data, run from anywhere

from tests.fixtures_data import make_sequence, make_tiny_dataset  # noqa: E402
from trainer.data import SetBatchSampler, ShardSetDataset, make_loader  # noqa: E402


class PngFolder(Dataset):
    """DIR/seq-00000/{0..K-1}.png + target.png -> inputs uint8 (K, 3, H, W), target uint8 (3, H, W).

    uint8 like the shard loader's items, so both send the same bytes through the workers."""

    def __init__(self, root: Path):
        self.dirs = sorted(p for p in root.iterdir() if p.is_dir())

    def __len__(self) -> int:
        return len(self.dirs)

    def __getitem__(self, i: int) -> dict:
        d = self.dirs[i]
        frames = sorted(d.glob("[0-9]*.png"), key=lambda p: int(p.stem))
        load = lambda p: torch.from_numpy(np.array(Image.open(p).convert("RGB")).transpose(2, 0, 1).copy())  # noqa: E731
        return {"inputs": torch.stack([load(p) for p in frames]), "target": load(d / "target.png")}


def write_pngs(root: Path, n: int, k: int, size: int, seed: int) -> None:
    for sid in range(n):
        inputs, target, _ = make_sequence(np.random.default_rng([seed, sid]), k, size)
        d = root / f"seq-{sid:05d}"
        d.mkdir(parents=True)
        for j in range(k):
            Image.fromarray(inputs[j]).save(d / f"{j}.png")
        Image.fromarray(target).save(d / "target.png")


def copy_rendered(dataset: Path, shards_dir: Path, png_root: Path, n: int) -> int:
    """The first n sequences of a rendered dataset, re-written as shards and as a PNG folder."""
    from generator.dataset_format import (
        ShardReader,
        dataset_shards,
        shard_entry,
        shard_path,
        write_manifest,
        write_shard,
    )

    records, attrs = [], {}
    for path in dataset_shards(dataset):
        with ShardReader(path) as reader:
            attrs = reader.attrs
            for i in range(min(len(reader), n - len(records))):
                records.append(reader.read(i))
        if len(records) >= n:
            break
    entries = []
    for start in range(0, len(records), 16):
        path = write_shard(shard_path(shards_dir, start // 16), records[start:start + 16], seed=attrs["seed"],
                           config={}, generator_version=attrs["generator_version"], blender_version=attrs["blender_version"])
        entries.append(shard_entry(shards_dir, path, records[start].sequence_id, len(records[start:start + 16])))
    write_manifest(shards_dir, seed=attrs["seed"], config={}, shards=entries)
    for sid, rec in enumerate(records):
        d = png_root / f"seq-{sid:05d}"
        d.mkdir(parents=True)
        for j, img in enumerate(rec.inputs):
            Image.fromarray(img).save(d / f"{j}.png")
        Image.fromarray(rec.target).save(d / "target.png")
    return len(records)


def dir_bytes(root: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in root.rglob(pattern))


def time_loader(loader) -> float:
    """Sequences per second through one iterator (the first batch, with worker start-up, excluded)."""
    n, start = 0, None
    for batch in loader:
        if start is None:
            start = time.perf_counter()
            continue
        n += batch["inputs"].shape[0]
    return n / (time.perf_counter() - start)


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
    parser.add_argument("--quick", action="store_true", help="16 sequences at 128 px, 2 epochs, 2 train steps")
    parser.add_argument("--dataset", type=Path, help="read rendered sequences from this dataset (drs-generate output)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.quick:
        args.sequences, args.resolution, args.epochs, args.train_steps = 16, 128, 3, 2
        args.train_crop = min(args.train_crop, args.resolution)

    with tempfile.TemporaryDirectory(prefix="drs-loader-bench-") as tmp:
        tmp = Path(tmp)
        if args.dataset:
            shards = tmp / "shards"
            args.sequences = copy_rendered(args.dataset, shards, tmp / "png", args.sequences)
            probe = ShardSetDataset(shards, crop=None)
            args.length, args.resolution = probe.sequence_length, probe.image_size[0]
        else:
            shards = make_tiny_dataset(tmp / "shards", num_sequences=args.sequences, k=args.length,
                                       size=args.resolution, sequences_per_shard=16)
            write_pngs(tmp / "png", args.sequences, args.length, args.resolution, seed=0)

        ds = ShardSetDataset(shards, crop=None, augment=True)
        sampler = SetBatchSampler(len(ds), args.batch, args.length, args.length, seed=0)
        batches = []  # every epoch's batches up front: one iterator, workers started once, for both loaders
        for epoch in range(args.epochs):
            sampler.set_epoch(epoch)
            batches += list(sampler)
        h5_rate = time_loader(make_loader(ds, batches, num_workers=args.workers))
        png_batches = [[r.index for r in b] for b in batches]
        png_rate = time_loader(DataLoader(PngFolder(tmp / "png"), batch_sampler=png_batches, num_workers=args.workers,
                                          prefetch_factor=4))
        h5_bytes = dir_bytes(tmp / "shards", "*.h5") / args.sequences
        png_bytes = dir_bytes(tmp / "png", "*.png") / args.sequences

    train_rate = training_consumption(min(args.train_crop, args.resolution), args.batch, args.train_k, args.train_steps)
    figures = {
        "resolution": args.resolution, "K": args.length, "sequences": args.sequences, "workers": args.workers,
        "hdf5_seq_per_s": h5_rate, "png_seq_per_s": png_rate, "hdf5_over_png": h5_rate / png_rate,
        "hdf5_bytes_per_seq": h5_bytes, "png_bytes_per_seq": png_bytes,
        "train_seq_per_s": train_rate, "hdf5_over_train": h5_rate / train_rate,
        "train_step": f"drs_small, crop {min(args.train_crop, args.resolution)}, batch {args.batch}, k={args.train_k}, CPU",
    }
    print(f"loader throughput, {args.sequences} sequences of K={args.length} at {args.resolution} px, "
          f"batch {args.batch}, {args.workers} workers")
    print(f"  HDF5 shards : {h5_rate:8.1f} seq/s   {h5_bytes / 1e6:6.2f} MB/seq")
    print(f"  PNG folder  : {png_rate:8.1f} seq/s   {png_bytes / 1e6:6.2f} MB/seq")
    print(f"  shards / PNG: {h5_rate / png_rate:.1f}x (goal >= 3x)")
    print(f"  training consumes {train_rate:.2f} seq/s ({figures['train_step']}); "
          f"loader / training: {h5_rate / train_rate:.0f}x (goal >= 10x)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
