"""Shard loader: subsets, shared augmentation, set-size batching, rank split, corruption, targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generator.dataset_format import DatasetFormatError, dataset_shards
from trainer.data import (
    ItemRequest,
    SetBatchSampler,
    ShardSetDataset,
    collate_sets,
    make_loader,
    validation_batches,
)


def test_item_is_a_subset_with_shared_geometry(tiny_dataset):
    ds_dir = tiny_dataset(num_sequences=4, k=5, size=32)
    plain = ShardSetDataset(ds_dir, augment=False)
    aug = ShardSetDataset(ds_dir, crop=24, augment=True)
    full = plain[ItemRequest(2, 5, 0)]
    assert full["inputs"].shape == (5, 3, 32, 32) and full["target"].shape == (3, 32, 32)
    for seed in range(6):
        item = aug[ItemRequest(2, 3, seed)]
        assert item["inputs"].shape == (3, 3, 24, 24)
        # The target crop must be found, under one of the 8 flips/rotations, at one offset of the full
        # target, and each input must be the same geometric transform of one distinct original frame.
        found = None
        for flip in (False, True):
            for rot in range(4):
                for y in range(9):
                    for x in range(9):
                        t = full["target"][:, y : y + 24, x : x + 24]
                        t = t.flip(-1) if flip else t
                        t = torch.rot90(t, rot, dims=(1, 2))
                        if torch.equal(t, item["target"]):
                            found = (flip, rot, y, x)
        assert found is not None, f"seed {seed}: target is not a crop/flip/rotation of the original"
        flip, rot, y, x = found
        frames = []
        for j in range(3):
            for f in range(5):
                t = full["inputs"][f, :, y : y + 24, x : x + 24]
                t = torch.rot90(t.flip(-1) if flip else t, rot, dims=(1, 2))
                if torch.equal(t, item["inputs"][j]):
                    frames.append(f)
                    break
        assert len(frames) == 3 and len(set(frames)) == 3, f"seed {seed}: inputs {frames} are not distinct frames"


def test_item_is_deterministic_in_its_seed(tiny_dataset):
    ds = ShardSetDataset(tiny_dataset(num_sequences=2), crop=24)
    a, b = ds[ItemRequest(1, 4, 7)], ds[ItemRequest(1, 4, 7)]
    assert torch.equal(a["inputs"], b["inputs"]) and torch.equal(a["target"], b["target"])
    c = ds[ItemRequest(1, 4, 8)]
    assert not torch.equal(a["inputs"], c["inputs"])


def test_batch_sampler_shares_k_and_covers_range():
    sampler = SetBatchSampler(40, batch_size=4, k_min=1, k_max=5, seed=3)
    ks = set()
    for epoch in range(5):
        sampler.set_epoch(epoch)
        for batch in sampler:
            assert len({r.k for r in batch}) == 1
            ks.add(batch[0].k)
    assert ks == {1, 2, 3, 4, 5}


def test_sampler_ranks_are_disjoint_and_reproducible():
    def epoch_items(rank, epoch, start=0):
        s = SetBatchSampler(24, batch_size=3, k_min=2, k_max=4, seed=11, rank=rank, world_size=2)
        s.set_epoch(epoch, start)
        return [[(r.index, r.k, r.aug_seed) for r in b] for b in s]

    r0, r1 = epoch_items(0, 0), epoch_items(1, 0)
    i0 = {i for b in r0 for i, _, _ in b}
    i1 = {i for b in r1 for i, _, _ in b}
    assert not i0 & i1 and i0 | i1 == set(range(24))
    assert [b[0][1] for b in r0] == [b[0][1] for b in r1], "k must agree across ranks"
    assert epoch_items(0, 0) == r0, "same seed and epoch must give the same order"
    assert epoch_items(0, 1) != r0, "another epoch must give another order"
    assert epoch_items(0, 0, start=2) == r0[2:], "resuming mid-epoch continues on the same batches"


def test_loader_with_workers_matches_in_process(tiny_dataset):
    ds_dir = tiny_dataset(num_sequences=8)
    def run(workers):
        ds = ShardSetDataset(ds_dir, crop=24)
        sampler = SetBatchSampler(len(ds), batch_size=2, k_min=1, k_max=5, seed=0)
        return [b["inputs"] for b in make_loader(ds, sampler, num_workers=workers)]

    a, b = run(0), run(2)
    assert len(a) == 4 and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _corrupt(path):
    data = bytearray(path.read_bytes())
    # Overwrite the middle of the file (chunk data), leaving the superblock intact so it still opens.
    mid = len(data) // 2
    data[mid : mid + 4096] = bytes(4096)
    path.write_bytes(bytes(data))


def test_corrupt_shard_error_names_file_and_sequence(tiny_dataset):
    ds_dir = tiny_dataset(num_sequences=8, sequences_per_shard=4)
    bad = dataset_shards(ds_dir)[1]
    _corrupt(bad)
    ds = ShardSetDataset(ds_dir, augment=False)
    errors = []
    for i in range(len(ds)):
        try:
            ds[ItemRequest(i, 5, 0)]
        except DatasetFormatError as exc:
            errors.append(str(exc))
    assert errors, "corrupting a shard's chunks must make some sequence unreadable"
    assert all(bad.name in e and "sequence" in e for e in errors)

    skipping = ShardSetDataset(ds_dir, augment=False, on_corrupt="skip")
    batch = collate_sets([skipping[ItemRequest(i, 5, 0)] for i in range(len(ds))])
    assert batch["skipped"] == len(errors) and batch["inputs"].shape[0] == 8 - len(errors)


def test_corrupt_error_crosses_worker_boundary(tiny_dataset):
    ds_dir = tiny_dataset(num_sequences=4, sequences_per_shard=4)
    bad = dataset_shards(ds_dir)[0]
    _corrupt(bad)
    ds = ShardSetDataset(ds_dir, augment=False)
    loader = make_loader(ds, validation_batches(len(ds), 5, batch_size=4), num_workers=1)
    with pytest.raises(DatasetFormatError, match=bad.name):
        list(loader)


def test_unopenable_shard_is_named(tiny_dataset):
    ds_dir = tiny_dataset(num_sequences=8)
    bad = dataset_shards(ds_dir)[0]
    bad.write_bytes(b"not hdf5")
    with pytest.raises(DatasetFormatError, match=bad.name):
        ShardSetDataset(ds_dir)
    assert len(ShardSetDataset(ds_dir, on_corrupt="skip")) == 4


def test_dataset_without_target_is_refused(tiny_dataset):
    ds_dir = tiny_dataset(num_sequences=2, with_target=False, source="real")
    with pytest.raises(DatasetFormatError, match="no 'target'"):
        ShardSetDataset(ds_dir)
    item = ShardSetDataset(ds_dir, require_target=False, augment=False)[ItemRequest(0, 2, 0)]
    assert "target" not in item


def test_several_dataset_dirs_concatenate(tiny_dataset):
    a, b = tiny_dataset("a", num_sequences=4), tiny_dataset("b", num_sequences=6, seed=1)
    ds = ShardSetDataset([a, b])
    assert len(ds) == 10
    ids = [ds[ItemRequest(i, 1, 0)]["sequence_id"] for i in range(10)]
    assert ids == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5]
    assert np.isfinite(ds[ItemRequest(9, 5, 1)]["inputs"].numpy()).all()
