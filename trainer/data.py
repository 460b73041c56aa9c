"""Shard dataset for training: random subsets of each sequence, augmented alike, batched by set size.

Reads data only through generator/dataset_format.py. Randomness never comes from global state:
the batch sampler draws, from `default_rng([seed, epoch, ...])`, which sequences go in a batch,
the batch's set size k, and one augmentation seed per item. The dataset turns an item request
`(index, k, aug_seed)` into tensors deterministically, so the data order and content depend only
on (seed, epoch, rank, world size), never on the number of DataLoader workers, and a resumed run
sees exactly the batches an uninterrupted run would have.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from generator.dataset_format import DatasetFormatError, ShardReader, read_manifest

log = logging.getLogger(__name__)

ON_CORRUPT = ("raise", "skip")


@dataclass(frozen=True)
class ItemRequest:
    """What the sampler asks of the dataset: sequence `index`, a set of `k` images, aug seed."""

    index: int
    k: int
    aug_seed: int


@dataclass(frozen=True)
class _SeqRef:
    shard: Path
    row: int


def _as_dir_list(dirs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    if dirs is None:
        return []
    if isinstance(dirs, str | os.PathLike):
        return [Path(dirs)]
    return [Path(d) for d in dirs]


class ShardSetDataset(Dataset):
    """Sequences of one or more dataset directories (each with a manifest.json).

    `dataset[ItemRequest(i, k, seed)]` returns a dict:
        inputs  uint8 (k, 3, crop, crop)  k of the K images, random subset, random order
        target  uint8 (3, crop, crop)     (absent when the data has no target)
        sequence_id  int
    with one random crop, flip and 90-degree rotation shared by inputs and target. With
    `augment=False` the k images are the first k, uncropped (or centre-cropped to `crop`), so
    validation is deterministic. A corrupt sequence raises DatasetFormatError naming the shard
    file and the sequence, or (on_corrupt="skip") returns None, which `collate_sets` drops and counts.

    Items stay uint8 (a quarter of float32's bytes through the workers' shared memory); `to_float`
    converts a batch on the training device. HDF5 files are opened lazily, on first read in the process that reads, and reopened after a
    fork, so DataLoader workers never share a handle.
    """

    def __init__(
        self,
        dirs: str | os.PathLike | Sequence[str | os.PathLike],
        crop: int | None = None,
        augment: bool = True,
        require_target: bool = True,
        on_corrupt: str = "raise",
    ):
        if on_corrupt not in ON_CORRUPT:
            raise ValueError(f"on_corrupt must be one of {ON_CORRUPT}, got {on_corrupt!r}")
        self.dirs = _as_dir_list(dirs)
        if not self.dirs:
            raise DatasetFormatError("no dataset directory given (set data.train=DIR / data.val=DIR)")
        self.crop = crop
        self.augment = augment
        self.on_corrupt = on_corrupt
        self.refs: list[_SeqRef] = []
        self.sequence_length: int | None = None
        self.image_size: tuple[int, int] | None = None
        self.has_target = True
        for d in self.dirs:
            self._index_dataset(d, require_target)
        if not self.refs:
            raise DatasetFormatError(f"datasets {[str(d) for d in self.dirs]} hold no sequences")
        if crop is not None and self.image_size is not None and crop > min(self.image_size):
            raise DatasetFormatError(f"crop {crop} is larger than the images {self.image_size} of {self.dirs}")
        self._readers: dict[Path, ShardReader] = {}
        self._pid = os.getpid()

    def _index_dataset(self, dataset_dir: Path, require_target: bool) -> None:
        manifest = read_manifest(dataset_dir)
        for entry in manifest["shards"]:
            path = dataset_dir / entry["file"]
            # Open once here only for the shape and the target flag; closed before workers fork.
            try:
                with ShardReader(path) as reader:
                    count, has_target = len(reader), reader.has_target
                    k, size = reader.sequence_length, reader.image_size
            except DatasetFormatError:
                if self.on_corrupt == "raise":
                    raise
                log.warning("skipping unreadable shard %s", path)
                continue
            if count != entry["count"]:
                raise DatasetFormatError(f"{path}: holds {count} sequences, {dataset_dir}/manifest.json says {entry['count']}")
            if require_target and not has_target:
                raise DatasetFormatError(
                    f"{path}: has no 'target' (a real capture without a clean reference?); supervised training "
                    "needs targets. Use a dataset with references, or drop it from data.train/data.val."
                )
            self.has_target = self.has_target and has_target
            if self.sequence_length is None:
                self.sequence_length, self.image_size = k, size
            elif (k, size) != (self.sequence_length, self.image_size):
                # One batch stacks items, so every shard must agree on K and the image size.
                raise DatasetFormatError(
                    f"{path}: K={k}, size={size} differ from the first shard's K={self.sequence_length}, "
                    f"size={self.image_size}"
                )
            self.refs.extend(_SeqRef(path, row) for row in range(count))

    def __len__(self) -> int:
        return len(self.refs)

    def _reader(self, path: Path) -> ShardReader:
        if os.getpid() != self._pid:  # forked into a worker: handles of the parent are not ours
            self._readers = {}
            self._pid = os.getpid()
        reader = self._readers.get(path)
        if reader is None:
            reader = self._readers[path] = ShardReader(path)
        return reader

    def __getitem__(self, request: ItemRequest | tuple[int, int, int]) -> dict | None:
        index, k, aug_seed = request if isinstance(request, tuple) else (request.index, request.k, request.aug_seed)
        ref = self.refs[index]
        rng = np.random.default_rng(aug_seed)
        total = self.sequence_length
        if k > total:
            raise ValueError(f"asked for {k} images but {ref.shard} holds sequences of K={total}")
        frames = rng.permutation(total)[:k] if self.augment else np.arange(k)
        try:
            # Training never looks at masks; skipping their decode saves ~10 % of a schema-2 read.
            rec = self._reader(ref.shard).read(ref.row, frames=frames, masks=False)
        except DatasetFormatError:
            if self.on_corrupt == "raise":
                raise
            log.warning("skipping unreadable sequence row %d of %s", ref.row, ref.shard)
            return None
        inputs = rec.inputs  # uint8 (k, H, W, 3)
        target = rec.target  # uint8 (H, W, 3) or None
        inputs, target = self._geometry(rng, inputs, target)
        item = {"inputs": _to_tensor(inputs), "sequence_id": rec.sequence_id}
        if target is not None:
            item["target"] = _to_tensor(target[None])[0]
        return item

    def _geometry(self, rng: np.random.Generator, inputs: np.ndarray, target: np.ndarray | None):
        """Same crop / flip / rot90 for inputs (k, H, W, 3) and target (H, W, 3)."""
        h, w = inputs.shape[1:3]
        c = self.crop
        if c is not None:
            if self.augment:
                y0, x0 = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
            else:
                y0, x0 = (h - c) // 2, (w - c) // 2
            inputs = inputs[:, y0 : y0 + c, x0 : x0 + c]
            target = None if target is None else target[y0 : y0 + c, x0 : x0 + c]
        if self.augment:
            flip, rot = bool(rng.integers(2)), int(rng.integers(4))
            if inputs.shape[1] != inputs.shape[2]:
                rot = 2 * (rot % 2)  # a quarter turn would change the shape of a non-square crop
            if flip:
                inputs, target = inputs[:, :, ::-1], None if target is None else target[:, ::-1]
            inputs = np.rot90(inputs, rot, axes=(1, 2))
            target = None if target is None else np.rot90(target, rot, axes=(0, 1))
        return inputs, target

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers = {}

    def __getstate__(self):
        # Handles are process-local: a pickled copy (spawned worker) opens its own on first read.
        state = dict(self.__dict__)
        state["_readers"] = {}
        return state


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> uint8 (N, 3, H, W), contiguous.

    The transpose is done on uint8 in NumPy: converting a channels-last view to float in torch
    costs ~10x more, and float items would cost 4x the inter-process bytes.
    """
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (any shape) -> float32 in [0, 1], on the tensor's device (run it after .to(device))."""
    return images.float().div_(255.0)


