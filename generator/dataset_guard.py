"""What a `drs-generate` output directory is, who may write into it, and what it may delete.

A rendered dataset is only correct if every shard comes from one config, so:

- **Identity.** The first run into an out_dir writes `DATASET/fingerprint.json`: the content
  config (seed, resolution, K, sharding, scene, render quality, covers), the generator version and
  a digest of both. A later run with another digest is refused, naming the keys that differ, unless
  it says `overwrite=true`, which wipes the old dataset first (only after confirming it is a drs
  synthetic dataset). A directory holding anything else (real data from drs-ingest, documents) is
  never written into. Datasets from before fingerprint.json are recognised by their manifest or
  parts.
- **One writer per shard.** An advisory lock (``flock``) per shard and one on the manifest merge:
  two runs, or two farm tasks given the same shard, cannot interleave; the second one is told who
  holds the lock. Locks live in `DATASET/.locks/` and die with their process (a killed run leaves no
  stale lock, only a harmless file).
- **The cache is keyed too.** Cached sequences live in `DATASET/.partial/<digest>/shard-NNNNN/`, so a
  cache of another config can never be mixed into a shard; caches of other digests are removed.
- **Temporaries go.** Blender's pass folders (`/dev/shm/drs-passes-<host>.<pid>.*`) carry the pid of
  their run, and those of dead runs are removed by the next run; the `.partial` temporaries of a shard are
  removed by whoever next holds that shard's lock.
- **Plans are checked.** A run that would not fit on the disk is refused before it starts, with the
  space and the core-hours it would take.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from generator import __version__
from generator.dataset_format import MANIFEST_NAME, SHARD_DIR, UserError, write_json_atomic
from generator.manifest import PARTS_DIR

if TYPE_CHECKING:  # drs-verify takes the manifest lock from here without loading Hydra
    from generator.config import GenerateConfig

log = logging.getLogger(__name__)

IDENTITY_NAME = "fingerprint.json"
LOCK_DIR = ".locks"
CACHE_DIR = ".partial"
KIND = "drs-synthetic-dataset"
# What drs-generate (and drs-verify --repair) put into a dataset directory; `logs` is Hydra's run
# folder, created before any of our code runs.
OWN_ENTRIES = {SHARD_DIR, PARTS_DIR, MANIFEST_NAME, IDENTITY_NAME, CACHE_DIR, LOCK_DIR, "logs", "quarantine"}
SCRATCH_PREFIX = "drs-passes-"
# Disk estimate from the images alone (masks compress to almost nothing): schema 2 keeps ~34 % of
# their raw bytes (0.67 of 1.97 MB per rendered 256 px K=9 sequence, dataset_format.py); 0.3 errs
# on the small side, so a plan is refused only when it surely cannot fit. Time: ~2,000 sequences
# per core-hour at 256 px, K=9 (README cost model).
_COMPRESSED_FRACTION = 0.3
_CORE_SECONDS_PER_SEQUENCE_256_K9 = 1.8


class DatasetConflict(UserError):
    """The out_dir holds another dataset, or something that is not a drs dataset at all."""


class DatasetBusy(UserError):
    """Another process holds the lock of a shard (or of the whole dataset)."""


# ----------------------------------------------------------------------------------------------
# identity


def identity(cfg: GenerateConfig) -> dict[str, Any]:
    """{"kind", "generator_version", "config", "fingerprint"}: what determines the dataset's bytes."""
    record = {"kind": KIND, "generator_version": __version__, "config": cfg.content_config()}
    blob = json.dumps(record, sort_keys=True).encode()
    return {**record, "fingerprint": hashlib.sha256(blob).hexdigest()[:16]}


def recorded_identity(out_dir: Path) -> dict[str, Any] | None:
    """The identity the directory already has: fingerprint.json, else (datasets written before it
    existed) the config of its manifest or first part, else None. kind "real" for ingested data."""
    path = out_dir / IDENTITY_NAME
    if path.exists():
        try:
            record = json.loads(path.read_text())
            if record.get("kind") == KIND and isinstance(record.get("config"), dict):
                return record
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            pass
        raise DatasetConflict(f"{path}: damaged; if {out_dir} is a drs dataset, delete that file and rerun "
                              f"(it is rebuilt from manifest.json or manifest.parts/)")
    for path in [out_dir / MANIFEST_NAME, *sorted((out_dir / PARTS_DIR).glob("shard-*.json"))]:
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(record, dict) and isinstance(record.get("config"), dict):
            kind = "real" if record.get("source") == "real" else KIND
            return {"kind": kind, "generator_version": record.get("generator_version"),
                    "config": record["config"], "file": path.name}
    return None


