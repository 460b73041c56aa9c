"""The dataset format, schema version 1: the one module that writes, reads and validates shards.

Imports only NumPy, h5py and the standard library, so the trainer, `drs-ingest`, `drs-verify`
and the tests can use it without pulling in the renderer.

Layout (see GUIDE section 3)::

    DATASET/manifest.json
    DATASET/shards/shard-00000.h5

Each shard holds N sequences of K images, one LZF-compressed HDF5 chunk per sequence:

    inputs          uint8 (N, K, H, W, 3)  sRGB renders or aligned photos
    target          uint8 (N, H, W, 3)     the clean cover (absent for reference-less real data)
    masks/occluder  uint8 (N, K, H, W)     1 where an occluder is visible
    masks/shadow    uint8 (N, K, H, W)     optional
    masks/specular  uint8 (N, K, H, W)     optional
    sequence_id     int64 (N,)             global index; with the seed it regenerates the sequence
    params          UTF-8 JSON str (N,)    per-image lights, occluders, material

Writes are atomic: everything goes to a temporary file in the same directory, which is renamed
over the final name only once it is complete and closed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

SCHEMA_VERSION = 1
SHARD_DIR = "shards"
MANIFEST_NAME = "manifest.json"
OPTIONAL_MASKS = ("shadow", "specular")
SOURCES = ("synthetic", "real")
REQUIRED_ATTRS = ("schema_version", "seed", "config", "generator_version", "blender_version", "source")
# LZF: deterministic (byte-identical regeneration needs that) and cheap to decode. Measured on
# rendered 96 px sequences: LZF 5.3 ms per sequence and 0.157 MB, gzip-4 8.8 ms and 0.136 MB (grainy
# renders barely deflate), PNG files 17 ms; the loader must outrun a PNG folder by 3x.
_COMPRESSION = {"compression": "lzf"}


class DatasetFormatError(Exception):
    """A shard or manifest that does not follow schema version 1; the message names the file."""


@dataclass
class SequenceRecord:
    """One sequence as written to a shard.

    inputs: uint8 (K, H, W, 3); target: uint8 (H, W, 3) or None (real data without reference);
    masks: name -> uint8/bool (K, H, W), "occluder" required for synthetic data;
    params: JSON-serialisable dict (per-image lights, occluders, material, seeds).
    """

    sequence_id: int
    inputs: np.ndarray
    target: np.ndarray | None
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.h5"


def shard_path(dataset_dir: str | os.PathLike, index: int) -> Path:
    return Path(dataset_dir) / SHARD_DIR / shard_name(index)


# ----------------------------------------------------------------------------------------------
# atomic file helpers


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it over `final` only if the block succeeds.

    The temporary name starts with '.' and ends with '.partial' so no reader mistakes it for a
    complete file, and a crash leaves only that (ignored) name behind.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file private (0600); a dataset is shared, so give it the umask's mode.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def sha256_file(path: str | os.PathLike, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# writing


def _check_record(rec: SequenceRecord, shape: tuple[int, int, int] | None) -> tuple[int, int, int]:
    if rec.inputs.dtype != np.uint8 or rec.inputs.ndim != 4 or rec.inputs.shape[-1] != 3:
        raise DatasetFormatError(
            f"sequence {rec.sequence_id}: inputs must be uint8 (K, H, W, 3), got {rec.inputs.dtype} {rec.inputs.shape}"
        )
    k, h, w, _ = rec.inputs.shape
    if shape is not None and (k, h, w) != shape:
        raise DatasetFormatError(
            f"sequence {rec.sequence_id}: inputs {(k, h, w)} differ from the shard's first sequence {shape}"
        )
    if rec.target is not None and (rec.target.dtype != np.uint8 or rec.target.shape != (h, w, 3)):
        raise DatasetFormatError(
            f"sequence {rec.sequence_id}: target must be uint8 {(h, w, 3)}, got {rec.target.dtype} {rec.target.shape}"
        )
    for name, mask in rec.masks.items():
        if mask.shape != (k, h, w):
            raise DatasetFormatError(f"sequence {rec.sequence_id}: mask {name} must be {(k, h, w)}, got {mask.shape}")
    return k, h, w


def write_shard(
    path: str | os.PathLike,
    records: Sequence[SequenceRecord],
    *,
    seed: int,
    config: dict[str, Any],
    generator_version: str,
    blender_version: str,
    source: str = "synthetic",
) -> Path:
    """Write `records` as one shard, atomically. Returns the final path.

    The same records and attributes always give the same bytes (no timestamps are stored), which
    is what lets a crashed or repaired shard be regenerated bit for bit.
    """
    if not records:
        raise DatasetFormatError(f"{path}: refusing to write a shard with no sequences")
    if source not in SOURCES:
        raise DatasetFormatError(f"{path}: source must be one of {SOURCES}, got {source!r}")
    shape = None
    for rec in records:
        shape = _check_record(rec, shape)
    k, h, w = shape
    n = len(records)
    has_target = [rec.target is not None for rec in records]
    if any(has_target) and not all(has_target):
        raise DatasetFormatError(f"{path}: either every sequence of a shard has a target or none has")
    mask_names = sorted(records[0].masks)
    for rec in records:
        if sorted(rec.masks) != mask_names:
            raise DatasetFormatError(f"{path}: sequence {rec.sequence_id} has masks {sorted(rec.masks)}, expected {mask_names}")

    with atomic_path(path) as tmp:
        # track_order/track_times off and a fixed libver keep the bytes a function of the data alone.
        with h5py.File(tmp, "w", libver=("v110", "v110"), track_order=False) as f:
            f.create_dataset("inputs", shape=(n, k, h, w, 3), dtype=np.uint8, chunks=(1, k, h, w, 3), track_times=False, **_COMPRESSION)
            if all(has_target):
                f.create_dataset("target", shape=(n, h, w, 3), dtype=np.uint8, chunks=(1, h, w, 3), track_times=False, **_COMPRESSION)
            for name in mask_names:
                f.create_dataset(f"masks/{name}", shape=(n, k, h, w), dtype=np.uint8, chunks=(1, k, h, w), track_times=False, **_COMPRESSION)
            f.create_dataset("sequence_id", data=np.array([r.sequence_id for r in records], dtype=np.int64), track_times=False)
            params = [json.dumps(r.params, sort_keys=True) for r in records]
            f.create_dataset("params", data=params, dtype=h5py.string_dtype("utf-8"), track_times=False)
            for i, rec in enumerate(records):
                f["inputs"][i] = rec.inputs
                if rec.target is not None:
                    f["target"][i] = rec.target
                for name in mask_names:
                    f[f"masks/{name}"][i] = rec.masks[name].astype(np.uint8)
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["seed"] = int(seed)
            f.attrs["config"] = json.dumps(config, sort_keys=True)
            f.attrs["generator_version"] = generator_version
            f.attrs["blender_version"] = blender_version
            f.attrs["source"] = source
    return Path(path)


# ----------------------------------------------------------------------------------------------
# reading


class ShardReader:
    """Lazy reader of one shard. Open it inside the process that reads (never share a handle
    across processes); each `read` decodes exactly one chunk per dataset.

    Errors from h5py are re-raised as DatasetFormatError naming the file and the sequence.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
        except (OSError, ValueError) as exc:
            raise DatasetFormatError(f"{self.path}: cannot open as HDF5 ({exc})") from exc
        try:
            self.sequence_ids = self._file["sequence_id"][()]
            self.attrs = {k: _attr(v) for k, v in self._file.attrs.items()}
        except (KeyError, OSError) as exc:
            self.close()
            raise DatasetFormatError(f"{self.path}: missing or unreadable 'sequence_id' or attributes ({exc})") from exc
        self.has_target = "target" in self._file
        self.mask_names = sorted(self._file["masks"].keys()) if "masks" in self._file else []

    def __len__(self) -> int:
        return len(self.sequence_ids)

    @property
    def sequence_length(self) -> int:
        return int(self._file["inputs"].shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(int(s) for s in self._file["inputs"].shape[2:4])

    def read(self, index: int, frames: Sequence[int] | None = None) -> SequenceRecord:
        """Sequence at row `index`; `frames` picks a subset of the K images (in that order)."""
        try:
            inputs = self._file["inputs"][index]
            target = self._file["target"][index] if self.has_target else None
            masks = {name: self._file[f"masks/{name}"][index] for name in self.mask_names}
            params = json.loads(_attr(self._file["params"][index]))
        except Exception as exc:  # h5py raises OSError, ValueError, KeyError, RuntimeError on corruption
            sid = self.sequence_ids[index] if index < len(self.sequence_ids) else "?"
            raise DatasetFormatError(f"{self.path}: sequence row {index} (sequence_id {sid}) is unreadable: {exc}") from exc
        if frames is not None:
            frames = list(frames)
            inputs = inputs[frames]
            masks = {name: m[frames] for name, m in masks.items()}
        return SequenceRecord(int(self.sequence_ids[index]), inputs, target, masks, params)

    def __iter__(self) -> Iterator[SequenceRecord]:
        for i in range(len(self)):
            yield self.read(i)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


# ----------------------------------------------------------------------------------------------
# validation


def validate_shard(path: str | os.PathLike, expected_count: int | None = None) -> list[str]:
    """Read every chunk of a shard and return the problems found (empty list: the shard is sound)."""
    path = Path(path)
    if not path.exists():
        return [f"{path}: missing"]
    problems: list[str] = []
    try:
        with ShardReader(path) as reader:
            attrs = reader.attrs
            for key in REQUIRED_ATTRS:
                if key not in attrs:
                    problems.append(f"{path}: attribute {key!r} missing")
            if attrs.get("schema_version") != SCHEMA_VERSION:
                problems.append(f"{path}: schema_version {attrs.get('schema_version')!r}, expected {SCHEMA_VERSION}")
            if expected_count is not None and len(reader) != expected_count:
                problems.append(f"{path}: {len(reader)} sequences, manifest says {expected_count}")
            f = reader._file
            n = len(reader)
            if "inputs" not in f:
                return problems + [f"{path}: dataset 'inputs' missing"]
            if attrs.get("source") == "synthetic" and "occluder" not in reader.mask_names:
                problems.append(f"{path}: synthetic shard without masks/occluder")
            for name in ["inputs", "target", "params"] + [f"masks/{m}" for m in reader.mask_names]:
                if name in f and f[name].shape[0] != n:
                    problems.append(f"{path}: {name} has {f[name].shape[0]} rows, sequence_id has {n}")
            for i in range(n):
                try:
                    reader.read(i)
                except DatasetFormatError as exc:
                    problems.append(str(exc))
    except DatasetFormatError as exc:
        problems.append(str(exc))
    return problems


# ----------------------------------------------------------------------------------------------
# manifest


def read_manifest(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(dataset_dir) / MANIFEST_NAME
    if not path.exists():
        raise DatasetFormatError(f"{path}: no manifest; is {dataset_dir} a dataset directory (run drs-verify to rebuild it)?")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(f"{path}: not valid JSON ({exc})") from exc
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise DatasetFormatError(f"{path}: schema_version {manifest.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    return manifest


def write_manifest(
    dataset_dir: str | os.PathLike,
    *,
    seed: int,
    config: dict[str, Any],
    shards: list[dict[str, Any]],
    source: str = "synthetic",
    rejected: dict[str, list] | None = None,
    timings: dict[str, float] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Write DATASET/manifest.json atomically with the keys every reader relies on; returns it.

    shards: entries from `shard_entry`, in order. `extra` adds writer-specific keys (devices,
    missing_shards, sequence_length, ...).
    """
    if source not in SOURCES:
        raise DatasetFormatError(f"{dataset_dir}: source must be one of {SOURCES}, got {source!r}")
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "seed": int(seed),
        "config": config,
        "source": source,
        "num_sequences": sum(int(e["count"]) for e in shards),
        "shards": shards,
        "rejected": rejected or {},
        "timings": {k: round(v, 3) for k, v in sorted((timings or {}).items())},
        **extra,
    }
    write_json_atomic(Path(dataset_dir) / MANIFEST_NAME, manifest)
    return manifest


def shard_entry(dataset_dir: str | os.PathLike, path: str | os.PathLike, first_sequence_id: int, count: int) -> dict[str, Any]:
    """The manifest's record of one written shard."""
    path = Path(path)
    return {
        "file": str(path.relative_to(dataset_dir)),
        "first_sequence_id": int(first_sequence_id),
        "count": int(count),
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
    }


def dataset_shards(dataset_dir: str | os.PathLike) -> list[Path]:
    """Shard files listed by the manifest, in order (the manifest is the source of truth)."""
    manifest = read_manifest(dataset_dir)
    return [Path(dataset_dir) / entry["file"] for entry in manifest["shards"]]