def collate_sets(items: list[dict | None]) -> dict:
    """Stack items of one batch (same k); drop skipped (None) items and count them in 'skipped'.

    Returns inputs uint8 (B, k, 3, H, W), target uint8 (B, 3, H, W), sequence_id int64 (B,),
    skipped int. B may be 0 when every item of the batch was skipped.
    """
    kept = [it for it in items if it is not None]
    batch: dict = {"skipped": len(items) - len(kept)}
    if not kept:
        return batch
    # default_collate stacks straight into shared memory inside a worker; torch.stack would make a
    # private batch that pickling then copies to shared memory again (13 % of the loader's time).
    batch["inputs"] = default_collate([it["inputs"] for it in kept])
    batch["sequence_id"] = torch.tensor([it["sequence_id"] for it in kept], dtype=torch.int64)
    if "target" in kept[0]:
        batch["target"] = default_collate([it["target"] for it in kept])
    return batch


class SetBatchSampler(Sampler[list[ItemRequest]]):
    """Batches of ItemRequests for one epoch, one rank.

    Every epoch permutes all sequences with `default_rng([seed, epoch])`, pads the permutation
    (by wrapping) to a multiple of world_size * batch_size, and gives rank r the batches
    r, r + world_size, ... so the ranks' parts are disjoint up to the padding. The set size k of
    batch b is drawn from `default_rng([seed, epoch, b])`, the same on every rank (equal work per
    step); the augmentation seeds also include the rank.

    `start_batch` skips the first batches of the epoch, which is how a resumed run continues
    mid-epoch on exactly the batch it stopped at.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        k_min: int,
        k_max: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ):
        if not 1 <= k_min <= k_max:
            raise ValueError(f"need 1 <= k_min <= k_max, got k_min={k_min}, k_max={k_max}")
        if batch_size < 1 or num_items < 1:
            raise ValueError(f"batch_size ({batch_size}) and num_items ({num_items}) must be positive")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.num_items, self.batch_size = num_items, batch_size
        self.k_min, self.k_max = k_min, k_max
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shuffle = shuffle
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    @property
    def batches_per_epoch(self) -> int:
        """Batches each rank gets per epoch (at least one, even for a dataset smaller than a batch)."""
        per_step = self.batch_size * self.world_size
        return max(1, -(-self.num_items // per_step))

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[list[ItemRequest]]:
        n_batches = self.batches_per_epoch
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_items)
        else:
            order = np.arange(self.num_items)
        total = n_batches * self.world_size * self.batch_size
        order = np.resize(order, total)  # wraps around: padding repeats the first items
        for b in range(self.start_batch, n_batches):
            rng_k = np.random.default_rng([self.seed, self.epoch, b])
            k = int(rng_k.integers(self.k_min, self.k_max + 1))
            start = (b * self.world_size + self.rank) * self.batch_size
            idx = order[start : start + self.batch_size]
            aug = np.random.default_rng([self.seed, self.epoch, b, self.rank]).integers(0, 2**63 - 1, len(idx))
            yield [ItemRequest(int(i), k, int(s)) for i, s in zip(idx, aug, strict=True)]


def make_loader(
    dataset: ShardSetDataset,
    sampler: Sampler,
    num_workers: int = 2,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over `dataset` whose batches come from `sampler` (a batch sampler)."""
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_sets,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
    )


def validation_batches(num_items: int, k: int, batch_size: int = 4, limit: int | None = None) -> list[list[ItemRequest]]:
    """Deterministic validation batches: the first k images of each of the first `limit` sequences."""
    n = num_items if limit is None else min(limit, num_items)
    reqs = [ItemRequest(i, k, 0) for i in range(n)]
    return [reqs[i : i + batch_size] for i in range(0, n, batch_size)]