def _foreign_entries(out_dir: Path) -> list[str]:
    """Names in out_dir that drs-generate did not make (atomic-write temporaries count as ours)."""
    return sorted(p.name for p in out_dir.iterdir()
                  if p.name not in OWN_ENTRIES and not (p.name.startswith(".") and p.name.endswith(".partial")))


def claim(cfg: GenerateConfig) -> str:
    """Make sure cfg.out_dir is (or becomes) a dataset of exactly this config; returns its digest.

    Raises DatasetConflict naming the differing keys (or the foreign files), DatasetBusy when an
    overwrite would pull a dataset from under a running writer. With cfg.overwrite, a drs synthetic
    dataset of another config (or the same) is wiped first.
    """
    out = Path(cfg.out_dir)
    if out.exists() and not out.is_dir():
        raise DatasetConflict(f"out_dir={out}: exists and is not a directory")
    if cfg.overwrite and cfg.shard is not None:
        raise DatasetConflict(
            "overwrite=true with shard=I would let every farm task wipe the others' shards; "
            "run once without shard= (or delete the dataset yourself), then start the sweep")
    from generator.rerender import _diff  # the repair's own key-by-key comparison

    out.mkdir(parents=True, exist_ok=True)
    mine = identity(cfg)
    with held_lock(out / LOCK_DIR / "dataset.lock", f"dataset {out}", wait=True):
        recorded = recorded_identity(out)
        if recorded is not None and recorded["kind"] != KIND:
            raise DatasetConflict(
                f"out_dir={out}: holds a {recorded['kind']} dataset ({recorded.get('file', IDENTITY_NAME)}); "
                f"drs-generate never writes into it, overwrite=true included. Choose another out_dir")
        if recorded is None:
            foreign = _foreign_entries(out)
            if foreign:
                raise DatasetConflict(
                    f"out_dir={out}: not empty and not a drs dataset (holds {', '.join(foreign[:5])}"
                    f"{', ...' if len(foreign) > 5 else ''}); drs-generate writes only into an empty "
                    f"directory or one of its own datasets. Choose another out_dir")
        else:
            differences = _diff({"generator_version": recorded.get("generator_version"), **recorded["config"]},
                                {"generator_version": mine["generator_version"], **mine["config"]})
            if cfg.allow_version_change and all(d.startswith("generator_version:") for d in differences):
                return mine["fingerprint"]  # a repair the user accepted; the dataset keeps its record
            if cfg.overwrite:
                _wipe(out, differences)
            elif differences:
                shown = "; ".join(differences[:6]) + ("; ..." if len(differences) > 6 else "")
                only_version = all(d.startswith("generator_version:") for d in differences)
                raise DatasetConflict(
                    f"out_dir={out}: holds a dataset made with another config ({shown}); this run would "
                    f"mix its sequences with those. Use a new out_dir, or add overwrite=true to delete "
                    f"that dataset and start over"
                    + ("; drs-verify --repair --allow-version-change re-renders its lost shards with this "
                       "generator" if only_version else ""))
        write_json_atomic(out / IDENTITY_NAME, {k: v for k, v in mine.items() if k != "file"})
        # Caches of other configs (or from before caches were keyed) can never be used again.
        if (out / CACHE_DIR).is_dir():
            for stale in (out / CACHE_DIR).iterdir():
                if stale.name != mine["fingerprint"]:
                    shutil.rmtree(stale, ignore_errors=True)
    return mine["fingerprint"]


def why_not_replaceable(path: Path) -> str | None:
    """None if `path` is a drs dataset (its manifest.json says so) holding nothing else, so that a
    command may delete it to write a new one; else the reason, for the error message."""
    try:
        manifest = json.loads((path / MANIFEST_NAME).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        manifest = None
    if not (isinstance(manifest, dict) and isinstance(manifest.get("schema_version"), int)
            and manifest.get("source") in ("synthetic", "real") and isinstance(manifest.get("shards"), list)):
        return f"{path} has no drs manifest.json, so it is not a drs dataset"
    foreign = _foreign_entries(path)
    if foreign:
        return f"{path} is a drs dataset but also holds {', '.join(foreign[:5])}"
    return None


def _wipe(out: Path, differences: list[str]) -> None:
    """overwrite=true: delete what drs-generate made in `out`, and nothing else."""
    foreign = _foreign_entries(out)
    if foreign:
        raise DatasetConflict(
            f"out_dir={out}: overwrite=true deletes only drs datasets, and this one also holds "
            f"{', '.join(foreign[:5])}; move those away or choose another out_dir")
    for lock in sorted((out / LOCK_DIR).glob("shard-*.lock")):
        with held_lock(lock, f"{out}: {lock.stem}", wait=False, remove=True):
            pass  # a running writer would see its shard vanish: refuse instead
    log.warning("overwrite=true: deleting the dataset in %s%s", out,
                f" ({'; '.join(differences[:3])})" if differences else "")
    for name in (IDENTITY_NAME, MANIFEST_NAME, PARTS_DIR, SHARD_DIR, CACHE_DIR, "quarantine"):
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


# ----------------------------------------------------------------------------------------------
# locks


@contextlib.contextmanager
def held_lock(path: Path, what: str, *, wait: bool, remove: bool = False) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if needed) for the block.

    wait=False raises DatasetBusy naming the holder (pid, host, since when) if another process or
    another open file holds it. The lock dies with its process, so a killed run never blocks one.
    remove=True deletes the file on release (one lock file per shard would pile up otherwise); a
    locker that finds its file replaced after taking the lock therefore starts over.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise DatasetBusy(f"{what} is being written by {holder} (lock {path}); wait for it to finish, "
                              f"or stop that process first") from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # its holder removed the file while we waited: lock the new one
    try:
        with contextlib.suppress(OSError):  # who holds it is a courtesy; a full disk must not stop us here
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        yield
    finally:
        if remove:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        os.close(fd)  # releases the lock


