"""`drs-verify --upgrade`: rewrite a schema-1 dataset as schema 2, shard by shard, atomically.

    drs-verify --upgrade DATASET      # then verifies; exit 0 only when every shard is whole

For each shard the dataset records (its manifest part, or manifest.json for datasets without
parts) whose file is still schema 1:

1. verify it against its record (size, sha256, every chunk decodes, ids): a damaged shard is not
   upgraded, it is named (repair it with `drs-verify --repair` first);
2. write the schema-2 shard beside it under a hidden temporary name and read it back: every
   sequence must equal the original, pixel for pixel;
3. record the new file's size and sha256 as `upgrade` in the shard's record, rename the new file
   over the old one, then make them the record's `bytes` and `sha256`.

A kill at any moment leaves the shard either schema 1 matching its record, or schema 2 matching
the pending `upgrade`; the next run finishes either. Shards already at schema 2 are left alone, so
a second run changes nothing. The new bytes depend only on the sequences and the shard's
attributes (the same as `write_shard` of those sequences), never on the machine or the order.
Run it while nothing else writes to the dataset. It holds one shard's decoded sequences in memory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from generator.dataset_format import (
    MANIFEST_NAME,
    DatasetFormatError,
    SequenceRecord,
    ShardReader,
    sha256_file,
    write_json_atomic,
    write_shard,
)
from generator.manifest import part_path
from generator.verify import ShardProblem, expected_entries, read_parts, verify_shard


@dataclass
class UpgradeReport:
    """Shard indices by outcome; `problems` names the shards that could not be upgraded."""

    upgraded: list[int] = field(default_factory=list)
    already: list[int] = field(default_factory=list)
    problems: list[ShardProblem] = field(default_factory=list)

    def summary(self) -> str:
        return (f"upgraded {len(self.upgraded)} shard(s) to schema 2, {len(self.already)} already were, "
                f"{len(self.problems)} not upgraded")


def upgrade_dataset(dataset_dir: str | os.PathLike) -> UpgradeReport:
    """Upgrade every recorded schema-1 shard of `dataset_dir` (see the module docstring)."""
    dataset_dir = Path(dataset_dir)
    count, entries, config = expected_entries(dataset_dir)  # raises DatasetFormatError naming the manifest
    records = _Records(dataset_dir)
    report = UpgradeReport()
    for index in range(count):
        entry = entries[index]
        path = dataset_dir / entry["file"] if entry and "file" in entry else None
        if path is None or not path.exists():
            continue  # missing or unrecorded: nothing to upgrade; verification names it
        problem = _upgrade_shard(dataset_dir, index, entry, config, records)
        if problem is None:
            report.upgraded.append(index)
        elif problem == "already":
            report.already.append(index)
        else:
            report.problems.append(ShardProblem(index, entry["file"], "not upgraded", problem))
    if not report.problems and not records.has_parts:
        records.set_manifest_schema(2)
    return report


def _upgrade_shard(dataset_dir: Path, index: int, entry: dict[str, Any], config: dict | None,
                   records: _Records) -> str | None:
    """None when upgraded now, "already" when it was schema 2, else why it was not upgraded."""
    path = dataset_dir / entry["file"]
    pending = entry.get("upgrade")
    if pending:  # an earlier run was killed between recording the new digest and finishing
        digest = sha256_file(path)
        if digest == pending["sha256"]:
            records.commit(index, entry)
            return None
        if digest != entry.get("sha256"):
            return f"sha256 {digest[:12]}... matches neither the record nor the pending upgrade"
        del entry["upgrade"]  # the rename never happened: start over
    try:
        with ShardReader(path) as reader:
            version = reader.attrs.get("schema_version")
    except DatasetFormatError as exc:
        return str(exc)
    if version == 2:
        return "already"
    if version != 1:
        return f"schema_version {version!r}; only schema 1 is upgraded"
    found = verify_shard(dataset_dir, index, entry, config)
    if found:
        return "; ".join(f"{p.kind}: {p.detail}" for p in found) + " (repair it first: drs-verify --repair)"
    with ShardReader(path) as reader:
        attrs = reader.attrs
        old = list(reader)
    tmp = path.with_name(f".{path.name}.upgrade.partial")
    for stale in path.parent.glob(f".*{path.name}.upgrade.partial*"):  # left by a run that was killed
        stale.unlink()
    try:
        write_shard(tmp, old, seed=attrs["seed"], config=json.loads(attrs["config"]),
                    generator_version=attrs["generator_version"], blender_version=attrs["blender_version"],
                    source=attrs["source"])
        mismatch = _compare(tmp, old)
        if mismatch:
            return f"the schema-2 copy differs from the original: {mismatch}"
        entry["upgrade"] = {"sha256": sha256_file(tmp), "bytes": tmp.stat().st_size}
        records.save(index, entry)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    records.commit(index, entry)
    return None


def _compare(path: Path, expected: list[SequenceRecord]) -> str | None:
    """First difference between the shard at `path` and `expected`, or None."""
    with ShardReader(path) as reader:
        if len(reader) != len(expected):
            return f"{len(reader)} sequences instead of {len(expected)}"
        for row, want in enumerate(expected):
            got = reader.read(row)
            same = (got.sequence_id == want.sequence_id and got.params == want.params
                    and np.array_equal(got.inputs, want.inputs)
                    and (got.target is None) == (want.target is None)
                    and (got.target is None or np.array_equal(got.target, want.target))
                    and got.masks.keys() == want.masks.keys()
                    and all(np.array_equal(got.masks[m], want.masks[m]) for m in got.masks))
            if not same:
                return f"sequence row {row} (sequence_id {want.sequence_id})"
    return None


class _Records:
    """Where shard records live: the manifest parts when there are any (they win, see
    verify.expected_entries), else manifest.json. Each save is an atomic rewrite of that file."""

    def __init__(self, dataset_dir: Path):
        self.dataset_dir = dataset_dir
        self.has_parts = bool(read_parts(dataset_dir))

    def save(self, index: int, entry: dict[str, Any]) -> None:
        if self.has_parts:
            path = part_path(self.dataset_dir, index)
            part = json.loads(path.read_text())
            part["shard"] = entry
            write_json_atomic(path, part)
            return
        manifest = self._manifest()
        manifest["shards"] = [entry if e.get("file") == entry["file"] else e for e in manifest["shards"]]
        write_json_atomic(self.dataset_dir / MANIFEST_NAME, manifest)

    def commit(self, index: int, entry: dict[str, Any]) -> None:
        """Make the pending upgrade the shard's record."""
        entry.update(entry.pop("upgrade"))
        self.save(index, entry)

    def set_manifest_schema(self, version: int) -> None:
        manifest = self._manifest()
        if manifest.get("schema_version") != version:
            manifest["schema_version"] = version
            write_json_atomic(self.dataset_dir / MANIFEST_NAME, manifest)

    def _manifest(self) -> dict[str, Any]:
        return json.loads((self.dataset_dir / MANIFEST_NAME).read_text())

