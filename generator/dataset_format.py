"""The dataset format, schema version 2: the one module that writes, reads and validates shards.

Imports only NumPy, h5py, hdf5plugin and the standard library, so the trainer, `drs-ingest`,
`drs-verify` and the tests can use it without pulling in the renderer.

Layout (see GUIDE section 3)::

    DATASET/manifest.json
    DATASET/shards/shard-00000.h5

Each shard holds N sequences of K images, one compressed HDF5 chunk per sequence and dataset:

    inputs          uint8 (N, K, H, W, 3)  sRGB renders or aligned photos
    target          uint8 (N, H, W, 3)     the clean cover (absent for reference-less real data)
    masks/occluder  uint8 (N, K, H, W)     1 where an occluder is visible
    masks/shadow    uint8 (N, K, H, W)     optional
    masks/specular  uint8 (N, K, H, W)     optional
    sequence_id     int64 (N,)             global index; with the seed it regenerates the sequence
    params          UTF-8 JSON str (N,)    per-image lights, occluders, material

Schema 2 (written now) stores every chunk Zstd-compressed (hdf5plugin) with HDF5's fletcher32
checksum, so a flipped byte anywhere in a chunk raises on read instead of decoding to garbage.
Images go through a lossless predictor first, named in the dataset's `predictor` attribute:
`target` is stored as PNG's "Up" filter (each byte minus the one above it, mod 256) and `inputs`
as Up of (input - target) when the shard has targets (the cover is the same in every frame, so
the residual is mostly lighting and occluders), plain Up otherwise. Schema 1 (LZF, no
checksum, no predictor) is still read, and written on request (`schema_version=1`) for tests and
benchmarks.

Writes are atomic: everything goes to a temporary file in the same directory, which is renamed
over the final name only once it is complete and closed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
SHARD_DIR = "shards"
MANIFEST_NAME = "manifest.json"
OPTIONAL_MASKS = ("shadow", "specular")
SOURCES = ("synthetic", "real")
REQUIRED_ATTRS = ("schema_version", "seed", "config", "generator_version", "blender_version", "source")
# Chunk filters per schema version. Both are deterministic (byte-identical regeneration needs that)
# for a given libhdf5 and hdf5plugin. Measured on 48 rendered 256 px K=9 sequences (inputs + target,
# MB per sequence): PNG files 0.79; LZF 1.50; Zstd-6 1.36, with PNG's Sub filter 0.82, with Sub of
# (input - target) 0.67; that predictor at Zstd-3 0.70, Zstd-9 0.66 (1.1x level 6's write time),
# Zstd-12 0.65 (2x). Blosc2 (zstd, shuffle) and gzip-4 with Sub: 0.77 and 0.84 on 16 of them. Level
# 6 writes a sequence in ~0.1 s, a few % of its render; Zstd decodes at the same speed at any level.
# Up (the row above) instead of Sub (the pixel to the left) compresses the same (0.667 against
# 0.671) and inverts 3x faster: a running sum over rows adds whole contiguous rows at a time.
# fletcher32 comes after the compressor in h5py's filter chain, so it checks the stored bytes.
_FILTERS = {
    1: {"compression": "lzf"},
    2: {**hdf5plugin.Zstd(clevel=6), "fletcher32": True},
}
PREDICTORS = ("none", "up", "target_up")  # the `predictor` attribute of inputs/target (absent: none)
# Read, never written: the first schema-2 commit (b07ff1b) used PNG's Sub filter (left neighbour).
_LEGACY_PREDICTORS = ("sub", "target_sub")


class DatasetFormatError(Exception):
    """A shard or manifest that does not follow the schema; the message names the file."""


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
    except OSError as exc:
        if exc.errno is None or exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror, str(final)) from exc  # "disk full" alone names no file
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
    schema_version: int = SCHEMA_VERSION,
) -> Path:
    """Write `records` as one shard, atomically. Returns the final path.

    The same records and attributes always give the same bytes (no timestamps are stored), which
    is what lets a crashed or repaired shard be regenerated bit for bit. `schema_version=1` writes
    the old LZF layout (for tests and benchmarks of the upgrade path).
    """
    if schema_version not in _FILTERS:
        raise DatasetFormatError(f"{path}: cannot write schema_version {schema_version!r}; one of {sorted(_FILTERS)}")
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

    filters = _FILTERS[schema_version]
    # v1 leaves sequence_id contiguous (unchecked); v2 chunks it so fletcher32 covers it.
    small = filters if schema_version >= 2 else {}
    predictors = {}
    if schema_version >= 2:
        predictors = {"inputs": "target_up", "target": "up"} if all(has_target) else {"inputs": "up"}
    with atomic_path(path) as tmp:
        # track_order/track_times off and a fixed libver keep the bytes a function of the data alone.
        with h5py.File(tmp, "w", libver=("v110", "v110"), track_order=False) as f:
            f.create_dataset("inputs", shape=(n, k, h, w, 3), dtype=np.uint8, chunks=(1, k, h, w, 3), track_times=False, **filters)
            if all(has_target):
                f.create_dataset("target", shape=(n, h, w, 3), dtype=np.uint8, chunks=(1, h, w, 3), track_times=False, **filters)
            for name in mask_names:
                f.create_dataset(f"masks/{name}", shape=(n, k, h, w), dtype=np.uint8, chunks=(1, k, h, w), track_times=False, **filters)
            f.create_dataset("sequence_id", data=np.array([r.sequence_id for r in records], dtype=np.int64), track_times=False, **small)
            params = [json.dumps(r.params, sort_keys=True) for r in records]
            f.create_dataset("params", data=params, dtype=h5py.string_dtype("utf-8"), track_times=False)
            if schema_version >= 2:
                # Variable-length strings live in HDF5's global heap, which no filter can checksum.
                f["params"].attrs["crc32"] = np.array([zlib.crc32(p.encode()) for p in params], dtype=np.uint32)
            for name, predictor in predictors.items():
                f[name].attrs["predictor"] = predictor
            for i, rec in enumerate(records):
                f["inputs"][i] = _encode(rec.inputs, rec.target, predictors.get("inputs", "none"))
                if rec.target is not None:
                    f["target"][i] = _encode(rec.target, None, predictors.get("target", "none"))
                for name in mask_names:
                    f[f"masks/{name}"][i] = rec.masks[name].astype(np.uint8)
            f.attrs["schema_version"] = schema_version
            f.attrs["seed"] = int(seed)
            f.attrs["config"] = json.dumps(config, sort_keys=True)
            f.attrs["generator_version"] = generator_version
            f.attrs["blender_version"] = blender_version
            f.attrs["source"] = source
    return Path(path)


def _encode(images: np.ndarray, target: np.ndarray | None, predictor: str) -> np.ndarray:
    """Apply a lossless predictor to uint8 images (..., H, W, 3); `target` (H, W, 3) for target_up.

    Up: each byte minus the same byte of the row above, mod 256 (PNG's filter 2); residuals
    cluster near 0, which Zstd compresses far better than the raw noisy renders.
    """
    if predictor == "none":
        return images
    if predictor == "target_up":
        images = images - target  # uint8 wraps: exact mod 256, inverted by the addition in _decode
    out = images.copy()
    out[..., 1:, :, :] -= images[..., :-1, :, :]
    return out


def _decode(stored: np.ndarray, target: np.ndarray | None, predictor: str) -> np.ndarray:
    """Invert `_encode` in place (`stored` must be a fresh array): a running sum down the rows, mod 256,
    plus the decoded target. One vectorised add per row of all K images: 3x faster than np.cumsum."""
    if predictor == "none":
        return stored
    if predictor in _LEGACY_PREDICTORS:
        stored = np.cumsum(stored, axis=-2, dtype=np.uint8)
    else:
        for row in range(1, stored.shape[-3]):
            stored[..., row, :, :] += stored[..., row - 1, :, :]
    if predictor.startswith("target_"):
        stored += target
    return stored


# ----------------------------------------------------------------------------------------------
# reading


class ShardReader:
    """Lazy reader of one shard, schema 1 or 2. Open it inside the process that reads (never share
    a handle across processes); each `read` decodes exactly one chunk per dataset.

    Errors from h5py (a schema-2 checksum mismatch included) are re-raised as DatasetFormatError
    naming the file, the dataset and the sequence.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._datasets: dict[str, h5py.Dataset] = {}
        try:
            # No chunk cache: each chunk is read once per epoch, and with HDF5's default 1 MiB cache a
            # 256 px sequence (1.8 MB, too big to cache) took twice as long to read (2.9 ms vs 1.4 ms).
            self._file = h5py.File(self.path, "r", rdcc_nbytes=0)
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
        try:
            self.predictors = {name: _attr(self._file[name].attrs.get("predictor", "none"))
                               for name in ("inputs", "target") if name in self._file}
            crc = self._file["params"].attrs.get("crc32") if "params" in self._file else None
            self._params_crc = None if crc is None else np.asarray(crc)
        except (KeyError, OSError) as exc:
            self.close()
            raise DatasetFormatError(f"{self.path}: unreadable dataset header ({exc})") from exc
        unknown = {n: p for n, p in self.predictors.items() if p not in PREDICTORS + _LEGACY_PREDICTORS}
        if unknown:
            self.close()
            raise DatasetFormatError(f"{self.path}: unknown predictor {unknown} (written by a newer version?)")

    def __len__(self) -> int:
        return len(self.sequence_ids)

    @property
    def sequence_length(self) -> int:
        return int(self._file["inputs"].shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(int(s) for s in self._file["inputs"].shape[2:4])

    def read(self, index: int, frames: Sequence[int] | None = None, masks: bool = True) -> SequenceRecord:
        """Sequence at row `index`; `frames` picks a subset of the K images (in that order);
        `masks=False` skips decoding the masks (the record's masks are then empty)."""
        target = self._row("target", index) if self.has_target else None
        if target is not None:
            target = _decode(target, None, self.predictors["target"])
        inputs = self._row("inputs", index)
        if frames is not None:
            frames = list(frames)
            inputs = inputs[frames]  # before decoding: the predictor works within each image
        inputs = _decode(inputs, target, self.predictors["inputs"])
        mask_arrays = {name: self._row(f"masks/{name}", index) for name in self.mask_names} if masks else {}
        if frames is not None:
            mask_arrays = {name: m[frames] for name, m in mask_arrays.items()}
        raw = self._row("params", index)
        try:
            if self._params_crc is not None and zlib.crc32(raw) != self._params_crc[index]:
                raise ValueError("crc32 mismatch")
            params = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            raise self._unreadable("params", index, exc) from exc
        return SequenceRecord(int(self.sequence_ids[index]), inputs, target, mask_arrays, params)

    def _row(self, name: str, index: int) -> Any:
        try:
            dataset = self._datasets.get(name)
            if dataset is None:  # looking a dataset up by name costs ~0.1 ms; a read does 4-6
                dataset = self._datasets[name] = self._file[name]
            return dataset[index]
        except Exception as exc:  # h5py raises OSError, ValueError, KeyError, RuntimeError on corruption
            raise self._unreadable(name, index, exc) from exc

    def _unreadable(self, name: str, index: int, exc: Exception) -> DatasetFormatError:
        sid = self.sequence_ids[index] if 0 <= index < len(self.sequence_ids) else "?"
        # HDF5 says only "filter returned failure" when fletcher32 (or the decompressor) rejects a chunk.
        why = " (checksum or decompression failed: the bytes on disk are damaged)" if "filter returned failure" in str(exc) else ""
        return DatasetFormatError(
            f"{self.path}: dataset {name!r}, sequence row {index} (sequence_id {sid}) is unreadable: {exc}{why}"
        )

    def __iter__(self) -> Iterator[SequenceRecord]:
        for i in range(len(self)):
            yield self.read(i)

    def storage(self) -> dict[str, dict[str, Any]]:
        """How each dataset is stored: {name: {"bytes": stored bytes, "filters": ["zstd(6)", ...],
        "fletcher32": bool, "predictor": str}}, in file order."""
        out: dict[str, dict[str, Any]] = {}

        def visit(name: str, obj: Any) -> None:
            if not isinstance(obj, h5py.Dataset):
                return
            plist = obj.id.get_create_plist()
            filters = [_filter_label(*plist.get_filter(i)[:3]) for i in range(plist.get_nfilters())]
            out[name] = {
                "bytes": int(obj.id.get_storage_size()),
                "filters": [f for f in filters if f != "fletcher32"],
                "fletcher32": "fletcher32" in filters,
                "predictor": _attr(obj.attrs.get("predictor", "none")),
            }

        self._file.visititems(visit)
        return out

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_FILTER_NAMES = {h5py.h5z.FILTER_LZF: "lzf", h5py.h5z.FILTER_DEFLATE: "gzip", h5py.h5z.FILTER_SHUFFLE: "shuffle",
                 h5py.h5z.FILTER_FLETCHER32: "fletcher32", hdf5plugin.ZSTD_ID: "zstd", hdf5plugin.BLOSC2_ID: "blosc2"}


def _filter_label(code: int, flags: int, values: tuple) -> str:
    """'zstd(6)', 'lzf', 'fletcher32'...: the filter and, for Zstd and gzip, its level."""
    name = _FILTER_NAMES.get(code, f"filter{code}")
    if code in (hdf5plugin.ZSTD_ID, h5py.h5z.FILTER_DEFLATE) and values:
        return f"{name}({values[0]})"
    return name


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
            version = attrs.get("schema_version")
            if version not in READABLE_SCHEMAS:
                problems.append(f"{path}: schema_version {version!r}, expected one of {READABLE_SCHEMAS}")
            elif version >= 2:
                unchecked = [name for name, info in reader.storage().items() if not info["fletcher32"] and name != "params"]
                unchecked += [] if reader._params_crc is not None else ["params (crc32)"]
                if unchecked:
                    problems.append(f"{path}: schema 2 without fletcher32 checksums on {unchecked}")
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
    # The manifest's own layout is the same in schemas 1 and 2; each shard carries its version.
    if manifest.get("schema_version") not in READABLE_SCHEMAS:
        raise DatasetFormatError(
            f"{path}: schema_version {manifest.get('schema_version')!r}, expected one of {READABLE_SCHEMAS}"
        )
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
    schema_version: int = SCHEMA_VERSION,
    **extra: Any,
) -> dict[str, Any]:
    """Write DATASET/manifest.json atomically with the keys every reader relies on; returns it.

    shards: entries from `shard_entry`, in order. `extra` adds writer-specific keys (devices,
    missing_shards, sequence_length, ...). `schema_version` is the writer's; each shard records its own.
    """
    if source not in SOURCES:
        raise DatasetFormatError(f"{dataset_dir}: source must be one of {SOURCES}, got {source!r}")
    manifest = {
        "schema_version": schema_version,
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


# ----------------------------------------------------------------------------------------------
# command-line errors: one style for all seven commands. It lives here because trainer/ may
# import only this module (and align.py) from generator/.

EXIT_ERROR = 2  # a user mistake or an environment problem (also argparse's code for bad options)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


class UserError(Exception):
    """A user mistake or an environment problem: one line on stderr naming the file or key, exit 2."""


def debug_requested() -> bool:
    """Show tracebacks for every error (HYDRA_FULL_ERROR=1, as Hydra itself reads it, or DRS_DEBUG=1)."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("DRS_DEBUG") == "1"


def describe_error(exc: BaseException) -> str:
    """One or two lines for the user. OSErrors name their file first ("x.h5: No space left on device")."""
    if isinstance(exc, OSError) and exc.strerror:
        names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
        return f"{' -> '.join(names)}: {exc.strerror}" if names else exc.strerror
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return "\n  ".join(lines[:2]) if lines else type(exc).__name__  # libraries append pages of advice


def run_command(
    prog: str,
    body: Callable[[], Any],
    *,
    user_errors: tuple[type[BaseException], ...] = (),
    on_interrupt: str | Callable[[], str] = "nothing was kept",
    debug: bool = False,
) -> int:
    """Run a command's body and return its exit status: 0, 2 (a user or environment error: one
    line on stderr) or 130 (Ctrl-C: one line saying what was kept and how to resume).

    OSError (permissions, disk full, missing files), DatasetFormatError, UserError and
    `user_errors` count as the user's; anything else is a bug and propagates with its traceback,
    as every error does with `debug` or debug_requested(). `on_interrupt` may be a function, called
    only when interrupted, so it can say what is on disk at that moment.
    """
    try:
        body()
        return 0
    except KeyboardInterrupt:
        if debug or debug_requested():
            raise
        return report_interrupt(prog, on_interrupt() if callable(on_interrupt) else on_interrupt)
    except (UserError, DatasetFormatError, OSError, *user_errors) as exc:
        if debug:
            raise
        return report_error(prog, exc)


def report_error(prog: str, exc: BaseException) -> int:
    """Print `exc` as the command's error line on stderr and return EXIT_ERROR (call it in an
    `except` block: with debug_requested() it re-raises, traceback and all)."""
    if debug_requested():
        raise exc
    print(f"{prog}: error: {describe_error(exc)}", file=sys.stderr)
    return EXIT_ERROR


def command_line_value(argv: Sequence[str], key: str, default: str | None = None) -> str | None:
    """The value of the last `key=value` (or `+key=value`) of a Hydra command line, else `default`;
    None for a sweep or an interpolation, which only Hydra can resolve."""
    given = [a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith(f"{key}=")]
    value = given[-1] if given else default
    if value is None or any(c in value for c in ",$") or value.startswith(("range(", "choice(", "glob(")):
        return None
    return value.strip("'\"")


def out_dir_problem(out_dir: str | os.PathLike | None) -> str | None:
    """Why `out_dir` cannot be created or written (None if it can, or is not known yet). Hydra makes
    its run folder in out_dir before the app starts and reports a failure there with a traceback,
    so the drs-* Hydra commands ask this first."""
    if out_dir is None:
        return None
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        return f"out_dir={out}: exists and is not a directory"
    existing = out.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return f"out_dir={out}: cannot write into {existing} (permission denied, read-only or not a directory)"
    return None


def report_interrupt(prog: str, kept: str) -> int:
    """Print the Ctrl-C line (what was kept, how to resume) and return EXIT_INTERRUPTED."""
    print(f"{prog}: interrupted; {kept}", file=sys.stderr)
    return EXIT_INTERRUPTED