def shard_lock(out_dir: str | os.PathLike, index: int) -> contextlib.AbstractContextManager[None]:
    """The one-writer lock of shard `index` (fails at once, naming the holder, when taken)."""
    return held_lock(Path(out_dir) / LOCK_DIR / f"shard-{index:05d}.lock", f"shard {index} of {out_dir}",
                     wait=False, remove=True)


def manifest_lock(out_dir: str | os.PathLike) -> contextlib.AbstractContextManager[None]:
    """Serialises manifest merges (a farm's tasks and drs-verify may merge at the same time)."""
    return held_lock(Path(out_dir) / LOCK_DIR / "manifest.lock", f"manifest of {out_dir}", wait=True)


def remove_temporaries(directory: Path, stem: str) -> None:
    """Delete the atomic-write temporaries (`.{stem}.*.partial`) a killed writer left in `directory`.
    Call it only while holding the lock of whatever writes them."""
    for tmp in directory.glob(f".{stem}.*.partial"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


# ----------------------------------------------------------------------------------------------
# temporary folders that name their owner


def make_owned_tempdir(directory: str | os.PathLike, prefix: str, suffix: str = "") -> Path:
    """mkdtemp named `{prefix}{host}.{pid}.{random}{suffix}`, after removing those of dead
    processes of this host, so a killed run's leftovers go with the next run."""
    remove_dead_tempdirs(directory, prefix, suffix)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{socket.gethostname()}.{os.getpid()}.", suffix=suffix,
                                 dir=directory))


def remove_dead_tempdirs(directory: str | os.PathLike, prefix: str, suffix: str = "") -> list[Path]:
    """Remove this user's `make_owned_tempdir` folders in `directory` whose process is gone."""
    removed = []
    host = socket.gethostname()
    for path in Path(directory).glob(f"{glob.escape(prefix)}*{glob.escape(suffix)}"):
        parts = path.name[len(prefix):len(path.name) - len(suffix)].rsplit(".", 2)
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue  # another host's (its pid means nothing here) or not one of ours
        with contextlib.suppress(OSError):
            if path.is_dir() and path.stat().st_uid == os.getuid() and not _alive(int(parts[1])):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def make_scratch() -> str:
    """A fresh folder for Blender's pass files, RAM-backed /dev/shm when writable."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    return str(make_owned_tempdir(base, SCRATCH_PREFIX))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


# ----------------------------------------------------------------------------------------------
# plan


def check_plan(cfg: GenerateConfig, sequences: int) -> str:
    """Refuse (UserError) a run whose `sequences` cannot fit on out_dir's disk; else return a line
    with its estimated size and core-hours for the log. Shards already written count as done."""
    k, side = cfg.sequence_length, cfg.resolution
    raw = (k + 1) * side * side * 3  # inputs and target
    need = sequences * raw * _COMPRESSED_FRACTION
    if cfg.shard is None and (Path(cfg.out_dir) / SHARD_DIR).is_dir():
        need -= sum(e.stat().st_size for e in os.scandir(Path(cfg.out_dir) / SHARD_DIR) if e.name.endswith(".h5"))
    core_hours = sequences * _CORE_SECONDS_PER_SEQUENCE_256_K9 * (side / 256) ** 2 * (k / 9) / 3600
    existing = Path(cfg.out_dir).absolute()
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    time_needed = f"{core_hours:,.1f} core-hours" if core_hours >= 0.1 else f"{core_hours * 60:.1f} core-minutes"
    estimate = f"{sequences} sequences of {k} x {side} px: about {_size(max(need, 0))} and {time_needed}"
    if need > free:
        raise UserError(f"num_sequences={cfg.num_sequences}: {estimate}, but {existing} has {_size(free)} free; "
                        f"lower num_sequences or choose an out_dir with room")
    return estimate


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")
