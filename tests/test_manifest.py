"""generator/manifest.py: per-shard parts and their merge into manifest.json, the README's promises
about `rejected.*`, `devices`, `missing_shards` and timings included."""

from __future__ import annotations

import json

import numpy as np
import pytest

from generator.dataset_format import SequenceRecord, read_manifest, shard_entry, shard_path, write_shard
from generator.manifest import PARTS_DIR, merge_parts, part_path, read_part, shard_is_complete


def write_part(root, index, *, device="cpu", frames=(), sequences=(), covers=(), timings=None, seed=5):
    """A shard of 2 sequences and its part, written as the pipeline writes them."""
    rng = np.random.default_rng(index)
    records = [SequenceRecord(2 * index + i, rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8),
                              rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
                              {"occluder": np.zeros((2, 8, 8), np.uint8)}, {}) for i in range(2)]
    path = write_shard(shard_path(root, index), records, seed=seed, config={"resolution": 8},
                       generator_version="g1", blender_version="4.5.0")
    part = {"shard_index": index, "seed": seed, "config": {"resolution": 8}, "generator_version": "g1",
            "blender_version": "4.5.0", "device": device, "shard": shard_entry(root, path, 2 * index, 2),
            "rejected": {"covers": list(covers), "frames": list(frames), "sequences": list(sequences)},
            "timings": timings or {"render": 1.0}}
    part_path(root, index).parent.mkdir(parents=True, exist_ok=True)
    part_path(root, index).write_text(json.dumps(part))
    return part


def test_parts_merge_into_the_documented_manifest(tmp_path):
    bad_cover = {"file": "covers/black.png", "reason": "all one colour"}
    write_part(tmp_path, 2, device="cuda:NVIDIA A100", covers=[bad_cover], timings={"render": 2.5, "write": 0.25},
               frames=[{"sequence_id": 5, "attempt": 0, "reason": "frame 1: all black"}],
               sequences=[{"sequence_id": 5, "reason": "failed QA on 1 attempts: frame 1: all black"}])
    write_part(tmp_path, 0, device="cpu", covers=[bad_cover, {"file": "covers/tiny.png", "reason": "too small"}],
               timings={"render": 1.0, "scene": 0.5},
               frames=[{"sequence_id": 1, "attempt": 0, "reason": "frame 0: saturated"}],
               sequences=[{"sequence_id": 1, "reason": "failed QA on 1 attempts: frame 0: saturated"}])
    manifest = merge_parts(tmp_path, expected_shards=4)
    assert manifest == read_manifest(tmp_path)
    assert [s["file"] for s in manifest["shards"]] == ["shards/shard-00000.h5", "shards/shard-00002.h5"]
    assert manifest["num_sequences"] == 4 and manifest["missing_shards"] == [1, 3]
    assert manifest["devices"] == ["cpu", "cuda:NVIDIA A100"]  # each device once, sorted
    assert manifest["seed"] == 5 and manifest["config"] == {"resolution": 8}
    assert manifest["generator_version"] == "g1" and manifest["blender_version"] == "4.5.0"
    assert manifest["timings"] == {"render": 3.5, "scene": 0.5, "write": 0.25}  # summed over shards
    rejected = manifest["rejected"]
    # Frames and sequences from every shard, in shard order; a cover rejected by several tasks once.
    assert [f["sequence_id"] for f in rejected["frames"]] == [1, 5]
    assert rejected["sequences"] == [{"sequence_id": 1, "reason": "failed QA on 1 attempts: frame 0: saturated"},
                                     {"sequence_id": 5, "reason": "failed QA on 1 attempts: frame 1: all black"}]
    assert rejected["covers"] == [bad_cover, {"file": "covers/tiny.png", "reason": "too small"}]


def test_merge_removes_what_a_killed_merge_left_and_nothing_else(tmp_path):
    write_part(tmp_path, 0)
    torn = tmp_path / ".manifest.json.k1ll3d.partial"
    torn.write_text("{")
    other = tmp_path / ".notes.json.abc.partial"  # another writer's temporary: not the merge's business
    other.write_text("{")
    merge_parts(tmp_path)
    assert not torn.exists() and other.exists()


def test_without_an_expected_count_nothing_is_called_missing(tmp_path):
    write_part(tmp_path, 1)
    assert merge_parts(tmp_path)["missing_shards"] == []
    assert merge_parts(tmp_path, expected_shards=2)["missing_shards"] == [0]


def test_no_parts_is_an_error_naming_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / PARTS_DIR}: no manifest parts"):
        merge_parts(tmp_path)


def test_a_shard_is_complete_only_when_its_bytes_match_its_part(tmp_path):
    assert part_path(tmp_path, 3) == tmp_path / "manifest.parts" / "shard-00003.json"
    assert not shard_is_complete(tmp_path, 0)  # nothing there
    part = write_part(tmp_path, 0)
    assert read_part(tmp_path, 0) == part
    assert shard_is_complete(tmp_path, 0)
    path = shard_path(tmp_path, 0)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(data))
    assert not shard_is_complete(tmp_path, 0)
    path.write_bytes(bytes(data) + b"x")  # other size
    assert not shard_is_complete(tmp_path, 0)
    path.unlink()
    assert not shard_is_complete(tmp_path, 0)  # part without shard


def test_a_missing_or_hand_broken_part_reads_as_none(tmp_path):
    assert read_part(tmp_path, 0) is None
    write_part(tmp_path, 0)
    part_path(tmp_path, 0).write_text("{ not json")
    assert read_part(tmp_path, 0) is None
    assert not shard_is_complete(tmp_path, 0)  # the shard is there, but no part vouches for it
