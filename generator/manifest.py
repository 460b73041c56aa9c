"""Manifest parts (one per shard, written by the task that rendered it) and their merge.

No two tasks ever write the same file: task I writes only `shards/shard-I.h5` and
`manifest.parts/shard-I.json`; `manifest.json` is produced by merging the parts (at the end of
a local run, or by `drs-verify` after a farm sweep).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from generator.dataset_format import MANIFEST_NAME, sha256_file, shard_path, write_manifest

PARTS_DIR = "manifest.parts"


def part_path(dataset_dir: str | os.PathLike, index: int) -> Path:
    return Path(dataset_dir) / PARTS_DIR / f"shard-{index:05d}.json"


def read_part(dataset_dir: str | os.PathLike, index: int) -> dict[str, Any] | None:
    path = part_path(dataset_dir, index)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # a torn part cannot exist (atomic writes) but a hand-edited one can


def shard_is_complete(dataset_dir: str | os.PathLike, index: int) -> bool:
    """The shard and its part exist and the shard's bytes hash to what the part recorded."""
    part = read_part(dataset_dir, index)
    path = shard_path(dataset_dir, index)
    if part is None or not path.exists():
        return False
    return part["shard"]["bytes"] == path.stat().st_size and part["shard"]["sha256"] == sha256_file(path)


def merge_parts(dataset_dir: str | os.PathLike, expected_shards: int | None = None) -> dict[str, Any]:
    """Write manifest.json from every part present; returns it. Shards without a part are listed
    under `missing_shards` (when `expected_shards` is known) so nobody mistakes a partial dataset
    for a whole one. Merges are serialised by a lock (a farm's tasks and drs-verify may merge at once)."""
    from generator.dataset_guard import manifest_lock, remove_temporaries  # it imports this module

    dataset_dir = Path(dataset_dir)
    with manifest_lock(dataset_dir):
        remove_temporaries(dataset_dir, MANIFEST_NAME)  # left by a merge that was killed
        return _merge(dataset_dir, expected_shards)


def _merge(dataset_dir: Path, expected_shards: int | None) -> dict[str, Any]:
    parts = []
    for path in sorted((dataset_dir / PARTS_DIR).glob("shard-*.json")):
        parts.append(json.loads(path.read_text()))
    if not parts:
        raise FileNotFoundError(f"{dataset_dir / PARTS_DIR}: no manifest parts; nothing was rendered here")
    parts.sort(key=lambda p: p["shard_index"])
    first = parts[0]
    timings: dict[str, float] = defaultdict(float)
    rejected: dict[str, list] = {"covers": [], "frames": [], "sequences": []}
    covers_seen = set()
    for part in parts:
        for stage, seconds in part["timings"].items():
            timings[stage] += seconds
        rejected["frames"] += part["rejected"]["frames"]
        rejected["sequences"] += part["rejected"]["sequences"]
        for item in part["rejected"]["covers"]:
            if item["file"] not in covers_seen:
                covers_seen.add(item["file"])
                rejected["covers"].append(item)
    present = {p["shard_index"] for p in parts}
    missing = (i for i in range(expected_shards or 0) if i not in present)  # lazy: counts may be huge
    return write_manifest(
        dataset_dir,
        seed=first["seed"],
        config=first["config"],
        shards=[p["shard"] for p in parts],
        rejected=rejected,
        timings=timings,
        generator_version=first["generator_version"],
        blender_version=first["blender_version"],
        devices=sorted({p["device"] for p in parts}),
        missing_shards=list(missing),
    )
